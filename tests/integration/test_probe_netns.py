"""Probes run in the container's network namespace, never the node's (needs root).

On a real containerd: a plain ``ctr run`` (no ``--net-host``) gives the container a
network namespace of its own with only a loopback interface, whose ``127.0.0.1`` is not
the node's:

* a container serving on its own loopback is ready, though nothing listens on the node's
  port of the same number;
* a container naming a port that only the NODE listens on is not ready, and the node's
  listener never sees a connection (a tenant cannot use the bridge to scan the node).

Without containerd, on a namespace made by ``unshare -n``: the namespace helper
(:class:`~otelbridge.readiness.netns.ContainerNetns`) makes its socket there, returns to the
bridge's namespace after each socket, and is replaced when it cannot return.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from otelbridge.app import Bridge
from otelbridge.core import semconv
from otelbridge.core.config import ReadinessConfig
from otelbridge.core.counters import Counters
from otelbridge.readiness import SOURCE_PROBE
from otelbridge.readiness import netns as readiness
from otelbridge.readiness.netns import ContainerNetns
from otelbridge.readiness.probe import ProbeSource
from otelbridge.testing.otlp import OtlpReceiver
from tests.conftest import Namespace
from tests.integration.test_probe_readiness import free_port, kill, spans_of, start_bridge
from tests.unit.readiness.test_probe import FakeTime, Reports, request

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="entering namespaces needs root")

_NS = 1_000_000_000


@pytest.fixture
def bridge(namespace: Namespace, receiver: OtlpReceiver, tmp_path: Path) -> Iterator[Bridge]:
    """A live bridge whose probes give up after 3 s."""
    readiness = ReadinessConfig(probe_deadline_s=3.0, probe_timeout_s=0.2)
    started = start_bridge(namespace, receiver, tmp_path / "state", readiness)
    yield started
    started.shutdown()


def node_port_is_closed(port: int) -> bool:
    """True when nothing on the node accepts connections on 127.0.0.1:``port``."""
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.containerd
def test_a_container_serving_on_its_own_loopback_becomes_ready(
    bridge: Bridge, namespace: Namespace, receiver: OtlpReceiver
) -> None:
    port = free_port()
    cid = f"ownnet-{uuid.uuid4().hex[:6]}"
    script = (
        "mkdir -p /tmp/www; echo ok > /tmp/www/index.html; "
        f"exec httpd -f -p 127.0.0.1:{port} -h /tmp/www"
    )
    try:
        namespace.run(
            cid,
            "/bin/sh",
            "-c",
            script,
            labels={"otelbridge.io/readiness": f"http://127.0.0.1:{port}/"},
            detach=True,  # no --net-host: a network namespace of its own
        )
        spans = spans_of(receiver, cid, timeout_s=15)
        assert node_port_is_closed(port), "the node itself serves the port: the test proves nothing"
    finally:
        kill(namespace, cid)
    root, wait = spans[semconv.SPAN_CONTAINER_STARTUP], spans[semconv.SPAN_READINESS_WAIT]
    assert root.attributes[semconv.OB_READINESS_SOURCE] == SOURCE_PROBE
    assert root.attributes[semconv.OB_STARTUP_OUTCOME] == "ready"
    assert root.span.status.code != Status.StatusCode.STATUS_CODE_ERROR
    waited_s = (wait.span.end_time_unix_nano - wait.span.start_time_unix_nano) / _NS
    assert waited_s < 2.0, waited_s  # well before the 3 s deadline
    assert bridge.counters.get(semconv.READINESS_PROBES) >= 1


@pytest.mark.containerd
def test_a_port_open_only_on_the_node_is_not_ready_and_never_touched(
    bridge: Bridge, namespace: Namespace, receiver: OtlpReceiver
) -> None:
    cid = f"scan-{uuid.uuid4().hex[:6]}"
    with socket.socket() as node_listener:
        node_listener.bind(("127.0.0.1", 0))
        node_listener.listen(16)  # connections would complete in the backlog, unaccepted
        port = node_listener.getsockname()[1]
        try:
            namespace.run(
                cid,
                "/bin/sleep",
                "30",
                labels={"otelbridge.io/readiness": f"tcp://127.0.0.1:{port}"},
                detach=True,
            )
            spans = spans_of(receiver, cid, timeout_s=15)
        finally:
            kill(namespace, cid)
        node_listener.setblocking(False)
        with pytest.raises(BlockingIOError):  # nothing in the backlog: never connected
            node_listener.accept()
    root, wait = spans[semconv.SPAN_CONTAINER_STARTUP], spans[semconv.SPAN_READINESS_WAIT]
    assert root.attributes[semconv.OB_READINESS_SOURCE] == SOURCE_PROBE
    assert root.attributes[semconv.OB_STARTUP_OUTCOME] == "not_ready"
    assert root.span.status.code == Status.StatusCode.STATUS_CODE_ERROR
    waited_s = (wait.span.end_time_unix_nano - wait.span.start_time_unix_nano) / _NS
    assert 3.0 <= waited_s <= 3.5, waited_s  # given up at the deadline
    assert bridge.counters.get(semconv.READINESS_PROBES) >= 2


# -- the namespace helper on a namespace of unshare(1) ---------------------------------
# a process in a new network namespace that brings its loopback up, listens on it and
# says when a connection arrived
_SERVER = """
import socket, subprocess, sys
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
s = socket.socket()
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(8)
print("listening", flush=True)
s.accept()
print("accepted", flush=True)
sys.stdin.read()
"""


def _netns_inode(path: str) -> int:
    return os.stat(path).st_ino


def _helpers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "otelbridge-netns" and t.is_alive()]


def _in_our_namespace(thread: threading.Thread) -> bool:
    mine = _netns_inode("/proc/self/ns/net")
    return _netns_inode(f"/proc/self/task/{thread.native_id}/ns/net") == mine


@pytest.fixture
def isolated_server() -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A server on 127.0.0.1:PORT of its own network namespace, and PORT."""
    port = free_port()
    proc = subprocess.Popen(
        ["unshare", "-n", sys.executable, "-c", _SERVER, str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline() == "listening\n"
        yield proc, port
    finally:
        proc.kill()
        proc.wait()


@needs_root
def test_the_probe_reaches_the_containers_loopback_and_the_helper_returns(
    isolated_server: tuple[subprocess.Popen[str], int],
) -> None:
    proc, port = isolated_server
    assert _netns_inode(f"/proc/{proc.pid}/ns/net") != _netns_inode("/proc/self/ns/net")
    fake = FakeTime()
    counters = Counters()
    source = ProbeSource(ReadinessConfig(), counters, clock=fake.clock, sleep=fake.sleep)
    source.start()
    with socket.socket() as node:  # the node's own 127.0.0.1:PORT listens too
        node.bind(("127.0.0.1", port))
        node.listen(8)
        try:
            reports = Reports()
            source.watch(request(f"tcp://127.0.0.1:{port}", now_ns=fake.t0, pid=proc.pid), reports)
            (signal,) = reports.wait()
            [helper] = _helpers()
            assert _in_our_namespace(helper)  # back home after making the socket
        finally:
            source.shutdown()
        node.setblocking(False)
        with pytest.raises(BlockingIOError):
            node.accept()  # the node's port was never connected to
    assert signal.ok and signal.at_ns == fake.t0
    assert proc.stdout is not None and proc.stdout.readline() == "accepted\n"
    assert _helpers() == []  # stopped with the source


@needs_root
def test_a_helper_that_cannot_return_home_is_replaced(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    netns = ContainerNetns()
    netns.start()
    try:
        asyncio.run(netns(os.getpid(), socket.AF_INET)).close()
        [first] = _helpers()
        real = readiness._setns
        calls: list[int] = []

        def setns(fd: int) -> None:
            calls.append(fd)
            if len(calls) == 2:  # the way home after entering the target
                raise OSError(errno.EPERM, "injected")
            real(fd)

        monkeypatch.setattr(readiness, "_setns", setns)
        with caplog.at_level(logging.ERROR):
            sock = asyncio.run(netns(os.getpid(), socket.AF_INET))
        sock.close()  # made in the right namespace: still handed over
        first.join(5)
        assert not first.is_alive()  # never used again
        assert "could not return to the bridge's network namespace" in caplog.text
        asyncio.run(netns(os.getpid(), socket.AF_INET)).close()  # by the replacement
        [second] = _helpers()
        assert second is not first and _in_our_namespace(second)
        assert len(calls) == 5  # target, home (failed); home (the new one), target, home
    finally:
        netns.shutdown()
    assert _helpers() == []
