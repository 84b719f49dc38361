"""The live runner's event thread: batch windows, blocked feeding, attaching streams.

The stream is a fake over ``socket.socketpair()`` (one envelope per line written to its
other end), the pipeline a fake :class:`Turns` that records what it is fed. The runner's
clock is a :class:`FakeClock`: a batch window ends only when the test moves it and calls
``wake()``. Real time is only spent in bounded waits for a condition and short negative
checks.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from otelbridge.core.clock import FakeClock
from otelbridge.core.counters import Counters
from otelbridge.core.model import RawEnvelope, ReconcileSnapshot, SourceItem
from otelbridge.pipeline.runner import LiveRunner

WINDOW_S = 5.0
_stamps = itertools.count(1_700_000_000_000_000_000)


def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Polls ``predicate`` until true, at most ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {predicate}"
        time.sleep(0.005)


def stays_false(predicate: Callable[[], bool], duration_s: float = 0.2) -> bool:
    """Whether ``predicate`` stays false for ``duration_s``."""
    deadline = time.monotonic() + duration_s
    while time.monotonic() < deadline:
        if predicate():
            return False
        time.sleep(0.01)
    return not predicate()


class FakeStream:
    """A :class:`~otelbridge.pipeline.runner.Stream`: each line written is an envelope."""

    def __init__(self) -> None:
        self._reader, self.writer = socket.socketpair()
        self._reader.setblocking(False)
        self._buffer = b""
        self.done = threading.Event()
        self.closed = False
        self.read_count = 0  # envelopes returned by read()
        self.on_read: Callable[[], None] | None = None  # called in read() (a Get answered)

    def fileno(self) -> int:
        return self._reader.fileno()

    def read(self) -> list[RawEnvelope]:
        while True:
            try:
                chunk = self._reader.recv(65536)
            except BlockingIOError:
                break
            if not chunk:  # the other end closed: the stream is over
                self.done.set()
                break
            self._buffer += chunk
        if self.on_read is not None:
            self.on_read()
        *lines, self._buffer = self._buffer.split(b"\n")
        self.read_count += len(lines)
        return [RawEnvelope(next(_stamps), "default", "/test", "", line) for line in lines]

    def write(self, *names: str) -> None:
        self.writer.sendall(b"".join(f"{n}\n".encode() for n in names))

    def close(self) -> None:
        self.closed = True
        self._reader.close()


class FakeTurns:
    """A :class:`~otelbridge.pipeline.runner.Turns` that records what it is fed."""

    def __init__(self) -> None:
        self.fed: list[SourceItem] = []
        self.sleep_s = 30.0  # long: the runner must be woken, never time out
        self.is_prompt = False
        self.is_blocked = False
        self.block_after: bytes | None = None  # feeding this payload blocks
        self.unblock_in_turn = False
        self.idle_turns: list[bool] = []  # each turn's ``idle``
        self._lock = threading.Lock()
        self._gated = False
        self.parked = threading.Event()
        self._release = threading.Event()

    def feed(self, item: SourceItem) -> None:
        self.fed.append(item)
        if isinstance(item, RawEnvelope) and item.payload == self.block_after:
            self.is_blocked = True

    def turn(self, idle: bool, now_ns: int) -> float:
        self.idle_turns.append(idle)
        with self._lock:
            gated = self._gated
        if gated:
            self.parked.set()
            self._release.wait(5)
        if self.unblock_in_turn:
            self.is_blocked = False
        return self.sleep_s

    def prompt(self) -> bool:
        return self.is_prompt

    def blocked(self) -> bool:
        return self.is_blocked

    def close_gate(self) -> None:
        """The next turn waits in :meth:`turn` (``parked`` set) until :meth:`open_gate`."""
        with self._lock:
            self._gated = True
            self.parked.clear()
            self._release.clear()

    def open_gate(self) -> None:
        with self._lock:
            self._gated = False
            self._release.set()

    def names(self) -> list[str]:
        return [i.payload.decode() for i in list(self.fed) if isinstance(i, RawEnvelope)]


class AttachingSource:
    """Attaches its stream, then waits for the stop."""

    def __init__(self, runner: LiveRunner, stream: FakeStream) -> None:
        self.runner = runner
        self.stream = stream

    def run(self, sink: Callable[[SourceItem], None], stop: threading.Event) -> None:
        self.runner.attach(self.stream)
        stop.wait()


class Harness:
    def __init__(self) -> None:
        self.turns = FakeTurns()
        self.clock = FakeClock()
        self.stream = FakeStream()
        self.streams = [self.stream]
        self.attached: list[object] = []
        self.runner: LiveRunner | None = None

    def start(self, batch_window_s: float = 0.0) -> LiveRunner:
        """Starts a runner whose source attaches ``stream``; returns once it is attached."""
        runner = LiveRunner(
            self.turns, Counters(), self.clock, queue_size=16, batch_window_s=batch_window_s
        )
        runner.on_attach.append(self.attached.append)
        self.runner = runner
        runner.start(AttachingSource(runner, self.stream))
        wait_until(lambda: self.stream in self.attached)
        return runner

    def new_stream(self) -> FakeStream:
        stream = FakeStream()
        self.streams.append(stream)
        return stream

    def stop(self) -> None:
        if self.runner is not None:
            assert self.runner.join(5)
            self.runner.drain()
        for stream in self.streams:
            stream.writer.close()
            if not stream.closed:
                stream.close()


@pytest.fixture
def h() -> Iterator[Harness]:
    harness = Harness()
    yield harness
    harness.stop()


def test_events_written_before_the_first_read_are_fed_in_order(h: Harness) -> None:
    """Envelopes waiting on the socket at attach time are fed in containerd's order."""
    h.stream.write("a", "b")
    h.stream.write("c")
    h.start(batch_window_s=WINDOW_S)
    wait_until(lambda: len(h.turns.fed) == 3)
    assert h.turns.names() == ["a", "b", "c"]
    stamps = [i.timestamp_ns for i in h.turns.fed if isinstance(i, RawEnvelope)]
    assert stamps == sorted(set(stamps))


def test_after_a_read_the_stream_is_held_until_the_window_ends(h: Harness) -> None:
    """A later event waits out the batch window (a wake-up alone does not end it)."""
    h.stream.write("a")
    runner = h.start(batch_window_s=WINDOW_S)
    wait_until(lambda: h.turns.names() == ["a"])
    h.stream.write("b")
    runner.wake()
    assert stays_false(lambda: len(h.turns.fed) > 1)
    assert h.stream.read_count == 1
    h.clock.advance(WINDOW_S + 0.001)
    runner.wake()
    wait_until(lambda: h.turns.names() == ["a", "b"])


def test_a_prompt_chain_reads_the_next_event_at_once(h: Harness) -> None:
    """With ``prompt()`` true there is no batch window: the next event is fed as it comes."""
    h.turns.is_prompt = True
    h.stream.write("a")
    h.start(batch_window_s=WINDOW_S)
    wait_until(lambda: h.turns.names() == ["a"])
    h.stream.write("b")
    wait_until(lambda: h.turns.names() == ["a", "b"])


def test_a_blocked_chain_is_fed_the_rest_once_unblocked_in_order(h: Harness) -> None:
    """Envelopes read after a blocking one wait in ``pending``; a wake-up feeds them all."""
    h.turns.block_after = b"a"
    h.stream.write("a", "b", "c")
    runner = h.start()
    wait_until(lambda: h.stream.read_count == 3)
    assert stays_false(lambda: len(h.turns.fed) > 1)
    assert h.turns.names() == ["a"]
    h.stream.write("d")  # read while blocked, queued behind the others
    wait_until(lambda: h.stream.read_count == 4)
    h.turns.is_blocked = False
    runner.wake()
    wait_until(lambda: len(h.turns.fed) == 4)
    assert h.turns.names() == ["a", "b", "c", "d"]


def test_a_turn_that_unblocks_the_chain_goes_on_without_a_wake_up(h: Harness) -> None:
    """When the turn itself unblocks, the pending envelopes are fed at once (no sleep)."""
    h.turns.block_after = b"a"
    h.turns.unblock_in_turn = True
    h.stream.write("a", "b", "c")
    h.start()
    wait_until(lambda: h.turns.names() == ["a", "b", "c"])


def test_envelopes_pending_at_stop_are_fed_not_lost(h: Harness) -> None:
    """Stopping a blocked runner feeds what it had read; the stream is then closed."""
    h.turns.block_after = b"a"
    h.stream.write("a", "b", "c")
    runner = h.start()
    wait_until(lambda: h.stream.read_count == 3 and len(h.turns.fed) == 1)
    assert runner.join(5)
    runner.drain()
    assert h.turns.names() == ["a", "b", "c"]
    assert h.stream.closed
    assert h.attached == [h.stream, None]


def test_a_clock_stepped_back_does_not_prolong_the_hold(h: Harness) -> None:
    """A clock set back an hour during a hold: the next wake-up reads the stream."""
    h.stream.write("a")
    runner = h.start(batch_window_s=WINDOW_S)
    wait_until(lambda: h.turns.names() == ["a"])
    h.stream.write("b")
    h.clock.set(h.clock.now_ns() - 3600 * 1_000_000_000)
    runner.wake()
    wait_until(lambda: h.turns.names() == ["a", "b"])


def test_attaching_a_second_stream_closes_the_first(h: Harness) -> None:
    """The hooks see the first stream, ``None`` as it is detached, the second, then ``None``."""
    runner = h.start()
    first, second = h.stream, h.new_stream()
    runner.attach(second)
    wait_until(lambda: second in h.attached)
    assert first.closed
    assert h.attached == [first, None, second]
    second.write("x")
    wait_until(lambda: h.turns.names() == ["x"])
    assert runner.join(5)
    assert h.attached == [first, None, second, None]
    assert second.closed


def test_a_stream_that_is_over_is_detached_and_closed(h: Harness) -> None:
    """The last envelopes of an ended stream are fed, then it is closed and the hooks told."""
    h.start()
    h.stream.write("last")
    h.stream.writer.close()  # EOF: read() sets done
    wait_until(lambda: h.stream.closed)
    assert h.turns.names() == ["last"]
    assert h.attached == [h.stream, None]


def test_offered_items_are_fed_before_the_streams_envelopes_of_the_same_iteration(
    h: Harness,
) -> None:
    """A queued listing and an envelope ready together: the listing is fed first."""
    runner = h.start()
    h.turns.close_gate()
    runner.wake()
    assert h.turns.parked.wait(5)  # the event thread is in its turn
    snapshot = ReconcileSnapshot("test", 0, 0, (), (), {})
    h.stream.write("e")
    runner.offer(snapshot)
    h.turns.open_gate()
    wait_until(lambda: len(h.turns.fed) == 2)
    assert h.turns.fed[0] is snapshot
    assert h.turns.names() == ["e"]


def test_a_wake_up_from_the_event_thread_makes_that_turn_idle_without_another_loop(
    h: Harness,
) -> None:
    """A lookup answered on the event thread's own connection calls ``wake()`` there: the
    turn after that read is an idle one (held startups are released), and no extra turn
    follows (no eventfd write, no second wake-up)."""
    h.stream.write("a")
    runner = h.start()
    wait_until(lambda: h.turns.names() == ["a"])
    turns_before = len(h.turns.idle_turns)
    h.stream.on_read = runner.wake
    h.stream.write("b")
    wait_until(lambda: h.turns.names() == ["a", "b"])
    wait_until(lambda: len(h.turns.idle_turns) > turns_before)
    assert h.turns.idle_turns[turns_before] is True  # fed, yet idle: a result arrived
    assert stays_false(lambda: len(h.turns.idle_turns) > turns_before + 1)


def test_while_the_stream_is_held_the_turns_deadlines_wait_for_the_window_end(
    h: Harness,
) -> None:
    """Deadlines due within a batch window (checks, the next commit) are taken at its end,
    in the same wake-up as the read, not each in a wake-up of their own."""
    h.turns.sleep_s = 0.01  # the turn asks to run again in 10 ms
    h.stream.write("a")
    h.start(batch_window_s=WINDOW_S)
    wait_until(lambda: h.turns.names() == ["a"])
    held_turns = len(h.turns.idle_turns)
    assert stays_false(lambda: len(h.turns.idle_turns) > held_turns + 1)
