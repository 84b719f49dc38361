"""Probe readiness on a real containerd: busybox ``httpd`` on the host network.

A container sleeps 1 s, then starts ``httpd``; its ``otelbridge.io/readiness`` label names
the server. The moment the port opened is measured here, independently of the bridge, by
a thread that tries to connect every 2 ms from before the container starts; the
``readiness.wait`` span must end within 100 ms of it. A container whose target never opens
ends at the probe deadline, ``not_ready`` with status ERROR.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from otelbridge.app import Bridge, build_live_bridge
from otelbridge.core import semconv
from otelbridge.core.config import Config, ReadinessConfig, SourceConfig, StateConfig
from otelbridge.readiness import SOURCE_PROBE
from otelbridge.testing.otlp import OtlpReceiver, ReceivedSpan
from tests.conftest import Namespace

pytestmark = pytest.mark.containerd

_NS = 1_000_000_000

MakeBridge = Callable[[ReadinessConfig], Bridge]


def start_bridge(
    namespace: Namespace, receiver: OtlpReceiver, state_dir: Path, readiness: ReadinessConfig
) -> Bridge:
    """A started live bridge on ``namespace`` with the given readiness settings, proven
    subscribed; the caller shuts it down."""
    config = Config(
        source=SourceConfig(address=namespace.cd.address, namespaces=(namespace.name,)),
        state=StateConfig(dir=str(state_dir)),
        readiness=readiness,
    )
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    bridge = build_live_bridge(config, environ=environ)
    try:
        bridge.start()
        assert bridge.pipeline.connected.wait(10), "bridge did not subscribe"
    except BaseException:
        bridge.shutdown()
        raise
    return bridge


@pytest.fixture
def make_bridge(
    namespace: Namespace, receiver: OtlpReceiver, tmp_path: Path
) -> Iterator[MakeBridge]:
    """Started bridges with a probe source and the given readiness settings; shut down
    afterwards."""
    bridges: list[Bridge] = []

    def make(readiness: ReadinessConfig) -> Bridge:
        bridge = start_bridge(namespace, receiver, tmp_path / f"state-{len(bridges)}", readiness)
        bridges.append(bridge)
        return bridge

    yield make
    for bridge in bridges:
        bridge.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PortWatcher:
    """Connects to a loopback port every ``every_s`` until one connection is accepted;
    ``opened_ns`` is the time right after that connect returned."""

    def __init__(self, port: int, every_s: float = 0.002) -> None:
        self.opened_ns = 0
        self._port = port
        self._every_s = every_s
        self._stop = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self._port), timeout=0.05):
                    self.opened_ns = time.time_ns()
                self._done.set()
                return
            except OSError:
                time.sleep(self._every_s)

    def wait(self, timeout_s: float) -> int:
        assert self._done.wait(timeout_s), "the port never opened"
        return self.opened_ns

    def close(self) -> None:
        self._stop.set()
        self._thread.join(1)


def spans_of(receiver: OtlpReceiver, cid: str, timeout_s: float) -> dict[str, ReceivedSpan]:
    spans = receiver.wait_for_spans(
        lambda s: (
            s.name != semconv.SPAN_SNAPSHOT_RECLAIM
            and s.attributes.get(semconv.CONTAINER_ID) == cid
        ),
        count=5,
        timeout_s=timeout_s,
    )
    return {s.name: s for s in spans}


def kill(namespace: Namespace, cid: str) -> None:
    namespace.cd.ctr("tasks", "kill", "-s", "SIGKILL", cid, namespace=namespace.name, check=False)


def test_http_probe_ends_readiness_wait_when_the_port_opens(
    make_bridge: MakeBridge, namespace: Namespace, receiver: OtlpReceiver
) -> None:
    bridge = make_bridge(ReadinessConfig(probe_deadline_s=30.0))
    port = free_port()
    cid = f"httpd-{uuid.uuid4().hex[:6]}"
    watcher = PortWatcher(port)
    try:
        # GET / answers 404 in an empty directory: serve an index.html so it answers 200
        script = (
            "sleep 1; mkdir -p /tmp/www; echo ok > /tmp/www/index.html; "
            f"exec httpd -f -p {port} -h /tmp/www"
        )
        namespace.run(
            cid,
            "/bin/sh",
            "-c",
            script,
            labels={"otelbridge.io/readiness": f"http://127.0.0.1:{port}/"},
            extra_args=("--net-host",),
            detach=True,
        )
        opened_ns = watcher.wait(10)
        spans = spans_of(receiver, cid, timeout_s=15)
    finally:
        watcher.close()
        kill(namespace, cid)
    root, wait = spans[semconv.SPAN_CONTAINER_STARTUP], spans[semconv.SPAN_READINESS_WAIT]
    assert root.attributes[semconv.OB_READINESS_SOURCE] == SOURCE_PROBE
    assert root.attributes[semconv.OB_STARTUP_OUTCOME] == "ready"
    assert root.span.status.code != Status.StatusCode.STATUS_CODE_ERROR
    error_ms = (wait.span.end_time_unix_nano - opened_ns) / 1e6
    print(f"readiness.wait ends {error_ms:+.1f} ms from the port opening")
    assert abs(error_ms) < 100, error_ms
    waited_s = (wait.span.end_time_unix_nano - wait.span.start_time_unix_nano) / _NS
    assert 0.95 <= waited_s <= 1.5, waited_s
    assert root.span.end_time_unix_nano == wait.span.end_time_unix_nano
    assert bridge.counters.get(semconv.READINESS_PROBES) >= 2


def test_a_target_that_never_opens_ends_not_ready_at_the_deadline(
    make_bridge: MakeBridge, namespace: Namespace, receiver: OtlpReceiver
) -> None:
    make_bridge(ReadinessConfig(probe_deadline_s=2.0, probe_timeout_s=0.2))
    port = free_port()
    cid = f"closed-{uuid.uuid4().hex[:6]}"
    try:
        namespace.run(
            cid,
            "/bin/sleep",
            "30",
            labels={"otelbridge.io/readiness": f"tcp://127.0.0.1:{port}"},
            extra_args=("--net-host",),
            detach=True,
        )
        spans = spans_of(receiver, cid, timeout_s=15)
    finally:
        kill(namespace, cid)
    root, wait = spans[semconv.SPAN_CONTAINER_STARTUP], spans[semconv.SPAN_READINESS_WAIT]
    assert root.attributes[semconv.OB_READINESS_SOURCE] == SOURCE_PROBE
    assert root.attributes[semconv.OB_STARTUP_OUTCOME] == "not_ready"
    assert root.span.status.code == Status.StatusCode.STATUS_CODE_ERROR
    assert wait.span.status.code == Status.StatusCode.STATUS_CODE_ERROR
    waited_s = (wait.span.end_time_unix_nano - wait.span.start_time_unix_nano) / _NS
    # the deadline runs from when the probe was armed, just after /tasks/start
    assert 2.0 <= waited_s <= 2.5, waited_s
