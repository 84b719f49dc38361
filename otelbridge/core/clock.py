"""Where "now" comes from.

Event times come from containerd's envelopes and never from a clock. A clock is only
used for deadlines: idle eviction, startup timeouts, backoff, lookup waits. Stages take
a :class:`Clock` so tests advance a :class:`FakeClock` instead of sleeping.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    """A source of the current time in integer nanoseconds since the Unix epoch."""

    def now_ns(self) -> int: ...


class SystemClock:
    """The wall clock (``time.time_ns``)."""

    def now_ns(self) -> int:
        return time.time_ns()


class FakeClock:
    """A clock that moves only when told to. Thread-safe."""

    def __init__(self, start_ns: int = 1_700_000_000_000_000_000) -> None:
        self._now = start_ns
        self._lock = threading.Lock()

    def now_ns(self) -> int:
        with self._lock:
            return self._now

    def advance(self, seconds: float = 0.0, *, ns: int = 0) -> int:
        """Moves the clock forward and returns the new time."""
        with self._lock:
            self._now += int(seconds * 1_000_000_000) + ns
            return self._now

    def set(self, now_ns: int) -> None:
        with self._lock:
            self._now = now_ns


class EventTimeClock:
    """A clock that follows the newest envelope timestamp seen (replay).

    Replaying a recording must give the same result however fast it runs, so its
    deadlines are measured in event time: the pipeline calls :meth:`observe` with each
    envelope's timestamp. The clock never goes backwards.
    """

    def __init__(self) -> None:
        self._now = 0

    def observe(self, timestamp_ns: int) -> None:
        self._now = max(self._now, timestamp_ns)

    def now_ns(self) -> int:
        return self._now
