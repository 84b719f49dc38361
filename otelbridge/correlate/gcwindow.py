"""The GC budget's rolling window: what ``/v1/sla`` says of reclaims, leaks and overlaps.

Per namespace, the samples of the SLA window (``sla.window_s``, by the clock): reclaims
(duration, degraded or not), leak reports, and startups (whether they overlapped a
reclaim, their shim_launch_time), at most :data:`MAX_SAMPLES` each; and the containers
whose snapshot is leaked now. Fed by :class:`~otelbridge.correlate.gc.GcTracker` on the
event thread, read by :meth:`GcWindows.figures` from any thread (the status API): every
method takes the one lock.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

from otelbridge import sla
from otelbridge.core.clock import Clock
from otelbridge.core.config import SlaConfig
from otelbridge.core.model import ContainerKey

_NS = 1_000_000_000
#: Samples per namespace and window (reclaims, leaks, startups): bounds memory under a flood.
MAX_SAMPLES = 20_000
#: How many leaked container ids ``figures`` lists per namespace.
MAX_LEAKED_LISTED = 20


class _Window:
    """One namespace's samples (guarded by the windows' lock)."""

    __slots__ = ("leaks", "reclaims", "startups")

    def __init__(self) -> None:
        self.reclaims: deque[tuple[int, float, bool]] = deque(maxlen=MAX_SAMPLES)
        """(clock time, duration s, counted as degraded)"""
        self.leaks: deque[int] = deque(maxlen=MAX_SAMPLES)
        """clock time of each leak report"""
        self.startups: deque[tuple[int, bool, float | None]] = deque(maxlen=MAX_SAMPLES)
        """(clock time, overlapped a reclaim, shim_launch_time s or None)"""

    def trim(self, cutoff_ns: int) -> None:
        for samples in (self.reclaims, self.startups):
            while samples and samples[0][0] <= cutoff_ns:
                samples.popleft()
        leaks = self.leaks
        while leaks and leaks[0] <= cutoff_ns:
            leaks.popleft()


class GcWindows:
    """The rolling window of every namespace (see the module docstring)."""

    def __init__(self, config: SlaConfig, clock: Clock) -> None:
        self._cfg = config
        self._clock = clock
        self._window_ns = int(config.window_s * _NS)
        self._lock = threading.Lock()
        self._windows: dict[str, _Window] = {}
        self._leaked: dict[str, dict[str, int]] = {}  # namespace -> id -> leaked at (clock)

    def _window(self, namespace: str) -> _Window:
        window = self._windows.get(namespace)
        if window is None:
            window = self._windows[namespace] = _Window()
        return window

    def reclaimed(self, namespace: str, now_ns: int, duration_s: float, degraded: bool) -> None:
        with self._lock:
            self._window(namespace).reclaims.append((now_ns, duration_s, degraded))

    def leaked(self, key: ContainerKey, now_ns: int) -> None:
        with self._lock:
            self._leaked.setdefault(key.namespace, {})[key.id] = now_ns
            self._window(key.namespace).leaks.append(now_ns)

    def leak_cleared(self, key: ContainerKey) -> None:
        with self._lock:
            ids_ = self._leaked.get(key.namespace)
            if ids_ is not None:
                ids_.pop(key.id, None)
                if not ids_:
                    del self._leaked[key.namespace]

    def started(self, namespace: str, now_ns: int, overlapped: bool, shim_s: float | None) -> None:
        with self._lock:
            self._window(namespace).startups.append((now_ns, overlapped, shim_s))

    def figures(self, namespace: str) -> dict[str, Any]:
        """The GC figures of ``namespace`` over the window (JSON-ready); ``leaked_now``
        lists at most :data:`MAX_LEAKED_LISTED` containers, sorted."""
        now = self._clock.now_ns()
        with self._lock:
            window = self._windows.get(namespace)
            if window is not None:
                window.trim(now - self._window_ns)
                reclaims = list(window.reclaims)
                leaks = len(window.leaks)
                startups = list(window.startups)
            else:
                reclaims, leaks, startups = [], 0, []
            leaked_now = sorted(self._leaked.get(namespace, {}))
        durations = [d for _, d, _ in reclaims]
        overlapped = [s for _, o, s in startups if o and s is not None]
        others = [s for _, o, s in startups if not o and s is not None]
        return {
            "reclaims": len(reclaims),
            "degraded": sum(1 for _, _, counted in reclaims if counted),
            "reclaim_p99_s": sla.p99(durations) if durations else None,
            "reclaim_budget_s": self._cfg.gc_reclaim_max_s,
            "leaked": leaks,
            "leaked_now": leaked_now[:MAX_LEAKED_LISTED],
            "leaked_now_total": len(leaked_now),
            "leak_ttl_s": self._cfg.gc_leak_ttl_s,
            "overlapped_startups": sum(1 for _, o, _ in startups if o),
            "create_p50_s_overlapped": sla.p50(overlapped) if overlapped else None,
            "create_p50_s_other": sla.p50(others) if others else None,
        }
