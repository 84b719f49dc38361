"""The pipeline: source -> decode -> correlate -> enrich -> emit -> export.

Two ways to drive it:

* **replay** (:meth:`Pipeline.feed` then :meth:`Pipeline.finish`): the caller's thread
  runs every stage; deadlines follow event time, so a recording gives the same spans
  however fast it is read;
* **live** (:meth:`Pipeline.start` with a :class:`Source`): the source runs on its own
  thread and hands items over a bounded queue (overflow dropped and counted); one event
  thread runs decode, correlate, enrich and emit, so the events of a container are
  handled in containerd's order; container records are read by a
  :class:`~otelbridge.enrich.lookups.LookupPool` when a container appears, and a
  completed startup waits for its record at most ``metadata_timeout_s`` without holding
  up other containers; the batch processor exports on its own thread.

With a :class:`~otelbridge.durable.StateStore` (``otelbridge run``), the event thread
commits the correlator's changes and the spans they produced together, every
``state.commit_interval_s``; a startup completed but still waiting for its container
record is checkpointed as such, so it is re-emitted, not lost, after a crash. On start the
checkpoint is restored.

Shutdown joins the source first and feeds what it left in the queue. Without a store it
then emits startups still in flight as ``incomplete``; with one it checkpoints them, and
the next start resumes them. Outstanding lookups are waited for once, at most
``metadata_timeout_s`` in all.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otelbridge import sla
from otelbridge.core import semconv
from otelbridge.core.clock import Clock, EventTimeClock, SystemClock
from otelbridge.core.config import Config
from otelbridge.core.counters import Counters
from otelbridge.core.errors import NotFound
from otelbridge.core.logutil import ThrottledLogger
from otelbridge.core.model import (
    ContainerInfo,
    ContainerKey,
    Outcome,
    RawEnvelope,
    ReadySignal,
    ReclaimRecord,
    ReconcileSnapshot,
    StartupRecord,
)
from otelbridge.correlate.gc import GcTracker
from otelbridge.correlate.pods import PodDirectory, PodStartup, PodTracker
from otelbridge.correlate.startups import Correlator
from otelbridge.decode import Decoder
from otelbridge.durable import StateRow, StateStore
from otelbridge.emit.reclaim import build_reclaim_span
from otelbridge.emit.spans import build_pod_span, build_startup_spans
from otelbridge.enrich.lookups import LookupPool
from otelbridge.enrich.stage import Enricher
from otelbridge.readiness import SOURCE_STARTED, ReadinessRequest, ReadinessSource
from otelbridge.sla import SlaTracker

_log = logging.getLogger(__name__)
_tlog = ThrottledLogger(_log)
_NS = 1_000_000_000
_REPLAY_TICK_NS = _NS // 10  # replay checks deadlines every 100 ms of event time
_LIVE_TICK_NS = _NS // 5  # live checks them every 200 ms
# an envelope dated this far past the machine's clock is corrupt: it must not move event
# time (replay) and time out every startup in flight
_MAX_FUTURE_NS = 24 * 3600 * _NS

SourceItem = RawEnvelope | ReconcileSnapshot | ReadySignal
MetadataLookup = Callable[[str, str], ContainerInfo]
"""``(namespace, container id) -> ContainerInfo``; raises NotFound or another error."""


class SpanSink(Protocol):
    """Where finished spans go (the batch processor). ``submit`` must not block."""

    def submit(self, spans: list[Span]) -> None: ...


class Source(Protocol):
    """A live source: runs until ``stop`` is set, handing items to ``sink`` in order."""

    def run(self, sink: Callable[[SourceItem], None], stop: threading.Event) -> None: ...


@dataclass(slots=True)
class _Pending:
    record: StartupRecord
    ticket: int  # its lookup in the LookupPool
    deadline_ns: int


class Pipeline:
    """Wires the stages for one source. See the module docstring for the threads."""

    def __init__(
        self,
        config: Config,
        sink: SpanSink,
        counters: Counters,
        *,
        clock: Clock | None = None,
        wall_clock: Clock | None = None,
        lookup: MetadataLookup | None = None,
        lookup_async: bool = True,
        on_record: Callable[[StartupRecord, list[Span]], None] | None = None,
        store: StateStore | None = None,
        readiness_sources: Sequence[ReadinessSource] = (),
        on_measured: Callable[[StartupRecord, Mapping[str, float]], None] | None = None,
    ) -> None:
        """``sink`` receives the spans; with a ``store`` (which must then be the sink
        too), state and spans are committed together (see the module docstring)."""
        self.config = config
        self.counters = counters
        self._sink = sink
        if clock is None:
            # replay follows event time; a store (live) needs real time, for its
            # restored deadlines are set before any event arrives
            clock = SystemClock() if store is not None else EventTimeClock()
        self._clock: Clock = clock
        self._event_clock = self._clock if isinstance(self._clock, EventTimeClock) else None
        self._wall = wall_clock if wall_clock is not None else SystemClock()
        self.enricher = Enricher(
            config.enrich,
            counters,
            readiness_label=config.readiness.label,
            sla_limits=sla.budgets(config.sla),
        )
        self._sources = list(readiness_sources)
        # started containers whose readiness is not decided yet: their container record
        # is still being read (record, since when)
        self._undecided: list[tuple[StartupRecord, int]] = []
        self._armed: dict[ContainerKey, ReadinessSource] = {}
        self._probe_deadline_ns = int(config.readiness.probe_deadline_s * _NS)
        self._lookup = lookup
        self._on_record = on_record
        self._pool = (
            LookupPool(self._read_record, config.enrich.lookup_workers, counters)
            if lookup is not None and lookup_async
            else None
        )
        self._tickets: dict[int, int] = {}  # id(record) -> ticket, while the record lives
        self._pending: list[_Pending] = []
        self._metadata_timeout_ns = int(config.enrich.metadata_timeout_s * _NS)
        self.sla = SlaTracker(config.sla, self._clock)
        self.gc = GcTracker(config.sla, self._clock, counters)
        self.sla.extra.append(self.gc.figures)
        self._on_measured = on_measured  # the metrics stage
        self.pod_directory = PodDirectory()
        self.pods = PodTracker(
            self._clock,
            settle_s=config.correlate.pod_settle_s,
            timeout_s=config.correlate.startup_timeout_s,
            idle_s=config.correlate.idle_timeout_s,
        )
        self.decoder = Decoder(counters)
        self.correlator = Correlator(
            config.correlate,
            self._clock,
            counters,
            on_new=self._on_new,
            readiness=self._ready_now if self._sources else None,
        )
        self._received = counters.cell(semconv.EVENTS_RECEIVED)  # event thread only
        self._next_replay_tick_ns = 0
        # refreshed by every deadline check: reading the wall clock per event costs more
        # than the day of slack this bound has
        self._future_limit_ns = self._wall.now_ns() + _MAX_FUTURE_NS
        self._queue: queue.Queue[SourceItem] = queue.Queue(config.source.queue_size)
        self._stop = threading.Event()
        self._source_thread: threading.Thread | None = None
        self._event_thread: threading.Thread | None = None
        self._closed = False
        self._store = store
        # completed startups whose spans are not committed yet, by key and attempt
        # (checkpointed as "completed, not emitted" until they are)
        self._unemitted: dict[ContainerKey, dict[int, StartupRecord]] = {}
        self._emitted: set[ContainerKey] = set()
        self._horizon_ns: int | None = None
        self._commit_every_ns = int(config.state.commit_interval_s * _NS)
        self._next_commit_ns = 0
        self.restored = False
        self.on_commit: Callable[[], None] | None = None
        """Called after each commit (the spool exporter's wake-up)."""
        if store is not None:
            self.correlator.track_changes()
        self.connected = threading.Event()
        self.failed = False
        """Set when the source died of an unexpected error (the pipeline has stopped)."""

    # -- stages ------------------------------------------------------------------------
    def _on_new(self, record: StartupRecord) -> None:
        if self._lookup is None or record.info is not None:
            return
        if self._pool is not None:
            self._tickets[id(record)] = self._pool.submit(record.key)
            return
        # synchronous lookups (replay: a recorded record, no I/O)
        self.counters.inc(semconv.METADATA_LOOKUPS)
        try:
            record.info = self._read_record(record.key)
        except NotFound:
            self.counters.inc(semconv.METADATA_FAILED)
        except Exception as exc:  # the startup goes on without its record
            self.counters.inc(semconv.METADATA_FAILED)
            _tlog.warning("lookup", "%s: container record lookup failed: %s", record.key, exc)

    def _read_record(self, key: ContainerKey) -> ContainerInfo:
        """Reads and admits a container record (lookup threads, or replay's thread).
        An app container of a pod gets its pod from the directory, or by reading its
        sandbox's record."""
        assert self._lookup is not None
        info = self._lookup(key.namespace, key.id)
        cri = info.cri
        pod = None
        if cri is not None and cri.kind == "container" and cri.sandbox_id:
            sandbox = ContainerKey(key.namespace, cri.sandbox_id)
            pod = self.pod_directory.get(sandbox)
            if pod is None:
                self.counters.inc(semconv.METADATA_LOOKUPS)
                try:
                    pod = self.enricher.admit(self._lookup(sandbox.namespace, sandbox.id)).pod
                except Exception as exc:  # gone, or worse: the container goes on podless
                    self.counters.inc(semconv.METADATA_FAILED)
                    _tlog.info("sandbox", "%s: its sandbox's record is unreadable: %s", key, exc)
                if pod is not None:
                    self.pod_directory.put(pod)
        admitted = self.enricher.admit(info, pod)
        if cri is not None and cri.kind == "sandbox" and admitted.pod is not None:
            self.pod_directory.put(admitted.pod)
        return admitted

    def feed(self, item: SourceItem) -> None:
        """Runs one item through every stage. Called from one thread only; never raises:
        bad input is counted by the stages, and a bug costs one item, not the daemon."""
        try:
            self._feed(item)
        except Exception:
            self.counters.inc(semconv.PIPELINE_ERRORS)
            _tlog.log(logging.ERROR, "bug", "could not process %r", item, exc_info=True)

    def _feed(self, item: SourceItem) -> None:
        if type(item) is ReadySignal:
            self._armed.pop(item.key, None)
            for record in self.correlator.ready(item):
                self._complete(record)
            return
        if type(item) is RawEnvelope:
            self._received.value += 1
            event = self.decoder(item)
            if event is None:
                return
            if event.timestamp_ns > self._future_limit_ns:
                self.counters.inc(semconv.EVENTS_MALFORMED)
                _tlog.warning(
                    "future", "skipping %s of %s dated in the future", item.topic, event.key
                )
                return
            if self._horizon_ns is None or event.timestamp_ns > self._horizon_ns:
                self._horizon_ns = event.timestamp_ns
            clock = self._event_clock
            if clock is not None:
                # replay: "now" is the time of the newest decodable event, set before the
                # event sets any deadline
                clock.observe(event.timestamp_ns)
            for record in self.correlator.process(event):
                self._complete(record)
            for reclaim in self.gc.process(event):
                self._emit_reclaim(reclaim)
            if clock is not None and event.timestamp_ns >= self._next_replay_tick_ns:
                self._next_replay_tick_ns = event.timestamp_ns + _REPLAY_TICK_NS
                self.tick()
            return
        assert isinstance(item, ReconcileSnapshot)
        self.connected.set()
        item = dataclasses.replace(item, containers=self._admit_listing(item.containers))
        for record in self.correlator.reconcile(item):
            self._complete(record)

    # -- readiness ---------------------------------------------------------------------
    def _ready_now(self, record: StartupRecord) -> bool:
        """Asked by the correlator at /tasks/start: True when the container is ready now
        (no source applies: ``started``); False when a source was armed, or the decision
        waits for the container's record (:meth:`_decide_pending`)."""
        known, info = self._record_now(record)
        if not known:
            self._undecided.append((record, self._clock.now_ns()))
            return False
        return not self._arm(record, info)

    def _record_now(self, record: StartupRecord) -> tuple[bool, ContainerInfo | None]:
        """(known, record): whether the container record's lookup is over, and what it
        found; takes a finished lookup's result now instead of at completion."""
        if record.info is not None:
            return True, record.info
        ticket = self._tickets.get(id(record))
        if ticket is None or self._pool is None:
            return True, None
        done, info = self._pool.take(ticket)
        if not done:
            return False, None
        del self._tickets[id(record)]
        if info is not None:
            record.info = info
        return True, info

    def _arm(self, record: StartupRecord, info: ContainerInfo | None) -> bool:
        if info is None or record.task_start_ns is None:
            return False
        for source in self._sources:
            if source.applies(info):
                request = ReadinessRequest(
                    record.key,
                    record.attempt,
                    info,
                    record.task_start_ns,
                    self._wall.now_ns() + self._probe_deadline_ns,
                )
                self._armed[record.key] = source
                source.watch(request, self.offer)
                return True
        return False

    def _decide_pending(self) -> None:
        """Decides the readiness of started containers whose record has arrived (or
        whose lookup took longer than ``metadata_timeout_s``: then ``started``)."""
        now = self._clock.now_ns()
        waiting = []
        for record, since in self._undecided:
            if record.done:
                continue
            known, info = self._record_now(record)
            if not known and since + self._metadata_timeout_ns > now:
                waiting.append((record, since))
                continue
            if self._arm(record, info):
                continue
            assert record.task_start_ns is not None
            signal = ReadySignal(record.key, record.attempt, record.task_start_ns, SOURCE_STARTED)
            for done in self.correlator.ready(signal):
                self._complete(done)
        self._undecided = waiting

    def _admit_listing(self, containers: tuple[ContainerInfo, ...]) -> tuple[ContainerInfo, ...]:
        """Admits a listing's records, sandboxes first so their pods are known to their
        containers (no record is read: a listing holds them all)."""
        admit = self.enricher.admit
        sandboxes = [admit(c) for c in containers if c.cri is not None and c.cri.kind == "sandbox"]
        for sandbox in sandboxes:
            if sandbox.pod is not None:
                self.pod_directory.put(sandbox.pod)
        others = [
            admit(c, self.pod_directory.get(ContainerKey(c.namespace, c.cri.sandbox_id)))
            if c.cri is not None and c.cri.kind == "container"
            else admit(c)
            for c in containers
            if c.cri is None or c.cri.kind != "sandbox"
        ]
        return (*sandboxes, *others)

    def tick(self) -> None:
        """Applies deadlines and emits startups whose container record has arrived."""
        self._future_limit_ns = self._wall.now_ns() + _MAX_FUTURE_NS
        try:
            for record in self.correlator.expire():
                self._complete(record)
            if self._pending:
                self._drain(self._clock.now_ns())
            if self._undecided:
                self._decide_pending()
            self.gc.expire()
            for pod in self.pods.expire():
                self._emit_pod(pod)
        except Exception:
            self.counters.inc(semconv.PIPELINE_ERRORS)
            _tlog.log(logging.ERROR, "bug", "deadline check failed", exc_info=True)

    def _complete(self, record: StartupRecord) -> None:
        source = self._armed.pop(record.key, None)
        if source is not None:  # ended otherwise (exited, deleted, timed out)
            source.cancel(record.key)
        if self._store is not None:
            self._unemitted.setdefault(record.key, {})[record.attempt] = record
        ticket = self._tickets.pop(id(record), None)
        if ticket is None:
            self._emit(record)
            return
        self._pending.append(
            _Pending(record, ticket, self._clock.now_ns() + self._metadata_timeout_ns)
        )
        self._drain(self._clock.now_ns())

    def _drain(self, now_ns: int, *, force: bool = False) -> None:
        """Emits the pending startups whose record arrived, or that waited long enough
        (``force``: all of them). Each is taken off the list before it is emitted."""
        assert self._pool is not None
        pending, self._pending = self._pending, []
        for i, item in enumerate(pending):
            done, info = self._pool.take(item.ticket)
            if not done and not force and item.deadline_ns > now_ns:
                self._pending.append(item)
                continue
            if done:
                if info is not None and item.record.info is None:
                    item.record.info = info
            else:
                self._pool.abandon(item.ticket)
                self.counters.inc(semconv.METADATA_LATE)
                _tlog.warning("late", "%s: container record not there in time", item.record.key)
            try:
                self._emit(item.record)
            except BaseException:
                self._pending.extend(pending[i + 1 :])  # not lost, not emitted twice
                raise

    def _emit(self, record: StartupRecord) -> None:
        """Builds and hands on the spans of one startup. Never raises."""
        info = record.info
        if info is not None and info.created_at_ns:
            # the container record's creation time is the identity when it is known: live,
            # replay and a restarted bridge (which may not see /containers/create) then
            # derive the same IDs
            record.incarnation_ns = info.created_at_ns
        try:
            measured = sla.durations(record)
            enrichment = self.enricher.enrich(record, measured)
            if self.gc.overlaps(record):
                enrichment.attributes.append((semconv.OB_GC_OVERLAP, True))
            spans = build_startup_spans(record, enrichment)
            self.sla.observe(record, measured)
            if self._on_measured is not None:
                self._on_measured(record, measured)
            self.counters.inc(semconv.SPANS_EMITTED, len(spans))
            self._sink.submit(spans)
            self.pods.observe(record)
            if self._store is not None:
                attempts = self._unemitted.get(record.key)
                if attempts is not None and attempts.pop(record.attempt, None) is not None:
                    if not attempts:
                        del self._unemitted[record.key]
                    self._emitted.add(record.key)
            if self._on_record is not None:
                self._on_record(record, spans)
        except Exception:  # a bug must cost one startup, not the daemon
            self.counters.inc(semconv.PIPELINE_ERRORS)
            _tlog.log(
                logging.ERROR, "bug", "%s: could not emit its startup", record.key, exc_info=True
            )

    def _emit_reclaim(self, reclaim: ReclaimRecord) -> None:
        """Builds and hands on a ``snapshot.reclaim`` span. Never raises."""
        try:
            span = build_reclaim_span(reclaim)
            self.counters.inc(semconv.SPANS_EMITTED)
            self._sink.submit([span])
        except Exception:  # a bug must cost one span, not the daemon
            self.counters.inc(semconv.PIPELINE_ERRORS)
            _tlog.log(
                logging.ERROR, "bug", "%s: could not emit its reclaim", reclaim.key, exc_info=True
            )

    def _emit_pod(self, pod: PodStartup) -> None:
        """Builds and hands on a pod's ``pod.startup``. Never raises."""
        try:
            context = pod.pod
            attrs = self.enricher.pod_attributes(
                context, outcome=pod.outcome, containers=pod.containers, partial=pod.partial
            )
            error = pod.error
            span = build_pod_span(
                context,
                self.config.enrich.policy_for(context.namespace),
                start_ns=pod.start_ns,
                end_ns=pod.end_ns or pod.start_ns,
                attributes=attrs,
                error=error,
            )
            self.counters.inc(semconv.SPANS_EMITTED)
            self.counters.inc(semconv.PODS_COMPLETED)
            self._sink.submit([span])
        except Exception:  # a bug must cost one pod span, not the daemon
            self.counters.inc(semconv.PIPELINE_ERRORS)
            _tlog.log(
                logging.ERROR, "bug", "%s: could not emit its pod", pod.pod.key, exc_info=True
            )

    def finish(self) -> None:
        """The input has ended: completes every in-flight startup (``incomplete``) and
        emits everything, waiting for outstanding lookups at most ``metadata_timeout_s``."""
        for record in self.correlator.flush():
            self._complete(record)
        if self._pending and self._pool is not None:
            self._pool.wait(
                (item.ticket for item in self._pending), self.config.enrich.metadata_timeout_s
            )
            self._drain(self._clock.now_ns(), force=True)
        for pod in self.pods.flush():
            self._emit_pod(pod)

    # -- durability --------------------------------------------------------------------
    def restore(self) -> int | None:
        """Loads the store's checkpoint (call once, before start). Returns the newest
        event time the previous run had committed (the source resumes from there)."""
        assert self._store is not None
        cp = self._store.load()
        completed_tombstones = [
            (r.key, r.incarnation_ns, r.attempt, r.task_create_ns or r.start_ns)
            for r in cp.unemitted
            if r.outcome not in (Outcome.DELETED, Outcome.INCOMPLETE)
        ]
        self.correlator.restore(cp.in_flight, [*cp.done, *completed_tombstones], cp.prepares)
        now = self._clock.now_ns()
        for record, _ in cp.in_flight:
            if self._sources and record.task_start_ns is not None and record.ready_ns is None:
                self._undecided.append((record, now))  # waiting for readiness: re-armed
        for record in cp.unemitted:  # completed before the crash, spans never committed
            self._on_new(record)
            self._complete(record)
        self._horizon_ns = cp.horizon_ns
        self.restored = True
        if cp.in_flight or cp.unemitted or cp.spooled:
            _log.warning(
                "resumed: %d startups in flight, %d to emit, %d spans spooled",
                len(cp.in_flight),
                len(cp.unemitted),
                cp.spooled,
            )
        return cp.horizon_ns

    def checkpoint(self) -> None:
        """Commits the changed state and the spans it produced, in one transaction."""
        store = self._store
        if store is None:
            return
        keys = self.correlator.take_changes() | self._emitted | self._unemitted.keys()
        self._emitted = set()
        rows = []
        for key in keys:
            record, last_event_ns, tombstone, prepare_ns = self.correlator.state_of(key)
            unemitted = tuple(self._unemitted.get(key, {}).values())
            rows.append(StateRow(key, record, last_event_ns, tombstone, prepare_ns, unemitted))
        try:
            store.commit(rows, self._horizon_ns)
        except Exception:  # a full disk must not stop the stream: state stays in memory
            self.counters.inc(semconv.PIPELINE_ERRORS)
            _tlog.log(logging.ERROR, "commit", "could not commit the checkpoint", exc_info=True)
            self.correlator.mark_changed(keys)  # written with the next commit
            return
        if self.on_commit is not None:
            self.on_commit()

    # -- live --------------------------------------------------------------------------
    def offer(self, item: SourceItem) -> None:
        """Called by the source thread (and readiness sources). Envelopes are dropped
        (and counted) when the queue is full; reconcile snapshots and readiness verdicts
        wait for room, they must not be lost."""
        if isinstance(item, RawEnvelope):
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                self.counters.inc(semconv.EVENTS_DROPPED)
                _tlog.warning("queue", "event queue full: dropping an event")
            return
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def start(self, source: Source) -> None:
        """Starts the readiness sources, the source and event threads."""
        for readiness in self._sources:
            readiness.start()
        self._event_thread = threading.Thread(
            target=self._run_events, name="otelbridge-events", daemon=True
        )
        self._source_thread = threading.Thread(
            target=self._run_source, args=(source,), name="otelbridge-source", daemon=True
        )
        self._event_thread.start()
        self._source_thread.start()

    def _run_source(self, source: Source) -> None:
        try:
            source.run(self.offer, self._stop)
        except Exception:  # the source must not die silently: stop, so `run` exits 1
            _log.exception("event source failed")
            self.failed = True
            self._stop.set()

    def _run_events(self) -> None:
        get = self._queue.get
        next_tick = self._clock.now_ns() + _LIVE_TICK_NS
        while not self._stop.is_set():
            try:
                item = get(timeout=0.05)
            except queue.Empty:
                item = None
            if item is not None:
                self.feed(item)
            if self._undecided:
                self._decide_pending()  # every turn: a probe must start promptly
            now = self._clock.now_ns()
            if now >= next_tick or (item is None and self._pending):
                self.tick()
                next_tick = now + _LIVE_TICK_NS
            if self._store is not None and now >= self._next_commit_ns:
                self.checkpoint()
                self._next_commit_ns = now + self._commit_every_ns

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Stops the threads; what the source queued is processed. Without a store,
        startups still in flight are then emitted as ``incomplete`` rather than lost;
        with one, they are checkpointed for the next start. Idempotent; works without
        start()."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        for readiness in self._sources:
            readiness.shutdown()  # no verdict after this: waiting startups are kept/ended
        # the source first: after it, nothing more is queued
        for thread in (self._source_thread, self._event_thread):
            if thread is not None:
                thread.join(timeout_s)
        if self._event_thread is None or not self._event_thread.is_alive():
            # this thread is now the only one feeding the stages
            while True:
                try:
                    self.feed(self._queue.get_nowait())
                except queue.Empty:
                    break
        else:
            _log.error("event thread did not stop in %.1fs; its queue is abandoned", timeout_s)
        if self._store is None:
            in_flight = self.correlator.in_flight
            if in_flight:
                _log.info("shutdown: %d startup(s) in flight emitted as incomplete", in_flight)
            self.finish()
        else:
            # startups in flight are checkpointed and resumed by the next start; completed
            # ones still waiting for their record get one bounded wait, then stay pending
            if self._pending and self._pool is not None:
                self._pool.wait(
                    (item.ticket for item in self._pending), self.config.enrich.metadata_timeout_s
                )
                self._drain(self._clock.now_ns())
            self.checkpoint()
            self._store.close()
        if self._pool is not None:
            self._pool.shutdown()

    @property
    def stopped(self) -> threading.Event:
        return self._stop


__all__ = ["MetadataLookup", "Pipeline", "Source", "SourceItem", "SpanSink"]
