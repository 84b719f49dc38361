"""Logging that stays readable under a flood of bad input.

A misbehaving client can publish thousands of malformed events a second, and a collector
outage fails every batch for minutes; a line for each would drown the log and cost more
than the events. Repeated messages are therefore throttled by time: the counters in
:mod:`otelbridge.core.counters` keep the exact totals, the log says what happens and how often.

* :class:`LogThrottle`: one kind of message at most once per interval, counting the rest;
* :class:`ThrottledLogger`: a logger whose messages are throttled per *kind*: the first
  few of a kind go through at once, then one per interval with the number suppressed.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from otelbridge.core.clock import Clock, SystemClock


class LogThrottle:
    """Lets a repeated message through at most once per ``interval_s``. Thread-safe."""

    def __init__(self, interval_s: float = 10.0, clock: Clock | None = None) -> None:
        self._interval_ns = int(interval_s * 1_000_000_000)
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._lock = threading.Lock()
        self._last_ns: int | None = None
        self._suppressed = 0

    def ready(self) -> int | None:
        """Records one occurrence. Returns ``None`` to stay quiet, or the number of
        occurrences since the last line (this one included) when it is time to log."""
        now = self._clock.now_ns()
        with self._lock:
            self._suppressed += 1
            if self._last_ns is not None and now - self._last_ns < self._interval_ns:
                return None
            self._last_ns = now
            n, self._suppressed = self._suppressed, 0
            return n

    def mark(self) -> None:
        """A line was logged anyway: the interval restarts, nothing is held back."""
        now = self._clock.now_ns()
        with self._lock:
            self._last_ns = now
            self._suppressed = 0


class ThrottledLogger:
    """Wraps a logger: per kind of message, the first ``burst`` go through, then at most
    one per ``interval_s`` saying how many were suppressed. Thread-safe."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        burst: int = 10,
        interval_s: float = 10.0,
        clock: Clock | None = None,
    ) -> None:
        self._logger = logger
        self._burst = burst
        self._interval_s = interval_s
        self._clock = clock
        self._seen: dict[str, int] = {}
        self._throttles: dict[str, LogThrottle] = {}
        self._lock = threading.Lock()

    def log(self, level: int, kind: str, msg: str, *args: Any, exc_info: bool = False) -> None:
        """Logs ``msg % args`` unless messages of this ``kind`` are being throttled."""
        with self._lock:
            seen = self._seen.get(kind, 0) + 1
            self._seen[kind] = seen
            throttle = self._throttles.get(kind)
            if throttle is None:
                throttle = self._throttles[kind] = LogThrottle(self._interval_s, self._clock)
        if seen <= self._burst:
            throttle.mark()
        else:
            n = throttle.ready()
            if n is None:
                return
            if n > 1:
                msg += " (%d similar messages since the last one)"
                args = (*args, n - 1)
        self._logger.log(level, msg, *args, exc_info=exc_info)

    def warning(self, kind: str, msg: str, *args: Any) -> None:
        self.log(logging.WARNING, kind, msg, *args)

    def info(self, kind: str, msg: str, *args: Any) -> None:
        self.log(logging.INFO, kind, msg, *args)


class JsonFormatter(logging.Formatter):
    """One JSON object per line (``OTELBRIDGE_LOG_FORMAT=json``): ``time`` (RFC 3339,
    UTC), ``level``, ``logger``, ``message``, and ``exception`` when there is one, so a
    log pipeline (Loki, a Collector's filelog receiver) reads fields, not text."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


LOG_FORMATS = ("text", "json")
"""The values of ``--log-format`` / ``OTELBRIDGE_LOG_FORMAT``."""
