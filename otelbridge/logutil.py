"""Logging that stays readable under a flood of bad input.

A misbehaving client can publish thousands of malformed events a second; logging each
would drown the log and cost more than the events. :class:`ThrottledLogger` logs the
first occurrences of each kind of message, then one in every ``every`` with the number
suppressed; the counters in :mod:`otelbridge.stats` keep the exact totals.
"""

from __future__ import annotations

import logging
import threading
from typing import Any


class ThrottledLogger:
    def __init__(self, logger: logging.Logger, *, first: int = 10, every: int = 1000) -> None:
        self._logger = logger
        self._first = first
        self._every = every
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()

    def _should_log(self, kind: str) -> tuple[bool, int]:
        with self._lock:
            n = self._seen.get(kind, 0) + 1
            self._seen[kind] = n
        if n <= self._first:
            return True, 0
        if (n - self._first) % self._every == 0:
            return True, self._every - 1
        return False, 0

    def log(self, level: int, kind: str, msg: str, *args: Any, exc_info: bool = False) -> None:
        """Logs ``msg % args`` unless messages of this ``kind`` are being throttled."""
        ok, suppressed = self._should_log(kind)
        if not ok:
            return
        if suppressed:
            msg += " (%d similar messages suppressed)"
            args = (*args, suppressed)
        self._logger.log(level, msg, *args, exc_info=exc_info)

    def warning(self, kind: str, msg: str, *args: Any) -> None:
        self.log(logging.WARNING, kind, msg, *args)

    def info(self, kind: str, msg: str, *args: Any) -> None:
        self.log(logging.INFO, kind, msg, *args)
