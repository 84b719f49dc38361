"""Where spans wait for the delivery engine: the storage protocol, and its memory form.

A storage holds spans as *entries* with increasing ids. The pipeline puts spans in; the
delivery engine's lanes (one per exporter) read them oldest first from their own cursor,
and the storage forgets what every lane is past. Two storages exist:

* :class:`MemoryStorage` (this module): a bounded queue in memory (replay, the demo, a
  bridge without a state directory). When it is full the *newest* spans are dropped,
  counted once per lane: the queue keeps the older spans, closer to being sent;
* :class:`~otelbridge.export.spool.StateStore`: the SQLite span spool of ``otelbridge
  run``, committed with the correlator's checkpoint; it outlives the process.

Threads: :meth:`Storage.read`, :meth:`Storage.advance` and :meth:`Storage.wait` are
called by the lanes, each on its own thread; :meth:`MemoryStorage.submit` by the pipeline's
event thread (or whoever feeds it); all of them are thread-safe.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Sequence
from typing import Protocol

from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otelbridge.core import semconv
from otelbridge.core.counters import Counters
from otelbridge.core.logutil import ThrottledLogger

_log = ThrottledLogger(logging.getLogger(__name__))

Entry = tuple[int, Span | bytes]
"""(id, span): a span as a message, or serialized (the spool keeps the bytes)."""


class Storage(Protocol):
    """What the delivery engine needs of a storage (see the module docstring)."""

    durable: bool
    """True when what is not delivered at shutdown stays for the next start."""

    def attach(self, lanes: Sequence[str]) -> None:
        """Called once, before any lane runs: the lanes that will read, by name. A
        storage that keeps progress across restarts loads each lane's cursor here."""
        ...

    def cursor(self, lane: str) -> int:
        """The id up to which ``lane`` is done (0: nothing yet)."""
        ...

    def read(self, lane: str, limit: int) -> list[Entry]:
        """Up to ``limit`` entries after ``lane``'s cursor, oldest first. They are being
        sent until :meth:`advance`: a disk budget leaves them alone meanwhile."""
        ...

    def advance(self, lane: str, upto: int) -> None:
        """``lane`` is done with every entry up to ``upto`` (delivered, or given up on and
        counted); entries every lane is done with are forgotten. Never raises."""
        ...

    def pending(self, lane: str) -> int:
        """Entries after ``lane``'s cursor."""
        ...

    def newest(self) -> int:
        """The id of the newest entry ever stored (0: none)."""
        ...

    def wait(self, lane: str, count: int, timeout_s: float, since: int | None = None) -> None:
        """Returns once ``lane`` has ``count`` entries after its cursor, after
        ``timeout_s``, or after :meth:`wake`. With ``since`` (an :meth:`epoch` read
        before the caller looked at what made it decide to wait) a wake that came in
        between ends the wait at once: it is not lost."""
        ...

    def epoch(self) -> int:
        """How many times :meth:`wake` was called."""
        ...

    def wake(self) -> None:
        """Ends every :meth:`wait` now (shutdown, a flush)."""
        ...

    def close(self) -> None:
        """Shutdown began (the memory queue accepts nothing more)."""
        ...


class MemoryStorage:
    """A bounded in-memory queue of spans (see the module docstring)."""

    durable = False

    def __init__(self, counters: Counters, *, max_size: int) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be positive, not {max_size}")
        self._counters = counters
        self._max = max_size
        self._cond = threading.Condition(threading.Lock())
        self._entries: deque[tuple[int, Span]] = deque()
        self._next_id = 1
        self._cursors: dict[str, int] = {}
        self._closed = False
        self._wakes = 0  # wake() calls: a wait ends when it changes
        # lane -> how many entries it waits for: a submit wakes it only once they are there
        self._wanted: dict[str, int] = {}

    # -- the pipeline's side ---------------------------------------------------------------
    def submit(self, spans: Sequence[Span]) -> None:
        """Queues ``spans``; what does not fit (or comes after :meth:`close`) is dropped and
        counted once per lane. Never blocks, never raises. The caller must not modify the
        spans afterwards."""
        if not spans:
            return
        with self._cond:
            room = 0 if self._closed else self._max - len(self._entries)
            taken = spans if len(spans) <= room else spans[: max(room, 0)]
            for span in taken:
                self._entries.append((self._next_id, span))
                self._next_id += 1
            lanes = max(len(self._cursors), 1)
            closed = self._closed
            if taken and any(
                self._next_id - 1 - self._cursors.get(lane, 0) >= count
                for lane, count in self._wanted.items()
            ):
                self._cond.notify_all()
        dropped = len(spans) - len(taken)
        if dropped:
            self._counters.inc(semconv.SPANS_DROPPED, dropped * lanes)
            if closed:
                _log.warning("closed", "%d spans submitted after shutdown dropped", dropped)
            else:
                _log.warning(
                    "full",
                    "export queue full (%d spans): dropped the %d newest spans",
                    self._max,
                    dropped,
                )

    def close(self) -> None:
        """Nothing is accepted any more (shutdown began)."""
        with self._cond:
            self._closed = True

    def __len__(self) -> int:
        with self._cond:
            return len(self._entries)

    # -- the lanes' side -------------------------------------------------------------------
    def attach(self, lanes: Sequence[str]) -> None:
        with self._cond:
            first = self._entries[0][0] - 1 if self._entries else self._next_id - 1
            for lane in lanes:
                self._cursors.setdefault(lane, first)

    def cursor(self, lane: str) -> int:
        with self._cond:
            return self._cursors[lane]

    def read(self, lane: str, limit: int) -> list[Entry]:
        with self._cond:
            entries = self._entries
            if not entries:
                return []
            # ids are contiguous from the first entry's: index straight to the cursor
            start = max(self._cursors[lane] + 1 - entries[0][0], 0)
            stop = min(start + limit, len(entries))
            return [entries[i] for i in range(start, stop)]

    def advance(self, lane: str, upto: int) -> None:
        with self._cond:
            self._cursors[lane] = max(self._cursors[lane], upto)
            floor = min(self._cursors.values())
            entries = self._entries
            while entries and entries[0][0] <= floor:
                entries.popleft()
            self._cond.notify_all()

    def pending(self, lane: str) -> int:
        with self._cond:
            return self._next_id - 1 - self._cursors[lane]

    def newest(self) -> int:
        with self._cond:
            return self._next_id - 1

    def wait(self, lane: str, count: int, timeout_s: float, since: int | None = None) -> None:
        with self._cond:
            wakes = self._wakes if since is None else since
            self._wanted[lane] = count
            try:
                self._cond.wait_for(
                    lambda: (
                        self._wakes != wakes or self._next_id - 1 - self._cursors[lane] >= count
                    ),
                    max(timeout_s, 0.0),
                )
            finally:
                del self._wanted[lane]

    def epoch(self) -> int:
        with self._cond:
            return self._wakes

    def wake(self) -> None:
        with self._cond:
            self._wakes += 1
            self._cond.notify_all()


__all__ = ["Entry", "MemoryStorage", "Storage"]
