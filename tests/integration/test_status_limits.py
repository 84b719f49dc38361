"""The status API under a connection flood, in a process with the usual 1,024-descriptor limit.

No containerd needed: a child process serves :class:`otelbridge.status.StatusServer` with
its defaults (but a short idle timeout) and ``RLIMIT_NOFILE`` lowered to 1,024, as a
daemon gets under many init systems. The test opens more connections than that, none of
which sends a byte. Before connections were bounded they exhausted the child's descriptors
(the real daemon, with its gRPC channels and state files, already at 1,011), so
``/healthz`` went unanswered and the bridge's own sockets (its OTLP export) failed with
"Too many open files".
"""

from __future__ import annotations

import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

IDLE_CONNECTIONS = 1100  # more than the child's descriptor limit
IDLE_TIMEOUT_S = 1.0

CHILD = f"""
import resource, socket, sys, threading
resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))
from otelbridge.core.counters import Counters
from otelbridge.status import StatusServer

def needs_a_descriptor():
    # what the OTLP exporter does on every export: open a socket
    socket.socket().close()
    return 200, b"ok\\n", "text/plain"

server = StatusServer(
    "127.0.0.1:0", Counters(), health=lambda: [], readiness=lambda: [],
    routes={{"/fd": needs_a_descriptor}}, idle_timeout_s={IDLE_TIMEOUT_S},
)
server.start()
print(server.address[1], flush=True)
sys.stdin.read()  # until the test closes our stdin
server.shutdown()
"""


@pytest.fixture
def child_port(tmp_path: Path) -> Iterator[int]:
    """The port of a status server in a child process limited to 1,024 descriptors."""
    with (tmp_path / "child.stderr").open("w+") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        assert proc.stdout is not None and proc.stdin is not None
        try:
            yield int(proc.stdout.readline())
        finally:
            proc.stdin.close()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            stderr.seek(0)
            assert not stderr.read().strip(), "the child wrote to stderr"


def get(port: int, path: str, timeout_s: float = 5.0) -> tuple[int, float]:
    """(status code, seconds it took) of a plain GET, with a hard timeout."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    return int(answer.split(b" ", 2)[1]), time.monotonic() - started


@pytest.mark.slow
def test_idle_connections_cannot_starve_the_daemon_of_descriptors(child_port: int) -> None:
    idle = []
    try:
        for _ in range(IDLE_CONNECTIONS):
            s = socket.socket()
            s.settimeout(5)  # a full accept queue drops SYNs: the retries take 1 s, 2 s
            try:
                s.connect(("127.0.0.1", child_port))
            except TimeoutError:  # the child stopped accepting: /healthz tells why
                s.close()
                break
            idle.append(s)

        try:
            code, took_s = get(child_port, "/healthz")
        except TimeoutError:
            pytest.fail(f"/healthz unanswered with {len(idle)} idle connections open")
        assert code == 200
        assert took_s < 3.0, f"/healthz took {took_s:.1f}s"
        assert get(child_port, "/fd")[0] == 200  # the process can still open sockets
        assert len(idle) == IDLE_CONNECTIONS

        # every idle connection is closed by the server: EOF (or a reset) within bounds
        sel = selectors.DefaultSelector()
        for s in idle:
            sel.register(s, selectors.EVENT_READ)
        open_ = len(idle)
        deadline = time.monotonic() + 10 * IDLE_TIMEOUT_S + 10
        while open_ and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1.0):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(1)
                except ConnectionError:
                    data = b""
                assert data == b"", "an idle connection was sent data"
                sel.unregister(sock)
                open_ -= 1
        sel.close()
        assert open_ == 0, f"{open_} idle connections still open"
    finally:
        for s in idle:
            s.close()
