"""A waiting export lane is woken only once the rows it waits for are there (issue 12).

Both storages: the SQLite spool (spans visible at ``commit``) and the memory queue (at
``submit``). The lane's wait runs on a thread of its own; the bounds are generous.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otelbridge.core.counters import Counters
from otelbridge.export.spool import StateStore
from otelbridge.export.storage import MemoryStorage

Storage = StateStore | MemoryStorage


def span(i: int) -> Span:
    return Span(trace_id=(i + 1).to_bytes(16, "big"), span_id=(i + 1).to_bytes(8, "big"))


def put(storage: Storage, n: int) -> None:
    """What the pipeline does: the spool takes spans at its commit, memory at once."""
    storage.submit([span(i) for i in range(n)])
    if isinstance(storage, StateStore):
        storage.commit([], None)


class Waiter:
    """``storage.wait("lane", count, timeout_s)`` on a thread; ``ended`` once it returns."""

    def __init__(self, storage: Storage, count: int, timeout_s: float = 5.0) -> None:
        self.ended = threading.Event()
        self._storage = storage
        self._args = ("lane", count, timeout_s)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._storage.wait(*self._args)
        finally:
            if isinstance(self._storage, StateStore):
                self._storage.close()  # this thread's connection
            self.ended.set()

    def join(self) -> None:
        self._thread.join(10)


def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {predicate}"
        time.sleep(0.005)


class CountingCondition(threading.Condition):
    """A condition that counts how often a waiter was woken (each one a thread switch)."""

    def __init__(self) -> None:
        super().__init__(threading.Lock())
        self.wakeups = 0

    def wait(self, timeout: float | None = None) -> bool:
        woken = super().wait(timeout)
        self.wakeups += woken
        return woken


def waiting(storage: Storage) -> bool:
    """Whether the lane has registered its wait (``_wanted``: what a commit checks)."""
    return "lane" in storage._wanted


def wakeups(storage: Storage) -> int:
    cond = storage._cond
    assert isinstance(cond, CountingCondition)
    return cond.wakeups


@pytest.fixture(params=["spool", "memory"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Storage]:
    made: Storage
    if request.param == "spool":
        made = StateStore(tmp_path / "state", Counters(), max_spool_bytes=1 << 30)
    else:
        made = MemoryStorage(Counters(), max_size=1000)
    made.attach(["lane"])
    made._cond = CountingCondition()  # nothing uses it yet: safe to swap
    yield made
    made.wake()
    made.close()


def test_the_wait_ends_only_once_all_the_rows_it_waits_for_are_there(storage: Storage) -> None:
    """Waiting for 3: one row, then two, leave it waiting; the third ends it promptly."""
    waiter = Waiter(storage, 3, timeout_s=30.0)
    wait_until(lambda: waiting(storage))
    put(storage, 1)
    assert not waiter.ended.wait(0.2)
    put(storage, 1)
    assert not waiter.ended.wait(0.2)
    assert wakeups(storage) == 0  # not even woken to find too few rows
    started = time.monotonic()
    put(storage, 1)
    assert waiter.ended.wait(2.0)
    assert time.monotonic() - started < 2.0
    waiter.join()


def test_a_batch_bringing_the_rows_at_once_ends_the_wait(storage: Storage) -> None:
    """Three rows in one commit (or submit) end a wait for three."""
    waiter = Waiter(storage, 3, timeout_s=30.0)
    wait_until(lambda: waiting(storage))
    put(storage, 3)
    assert waiter.ended.wait(2.0)
    waiter.join()


def test_wake_ends_a_wait_whatever_it_waits_for(storage: Storage) -> None:
    """``wake()`` (a flush, a shutdown) ends a wait with fewer rows than wanted."""
    waiter = Waiter(storage, 3, timeout_s=30.0)
    wait_until(lambda: waiting(storage))
    put(storage, 1)
    assert not waiter.ended.wait(0.2)
    storage.wake()
    assert waiter.ended.wait(2.0)
    waiter.join()


def test_rows_already_there_end_the_wait_at_once(storage: Storage) -> None:
    """A lane that has its rows already does not wait at all."""
    put(storage, 3)
    waiter = Waiter(storage, 3, timeout_s=30.0)
    assert waiter.ended.wait(2.0)
    waiter.join()


def test_without_rows_or_wake_the_wait_ends_at_its_timeout(storage: Storage) -> None:
    """Two rows of three wanted: the wait lasts its (short) timeout, then returns."""
    put(storage, 2)
    started = time.monotonic()
    waiter = Waiter(storage, 3, timeout_s=0.3)
    assert waiter.ended.wait(5.0)
    assert time.monotonic() - started >= 0.25
    waiter.join()
