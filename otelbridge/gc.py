"""The snapshot GC budget: reclaims, degraded reclaims, leaked snapshots.

(Being built: the pipeline's hooks call this interface; the implementation follows.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from otelbridge.clock import Clock
from otelbridge.config import SlaConfig
from otelbridge.model import ContainerKey, LifecycleEvent, StartupRecord
from otelbridge.stats import Counters


@dataclass(slots=True)
class ReclaimRecord:
    """One container snapshot reclaimed: from the container's deletion to
    ``/snapshot/remove``."""

    key: ContainerKey
    snapshot_key: str
    snapshotter: str
    start_ns: int
    end_ns: int
    degraded: bool


class GcTracker:
    """Follows container snapshots from exit to removal. Event thread only, except
    :meth:`figures` (any thread)."""

    def __init__(self, config: SlaConfig, clock: Clock, counters: Counters) -> None:
        self._cfg = config
        self._clock = clock
        self._counters = counters

    def process(self, event: LifecycleEvent) -> list[ReclaimRecord]:
        """Feeds one decoded event; returns the reclaims it completed."""
        return []

    def expire(self) -> None:
        """Applies the leak TTL by the clock."""

    def overlaps(self, record: StartupRecord) -> bool:
        """Whether a reclaim was in flight while this startup was being created."""
        return False

    def figures(self, namespace: str) -> dict[str, Any]:
        """GC figures of a namespace for ``/v1/sla`` (``{"gc": {...}}``)."""
        return {}
