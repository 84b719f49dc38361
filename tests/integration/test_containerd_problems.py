"""`otelbridge run` when containerd cannot be used: say what is wrong once, wait only for
what can heal, and exit 1 with what to do when nothing will.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from otelbridge.testing.containerd import PrivateContainerd
from tests.integration.processes import OTELBRIDGE, final_counters

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
MISSING = "does not exist: is containerd running, and is --address / CONTAINERD_ADDRESS right?"


class Run:
    """`otelbridge run` on ``address``, exporting nothing, its log in a file."""

    def __init__(self, address: str, log_path: Path, prefix: list[str] | None = None) -> None:
        self.log_path = log_path
        args = ["run", "--address", address, "--state-dir", "", "--exporter", "none"]
        args += ["--http-addr", "127.0.0.1:0"]
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [*(prefix or []), *OTELBRIDGE, *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "OTEL_METRICS_EXPORTER": "none"},
                cwd=Path(__file__).parents[2],  # importable as any user
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, text: str, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text in self.log():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"never saw {text!r}; log: {self.log()[-3000:]}")

    def exit_code(self, timeout_s: float = 30) -> int:
        return self.proc.wait(timeout_s)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path (unix socket paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="obp-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.containerd
def test_a_missing_socket_is_said_once_and_waited_for_until_containerd_appears(
    short_dir: Path, tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run a private containerd")
    cd = PrivateContainerd(short_dir / "cd")
    bridge = Run(cd.address, tmp_path / "bridge.log")
    try:
        bridge.wait_for(MISSING, timeout_s=20)
        time.sleep(10)  # five or more retries at the default 2 s cap
        assert bridge.proc.poll() is None, bridge.log()
        log = bridge.log()
        assert log.count(MISSING) == 1, log
        assert f"containerd socket {cd.address} {MISSING} waiting for it" in log
        assert "UNAVAILABLE" not in log  # gRPC's detail only at debug level

        cd.start()  # containerd appears at that path
        bridge.wait_for("subscribed to containerd", timeout_s=30)
        assert bridge.stop() == 0, bridge.log()
    finally:
        bridge.close()
        cd.close()
    counters = final_counters(bridge.log())
    assert counters["otelbridge.source.connect_failures"] >= 5


def test_a_socket_that_is_not_containerd_ends_the_run_with_exit_1(tmp_path: Path) -> None:
    address = str(tmp_path / "not-containerd.sock")
    server = grpc.server(futures.ThreadPoolExecutor(2))  # no services at all
    server.add_insecure_port("unix://" + address)
    server.start()
    bridge = Run(address, tmp_path / "bridge.log")
    try:
        code = bridge.exit_code()
    finally:
        bridge.close()
        server.stop(None)
    log = bridge.log()
    assert code == 1, log
    assert f"{address} answers gRPC but is not containerd" in log
    assert "point --address / CONTAINERD_ADDRESS at containerd's socket" in log
    assert "Traceback" not in log


@pytest.mark.containerd
def test_permission_denied_on_the_socket_ends_the_run_with_exit_1(
    containerd: PrivateContainerd, tmp_path: Path
) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) missing")
    # user nobody against the root-only socket of a real containerd (the log file is
    # opened here, as root)
    bridge = Run(containerd.address, tmp_path / "bridge.log", prefix=NOBODY)
    try:
        code = bridge.exit_code()
    finally:
        bridge.close()
    log = bridge.log()
    assert code == 1, log
    assert (
        f"permission denied on {containerd.address}: run otelbridge as root or give it "
        "access to the socket"
    ) in log
    assert "Traceback" not in log
