"""The status API: loopback by default, read-only answers, bounded connections."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from otelbridge.core import semconv
from otelbridge.core.counters import Counters
from otelbridge.core.errors import ConfigError
from otelbridge.status import (
    DEFAULT_HTTP_ADDR,
    ConnectionStats,
    StatusServer,
    _Connections,
    parse_addr,
)

IDLE_TIMEOUT_S = 0.5


def get(server: StatusServer, path: str) -> tuple[int, bytes]:
    host, port = server.address[:2]
    if ":" in host:
        host = f"[{host}]"
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def fine() -> list[str]:
    return []


def connect(server: StatusServer) -> socket.socket:
    return socket.create_connection(server.address[:2], timeout=10)


def closed_by_server(sock: socket.socket) -> bool:
    """Waits (up to the socket's timeout) for the server to close ``sock`` unanswered."""
    try:
        return sock.recv(1) == b""
    except ConnectionError:
        return True
    except TimeoutError:
        return False


def eventually(condition: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@pytest.fixture
def server() -> Iterator[StatusServer]:
    s = StatusServer(
        "127.0.0.1:0",
        Counters(),
        health=fine,
        readiness=fine,
        max_connections=8,
        idle_timeout_s=IDLE_TIMEOUT_S,
    )
    s.start()
    yield s
    s.shutdown()


def test_the_default_address_is_loopback_only() -> None:
    assert parse_addr(DEFAULT_HTTP_ADDR) == ("127.0.0.1", 9464)


@pytest.mark.parametrize("addr", ["9464", ":9464", "host:", "host:port", "host:70000", ""])
def test_a_malformed_address_is_a_config_error(addr: str) -> None:
    with pytest.raises(ConfigError):
        parse_addr(addr)


def test_ipv6_addresses_are_accepted() -> None:
    assert parse_addr("[::1]:9464") == ("::1", 9464)


def test_an_ipv6_address_is_served() -> None:
    try:
        socket.socket(socket.AF_INET6).close()
        server = StatusServer("[::1]:0", Counters(), health=fine, readiness=fine)
    except (OSError, ConfigError):
        pytest.skip("no IPv6 loopback here")
    server.start()
    try:
        assert get(server, "/healthz") == (200, b"ok\n")
    finally:
        server.shutdown()


def test_health_readiness_and_counters() -> None:
    counters = Counters()
    counters.inc(semconv.SOURCE_RECONNECTS)
    health: list[str] = []
    readiness = ["not subscribed to containerd yet"]
    server = StatusServer(
        "127.0.0.1:0", counters, health=lambda: health, readiness=lambda: readiness
    )
    server.start()
    try:
        assert server.address[0] == "127.0.0.1"
        assert get(server, "/healthz") == (200, b"ok\n")
        assert get(server, "/readyz") == (503, b"not subscribed to containerd yet\n")
        readiness.clear()
        assert get(server, "/readyz") == (200, b"ok\n")
        code, body = get(server, "/v1/counters")
        assert code == 200
        assert json.loads(body)["otelbridge.source.reconnects"] == 1
        assert get(server, "/nope")[0] == 404
        health.append("the event pipeline stopped")
        assert get(server, "/healthz") == (503, b"the event pipeline stopped\n")
    finally:
        server.shutdown()


def test_every_problem_is_reported_one_a_line() -> None:
    problems = ["not subscribed to containerd yet", "state disk full:\ndropping spans"]
    server = StatusServer("127.0.0.1:0", Counters(), health=fine, readiness=lambda: problems)
    server.start()
    try:
        code, body = get(server, "/readyz")
        assert code == 503
        assert body.decode().splitlines() == [
            "not subscribed to containerd yet",
            "state disk full: dropping spans",
        ]
    finally:
        server.shutdown()


def test_a_check_that_raises_answers_500_and_the_server_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken() -> list[str]:
        raise RuntimeError("boom")

    server = StatusServer("127.0.0.1:0", Counters(), health=broken, readiness=fine)
    server.start()
    try:
        assert get(server, "/healthz")[0] == 500
        assert get(server, "/healthz")[0] == 500
        assert get(server, "/readyz") == (200, b"ok\n")
    finally:
        server.shutdown()
    assert any("/healthz failed" in r.getMessage() and r.exc_info for r in caplog.records)


def test_an_address_in_use_is_a_config_error() -> None:
    first = StatusServer("127.0.0.1:0", Counters(), health=fine, readiness=fine)
    try:
        with pytest.raises(ConfigError, match="cannot listen"):
            StatusServer(f"127.0.0.1:{first.address[1]}", Counters(), health=fine, readiness=fine)
    finally:
        first.shutdown()


def test_bad_bounds_are_config_errors_reported_together() -> None:
    with pytest.raises(ConfigError) as info:
        StatusServer(
            "127.0.0.1:0",
            Counters(),
            health=fine,
            readiness=fine,
            max_connections=0,
            idle_timeout_s=0,
        )
    assert "max_connections" in str(info.value)
    assert "idle_timeout_s" in str(info.value)


def test_shutdown_is_idempotent_and_works_without_start() -> None:
    server = StatusServer("127.0.0.1:0", Counters(), health=fine, readiness=fine)
    server.shutdown()
    server.shutdown()


# -- bounded connections ----------------------------------------------------------------------
def test_health_answers_while_idle_connections_exceed_the_bound(server: StatusServer) -> None:
    idle = [connect(server) for _ in range(200)]  # the bound is 8
    try:
        started = time.monotonic()
        assert get(server, "/healthz") == (200, b"ok\n")
        assert time.monotonic() - started < 3.0
        stats = server.connection_stats()
        assert stats.open <= 8
        # made room for: evicted, or timed out while the others were still connecting
        assert stats.evicted + stats.timed_out >= 200 - 8
        assert stats.rejected == 0
    finally:
        for s in idle:
            s.close()


def test_an_idle_connection_is_closed_after_the_idle_timeout(server: StatusServer) -> None:
    sock = connect(server)
    with sock:
        started = time.monotonic()
        assert closed_by_server(sock)
        assert IDLE_TIMEOUT_S * 0.9 <= time.monotonic() - started < IDLE_TIMEOUT_S + 5
    eventually(lambda: server.connection_stats() == ConnectionStats(0, 0, 0, 1))


def test_a_slow_request_is_closed_after_the_idle_timeout(server: StatusServer) -> None:
    request = b"GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n"
    sock = connect(server)
    with sock:
        started = time.monotonic()
        sock.settimeout(0.05)
        for byte in request:  # one byte every 50 ms: 1.7 s for the whole request
            try:
                sock.sendall(bytes([byte]))
            except ConnectionError:
                break
            if closed_by_server(sock):
                break
        else:
            pytest.fail("the whole slow request was accepted")
        assert time.monotonic() - started < IDLE_TIMEOUT_S + 5
    assert server.connection_stats().timed_out == 1


def test_a_connection_is_rejected_when_every_slot_is_answering() -> None:
    release = threading.Event()
    entered = threading.Semaphore(0)

    def stuck() -> tuple[int, bytes, str]:
        entered.release()
        release.wait(30)
        return 200, b"late\n", "text/plain"

    server = StatusServer(
        "127.0.0.1:0",
        Counters(),
        health=fine,
        readiness=fine,
        routes={"/stuck": stuck},
        max_connections=2,
        idle_timeout_s=IDLE_TIMEOUT_S,
    )
    server.start()
    answers: list[tuple[int, bytes]] = []
    busy = [threading.Thread(target=lambda: answers.append(get(server, "/stuck"))) for _ in "ab"]
    try:
        for t in busy:
            t.start()
        for _ in busy:
            assert entered.acquire(timeout=10)
        sock = connect(server)
        with sock:
            assert closed_by_server(sock)
        assert server.connection_stats().rejected == 1
        release.set()
        for t in busy:
            t.join(10)
        assert answers == [(200, b"late\n")] * 2
        assert get(server, "/healthz") == (200, b"ok\n")  # slots are free again
    finally:
        release.set()
        server.shutdown()


def test_shutdown_closes_open_connections() -> None:
    server = StatusServer("127.0.0.1:0", Counters(), health=fine, readiness=fine, idle_timeout_s=60)
    server.start()
    sock = connect(server)
    with sock:
        eventually(lambda: server.connection_stats().open == 1)
        server.shutdown()
        sock.settimeout(5)
        assert closed_by_server(sock)


# -- the connection table, on a fake clock ------------------------------------------------------
class FakeMonotonic:
    def __init__(self) -> None:
        self.now_ns = 1_000_000_000

    def __call__(self) -> int:
        return self.now_ns

    def advance(self, seconds: float) -> None:
        self.now_ns += int(seconds * 1_000_000_000)


def pair() -> tuple[socket.socket, socket.socket]:
    ours, theirs = socket.socketpair()
    theirs.settimeout(5)
    return ours, theirs


def test_a_reading_connection_is_shut_down_at_its_deadline_and_not_before() -> None:
    clock = FakeMonotonic()
    table = _Connections(limit=4, idle_timeout_s=5.0, monotonic_ns=clock)
    ours, theirs = pair()
    assert table.admit(ours, wait_s=0)
    clock.advance(4.0)
    assert table.reap() == pytest.approx(1.0)
    clock.advance(1.0)
    table.reap()
    assert theirs.recv(1) == b""  # shut down
    assert table.stats() == ConnectionStats(open=1, rejected=0, evicted=0, timed_out=1)
    table.close(ours)
    assert table.stats().open == 0
    theirs.close()


def test_an_answering_connection_is_neither_timed_out_nor_evicted() -> None:
    clock = FakeMonotonic()
    table = _Connections(limit=1, idle_timeout_s=5.0, monotonic_ns=clock)
    ours, theirs = pair()
    late, _ = pair()
    assert table.admit(ours, wait_s=0)
    table.answering(ours)
    clock.advance(60)
    assert table.reap() == pytest.approx(5.0)
    assert not table.admit(late, wait_s=0)
    assert table.stats() == ConnectionStats(open=1, rejected=1, evicted=0, timed_out=0)
    theirs.settimeout(0)
    with pytest.raises(BlockingIOError):  # still open: nothing to read, no EOF
        theirs.recv(1)
    for s in (ours, theirs, late, _):
        s.close()


def test_a_full_table_evicts_the_connection_waiting_longest() -> None:
    clock = FakeMonotonic()
    table = _Connections(limit=2, idle_timeout_s=5.0, monotonic_ns=clock)
    (old, old_peer), (new, new_peer), (newest, _) = pair(), pair(), pair()
    assert table.admit(old, wait_s=0)
    clock.advance(1)
    assert table.admit(new, wait_s=0)

    # the evicted connection's thread closes it while the newcomer waits for the slot
    def close_when_shut_down() -> None:
        assert old_peer.recv(1) == b""
        table.close(old)

    closer = threading.Thread(target=close_when_shut_down)
    closer.start()
    assert table.admit(newest, wait_s=5)
    closer.join(5)
    assert table.stats() == ConnectionStats(open=2, rejected=0, evicted=1, timed_out=0)
    new_peer.settimeout(0)
    with pytest.raises(BlockingIOError):  # the newer one was kept
        new_peer.recv(1)
