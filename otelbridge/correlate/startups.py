"""Correlate: lifecycle events -> startup records, one state machine per container.

The :class:`Correlator` sees every decoded event in the order containerd published it
and assembles, per container, the moments of its startup::

    /snapshot/prepare -> /containers/create -> /tasks/create -> /tasks/start -> ready

A record is complete, and returned to the caller, when

* the container is ready (readiness source ``started``: at ``/tasks/start``; ``probe``
  or ``kubernetes``: when :meth:`Correlator.ready` says so): ``ready``;
* its readiness source gave up: ``not_ready``;
* its task exits before it was ready: ``exited``;
* the container is deleted before its task started: ``deleted``;
* it is not ready within ``startup_timeout_s`` of being first seen: ``timeout``;
* a (re)connect listing shows it running although its events were missed: ``reconciled``;
* the input ends (replay) while it is in flight: ``incomplete`` (:meth:`Correlator.flush`).

A record whose first events were not seen is ``partial``. After a startup completes, a
small tombstone remains until the container is deleted (or idle for
``idle_timeout_s``) so duplicate and late events are recognised and a new task of the
same container counts as a restart (``attempt`` + 1).

Memory is bounded: at most ``max_tracked`` containers and ``max_pending_snapshots``
unclaimed snapshot prepares; every eviction is counted. "Now" comes from the injected
clock and only drives deadlines; the times in records are envelope times.

Not thread-safe: call it from one thread (the pipeline's event thread).
"""

from __future__ import annotations

import logging
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from otelbridge.core import semconv
from otelbridge.core.clock import Clock
from otelbridge.core.config import CorrelateConfig
from otelbridge.core.counters import Counters
from otelbridge.core.logutil import ThrottledLogger
from otelbridge.core.model import (
    ContainerInfo,
    ContainerKey,
    EventKind,
    LifecycleEvent,
    Outcome,
    ReadySignal,
    ReconcileSnapshot,
    StartupRecord,
    TaskState,
)

_log = ThrottledLogger(logging.getLogger(__name__))
_NS = 1_000_000_000
_NONE: tuple[StartupRecord, ...] = ()
# task states that mean the task got past its start
_PAST_START = frozenset({TaskState.RUNNING, TaskState.STOPPED, TaskState.PAUSED})


@dataclass(slots=True)
class _InFlight:
    record: StartupRecord
    deadline_ns: int  # clock time at which the startup times out
    last_event_ns: int  # newest envelope time seen for it
    # set by a reconcile listing: the task state it showed (None: the container was
    # gone) and the clock time after which the missed events are given up on
    reconcile_state: TaskState | None = None
    reconcile_deadline_ns: int = 0
    reconciled: bool = False


@dataclass(slots=True)
class _Tombstone:
    incarnation_ns: int
    attempt: int
    idle_deadline_ns: int
    task_create_ns: int  # of the completed attempt: a /tasks/create not after it is a duplicate


class Correlator:
    """Assembles startup records. See the module docstring for the state machine.

    ``on_new`` is called with every new in-flight record that has no container record
    yet, so the caller can start looking it up; it must not block. ``readiness`` is asked
    at ``/tasks/start`` whether the container is ready now; if not, the startup waits for
    :meth:`ready` (or its timeout). Neither may block.
    """

    def __init__(
        self,
        config: CorrelateConfig,
        clock: Clock,
        counters: Counters,
        on_new: Callable[[StartupRecord], None] | None = None,
        readiness: Callable[[StartupRecord], bool] | None = None,
    ) -> None:
        self._cfg = config
        self._clock = clock
        self._counters = counters
        self._completed = counters.cell(semconv.STARTUPS_COMPLETED)  # one writer: us
        self._on_new = on_new
        # asked at /tasks/start: True means ready now (source "started"); False means a
        # readiness source was armed, or will be, and ready() will be called
        self._readiness = readiness
        self._startup_timeout_ns = int(config.startup_timeout_s * _NS)
        self._idle_timeout_ns = int(config.idle_timeout_s * _NS)
        self._snapshot_ttl_ns = int(config.snapshot_ttl_s * _NS)
        self._grace_ns = int(config.reconcile_grace_s * _NS)
        # insertion order = first-seen order, so deadlines are scanned from the front
        self._live: OrderedDict[ContainerKey, _InFlight] = OrderedDict()
        # move_to_end on activity keeps the idlest tombstone at the front
        self._done: OrderedDict[ContainerKey, _Tombstone] = OrderedDict()
        # (namespace, snapshot key) -> (prepare time, clock deadline)
        self._prepares: OrderedDict[ContainerKey, tuple[int, int]] = OrderedDict()
        # in-flight startups a reconcile listing put a deadline on
        self._reconciling: set[ContainerKey] = set()
        # startups given up on by _bound, handed out by the next expire()/flush()
        self._evicted: list[StartupRecord] = []
        # keys whose state changed since take_changes(), when a checkpoint is kept
        self._changed: set[ContainerKey] | None = None

    # -- introspection (status, tests) ----------------------------------------------------
    @property
    def in_flight(self) -> int:
        return len(self._live)

    def expecting(self, within_ns: int) -> bool:
        """Whether a snapshot was prepared in the last ``within_ns`` (clock time) and no
        container has claimed it yet: a container is about to be created."""
        if not self._prepares:
            return False
        _, deadline = next(reversed(self._prepares.values()))  # the newest is last
        return deadline - self._snapshot_ttl_ns > self._clock.now_ns() - within_ns

    def awaiting_start(self) -> Iterator[StartupRecord]:
        """The startups in flight whose task has not started yet."""
        return (f.record for f in self._live.values() if f.record.task_start_ns is None)

    @property
    def tracked(self) -> int:
        return len(self._live) + len(self._done)

    def knows(self, key: ContainerKey) -> bool:
        return key in self._live or key in self._done

    # -- checkpoints ---------------------------------------------------------------------
    def track_changes(self) -> None:
        """From now on, remember which keys' state changes (see :meth:`take_changes`)."""
        if self._changed is None:
            self._changed = set()

    @property
    def has_changes(self) -> bool:
        """Some key changed since the last :meth:`take_changes`."""
        return bool(self._changed)

    def take_changes(self) -> set[ContainerKey]:
        """The keys whose state changed since the last call (tracking must be on)."""
        changed = self._changed or set()
        self._changed = set()
        return changed

    def mark_changed(self, keys: set[ContainerKey]) -> None:
        """Puts keys back among the changed ones (a commit of them failed)."""
        if self._changed is not None:
            self._changed |= keys

    def _mark(self, key: ContainerKey) -> None:
        if self._changed is not None:
            self._changed.add(key)

    def state_of(
        self, key: ContainerKey
    ) -> tuple[StartupRecord | None, int, tuple[int, int, int] | None, int | None]:
        """What a checkpoint keeps of ``key``: its in-flight record and newest event time,
        its tombstone ``(incarnation, attempt, task create time)``, its pending snapshot
        prepare time; ``None`` where there is none."""
        flight = self._live.get(key)
        tomb = self._done.get(key)
        prepared = self._prepares.get(key)
        return (
            flight.record if flight is not None else None,
            flight.last_event_ns if flight is not None else 0,
            (tomb.incarnation_ns, tomb.attempt, tomb.task_create_ns) if tomb else None,
            prepared[0] if prepared is not None else None,
        )

    def restore(
        self,
        in_flight: Sequence[tuple[StartupRecord, int]],
        done: Sequence[tuple[ContainerKey, int, int, int]],
        prepares: Sequence[tuple[ContainerKey, int]],
    ) -> None:
        """Loads a checkpoint into an empty correlator. Deadlines restart from now; the
        caller looks up the in-flight containers' records again (``on_new`` is called)."""
        now = self._clock.now_ns()
        for key, prepared_ns in prepares:
            self._prepares[key] = (prepared_ns, now + self._snapshot_ttl_ns)
        for key, incarnation_ns, attempt, task_create_ns in done:
            self._done[key] = _Tombstone(
                incarnation_ns, attempt, now + self._idle_timeout_ns, task_create_ns
            )
        for record, last_event_ns in in_flight:
            self._live[record.key] = _InFlight(
                record, now + self._startup_timeout_ns, last_event_ns
            )
            if self._on_new is not None:
                self._on_new(record)
        self._bound()

    # -- events --------------------------------------------------------------------------
    def process(self, event: LifecycleEvent) -> Sequence[StartupRecord]:
        """Feeds one event; returns the records it completed (usually none)."""
        kind = event.kind
        key = ContainerKey(event.namespace, event.subject)
        if self._changed is not None:
            self._changed.add(key)
        if kind is EventKind.CONTAINER_CREATE:
            return self._container_create(key, event)
        if kind is EventKind.TASK_CREATE:
            return self._task_create(key, event)
        if kind is EventKind.TASK_START:
            return self._task_start(key, event)
        if kind is EventKind.TASK_EXIT:
            return self._task_exit(key, event)
        if kind is EventKind.SNAPSHOT_PREPARE:
            self._snapshot_prepare(key, event)
            return _NONE
        if kind is EventKind.CONTAINER_DELETE:
            return self._container_delete(key, event)
        if kind is EventKind.TASK_OOM:
            flight = self._live.get(key)
            if flight is not None:
                flight.record.oom_ns.append(event.timestamp_ns)
            return _NONE
        if kind is EventKind.SNAPSHOT_COMMIT or kind is EventKind.SNAPSHOT_REMOVE:
            # an unpack (commit) or cleanup (remove) of a snapshot no container claimed
            self._prepares.pop(key, None)
            return _NONE
        # TASK_DELETE, CONTAINER_UPDATE: nothing to do for startups
        return _NONE

    def _snapshot_prepare(self, key: ContainerKey, event: LifecycleEvent) -> None:
        prepares = self._prepares
        # re-inserted at the end: deadlines must grow along the queue for expire()
        prepares.pop(key, None)
        prepares[key] = (event.timestamp_ns, self._clock.now_ns() + self._snapshot_ttl_ns)
        if len(prepares) > self._cfg.max_pending_snapshots:
            evicted, _ = prepares.popitem(last=False)
            self._mark(evicted)
            self._counters.inc(semconv.SNAPSHOTS_UNMATCHED)

    def _start(
        self,
        key: ContainerKey,
        event: LifecycleEvent,
        *,
        incarnation_ns: int,
        attempt: int = 1,
        partial: bool,
    ) -> _InFlight:
        # namespace, image and runtime repeat across containers: one shared string each
        key = ContainerKey(sys.intern(key.namespace), key.id)
        record = StartupRecord(
            key=key,
            incarnation_ns=incarnation_ns,
            attempt=attempt,
            partial=partial,
            image=sys.intern(event.image),
            runtime=sys.intern(event.runtime),
        )
        flight = _InFlight(
            record, self._clock.now_ns() + self._startup_timeout_ns, event.timestamp_ns
        )
        self._live[key] = flight
        self._bound()
        if self._on_new is not None:
            self._on_new(record)
        return flight

    def _container_create(
        self, key: ContainerKey, event: LifecycleEvent
    ) -> Sequence[StartupRecord]:
        t = event.timestamp_ns
        flight = self._live.get(key)
        if flight is not None:
            rec = flight.record
            if rec.container_create_ns == t:
                return self._unmatched(event, "duplicate /containers/create")
            if flight.reconciled and rec.container_create_ns is None:
                # listed by a reconcile, and its create event was only queued behind the
                # listing: the startup was observed from its start after all
                rec.container_create_ns = t
                rec.incarnation_ns = t
                rec.partial = False
                rec.image = rec.image or event.image
                rec.runtime = rec.runtime or event.runtime
                flight.reconciled = False
                flight.reconcile_deadline_ns = 0
                self._reconciling.discard(key)
                self._claim_snapshot(rec)
                return _NONE
            # the same id created again: its delete was missed
            done = self._finish(flight, Outcome.INCOMPLETE, flight.last_event_ns)
            rest = self._container_create(key, event)
            return (*done, *rest)
        tomb = self._done.get(key)
        if tomb is not None:
            if tomb.incarnation_ns == t:
                return self._unmatched(event, "duplicate /containers/create")
            del self._done[key]  # an id reused after a delete that was missed
        flight = self._start(key, event, incarnation_ns=t, partial=False)
        flight.record.container_create_ns = t
        self._claim_snapshot(flight.record)
        return _NONE

    def _claim_snapshot(self, rec: StartupRecord) -> None:
        # containerd names a container's snapshot after the container unless the client
        # chose another key; the container record (snapshot_key) is not known yet here
        prepared = self._prepares.pop(rec.key, None)
        if prepared is not None:
            rec.snapshot_prepare_ns = prepared[0]

    def _task_create(self, key: ContainerKey, event: LifecycleEvent) -> Sequence[StartupRecord]:
        t = event.timestamp_ns
        flight = self._live.get(key)
        if flight is None:
            tomb = self._done.get(key)
            if tomb is not None and t <= tomb.task_create_ns:
                return self._unmatched(event, "duplicate /tasks/create")
            if tomb is not None:
                del self._done[key]
                # a new task of a container whose earlier task already started: a restart
                flight = self._start(
                    key,
                    event,
                    incarnation_ns=tomb.incarnation_ns,
                    attempt=tomb.attempt + 1,
                    partial=False,
                )
            else:
                flight = self._start(key, event, incarnation_ns=t, partial=True)
        rec = flight.record
        if rec.task_create_ns is not None:
            return self._unmatched(event, "duplicate /tasks/create")
        rec.task_create_ns = t
        rec.pid = event.pid
        flight.last_event_ns = t
        return _NONE

    def _task_start(self, key: ContainerKey, event: LifecycleEvent) -> Sequence[StartupRecord]:
        flight = self._live.get(key)
        if flight is None:
            if key in self._done:
                return self._unmatched(event, "/tasks/start after the startup completed")
            flight = self._start(key, event, incarnation_ns=event.timestamp_ns, partial=True)
        rec = flight.record
        if rec.task_create_ns is None:
            rec.partial = True
        rec.task_start_ns = event.timestamp_ns
        rec.pid = event.pid or rec.pid
        if self._readiness is not None and not self._readiness(rec):
            return _NONE  # a readiness source will say (ready())
        # readiness source "started": the container is ready when its task started
        rec.ready_ns = event.timestamp_ns
        return self._finish(flight, Outcome.READY, event.timestamp_ns)

    def ready(self, signal: ReadySignal) -> Sequence[StartupRecord]:
        """A readiness source's verdict; ignored unless the startup it names is still
        waiting for it (same attempt, task started, not ready)."""
        flight = self._live.get(signal.key)
        if flight is None or flight.record.attempt != signal.attempt:
            return _NONE
        rec = flight.record
        if rec.task_start_ns is None or rec.ready_ns is not None:
            return _NONE
        self._mark(signal.key)
        rec.readiness_source = signal.source
        at = max(signal.at_ns, rec.task_start_ns)
        flight.last_event_ns = max(flight.last_event_ns, at)
        if not signal.ok:
            rec.failure = signal.reason
            return self._finish(flight, Outcome.NOT_READY, at)
        rec.ready_ns = at
        return self._finish(flight, Outcome.READY, at)

    def _task_exit(self, key: ContainerKey, event: LifecycleEvent) -> Sequence[StartupRecord]:
        if event.exec_id and event.exec_id != event.subject:
            return _NONE  # an exec'd process, not the container's init process
        flight = self._live.get(key)
        if flight is None:
            tomb = self._done.get(key)
            if tomb is not None:
                self._touch(key, tomb)
                return _NONE
            return self._unmatched(event, "/tasks/exit of a container not seen starting")
        rec = flight.record
        rec.exit_status = event.exit_status
        return self._finish(flight, Outcome.EXITED, event.timestamp_ns)

    def _container_delete(
        self, key: ContainerKey, event: LifecycleEvent
    ) -> Sequence[StartupRecord]:
        self._prepares.pop(key, None)
        if self._done.pop(key, None) is not None:
            return _NONE
        flight = self._live.get(key)
        if flight is None:
            return _NONE  # never seen: created before the bridge listened
        return self._finish(flight, Outcome.DELETED, event.timestamp_ns)

    def _unmatched(self, event: LifecycleEvent, why: str) -> Sequence[StartupRecord]:
        self._counters.inc(semconv.EVENTS_UNMATCHED)
        _log.info("unmatched", "%s: %s (%s)", event.key, why, event.kind.value)
        return _NONE

    def _touch(self, key: ContainerKey, tomb: _Tombstone) -> None:
        tomb.idle_deadline_ns = self._clock.now_ns() + self._idle_timeout_ns
        self._done.move_to_end(key)

    # -- completion ----------------------------------------------------------------------
    def _finish(
        self, flight: _InFlight, outcome: Outcome, end_ns: int, *, tombstone: bool = True
    ) -> Sequence[StartupRecord]:
        rec = flight.record
        self._mark(rec.key)
        self._live.pop(rec.key, None)
        self._reconciling.discard(rec.key)
        rec.outcome = outcome
        rec.end_ns = max(end_ns, rec.start_ns)
        if tombstone and outcome is not Outcome.DELETED and outcome is not Outcome.INCOMPLETE:
            # replaces a live entry by a tombstone: the tracked count does not grow
            self._done[rec.key] = _Tombstone(
                rec.incarnation_ns,
                rec.attempt,
                self._clock.now_ns() + self._idle_timeout_ns,
                rec.task_create_ns or rec.start_ns,
            )
        self._completed.value += 1
        if rec.partial:
            self._counters.inc(semconv.STARTUPS_PARTIAL)
        if outcome is Outcome.RECONCILED:
            self._counters.inc(semconv.STARTUPS_RECONCILED)
        return (rec,)

    def _bound(self) -> None:
        """Keeps the number of tracked containers under ``max_tracked``."""
        limit = self._cfg.max_tracked
        while len(self._live) + len(self._done) > limit:
            self._counters.inc(semconv.STATE_EVICTED)
            if self._done:
                key, _ = self._done.popitem(last=False)
                self._mark(key)
                continue
            # only in-flight startups left: give up on the oldest, visibly
            flight = next(iter(self._live.values()))
            self._evicted.extend(
                self._finish(flight, Outcome.TIMEOUT, self._timeout_end(flight), tombstone=False)
            )

    def _timeout_end(self, flight: _InFlight) -> int:
        return max(flight.last_event_ns, flight.record.start_ns + self._startup_timeout_ns)

    # -- time ----------------------------------------------------------------------------
    def expire(self) -> Sequence[StartupRecord]:
        """Applies every deadline that has passed by the clock; returns completed records.

        The pipeline calls it every 200 ms (live) or 100 ms of event time (replay).
        """
        now = self._clock.now_ns()
        out: list[StartupRecord] = self._evicted
        self._evicted = []
        for key in list(self._reconciling):
            flight = self._live[key]
            if flight.reconcile_deadline_ns <= now:
                self._reconciling.discard(key)
                out.extend(self._settle_reconciled(flight))
        while self._live:
            # timeout deadlines grow with insertion order: stop at the first one not due
            flight = next(iter(self._live.values()))
            if flight.deadline_ns > now:
                break
            out.extend(self._finish(flight, Outcome.TIMEOUT, self._timeout_end(flight)))
        while self._done:
            key, tomb = next(iter(self._done.items()))
            if tomb.idle_deadline_ns > now:
                break
            del self._done[key]
            self._mark(key)
            self._counters.inc(semconv.STATE_EVICTED)
        while self._prepares:
            key, (_, deadline) = next(iter(self._prepares.items()))
            if deadline > now:
                break
            del self._prepares[key]
            self._mark(key)
            self._counters.inc(semconv.SNAPSHOTS_UNMATCHED)
        return out

    def flush(self) -> Sequence[StartupRecord]:
        """Completes every in-flight startup as ``incomplete`` (the input has ended)."""
        out: list[StartupRecord] = self._evicted
        self._evicted = []
        for flight in list(self._live.values()):
            out.extend(self._finish(flight, Outcome.INCOMPLETE, flight.last_event_ns))
        return out

    # -- reconciliation ------------------------------------------------------------------
    def reconcile(self, snap: ReconcileSnapshot) -> Sequence[StartupRecord]:
        """Compares a listing of containerd with what the correlator knows.

        * a container created after ``snap.since_ns`` that is unknown was started while
          nobody listened: it is tracked as a partial startup;
        * a tracked in-flight container whose task the listing shows running or stopped
          missed events: unless those events arrive within ``reconcile_grace_s`` (they may
          be queued behind the listing), it is completed as ``reconciled`` (partial); one
          whose ``/tasks/start`` was seen and that is running missed nothing: it is waiting
          for its readiness verdict and is left alone;
        * a tracked in-flight container the listing no longer has was deleted while
          nobody listened: after the same grace it is completed as ``incomplete``
          (partial);
        * tombstones of containers that are gone are dropped.

        Records completed here come back from :meth:`expire` once the grace has passed.
        """
        now = self._clock.now_ns()
        grace_deadline = now + self._grace_ns
        listed: dict[ContainerKey, ContainerInfo] = {c.key: c for c in snap.containers}
        for key, info in listed.items():
            task = snap.tasks.get(key)
            flight = self._live.get(key)
            if flight is None and key not in self._done:
                if info.created_at_ns <= snap.since_ns:
                    continue  # running since before the bridge listened
                if snap.until_ns and info.created_at_ns > snap.until_ns:
                    continue  # too recent to tell: its events may still be on their way
                flight = self._adopt(info, now)
            elif flight is None:
                continue  # its startup already completed
            if flight.record.info is None:
                flight.record.info = info
            if (
                task is not None
                and task.state is TaskState.RUNNING
                and flight.record.task_start_ns is not None
            ):
                # its /tasks/start was seen: nothing was missed, it waits for readiness
                continue
            if task is not None and task.state in _PAST_START:
                flight.reconcile_state = task.state
                flight.reconcile_deadline_ns = grace_deadline
                self._reconciling.add(key)
                flight.record.pid = flight.record.pid or task.pid
                if task.state is TaskState.STOPPED:
                    flight.record.exit_status = task.exit_status
        covered = set(snap.namespaces)
        # a relist runs beside the stream: an in-flight container seen recently may have
        # been created after the listing was taken; only older ones can be judged gone
        seen_before = snap.taken_at_ns - self._grace_ns if snap.until_ns else None
        for key, flight in self._live.items():
            if seen_before is not None and flight.last_event_ns >= seen_before:
                continue
            if key.namespace in covered and key not in listed:
                # gone from containerd: deleted while nobody listened
                flight.reconcile_state = None
                flight.reconcile_deadline_ns = grace_deadline
                self._reconciling.add(key)
        if seen_before is None:  # a relist cannot tell old tombstones from new ones
            for key in [k for k in self._done if k.namespace in covered and k not in listed]:
                del self._done[key]
                self._mark(key)
        return _NONE

    def _adopt(self, info: ContainerInfo, now: int) -> _InFlight:
        record = StartupRecord(
            key=info.key,
            incarnation_ns=info.created_at_ns,
            partial=True,
            image=info.image,
            runtime=info.runtime,
            snapshotter=info.snapshotter,
            info=info,
        )
        flight = _InFlight(record, now + self._startup_timeout_ns, info.created_at_ns)
        flight.reconciled = True
        self._live[info.key] = flight
        self._mark(info.key)
        self._bound()
        return flight

    def _settle_reconciled(self, flight: _InFlight) -> Sequence[StartupRecord]:
        """The grace after a listing is over and the missed events did not come."""
        flight.reconcile_deadline_ns = 0
        flight.record.partial = True
        if flight.reconcile_state is None:
            return self._finish(flight, Outcome.INCOMPLETE, flight.last_event_ns)
        return self._finish(flight, Outcome.RECONCILED, flight.last_event_ns)
