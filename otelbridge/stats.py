"""The bridge's own counters (every drop, skip and retry is counted here).

Counter names are declared in :mod:`otelbridge.emit.semconv`; incrementing an undeclared
name is a programming error and raises ``KeyError`` in tests as in production.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from otelbridge.emit.semconv import COUNTERS, MetricDecl


class Counters:
    """Monotonic counters, safe to increment from any thread."""

    def __init__(self, declared: Iterable[MetricDecl] = COUNTERS) -> None:
        self._values: dict[str, int] = {d.name: 0 for d in declared}
        self._lock = threading.Lock()

    def inc(self, metric: MetricDecl, n: int = 1) -> None:
        with self._lock:
            self._values[metric.name] += n

    def get(self, metric: MetricDecl) -> int:
        with self._lock:
            return self._values[metric.name]

    def snapshot(self) -> dict[str, int]:
        """A copy of every counter, zeros included."""
        with self._lock:
            return dict(self._values)

    def nonzero(self) -> dict[str, int]:
        with self._lock:
            return {k: v for k, v in self._values.items() if v}
