"""The live source: what it says and does when containerd cannot be reached.

A fake client stands in for containerd, and a fake stop event for time: the source
sleeps only on its stop event (``stop.wait``), so :class:`FakeStop` records each delay
and moves a fake clock instead of sleeping.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from otelbridge.core import semconv
from otelbridge.core.backoff import Backoff
from otelbridge.core.clock import FakeClock
from otelbridge.core.config import SourceConfig
from otelbridge.core.counters import Counters
from otelbridge.core.errors import (
    ContainerdMisconfigured,
    ContainerdUnavailable,
    MethodNotAllowed,
)
from otelbridge.core.model import (
    ContainerInfo,
    RawEnvelope,
    ReconcileSnapshot,
    SourceItem,
    TaskInfo,
    TaskState,
)
from otelbridge.source.live import LiveSource

CLOCK_START_NS = 1_700_000_000_000_000_000
GRPC_NOISE = (
    "Version: UNAVAILABLE: failed to connect to all addresses; last error: UNKNOWN: "
    "unix:/x.sock: connect failed: No such file or directory"
)


class FakeStop(threading.Event):
    """A stop event whose timed waits do not sleep: they advance the clock, and are
    recorded. ``on_wait`` may set the event (or change the fake containerd)."""

    def __init__(self, clock: FakeClock, on_wait: Callable[[int], None] | None = None) -> None:
        super().__init__()
        self.clock = clock
        self.waits: list[float] = []
        self.on_wait = on_wait

    def wait(self, timeout: float | None = None) -> bool:
        if timeout is None:  # the source's watcher thread: really wait
            return super().wait()
        self.waits.append(timeout)
        self.clock.advance(timeout)
        if self.on_wait is not None:
            self.on_wait(len(self.waits))
        return self.is_set()


class FakeSubscription:
    def __init__(self, envelopes: Sequence[RawEnvelope], stop: threading.Event) -> None:
        self._envelopes = envelopes
        self._stop = stop
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __iter__(self) -> Iterator[RawEnvelope]:
        yield from self._envelopes
        if not self._stop.is_set():
            raise ContainerdUnavailable("event stream: ended by containerd")


class FakeContainerd:
    """Answers like containerd once ``down`` is 0; until then every Version call raises
    ``error`` and counts ``down`` down."""

    def __init__(self, address: str, stop: threading.Event, *, down: int = 0) -> None:
        self.address = address
        self.stop = stop
        self.down = down
        self.error: Exception = ContainerdUnavailable(GRPC_NOISE)
        self.envelopes: list[RawEnvelope] = []
        self.containers = [ContainerInfo("default", "c1")]
        self.subscriptions: list[FakeSubscription] = []

    def version(self, timeout_s: float | None = None) -> str:
        if self.down:
            self.down -= 1
            raise self.error
        return "1.6.20"

    def subscribe(self, filters: Sequence[str] = ()) -> FakeSubscription:
        subscription = FakeSubscription(self.envelopes, self.stop)
        self.subscriptions.append(subscription)
        return subscription

    def list_namespaces(self) -> list[str]:
        return ["default"]

    def list_containers(self, namespace: str) -> list[ContainerInfo]:
        return list(self.containers)

    def list_tasks(self, namespace: str) -> list[TaskInfo]:
        return [TaskInfo(namespace, "c1", 42, TaskState.RUNNING)]


CONFIG = SourceConfig(
    reconnect_initial_s=0.2, reconnect_max_s=2.0, subscribe_settle_s=0, relist_interval_s=0
)


def make_source(
    containerd: FakeContainerd, clock: FakeClock, counters: Counters | None = None
) -> LiveSource:
    # no jitter: the delays are exact
    backoff = Backoff(initial_s=0.2, max_s=2.0, rng=lambda: 0.0)
    return LiveSource(containerd, CONFIG, counters or Counters(), clock, backoff=backoff)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(CLOCK_START_NS)


def run_until(
    source: LiveSource, stop: FakeStop, until: Callable[[SourceItem], bool]
) -> list[SourceItem]:
    items: list[SourceItem] = []

    def sink(item: SourceItem) -> None:
        items.append(item)
        if until(item):
            stop.set()

    try:
        source.run(sink, stop)
    finally:
        stop.set()  # releases the source's watcher thread
    return items


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_missing_socket_is_said_once_then_retried_quietly_until_containerd_appears(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="otelbridge.source.live")
    address = str(tmp_path / "containerd.sock")  # nothing there
    stop = FakeStop(clock)
    containerd = FakeContainerd(address, stop, down=8)
    counters = Counters()
    source = make_source(containerd, clock, counters)
    problems: list[str | None] = []
    stop.on_wait = lambda n: problems.append(source.problem)

    items = run_until(source, stop, lambda item: isinstance(item, ReconcileSnapshot))

    assert warnings(caplog) == [
        f"containerd socket {address} does not exist: is containerd running, and is "
        "--address / CONTAINERD_ADDRESS right? waiting for it"
    ]
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(debug) == 7 and GRPC_NOISE in debug[0]  # the detail, for whoever wants it
    assert counters.get(semconv.SOURCE_CONNECT_FAILURES) == 8
    assert stop.waits == [0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0, 2.0]
    assert problems == [warnings(caplog)[0]] * 8
    # containerd appeared: listed, and no problem any more
    assert isinstance(items[0], ReconcileSnapshot) and items[0].reason == "connect"
    assert source.problem is None


def test_a_lasting_outage_is_recalled_at_most_once_a_minute(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    stop = FakeStop(clock)
    containerd = FakeContainerd(str(tmp_path / "c.sock"), stop, down=10_000)
    stop.on_wait = lambda n: stop.set() if n == 200 else None  # 200 attempts, ~400 s
    source = make_source(containerd, clock)
    run_until(source, stop, lambda item: False)
    said = warnings(caplog)
    assert said[0].startswith("containerd socket")
    reminders = said[1:]
    elapsed_s = sum(stop.waits)
    assert 390 < elapsed_s < 400
    assert len(reminders) == 6  # one a minute
    assert all(r.startswith("still waiting for containerd (") for r in reminders)


def test_a_changed_problem_is_said_anew(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    address = tmp_path / "c.sock"
    stop = FakeStop(clock)
    containerd = FakeContainerd(str(address), stop, down=4)

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)

    def socket_appears(n: int) -> None:
        if n == 2:  # containerd bound its socket but does not answer yet
            listener.bind(str(address))
            listener.listen()

    stop.on_wait = socket_appears
    source = make_source(containerd, clock)
    run_until(source, stop, lambda item: isinstance(item, ReconcileSnapshot))
    said = warnings(caplog)
    assert len(said) == 2
    assert "does not exist" in said[0]
    assert said[1].startswith(f"containerd at {address} is not usable yet")
    listener.close()


def test_a_server_that_is_not_containerd_ends_the_source_with_what_to_do(
    tmp_path: Path, clock: FakeClock
) -> None:
    stop = FakeStop(clock)
    containerd = FakeContainerd(str(tmp_path / "c.sock"), stop, down=1)
    containerd.error = ContainerdMisconfigured("Version: UNIMPLEMENTED: Method not found!")
    counters = Counters()
    source = make_source(containerd, clock, counters)
    with pytest.raises(ContainerdMisconfigured, match="answers gRPC but is not containerd"):
        run_until(source, stop, lambda item: False)
    assert stop.waits == []  # not retried
    assert counters.get(semconv.SOURCE_CONNECT_FAILURES) == 1
    assert source.problem is not None and "is not containerd" in source.problem


def test_a_path_that_is_not_a_socket_ends_the_source(tmp_path: Path, clock: FakeClock) -> None:
    (tmp_path / "c.sock").write_text("not a socket")
    stop = FakeStop(clock)
    source = make_source(FakeContainerd(str(tmp_path / "c.sock"), stop, down=1), clock)
    with pytest.raises(ContainerdMisconfigured, match=r"c\.sock is not containerd's socket"):
        run_until(source, stop, lambda item: False)


def test_a_refused_call_of_our_own_is_a_bug_and_not_retried(
    tmp_path: Path, clock: FakeClock
) -> None:
    stop = FakeStop(clock)
    containerd = FakeContainerd(str(tmp_path / "c.sock"), stop, down=1)
    containerd.error = MethodNotAllowed("not on the allow-list")
    with pytest.raises(MethodNotAllowed):
        run_until(make_source(containerd, clock), stop, lambda item: False)


def test_an_ended_stream_is_reconnected_with_a_fresh_backoff_and_listed_again(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    stop = FakeStop(clock)
    containerd = FakeContainerd(str(tmp_path / "c.sock"), stop)
    envelope = RawEnvelope(CLOCK_START_NS + 5, "default", "/tasks/start", "", b"")
    containerd.envelopes = [envelope]
    counters = Counters()
    source = make_source(containerd, clock, counters)

    def after_first_session(n: int) -> None:
        if n == 1:  # containerd restarts: two failed attempts, then it is back
            containerd.down = 2
            containerd.envelopes = []

    stop.on_wait = after_first_session
    snapshots = 0

    def second_listing(item: SourceItem) -> bool:
        nonlocal snapshots
        snapshots += isinstance(item, ReconcileSnapshot)
        return snapshots == 2

    items = run_until(source, stop, second_listing)
    assert [type(i).__name__ for i in items] == [
        "ReconcileSnapshot",
        "RawEnvelope",
        "ReconcileSnapshot",
    ]
    first, _, again = items
    assert isinstance(first, ReconcileSnapshot) and isinstance(again, ReconcileSnapshot)
    assert first.reason == "connect" and again.reason == "reconnect"
    assert again.since_ns == envelope.timestamp_ns  # the horizon is the newest event
    assert counters.get(semconv.SOURCE_RECONNECTS) == 1
    assert counters.get(semconv.SOURCE_CONNECT_FAILURES) == 2
    assert stop.waits == [0.2, 0.2, 0.4]  # the pause after the stream, then a fresh backoff
    said = warnings(caplog)
    assert said[0].startswith("containerd event stream ended")
    assert "is gone: containerd stopped or is restarting" in said[1]
    assert all(s.cancelled for s in containerd.subscriptions)


def test_stop_during_a_backoff_returns_at_once(tmp_path: Path, clock: FakeClock) -> None:
    stop = FakeStop(clock)
    stop.on_wait = lambda n: stop.set()
    source = make_source(FakeContainerd(str(tmp_path / "c.sock"), stop, down=100), clock)
    run_until(source, stop, lambda item: False)
    assert stop.waits == [0.2]


def test_the_problem_of_an_ended_stream_is_exposed_until_relisted(
    tmp_path: Path, clock: FakeClock
) -> None:
    stop = FakeStop(clock)
    containerd = FakeContainerd(str(tmp_path / "c.sock"), stop)
    source = make_source(containerd, clock)
    seen: list[str | None] = []

    def record(n: int) -> None:
        seen.append(source.problem)
        stop.set()

    stop.on_wait = record
    run_until(source, stop, lambda item: False)
    assert seen[0] is not None and seen[0].startswith("the event stream from containerd ended")


def test_a_namespace_containerd_does_not_have_is_said_once(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A new user's typo in --namespace was accepted silently: nothing was ever seen."""
    stop = FakeStop(clock)
    containerd = FakeContainerd(str(tmp_path / "c.sock"), stop)
    config = dataclasses.replace(CONFIG, namespaces=("defualt",))
    source = LiveSource(containerd, config, Counters(), clock)
    run_until(source, stop, lambda item: isinstance(item, ReconcileSnapshot))
    [said] = [w for w in warnings(caplog) if "has no namespace" in w]
    assert "'defualt'" in said and "(it has: default)" in said
