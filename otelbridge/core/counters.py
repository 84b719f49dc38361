"""The bridge's own counters (every drop, skip and retry is counted here).

Counter names are declared in :mod:`otelbridge.core.semconv`; incrementing an undeclared
name is a programming error and raises ``KeyError``.

Two ways to count, both exact:

* :meth:`Counters.inc`, from any thread (takes a lock);
* a :class:`Cell` from :meth:`Counters.cell`, for a counter that exactly one thread
  writes (the event thread's per-event counters): a plain ``cell.value += 1`` with no lock,
  which is exact because nobody else writes it, and readable from any thread.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from otelbridge.core.semconv import COUNTERS, MetricDecl


class Cell:
    """One single-writer counter. Only its owning thread may increment ``value``."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


class Counters:
    """Monotonic counters."""

    def __init__(self, declared: Iterable[MetricDecl] = COUNTERS) -> None:
        self._values: dict[str, int] = {d.name: 0 for d in declared}
        self._cells: dict[str, list[Cell]] = {}
        self._lock = threading.Lock()

    def inc(self, metric: MetricDecl, n: int = 1) -> None:
        """Adds ``n``; safe from any thread."""
        with self._lock:
            self._values[metric.name] += n

    def cell(self, metric: MetricDecl) -> Cell:
        """A new single-writer cell adding to ``metric`` (see the module docstring)."""
        if metric.name not in self._values:
            raise KeyError(metric.name)
        cell = Cell()
        with self._lock:
            self._cells.setdefault(metric.name, []).append(cell)
        return cell

    def get(self, metric: MetricDecl) -> int:
        with self._lock:
            return self._values[metric.name] + sum(
                c.value for c in self._cells.get(metric.name, ())
            )

    def snapshot(self) -> dict[str, int]:
        """A copy of every counter, zeros included."""
        with self._lock:
            out = dict(self._values)
            for name, cells in self._cells.items():
                out[name] += sum(c.value for c in cells)
            return out

    def nonzero(self) -> dict[str, int]:
        return {k: v for k, v in self.snapshot().items() if v}
