"""The probe readiness source against real sockets on loopback (no mocks).

Servers here are plain threads: a listener that opens after a delay, scripted HTTP
servers, a listener that never accepts. Times are wall-clock nanoseconds, as the source
reports them.
"""

from __future__ import annotations

import http.server
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from otelbridge.core import semconv
from otelbridge.core.config import ReadinessConfig
from otelbridge.core.counters import Counters
from otelbridge.core.model import ContainerInfo, ContainerKey, ReadySignal
from otelbridge.readiness import SOURCE_PROBE, ReadinessRequest
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


def request(target: str, *, deadline_s: float = 5.0, cid: str = "") -> ReadinessRequest:
    now = time.time_ns()
    info = ContainerInfo("ns", cid or uuid.uuid4().hex[:8], readiness=target)
    return ReadinessRequest(info.key, 1, info, now, now + int(deadline_s * _NS))


Factory = Callable[..., tuple[ProbeSource, Counters]]


@pytest.fixture
def make_source() -> Iterator[Factory]:
    """Started sources with the given ReadinessConfig fields; shut down afterwards."""
    made: list[ProbeSource] = []

    def make(**fields: object) -> tuple[ProbeSource, Counters]:
        counters = Counters()
        source = ProbeSource(ReadinessConfig(**fields), counters)  # type: ignore[arg-type]
        source.start()
        made.append(source)
        return source, counters

    yield make
    for source in made:
        source.shutdown()


class DelayedListener:
    """A TCP port that is bound at once (connections are refused) and listens after
    ``delay_s``; ``opened_ns`` is taken just before ``listen()``."""

    def __init__(self, delay_s: float) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.opened_ns = 0
        self._delay_s = delay_s
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        time.sleep(self._delay_s)
        self.opened_ns = time.time_ns()
        self._sock.listen(64)
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            conn.close()

    def close(self) -> None:
        self._sock.close()


class SilentListener:
    """Listens but never accepts: connections complete (backlog), nothing answers."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port: int = self._sock.getsockname()[1]

    def close(self) -> None:
        self._sock.close()


class HttpServer:
    """A real HTTP/1.1 server whose n-th request (from 0) is answered ``status(n)``
    after ``hold_s``; it records each request and the most requests handled at once."""

    def __init__(self, status: Callable[[int], int], hold_s: float = 0.0) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.answered_ns: list[tuple[int, int]] = []  # (status, time it was sent)
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
                    outer.answered_ns.append((code, time.time_ns()))
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


# -- tcp -------------------------------------------------------------------------------
def test_tcp_ready_within_an_interval_of_the_port_opening(make_source: Factory) -> None:
    interval = 0.02
    source, counters = make_source(probe_interval_s=interval)
    listener = DelayedListener(0.3)
    try:
        reports = Reports()
        req = request(f"tcp://127.0.0.1:{listener.port}")
        source.watch(req, reports)
        (signal,) = reports.wait()
    finally:
        listener.close()
    assert signal == ReadySignal(req.key, 1, signal.at_ns, SOURCE_PROBE, ok=True)
    error_s = (signal.at_ns - listener.opened_ns) / _NS
    assert 0 <= error_s <= interval + 0.03, error_s
    # refused every interval for 0.3 s, then one success; then no more attempts
    attempts = counters.get(semconv.READINESS_PROBES)
    assert 8 <= attempts <= 0.3 / interval + 3
    time.sleep(0.1)
    assert counters.get(semconv.READINESS_PROBES) == attempts
    assert len(reports.signals) == 1


# -- http ------------------------------------------------------------------------------
def test_http_ready_at_the_first_2xx_after_503s(make_source: Factory) -> None:
    server = HttpServer(lambda n: 503 if n < 3 else 200)
    source, _ = make_source(probe_interval_s=0.03)
    try:
        reports = Reports()
        source.watch(request(f"http://127.0.0.1:{server.port}/ready?x=1"), reports)
        (signal,) = reports.wait()
        time.sleep(0.1)
    finally:
        server.close()
    assert signal.ok and signal.source == SOURCE_PROBE
    assert [code for code, _ in server.answered_ns] == [503, 503, 503, 200]
    first_200_ns = server.answered_ns[3][1]
    assert 0 <= signal.at_ns - first_200_ns <= 0.05 * _NS
    assert len(reports.signals) == 1
    path, headers = server.requests[0]
    assert path == "/ready?x=1"
    assert headers["Host"] == f"127.0.0.1:{server.port}"
    assert headers["Connection"] == "close"


@pytest.mark.parametrize("status", [204, 302])
def test_http_2xx_and_3xx_are_ready(status: int, make_source: Factory) -> None:
    server = HttpServer(lambda n: status)
    source, _ = make_source()
    try:
        reports = Reports()
        source.watch(request(f"http://127.0.0.1:{server.port}"), reports)
        (signal,) = reports.wait()
    finally:
        server.close()
    assert signal.ok
    assert server.requests[0][0] == "/"


@pytest.mark.parametrize("status", [404, 500])
def test_http_4xx_and_5xx_are_not_ready(status: int, make_source: Factory) -> None:
    server = HttpServer(lambda n: status)
    source, _ = make_source(probe_interval_s=0.05)
    try:
        reports = Reports()
        req = request(f"http://127.0.0.1:{server.port}/", deadline_s=0.4)
        source.watch(req, reports)
        (signal,) = reports.wait()
    finally:
        server.close()
    assert not signal.ok
    assert signal.reason == DEADLINE_REASON
    assert signal.at_ns == req.deadline_ns
    assert server.count() >= 4  # it kept trying until the deadline


# -- deadline, cancel, errors ----------------------------------------------------------
@pytest.mark.parametrize("scheme", ["tcp", "http"])
def test_a_target_that_never_answers_gives_up_at_the_deadline(
    scheme: str, make_source: Factory
) -> None:
    # tcp: a bound port that never listens (refused); http: a listener that never accepts
    # (connects, then each attempt hits its timeout)
    if scheme == "tcp":
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    else:
        silent = SilentListener()
        port = silent.port
    source, counters = make_source(probe_interval_s=0.05, probe_timeout_s=0.1)
    try:
        reports = Reports()
        req = request(f"{scheme}://127.0.0.1:{port}", deadline_s=0.5)
        source.watch(req, reports)
        (signal,) = reports.wait()
    finally:
        sock.close() if scheme == "tcp" else silent.close()
    assert signal == ReadySignal(
        req.key, 1, req.deadline_ns, SOURCE_PROBE, ok=False, reason=DEADLINE_REASON
    )
    late_s = (reports.arrived_ns[0] - req.deadline_ns) / _NS
    assert -0.005 <= late_s <= 0.1, late_s
    assert counters.get(semconv.READINESS_PROBES) >= 3


def test_cancel_stops_the_probe_and_reports_nothing(make_source: Factory) -> None:
    server = HttpServer(lambda n: 404)
    source, _ = make_source(probe_interval_s=0.03)
    try:
        reports = Reports()
        req = request(f"http://127.0.0.1:{server.port}/", deadline_s=0.5)
        source.watch(req, reports)
        deadline = time.monotonic() + 5
        while server.count() < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        source.cancel(req.key)
        time.sleep(0.05)  # an attempt in flight at the cancel may still arrive
        seen = server.count()
        time.sleep(0.6)  # past the deadline
        assert server.count() == seen
    finally:
        server.close()
    assert reports.signals == []


def test_a_new_watch_of_the_same_container_supersedes_the_old(make_source: Factory) -> None:
    listener = DelayedListener(0.0)
    source, _ = make_source(probe_interval_s=0.03, probe_timeout_s=0.1)
    try:
        reports = Reports()
        old = request("tcp://127.0.0.1:1", deadline_s=0.2, cid="same")
        new = request(f"tcp://127.0.0.1:{listener.port}", cid="same")
        new = ReadinessRequest(new.key, 2, new.info, new.started_ns, new.deadline_ns)
        source.watch(old, reports)
        source.watch(new, reports)
        reports.wait()
        time.sleep(0.4)  # past the old one's deadline
    finally:
        listener.close()
    assert [(s.attempt, s.ok) for s in reports.signals] == [(2, True)]


class _Broken(ProbeSource):
    """A source whose attempts hit a bug (stands for any unexpected exception)."""

    async def _attempt(self, target: ProbeTarget) -> tuple[int | None, str]:
        raise RuntimeError("boom")


def test_an_unexpected_error_ends_the_probe_not_ok(caplog: pytest.LogCaptureFixture) -> None:
    counters = Counters()
    source = _Broken(ReadinessConfig(), counters)
    source.start()
    try:
        reports = Reports()
        source.watch(request("tcp://127.0.0.1:1"), reports)
        (signal,) = reports.wait()
    finally:
        source.shutdown()
    assert not signal.ok
    assert signal.reason == "probe failed: boom"
    assert counters.get(semconv.PIPELINE_ERRORS) == 1
    assert "readiness probe failed" in caplog.text


def test_a_report_that_raises_does_not_stop_the_probe_thread(make_source: Factory) -> None:
    listener = DelayedListener(0.0)
    source, _ = make_source()
    try:

        def broken(signal: ReadySignal) -> None:
            raise RuntimeError("receiver bug")

        source.watch(request(f"tcp://127.0.0.1:{listener.port}"), broken)
        time.sleep(0.1)
        reports = Reports()
        source.watch(request(f"tcp://127.0.0.1:{listener.port}"), reports)
        (signal,) = reports.wait()
    finally:
        listener.close()
    assert signal.ok


# -- limits and lifecycle --------------------------------------------------------------
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
    silent = SilentListener()
    counters = Counters()
    source = ProbeSource(
        ReadinessConfig(probe_timeout_s=5.0, probe_deadline_s=10.0, max_concurrent_probes=8),
        counters,
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
