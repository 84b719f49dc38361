"""The probe readiness source: its schedule on a fake clock, its probes on real sockets.

Time is a :class:`FakeClock` with a fake sleep that advances it (or waits for the test to),
so deadlines of 120 s pass in no real time and every moment is exact. The servers probed
are real, on loopback: plain threads (a port that listens from a given fake moment,
scripted HTTP servers, a listener that never accepts); their sockets come from a plain
factory (no namespace). The last section tests the default factory, which makes every
socket in the container's network namespace; some of it needs root.
"""

from __future__ import annotations

import asyncio
import errno
import http.server
import itertools
import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from otelbridge.core import semconv
from otelbridge.core.clock import FakeClock
from otelbridge.core.config import ReadinessConfig
from otelbridge.core.counters import Counters
from otelbridge.core.model import ContainerInfo, ContainerKey, ReadySignal
from otelbridge.readiness import SOURCE_PROBE, ReadinessRequest
from otelbridge.readiness.netns import ContainerNetns, NamespaceUnavailable, SocketFactory
from otelbridge.readiness.probe import DEADLINE_REASON, ProbeSource, ProbeTarget, parse_target

_NS = 1_000_000_000


# -- helpers ---------------------------------------------------------------------------
class Reports:
    """The verdicts a source hands over (called on the probe thread)."""

    def __init__(self) -> None:
        self.signals: list[ReadySignal] = []
        self.arrived_ns: list[int] = []
        self._cond = threading.Condition()

    def __call__(self, signal: ReadySignal) -> None:
        with self._cond:
            self.signals.append(signal)
            self.arrived_ns.append(time.time_ns())
            self._cond.notify_all()

    def wait(self, count: int = 1, timeout_s: float = 5.0) -> list[ReadySignal]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.signals) >= count, timeout_s), (
                f"{len(self.signals)} of {count} verdicts"
            )
            return list(self.signals)


class FakeTime:
    """A fake clock and the sleep a source awaits. ``auto``: a sleep moves the clock to
    its end at once; otherwise it waits until the test :meth:`advance`\\ s past its end.
    ``at`` runs an action (on the thread that moves the clock) once it reaches a moment."""

    def __init__(self, *, auto: bool = True) -> None:
        self.clock = FakeClock()
        self.t0 = self.clock.now_ns()
        self.sleeps: list[float] = []
        self._auto = auto
        self._lock = threading.Lock()
        self._actions: list[tuple[int, Callable[[], None]]] = []
        self._sleepers: list[tuple[int, asyncio.Future[None]]] = []

    def at(self, offset_s: float, action: Callable[[], None]) -> None:
        self._actions.append((self.t0 + round(offset_s * _NS), action))

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        end = self.clock.now_ns() + round(seconds * _NS)
        if self._auto:
            self._move(end)
            await asyncio.sleep(0)  # a sleep yields, as the real one does
            return
        entry = (end, asyncio.get_running_loop().create_future())
        with self._lock:
            self._sleepers.append(entry)
        try:
            await entry[1]
        finally:
            with self._lock:
                self._sleepers.remove(entry)

    def advance(self, seconds: float) -> None:
        self._move(self.clock.now_ns() + round(seconds * _NS))

    def sleeping(self) -> int:
        with self._lock:
            return len(self._sleepers)

    def wait_sleeping(self, count: int, timeout_s: float = 5.0) -> None:
        limit = time.monotonic() + timeout_s
        while self.sleeping() != count:
            assert time.monotonic() < limit, f"{self.sleeping()} probes asleep, not {count}"
            time.sleep(0.002)

    def _move(self, now_ns: int) -> None:
        self.clock.set(max(now_ns, self.clock.now_ns()))
        now_ns = self.clock.now_ns()
        for entry in [a for a in self._actions if a[0] <= now_ns]:
            self._actions.remove(entry)
            entry[1]()
        with self._lock:
            due = [fut for end, fut in self._sleepers if end <= now_ns]
        for fut in due:
            fut.get_loop().call_soon_threadsafe(_wake, fut)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():  # a cancelled sleep stays cancelled
        fut.set_result(None)


async def plain_sockets(pid: int, family: int) -> socket.socket:
    """Sockets in this process's namespace, whatever the pid: for servers on loopback."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    return sock


def request(
    target: str,
    *,
    now_ns: int | None = None,
    deadline_s: float = 5.0,
    cid: str = "",
    pid: int = 0,
    attempt: int = 1,
) -> ReadinessRequest:
    now = time.time_ns() if now_ns is None else now_ns
    info = ContainerInfo("ns", cid or uuid.uuid4().hex[:8], readiness=target)
    return ReadinessRequest(info.key, attempt, info, now, now + int(deadline_s * _NS), pid=pid)


Factory = Callable[..., tuple[ProbeSource, Counters]]


@pytest.fixture
def make_source() -> Iterator[Factory]:
    """Started sources with the given ReadinessConfig fields, the ``fake`` time (None:
    real time) and ``sockets`` (plain by default); shut down afterwards."""
    made: list[ProbeSource] = []

    def make(
        fake: FakeTime | None = None,
        sockets: SocketFactory | None = plain_sockets,
        **fields: object,
    ) -> tuple[ProbeSource, Counters]:
        counters = Counters()
        source = ProbeSource(
            ReadinessConfig(**fields),  # type: ignore[arg-type]
            counters,
            clock=fake.clock if fake else None,
            sleep=fake.sleep if fake else None,
            sockets=sockets,
        )
        source.start()
        made.append(source)
        return source, counters

    yield make
    for source in made:
        source.shutdown()


class Listener:
    """A TCP port on loopback, bound at once: connections are refused until :meth:`listen`;
    then accepted (and closed) unless ``accept`` is false (they wait in the backlog)."""

    def __init__(self, *, listen: bool = False, accept: bool = True) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self._accept = accept
        if listen:
            self.listen()

    def listen(self) -> None:
        self._sock.listen(64)
        if self._accept:
            threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            conn.close()

    def untouched(self) -> bool:
        """No connection arrived (for a listener that does not accept)."""
        self._sock.setblocking(False)
        try:
            self._sock.accept()[0].close()
        except BlockingIOError:
            return True
        return False

    def close(self) -> None:
        self._sock.close()


class HttpServer:
    """A real HTTP/1.1 server whose n-th request (from 0) is answered ``status(n)``
    after ``hold_s``; it records each request and the most requests handled at once."""

    def __init__(self, status: Callable[[int], int], hold_s: float = 0.0) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.answered: list[int] = []
        self.active = 0
        self.max_active = 0
        lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                with lock:
                    n = len(outer.requests)
                    outer.requests.append((self.path, dict(self.headers.items())))
                    outer.active += 1
                    outer.max_active = max(outer.max_active, outer.active)
                time.sleep(hold_s)
                code = status(n)
                with lock:
                    # before the answer: the client holds its slot until it has read it
                    outer.active -= 1
                    outer.answered.append(code)
                body = b"ok\n"
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()

    def count(self) -> int:
        return len(self.requests)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# -- targets ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("tcp://127.0.0.1:8080", ProbeTarget("tcp", "127.0.0.1", 8080)),
        ("tcp://localhost:1", ProbeTarget("tcp", "localhost", 1)),
        ("http://10.0.0.7:80", ProbeTarget("http", "10.0.0.7", 80, "/")),
        ("http://[::1]:8080/healthz?full=1", ProbeTarget("http", "::1", 8080, "/healthz?full=1")),
        ("HTTP://Web.Local:81/Ready", ProbeTarget("http", "web.local", 81, "/Ready")),
    ],
)
def test_valid_targets_parse(text: str, target: ProbeTarget) -> None:
    assert parse_target(text) == target


def test_a_target_prints_as_it_is_requested() -> None:
    target = parse_target("http://[::1]:8080/healthz")
    assert target.authority == "[::1]:8080"
    assert str(target) == "http://[::1]:8080/healthz"


INVALID = [
    "ftp://x",
    "ftp://127.0.0.1:21/",
    "https://127.0.0.1:443/",
    "tcp://host",
    "http://host/",
    "http://:80",
    "tcp://:80",
    "garbage",
    "127.0.0.1:80",
    "tcp://127.0.0.1:0",
    "tcp://127.0.0.1:99999",
    "tcp://127.0.0.1:http",
    "tcp://127.0.0.1:80/path",
    "tcp://127.0.0.1:80?q",
    "http://user:secret@127.0.0.1:80/",
    "http://127.0.0.1:80/#frag",
    "http://a b:80/",
    "http://127.0.0.1:80/x\r\nX-Injected: 1",
    "http://127.0.0.1:80/\u00e9",
    "http://[zz]:80/",
    "http://bad%host:80/",
    "tcp://" + "a" * 600 + ":80",
]


@pytest.mark.parametrize("text", INVALID)
def test_invalid_targets_do_not_apply_and_are_counted(text: str, make_source: Factory) -> None:
    source, counters = make_source()
    with pytest.raises(ValueError):
        parse_target(text)
    assert not source.applies(ContainerInfo("ns", "c", readiness=text))
    assert counters.get(semconv.READINESS_INVALID_TARGET) == 1


def test_no_target_or_probing_disabled_does_not_apply_and_counts_nothing(
    make_source: Factory,
) -> None:
    source, counters = make_source()
    assert not source.applies(ContainerInfo("ns", "c"))
    disabled, disabled_counters = make_source(probe=False)
    assert source.applies(ContainerInfo("ns", "c", readiness="tcp://127.0.0.1:80"))
    assert not disabled.applies(ContainerInfo("ns", "c", readiness="tcp://127.0.0.1:80"))
    assert not disabled.applies(ContainerInfo("ns", "c", readiness="garbage"))
    assert counters.get(semconv.READINESS_INVALID_TARGET) == 0
    assert disabled_counters.get(semconv.READINESS_INVALID_TARGET) == 0
    assert source.name == SOURCE_PROBE


# -- the schedule, on the fake clock ---------------------------------------------------
def test_tcp_ready_at_the_first_attempt_after_the_port_opens(make_source: Factory) -> None:
    fake = FakeTime()
    source, counters = make_source(fake, probe_interval_s=0.02)
    listener = Listener()
    fake.at(0.3, listener.listen)  # refused for 0.3 s of the clock, then accepted
    try:
        reports = Reports()
        req = request(f"tcp://127.0.0.1:{listener.port}", now_ns=fake.t0)
        source.watch(req, reports)
        (signal,) = reports.wait()
    finally:
        listener.close()
    # attempts at 0, 0.02, ... 0.30 s: the 16th, at the opening, succeeds; no more after
    assert signal == ReadySignal(req.key, 1, fake.t0 + 300_000_000, SOURCE_PROBE, ok=True)
    assert counters.get(semconv.READINESS_PROBES) == 16
    assert fake.sleeps == [0.02] * 15


def test_a_probe_that_never_succeeds_gives_up_at_exactly_its_120_s_deadline(
    make_source: Factory,
) -> None:
    fake = FakeTime()
    tried_ns: list[int] = []

    async def refused(pid: int, family: int) -> socket.socket:
        tried_ns.append(fake.clock.now_ns())
        raise ConnectionRefusedError(errno.ECONNREFUSED, "refused")

    source, counters = make_source(fake, sockets=refused)  # the defaults: 120 s, 50 ms
    reports = Reports()
    req = request("tcp://127.0.0.1:1", now_ns=fake.t0, deadline_s=120.0)
    began = time.monotonic()
    source.watch(req, reports)
    (signal,) = reports.wait(timeout_s=30)
    assert time.monotonic() - began < 30  # 120 s of the clock, not of the machine
    assert signal == ReadySignal(
        req.key, 1, req.deadline_ns, SOURCE_PROBE, ok=False, reason=DEADLINE_REASON
    )
    assert fake.clock.now_ns() == req.deadline_ns  # the last pause ended at the deadline
    assert len(tried_ns) == counters.get(semconv.READINESS_PROBES) == 2400
    assert {b - a for a, b in itertools.pairwise(tried_ns)} == {50_000_000}


def test_a_slow_attempt_is_followed_at_once(make_source: Factory) -> None:
    fake = FakeTime()
    tried_ns: list[int] = []

    async def slow(pid: int, family: int) -> socket.socket:
        tried_ns.append(fake.clock.now_ns())
        fake.advance(0.12)  # longer than the interval
        raise ConnectionRefusedError(errno.ECONNREFUSED, "refused")

    source, _ = make_source(fake, sockets=slow, probe_interval_s=0.05)
    reports = Reports()
    req = request("tcp://127.0.0.1:1", now_ns=fake.t0, deadline_s=1.0)
    source.watch(req, reports)
    (signal,) = reports.wait()
    assert fake.sleeps == []
    assert tried_ns == [fake.t0 + i * 120_000_000 for i in range(9)]
    assert signal.at_ns == req.deadline_ns and not signal.ok


def test_a_deadline_already_past_on_the_clock_gives_up_without_an_attempt(
    make_source: Factory,
) -> None:
    fake = FakeTime()
    source, counters = make_source(fake)
    reports = Reports()
    req = request("tcp://127.0.0.1:1", now_ns=fake.t0 - 10 * _NS, deadline_s=5.0)
    source.watch(req, reports)
    (signal,) = reports.wait()
    assert signal.at_ns == req.deadline_ns and signal.reason == DEADLINE_REASON
    assert counters.get(semconv.READINESS_PROBES) == 0


# -- http, real servers ----------------------------------------------------------------
def test_http_ready_at_the_first_2xx_after_503s(make_source: Factory) -> None:
    fake = FakeTime()
    server = HttpServer(lambda n: 503 if n < 3 else 200)
    source, _ = make_source(fake, probe_interval_s=0.03)
    try:
        reports = Reports()
        source.watch(request(f"http://127.0.0.1:{server.port}/ready?x=1", now_ns=fake.t0), reports)
        (signal,) = reports.wait()
    finally:
        server.close()
    assert signal.ok and signal.source == SOURCE_PROBE
    assert signal.at_ns == fake.t0 + 3 * 30_000_000  # the 4th attempt
    assert server.answered == [503, 503, 503, 200]
    assert len(reports.signals) == 1
    path, headers = server.requests[0]
    assert path == "/ready?x=1"
    assert headers["Host"] == f"127.0.0.1:{server.port}"
    assert headers["Connection"] == "close"


@pytest.mark.parametrize("status", [204, 302])
def test_http_2xx_and_3xx_are_ready(status: int, make_source: Factory) -> None:
    fake = FakeTime()
    server = HttpServer(lambda n: status)
    source, _ = make_source(fake)
    try:
        reports = Reports()
        source.watch(request(f"http://127.0.0.1:{server.port}", now_ns=fake.t0), reports)
        (signal,) = reports.wait()
    finally:
        server.close()
    assert signal.ok and signal.at_ns == fake.t0
    assert server.requests[0][0] == "/"


@pytest.mark.parametrize("status", [404, 500])
def test_http_4xx_and_5xx_are_not_ready(status: int, make_source: Factory) -> None:
    fake = FakeTime()
    server = HttpServer(lambda n: status)
    source, _ = make_source(fake, probe_interval_s=0.05)
    try:
        reports = Reports()
        req = request(f"http://127.0.0.1:{server.port}/", now_ns=fake.t0, deadline_s=0.4)
        source.watch(req, reports)
        (signal,) = reports.wait()
    finally:
        server.close()
    assert not signal.ok
    assert signal.reason == DEADLINE_REASON
    assert signal.at_ns == req.deadline_ns
    assert server.count() == 8  # at 0, 0.05, ... 0.35 s: it kept trying until the deadline


# -- refused and hanging, real sockets -------------------------------------------------
def test_a_refused_port_is_tried_every_interval_until_the_deadline(make_source: Factory) -> None:
    fake = FakeTime()
    listener = Listener()  # bound, never listening: refused
    source, counters = make_source(fake, probe_interval_s=0.05)
    try:
        reports = Reports()
        req = request(f"tcp://127.0.0.1:{listener.port}", now_ns=fake.t0, deadline_s=0.5)
        source.watch(req, reports)
        (signal,) = reports.wait()
    finally:
        listener.close()
    assert signal == ReadySignal(
        req.key, 1, req.deadline_ns, SOURCE_PROBE, ok=False, reason=DEADLINE_REASON
    )
    assert counters.get(semconv.READINESS_PROBES) == 10


def test_a_hanging_server_ends_each_attempt_at_its_real_timeout(make_source: Factory) -> None:
    silent = Listener(listen=True, accept=False)  # connects, never answers
    fake = FakeTime()
    source, counters = make_source(fake, probe_interval_s=0.05, probe_timeout_s=0.1)
    try:
        reports = Reports()
        req = request(f"http://127.0.0.1:{silent.port}/", now_ns=fake.t0, deadline_s=0.2)
        began = time.monotonic()
        source.watch(req, reports)
        (signal,) = reports.wait()
        took = time.monotonic() - began
    finally:
        silent.close()
    assert signal.at_ns == req.deadline_ns and not signal.ok
    assert counters.get(semconv.READINESS_PROBES) == 4
    # each attempt waited its own timeout in real time; the last one (at 0.15 s of the
    # clock) only what was left before the deadline
    assert took >= 3 * 0.1 + 0.05, took


def test_on_the_real_clock_the_deadline_cuts_a_hanging_attempt(make_source: Factory) -> None:
    silent = Listener(listen=True, accept=False)
    source, _ = make_source(probe_interval_s=0.05, probe_timeout_s=5.0)
    try:
        reports = Reports()
        req = request(f"http://127.0.0.1:{silent.port}/", deadline_s=0.3)
        source.watch(req, reports)
        (signal,) = reports.wait()
    finally:
        silent.close()
    assert signal.at_ns == req.deadline_ns and signal.reason == DEADLINE_REASON
    late_s = (reports.arrived_ns[0] - req.deadline_ns) / _NS
    assert -0.005 <= late_s <= 0.2, late_s


# -- cancel, supersede, errors ---------------------------------------------------------
def test_cancel_stops_the_probe_and_reports_nothing(make_source: Factory) -> None:
    fake = FakeTime(auto=False)
    server = HttpServer(lambda n: 404)
    source, _ = make_source(fake, probe_interval_s=0.03)
    try:
        reports = Reports()
        req = request(f"http://127.0.0.1:{server.port}/", now_ns=fake.t0, deadline_s=0.5)
        source.watch(req, reports)
        fake.wait_sleeping(1)  # the first attempt is over: waiting for the next
        source.cancel(req.key)
        fake.wait_sleeping(0)  # the probe has ended
        fake.advance(1.0)  # past the deadline
        assert server.count() == 1
    finally:
        server.close()
    assert reports.signals == []


def test_a_new_watch_of_the_same_container_supersedes_the_old(make_source: Factory) -> None:
    fake = FakeTime(auto=False)
    listener = Listener(listen=True)
    source, _ = make_source(fake, probe_interval_s=0.03)
    try:
        reports = Reports()
        old = request("tcp://127.0.0.1:1", now_ns=fake.t0, deadline_s=0.2, cid="same")
        new = request(f"tcp://127.0.0.1:{listener.port}", now_ns=fake.t0, cid="same", attempt=2)
        source.watch(old, reports)
        source.watch(new, reports)
        reports.wait()
        fake.wait_sleeping(0)  # the old one is not waiting for its next attempt
        fake.advance(1.0)  # past the old one's deadline
    finally:
        listener.close()
    assert [(s.attempt, s.ok) for s in reports.signals] == [(2, True)]


class _Broken(ProbeSource):
    """A source whose attempts hit a bug (stands for any unexpected exception)."""

    async def _attempt(
        self, target: ProbeTarget, pid: int, deadline_ns: int
    ) -> tuple[int | None, str]:
        raise RuntimeError("boom")


def test_an_unexpected_error_ends_the_probe_not_ok(caplog: pytest.LogCaptureFixture) -> None:
    counters = Counters()
    fake = FakeTime()
    source = _Broken(ReadinessConfig(), counters, clock=fake.clock, sleep=fake.sleep)
    source.start()
    try:
        reports = Reports()
        source.watch(request("tcp://127.0.0.1:1", now_ns=fake.t0), reports)
        (signal,) = reports.wait()
    finally:
        source.shutdown()
    assert not signal.ok
    assert signal.reason == "probe failed: boom"
    assert signal.at_ns == fake.t0
    assert counters.get(semconv.PIPELINE_ERRORS) == 1
    assert "readiness probe failed" in caplog.text


def test_a_report_that_raises_does_not_stop_the_probe_thread(make_source: Factory) -> None:
    fake = FakeTime()
    listener = Listener(listen=True)
    source, _ = make_source(fake)
    raised = threading.Event()
    try:

        def broken(signal: ReadySignal) -> None:
            raised.set()
            raise RuntimeError("receiver bug")

        source.watch(request(f"tcp://127.0.0.1:{listener.port}", now_ns=fake.t0), broken)
        assert raised.wait(5)
        reports = Reports()
        source.watch(request(f"tcp://127.0.0.1:{listener.port}", now_ns=fake.t0), reports)
        (signal,) = reports.wait()
    finally:
        listener.close()
    assert signal.ok


# -- limits and lifecycle (real time) --------------------------------------------------
def test_at_most_max_concurrent_probes_attempts_are_in_flight(make_source: Factory) -> None:
    server = HttpServer(lambda n: 200, hold_s=0.05)
    source, _ = make_source(max_concurrent_probes=4, probe_timeout_s=5.0)
    try:
        reports = Reports()
        for i in range(50):
            source.watch(request(f"http://127.0.0.1:{server.port}/", cid=f"c{i}"), reports)
        signals = reports.wait(50, timeout_s=10)
    finally:
        server.close()
    assert all(s.ok for s in signals)
    assert len({s.key for s in signals}) == 50
    assert server.count() == 50
    assert server.max_active == 4


def test_shutdown_with_probes_running_is_prompt_and_final() -> None:
    silent = Listener(listen=True, accept=False)
    counters = Counters()
    source = ProbeSource(
        ReadinessConfig(probe_timeout_s=5.0, probe_deadline_s=10.0, max_concurrent_probes=8),
        counters,
        sockets=plain_sockets,
    )
    source.start()
    reports = Reports()
    try:
        for i in range(20):
            source.watch(request(f"http://127.0.0.1:{silent.port}/", cid=f"c{i}"), reports)
        for i in range(5):  # some with a deadline about to expire
            source.watch(request("tcp://127.0.0.1:1", deadline_s=0.21, cid=f"d{i}"), reports)
        time.sleep(0.2)
        began = time.monotonic()
        source.shutdown()
        took = time.monotonic() - began
        returned_ns = time.time_ns()
        source.shutdown()  # idempotent
        source.watch(request(f"http://127.0.0.1:{silent.port}/"), reports)  # dropped
        source.cancel(ContainerKey("ns", "c0"))
        time.sleep(0.3)
    finally:
        silent.close()
    assert took < 2.5, took  # prompt (loose for a loaded machine), not the probes' timeouts
    assert all(t < returned_ns for t in reports.arrived_ns)
    assert all(s.key.id.startswith("d") for s in reports.signals)
    assert counters.get(semconv.READINESS_PROBES) >= 8


def test_shutdown_without_start_and_watch_before_start() -> None:
    source = ProbeSource(ReadinessConfig(), Counters())
    with pytest.raises(RuntimeError):
        source.watch(request("tcp://127.0.0.1:1"), Reports())
    source.shutdown()
    source.shutdown()
    source.start()  # after shutdown: stays closed, watch drops
    reports = Reports()
    source.watch(request("tcp://127.0.0.1:1"), reports)
    source.cancel(ContainerKey("ns", "x"))
    assert reports.signals == []


# -- the default factory: the container's network namespace ----------------------------
def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()  # reaped: /proc/<pid> is gone
    return proc.pid


def test_the_namespace_helper_says_why_it_cannot_make_a_socket() -> None:
    netns = ContainerNetns()
    with pytest.raises(NamespaceUnavailable, match="not running"):
        asyncio.run(netns(os.getpid(), socket.AF_INET))  # before start()
    netns.start()
    try:
        with pytest.raises(NamespaceUnavailable, match="the container's pid is unknown"):
            asyncio.run(netns(0, socket.AF_INET))
        pid = dead_pid()
        with pytest.raises(NamespaceUnavailable, match=f"process {pid} is gone"):
            asyncio.run(netns(pid, socket.AF_INET))
    finally:
        netns.shutdown()
    with pytest.raises(NamespaceUnavailable, match="not running"):
        asyncio.run(netns(os.getpid(), socket.AF_INET))


@pytest.mark.parametrize("pid", [0, -1], ids=["unknown", "dead"])
def test_a_probe_without_the_containers_namespace_connects_nowhere(
    pid: int, make_source: Factory
) -> None:
    node = Listener(listen=True, accept=False)  # a port open on the node: must stay untouched
    fake = FakeTime()
    source, counters = make_source(fake, sockets=None)  # the default: ContainerNetns
    try:
        reports = Reports()
        req = request(
            f"tcp://127.0.0.1:{node.port}",
            now_ns=fake.t0,
            deadline_s=0.2,
            pid=pid if pid >= 0 else dead_pid(),
        )
        source.watch(req, reports)
        (signal,) = reports.wait()
        assert node.untouched()
    finally:
        node.close()
    assert signal == ReadySignal(
        req.key, 1, req.deadline_ns, SOURCE_PROBE, ok=False, reason=DEADLINE_REASON
    )
    assert counters.get(semconv.READINESS_PROBES) == 4  # each attempt failed, none connected
