"""Fixtures shared by the test suite.

Integration tests run against a real, private containerd (``otelbridge.testing``). When
the machine cannot run one (not root, tools missing) they are skipped with the reason,
unless ``OTELBRIDGE_REQUIRE_CONTAINERD=1`` (set by ``.ci/run``) turns the skip into a
failure so CI never passes by skipping.
"""

from __future__ import annotations

import os
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from otelbridge.testing.containerd import PrivateContainerd, missing_host_tools
from otelbridge.testing.image import BUSYBOX_BASE_NAME, busybox_image_tar, import_image
from otelbridge.testing.otlp import OtlpReceiver


def _why_no_containerd() -> str | None:
    if os.geteuid() != 0:
        return "needs root to run a private containerd"
    missing = missing_host_tools()
    if missing:
        return f"host tools missing: {', '.join(missing)} (see README: make setup)"
    return None


@pytest.fixture(scope="session")
def containerd() -> Iterator[PrivateContainerd]:
    """One private containerd for the session (tests use their own namespaces)."""
    reason = _why_no_containerd()
    if reason:
        if os.environ.get("OTELBRIDGE_REQUIRE_CONTAINERD") == "1":
            pytest.fail(f"containerd tests required but cannot run: {reason}")
        pytest.skip(reason)
    with PrivateContainerd() as cd:
        yield cd


@pytest.fixture(scope="session")
def image_tar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return busybox_image_tar(tmp_path_factory.mktemp("image-cache"))


class Namespace:
    """A fresh containerd namespace with the busybox image imported."""

    def __init__(self, cd: PrivateContainerd, name: str, image: str) -> None:
        self.cd = cd
        self.name = name
        self.image = image

    def run(self, container_id: str, *cmd: str, **kwargs: object):  # type: ignore[no-untyped-def]
        return self.cd.run(self.image, container_id, *cmd, namespace=self.name, **kwargs)


@pytest.fixture
def namespace(containerd: PrivateContainerd, image_tar: Path) -> Namespace:
    name = f"t-{uuid.uuid4().hex[:8]}"
    image = import_image(containerd, image_tar, BUSYBOX_BASE_NAME, name)
    return Namespace(containerd, name, image)


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    """A real OTLP/gRPC receiver on loopback."""
    with OtlpReceiver() as r:
        yield r


class CtrEvents:
    """``ctr events`` in the background: an independent record of the envelopes."""

    def __init__(self, cd: PrivateContainerd) -> None:
        self._proc = subprocess.Popen(
            ["ctr", "--address", cd.address, "events"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.lines: list[str] = []
        self._seen = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            with self._seen:
                self.lines.append(line.rstrip("\n"))
                self._seen.notify_all()

    def wait_for(self, text: str, timeout_s: float = 10.0) -> None:
        with self._seen:
            if not self._seen.wait_for(lambda: any(text in line for line in self.lines), timeout_s):
                raise TimeoutError(f"`ctr events` never showed {text!r}")

    def close(self) -> None:
        self._proc.terminate()
        self._proc.wait(5)


@pytest.fixture
def ctr_events(containerd: PrivateContainerd, namespace: Namespace) -> Iterator[CtrEvents]:
    """Started and proven subscribed (a warm-up container's events were seen)."""
    events = CtrEvents(containerd)
    for _ in range(20):  # `ctr events` subscribes asynchronously: probe until it sees one
        warmup = f"warmup-{uuid.uuid4().hex[:8]}"
        namespace.run(warmup, "/bin/true")
        try:
            events.wait_for(f'"id":"{warmup}"', timeout_s=0.5)
            break
        except TimeoutError:
            continue
    else:
        events.close()
        raise TimeoutError("`ctr events` did not subscribe")
    yield events
    events.close()
