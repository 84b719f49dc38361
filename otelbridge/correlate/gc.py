"""The snapshot GC budget: reclaims, degraded reclaims, leaked snapshots, overlaps.

PRODUCT.md section 2: a container's snapshot is cleaned up within ``sla.gc_leak_ttl_s``
(10 min) after the container exited, else a leaked snapshot is reported; a reclaim slower
than ``sla.gc_reclaim_max_s`` (2 s) is degraded; and reclaims must not block the next
create, which is measured, not assumed.

What the events show (TESTBED.md, checked on containerd 1.6): ``ctr run --rm`` publishes
``/tasks/exit`` -> ``/tasks/delete`` -> ``/snapshot/remove`` -> ``/containers/delete``, and
a container's snapshot key is its id (``ctr`` and the CRI plugin both use the id). So,
per container (namespace, id), :class:`GcTracker`:

* remembers the **exit** (``/tasks/exit`` of the init process) and the **deletion**:
  ``/tasks/delete`` of the init process (the container is done with its rootfs), or
  ``/containers/delete`` when no task delete was seen;
* on ``/snapshot/remove`` of the same key in the same namespace, completes a
  :class:`ReclaimRecord` from the deletion to the remove (both envelope times), or from
  the exit when the deletion was not seen; a remove with neither is not measured (an
  image layer, a snapshot made by hand, a container the bridge never saw stop);
* reports a **leak** when the snapshot is still not removed ``gc_leak_ttl_s`` after the
  exit (or after the deletion when no exit was seen): counted once, logged, listed in
  :meth:`GcTracker.figures` until a late ``/snapshot/remove`` clears it (the reclaim span
  is then emitted marked ``leaked``, and nothing more is counted);
* keeps the intervals of recent reclaims, and of those in flight (deleted, not yet
  removed), to tell whether a startup's creation window (first event -> ``/tasks/create``)
  overlapped one, in any namespace of this containerd.

A new task (``/tasks/create``) or a new snapshot under the key (``/snapshot/prepare``)
ends what was tracked for the container: it is in use again, or its old snapshot is gone.
A ``/containers/delete`` without a ``/snapshot/remove`` before it (ctr and CRI remove the
snapshot first) means the snapshot was kept: no reclaim is in flight any more, and the
leak deadline stands.

Limits (docs/sla.md, "GC budget"): containerd's own garbage collector removes an
unreferenced snapshot without publishing ``/snapshot/remove`` (``ctr containers delete
--keep-snapshot`` of a snapshot nothing references), which is then reported as leaked;
a container whose snapshot key is not its id is not followed; and the state is in memory
only (a restarted bridge does not know what exited before it).

Times: reclaim start and end are envelope times; "now" (leak deadlines, the rolling
window) comes from the injected clock, which must count from the Unix epoch like the
envelopes (the system clock live, event time in replay, a FakeClock in tests).

Threads: :meth:`process`, :meth:`expire` and :meth:`overlaps` run on the pipeline's event
thread (or its shutdown thread once the event thread has stopped) and never raise;
:meth:`figures` may be called from any thread (the status API).
"""

from __future__ import annotations

import heapq
import logging
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from itertools import count
from typing import Any

from otelbridge.core import ids, semconv
from otelbridge.core.clock import Clock
from otelbridge.core.config import SlaConfig
from otelbridge.core.counters import Counters
from otelbridge.core.logutil import ThrottledLogger
from otelbridge.core.model import (
    ContainerKey,
    EventKind,
    LifecycleEvent,
    ReclaimRecord,
    SpanRef,
    StartupRecord,
)
from otelbridge.core.text import escape_controls, truncate
from otelbridge.correlate.gcwindow import GcWindows

_log = logging.getLogger(__name__)
_tlog = ThrottledLogger(_log)

_NS = 1_000_000_000
# enum members as module globals: `EventKind.X` costs a class attribute lookup per test
_REMOVE = EventKind.SNAPSHOT_REMOVE
_EXIT = EventKind.TASK_EXIT
_TASK_DELETE = EventKind.TASK_DELETE
_CONTAINER_DELETE = EventKind.CONTAINER_DELETE
_TASK_CREATE = EventKind.TASK_CREATE
_PREPARE = EventKind.SNAPSHOT_PREPARE
#: Containers followed at once (exited, deleted, leaked, or removed and waiting for their
#: /containers/delete); beyond it the oldest is dropped and counted (otelbridge.gc.evicted).
MAX_TRACKED = 100_000
#: Containers whose snapshot and record were both removed, remembered so a duplicate
#: /containers/delete does not start a leak clock.
MAX_DONE = 4096
#: Longest snapshot key or snapshotter name put on a reclaim span (client-chosen names).
MAX_NAME = 256
#: Completed reclaim intervals remembered for the overlap test.
MAX_INTERVALS = 4096
#: ... and for how long (clock time): a startup emitted now was created well within it.
INTERVAL_HORIZON_S = 900.0


@dataclass(slots=True, eq=False)
class _Snapshot:
    """What is known of one container's snapshot after its exit or deletion."""

    key: ContainerKey
    serial: int  # breaks ties in the heaps (states do not compare)
    exit_ns: int | None = None
    deleted_ns: int | None = None  # the deletion moment (envelope time)
    container_deleted: bool = False
    removed: bool = False  # /snapshot/remove seen: kept until /containers/delete
    leaked: bool = False
    leak_at_ns: int = 0  # clock time it is leaked at if still there (0: not armed)
    drop_at_ns: int = 0  # removed: clock time it is forgotten at

    @property
    def in_flight(self) -> bool:
        """Deleted, its snapshot not removed yet, neither kept nor leaked."""
        return (
            self.deleted_ns is not None
            and not self.removed
            and not self.leaked
            and not self.container_deleted
        )


@dataclass(slots=True)
class _Startup:
    """The last emitted startup of a container: what its reclaim links to."""

    incarnation_ns: int
    attempt: int
    trace_identity: str | None
    """What its trace ID derives from: ``""`` the startup's own identity, else a pod's
    identity; ``None``: its trace is not known for certain (no link)."""
    snapshotter: str


class GcTracker:
    """Follows container snapshots from exit to removal (see the module docstring).

    Event thread only, except :meth:`figures` (any thread). Memory is bounded: at most
    ``max_tracked`` containers (the oldest dropped first, counted as
    ``otelbridge.gc.evicted``), ``max_intervals`` completed reclaims, and
    :data:`MAX_SAMPLES` samples per namespace in the window.
    """

    def __init__(
        self,
        config: SlaConfig,
        clock: Clock,
        counters: Counters,
        *,
        max_tracked: int = MAX_TRACKED,
        max_intervals: int = MAX_INTERVALS,
    ) -> None:
        self._cfg = config
        self._clock = clock
        self._counters = counters
        # written by the event thread only (the shutdown thread once it has stopped)
        self._reclaimed = counters.cell(semconv.GC_RECLAIMS)
        self._max_tracked = max(1, max_tracked)
        self._max_intervals = max(1, max_intervals)
        self._budget_ns = int(config.gc_reclaim_max_s * _NS)
        self._ttl_ns = int(config.gc_leak_ttl_s * _NS)
        self._window_ns = int(config.window_s * _NS)
        self._horizon_ns = int(INTERVAL_HORIZON_S * _NS)
        self._serial = count()
        # -- event thread only
        self._states: dict[tuple[str, str], _Snapshot] = {}  # insertion order: oldest first
        self._due: list[tuple[int, int, _Snapshot]] = []  # (clock ns, serial, state) heap
        self._flying: list[tuple[int, int, _Snapshot]] = []  # (deletion ns, serial, state)
        self._ends: list[int] = []  # completed reclaims sorted by end ...
        self._starts: list[int] = []  # ... and their starts, in the same order
        self._startups: dict[tuple[str, str], _Startup] = {}  # insertion order: oldest first
        self._done: dict[tuple[str, str], None] = {}  # recently ended, oldest first
        # -- shared with figures() (any thread)
        self._windows = GcWindows(config, clock)

    # -- events --------------------------------------------------------------------------
    def process(self, event: LifecycleEvent) -> list[ReclaimRecord]:
        """Feeds one decoded event; returns the reclaims it completed (at most one).

        Never raises: a bug is logged and counted (``otelbridge.pipeline.errors``) and the
        event skipped."""
        # keys are looked up as plain (namespace, id) tuples: they hash and compare like
        # ContainerKey, which is built only for a new state (this runs for every event)
        try:
            kind = event.kind
            if kind is _REMOVE:
                return self._remove(event)
            if kind is _EXIT or kind is _TASK_DELETE:
                if event.exec_id and event.exec_id != event.subject:
                    return []  # an exec'd process, not the container's init process
                if kind is _EXIT:
                    self._exited((event.namespace, event.subject), event.timestamp_ns)
                else:
                    self._deleted((event.namespace, event.subject), event.timestamp_ns)
            elif kind is _CONTAINER_DELETE:
                self._container_deleted((event.namespace, event.subject), event.timestamp_ns)
            elif kind is _PREPARE:
                key = (event.namespace, event.subject)
                if self._done:
                    self._done.pop(key, None)  # a new incarnation under the same id
                if self._states:
                    self._revived(key, snapshot=True)
            elif kind is _TASK_CREATE and self._states:
                self._revived((event.namespace, event.subject), snapshot=False)
        except Exception:
            self._counters.inc(semconv.PIPELINE_ERRORS)
            _tlog.log(logging.ERROR, "bug", "gc: could not process %r", event, exc_info=True)
        return []

    def _state(self, key: tuple[str, str]) -> _Snapshot:
        state = self._states.get(key)
        if state is None:
            state = _Snapshot(ContainerKey(*key), next(self._serial))
            self._states[state.key] = state
            if len(self._states) > self._max_tracked:
                self._evict()
        return state

    def _evict(self) -> None:
        oldest = next(iter(self._states))
        state = self._states.pop(oldest)
        if state.leaked:
            self._clear_leak(state)
        if not state.removed:  # a removed one was done: forgetting it loses nothing
            self._counters.inc(semconv.GC_EVICTED)
            _tlog.warning(
                "gc-evicted",
                "gc: tracking more than %d containers: forgot %s",
                self._max_tracked,
                state.key,
            )

    def _arm(self, state: _Snapshot, since_ns: int) -> None:
        """Sets the leak deadline: ``gc_leak_ttl_s`` after ``since_ns`` (an envelope
        time), or after now if the envelope is dated ahead of the clock."""
        if state.leak_at_ns:
            return
        state.leak_at_ns = min(since_ns, self._clock.now_ns()) + self._ttl_ns
        heapq.heappush(self._due, (state.leak_at_ns, state.serial, state))

    def _exited(self, key: tuple[str, str], at_ns: int) -> None:
        state = self._state(key)
        if state.removed or state.exit_ns is not None:
            return  # a late duplicate: the first one counts
        state.exit_ns = at_ns
        self._arm(state, at_ns)

    def _deleted(self, key: tuple[str, str], at_ns: int) -> None:
        state = self._state(key)
        if state.removed or state.deleted_ns is not None:
            return
        state.deleted_ns = at_ns
        self._arm(state, at_ns)
        if state.in_flight:
            heapq.heappush(self._flying, (at_ns, state.serial, state))

    def _container_deleted(self, key: tuple[str, str], at_ns: int) -> None:
        state = self._states.get(key)
        if state is None or state.removed:
            self._startups.pop(key, None)
        if state is not None and state.removed:
            del self._states[key]  # the normal end: the snapshot went first
            self._ended(key)
            return
        if state is None and key in self._done:
            return  # a duplicate of the delete that ended it
        # no /snapshot/remove before it: the snapshot was kept (no reclaim in flight)
        state = self._state(key)
        state.container_deleted = True
        if state.deleted_ns is None:
            state.deleted_ns = at_ns
        self._arm(state, at_ns)

    def _revived(self, key: tuple[str, str], *, snapshot: bool) -> None:
        """A new task for the container (it is in use again), or a new snapshot under its
        key (the old one is gone, even if no /snapshot/remove said so: containerd's
        garbage collector removes unreferenced snapshots silently): forget it, and any
        leak reported for it, without counting anything."""
        state = self._states.get(key)
        if state is None:
            return
        if state.container_deleted and not state.removed and not snapshot:
            return  # a new container reusing the id; the old one's snapshot may be kept
        del self._states[key]
        if state.leaked:
            self._clear_leak(state)
            _tlog.info(
                "gc-gone",
                "%s: leaked snapshot is gone (%s): no longer reported",
                state.key,
                "prepared again" if snapshot else "the container runs a new task",
            )

    def _remove(self, event: LifecycleEvent) -> list[ReclaimRecord]:
        key = (event.namespace, event.subject)  # the snapshot key is the container id
        state = self._states.get(key)
        now = self._clock.now_ns()
        if state is None:
            # not a container we saw stop (an image layer, a snapshot made by hand, or
            # the bridge started late): remembered so its /containers/delete does not
            # start a leak clock
            state = self._state(key)
            state.removed = True
            self._forget_later(state, now)
            return []
        if state.removed:
            return []  # a duplicate
        state.removed = True
        leaked = state.leaked
        if leaked:
            self._clear_leak(state)
        if state.container_deleted:
            del self._states[key]
            self._ended(key)
        else:
            self._forget_later(state, now)
        start_ns = state.deleted_ns if state.deleted_ns is not None else state.exit_ns
        if start_ns is None:
            return []
        end_ns = event.timestamp_ns
        duration_ns = max(0, end_ns - start_ns)
        degraded = duration_ns > self._budget_ns
        startup = self._startups.pop(key, None)
        record = ReclaimRecord(
            key=state.key,
            snapshot_key=self._clean(event.subject),
            snapshotter=self._clean(event.snapshotter or (startup.snapshotter if startup else "")),
            start_ns=start_ns,
            end_ns=end_ns,
            degraded=degraded,
            leaked=leaked,
            startup=_link(state.key, startup),
        )
        self._reclaimed.value += 1
        counted = degraded and not leaked  # a leak was counted already, as a leak
        if counted:
            self._counters.inc(semconv.GC_DEGRADED)
            _tlog.warning(
                "gc-degraded",
                "%s: snapshot %r reclaimed in %.3f s (budget %.3g s): gc degraded",
                state.key,
                event.subject,
                duration_ns / _NS,
                self._cfg.gc_reclaim_max_s,
            )
        elif leaked:
            _tlog.info(
                "gc-late",
                "%s: leaked snapshot %r removed at last, %.0f s after the deletion",
                state.key,
                event.subject,
                duration_ns / _NS,
            )
        if not leaked:  # a kept snapshot was not "in flight" all that time
            self._add_interval(start_ns, end_ns)
        self._windows.reclaimed(event.namespace, now, duration_ns / _NS, counted)
        return [record]

    def _clean(self, value: str) -> str:
        """A client-chosen name as a span attribute: control characters escaped (counted
        in ``otelbridge.attributes.sanitized``), cut to :data:`MAX_NAME` characters."""
        clean, changed = escape_controls(value)
        if changed:
            self._counters.inc(semconv.ATTRIBUTES_SANITIZED)
        return truncate(clean, MAX_NAME)

    def _ended(self, key: tuple[str, str]) -> None:
        done = self._done
        done[key] = None
        if len(done) > MAX_DONE:
            del done[next(iter(done))]

    def _forget_later(self, state: _Snapshot, now_ns: int) -> None:
        state.drop_at_ns = now_ns + self._ttl_ns
        heapq.heappush(self._due, (state.drop_at_ns, state.serial, state))

    def _add_interval(self, start_ns: int, end_ns: int) -> None:
        ends, starts = self._ends, self._starts
        i = bisect_right(ends, end_ns)
        ends.insert(i, end_ns)
        starts.insert(i, start_ns)
        excess = len(ends) - self._max_intervals
        if excess > 0:
            del ends[:excess], starts[:excess]

    # -- deadlines -----------------------------------------------------------------------
    def expire(self) -> None:
        """Applies the leak TTL by the clock: a snapshot still there ``gc_leak_ttl_s``
        after its container exited is reported leaked (counted once, logged, listed).
        Also forgets removed snapshots and old reclaim intervals. Never raises."""
        try:
            self._expire(self._clock.now_ns())
        except Exception:
            self._counters.inc(semconv.PIPELINE_ERRORS)
            _tlog.log(logging.ERROR, "bug", "gc: deadline check failed", exc_info=True)

    def _expire(self, now: int) -> None:
        due = self._due
        while due and due[0][0] <= now:
            at_ns, _, state = heapq.heappop(due)
            if self._states.get(state.key) is not state:
                continue  # forgotten or replaced since
            if state.removed:
                if state.drop_at_ns == at_ns:  # its /containers/delete never came
                    del self._states[state.key]
                    self._ended(state.key)
                continue
            if not state.leaked and state.leak_at_ns == at_ns:
                self._leak(state, now)
        cutoff = now - self._horizon_ns
        ends = self._ends
        if ends and ends[0] < cutoff:
            i = bisect_left(ends, cutoff)
            del ends[:i], self._starts[:i]
        # entries of states completed or forgotten since linger in the heaps until they
        # come up: sweep them when they outnumber the live ones
        slack = 2 * len(self._states) + 64
        if len(due) > slack:
            self._due = [e for e in due if self._due_valid(e)]
            heapq.heapify(self._due)
        if len(self._flying) > slack:
            self._flying = [e for e in self._flying if self._flying_valid(e)]
            heapq.heapify(self._flying)

    def _due_valid(self, entry: tuple[int, int, _Snapshot]) -> bool:
        at_ns, _, state = entry
        if self._states.get(state.key) is not state:
            return False
        if state.removed:
            return state.drop_at_ns == at_ns
        return not state.leaked and state.leak_at_ns == at_ns

    def _flying_valid(self, entry: tuple[int, int, _Snapshot]) -> bool:
        start_ns, _, state = entry
        return (
            state.in_flight
            and state.deleted_ns == start_ns
            and self._states.get(state.key) is state
        )

    def _leak(self, state: _Snapshot, now: int) -> None:
        state.leaked = True
        key = state.key
        self._counters.inc(semconv.GC_LEAKED)
        self._windows.leaked(key, now)
        since = state.exit_ns if state.exit_ns is not None else state.deleted_ns
        age_s = (now - since) / _NS if since is not None else self._cfg.gc_leak_ttl_s
        how = (
            "container deleted, snapshot kept"
            if state.container_deleted
            else "container stopped, not deleted"
        )
        _tlog.warning(
            "gc-leaked",
            "%s: snapshot %r not removed %.0f s after the container %s (%s): leaked",
            key,
            key.id,
            age_s,
            "exited" if state.exit_ns is not None else "was deleted",
            how,
        )

    def _clear_leak(self, state: _Snapshot) -> None:
        state.leaked = False
        key = state.key
        self._windows.leak_cleared(key)

    # -- startups ------------------------------------------------------------------------
    def overlaps(self, record: StartupRecord) -> bool:
        """Whether a reclaim was in flight while this startup was being created.

        Called on the event thread for every emitted startup, after its identity is final
        (``incarnation_ns``). The creation window is the first event -> ``/tasks/create``
        (-> the end, when the task was never created); a reclaim is in flight from its
        deletion to its ``/snapshot/remove``, in any namespace. A reclaim still in flight
        now counts when it began before the window ended; a snapshot kept (its container
        deleted without a remove) or leaked does not. Also records the startup for
        :meth:`figures` and for the link of its own reclaim. Never raises."""
        try:
            return self._overlaps(record)
        except Exception:
            self._counters.inc(semconv.PIPELINE_ERRORS)
            _tlog.log(
                logging.ERROR, "bug", "gc: overlap test of %s failed", record.key, exc_info=True
            )
            return False

    def _overlaps(self, record: StartupRecord) -> bool:
        begin = record.start_ns
        end = record.task_create_ns
        if end is None:
            end = record.end_ns if record.end_ns is not None else begin
        end = max(end, begin)
        overlapped = self._flying_since(end) or self._completed_overlap(begin, end)
        shim_s: float | None = None
        if record.container_create_ns is not None and record.task_create_ns is not None:
            shim_s = max(0, record.task_create_ns - record.container_create_ns) / _NS
        now = self._clock.now_ns()
        self._windows.started(record.key.namespace, now, overlapped, shim_s)
        self._remember(record)
        return overlapped

    def _flying_since(self, end_ns: int) -> bool:
        """Whether a reclaim still in flight began at or before ``end_ns``."""
        flying = self._flying
        while flying:
            if self._flying_valid(flying[0]):
                return flying[0][0] <= end_ns
            heapq.heappop(flying)  # completed, kept, leaked or forgotten since
        return False

    def _completed_overlap(self, begin_ns: int, end_ns: int) -> bool:
        """Whether a completed reclaim [start, end] intersects [begin_ns, end_ns]."""
        i = bisect_left(self._ends, begin_ns)  # these ended at or after the window began
        return i < len(self._starts) and min(self._starts[i:]) <= end_ns

    def _remember(self, record: StartupRecord) -> None:
        """Keeps what the container's reclaim span needs to link to this startup. Its
        ``container.startup`` span ID derives from the record's identity; its trace ID is
        certain only when no provisioning context is involved (else it depends on the
        namespace's link policy, which this stage does not know): no link then."""
        info = record.info
        trace_identity: str | None = None
        if info is None:
            trace_identity = ""  # no record, no context: its own trace
        elif info.pod is not None and info.cri is not None:
            pod = info.pod
            if pod.trace.context is None:  # the pod's own trace, whatever the policy
                trace_identity = ids.pod_identity(pod.key, pod.identity_ns)
        elif info.trace is not None and info.trace.context is None:
            trace_identity = ""
        snapshotter = (info.snapshotter if info is not None else "") or record.snapshotter
        startups = self._startups
        startups.pop(record.key, None)  # re-inserted last: the oldest go first
        startups[record.key] = _Startup(
            record.incarnation_ns, record.attempt, trace_identity, snapshotter
        )
        if len(startups) > self._max_tracked:
            del startups[next(iter(startups))]  # a cache: losing one costs one link

    # -- figures -------------------------------------------------------------------------
    def figures(self, namespace: str) -> dict[str, Any]:
        """GC figures of a namespace for ``/v1/sla`` (``{"gc": {...}}``, JSON-ready).

        Counts are over the SLA's rolling window (``sla.window_s``, by the clock);
        ``leaked_now`` lists (at most :data:`MAX_LEAKED_LISTED`, sorted) the containers
        whose snapshot is leaked at this moment, ``leaked_now_total`` how many there are.
        Any thread; never raises."""
        try:
            return {"gc": self._windows.figures(namespace)}
        except Exception:
            _log.exception("gc: figures of %r failed", namespace)
            return {"gc": {}}

    @property
    def tracked(self) -> int:
        """Containers followed now (for tests and diagnostics)."""
        return len(self._states)


def _link(key: ContainerKey, startup: _Startup | None) -> SpanRef | None:
    """The IDs of the container's ``container.startup`` span, as
    :func:`otelbridge.emit.spans.build_startup_spans` derives them."""
    if startup is None or startup.trace_identity is None:
        return None
    identity = ids.startup_identity(key, startup.incarnation_ns, startup.attempt)
    trace_id = ids.trace_id(startup.trace_identity or identity)
    return SpanRef(trace_id, ids.span_id(identity, semconv.SPAN_CONTAINER_STARTUP))


__all__ = ["GcTracker"]
