"""The pipeline: the parts of one bridge, wired; it does nothing itself.

* :class:`~otelbridge.pipeline.chain.Chain`: decode -> correlate -> enrich -> emit;
* :class:`~otelbridge.pipeline.records.RecordDesk`: container records, looked up and admitted;
* :class:`~otelbridge.pipeline.arbiter.ReadinessArbiter`: who decides readiness;
* :class:`~otelbridge.pipeline.emitter.Emitter`: spans, judged, into the sink;
* :class:`~otelbridge.pipeline.checkpointer.Checkpointer`: state and spans committed together
  (with a :class:`~otelbridge.export.spool.StateStore`);
* :class:`~otelbridge.pipeline.runner.LiveRunner`: the source and event threads (live).

Two ways to drive it: **replay** (:meth:`Pipeline.feed`, then :meth:`Pipeline.finish`: the
caller's thread runs every stage, deadlines follow event time) and **live**
(:meth:`Pipeline.start` with a source). Which parts a mode gets is decided in one place,
:mod:`otelbridge.app`.

Shutdown joins the source first and feeds what it left in the queue. Without a store it
then emits startups still in flight as ``incomplete``; with one it checkpoints them, and
the next start resumes them. Outstanding lookups are waited for once, at most
``enrich.metadata_timeout_s`` in all.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence

from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otelbridge import sla
from otelbridge.core.clock import Clock, EventTimeClock, SystemClock
from otelbridge.core.config import Config
from otelbridge.core.counters import Counters
from otelbridge.core.model import ReconcileSnapshot, SourceItem, StartupRecord
from otelbridge.correlate.gc import GcTracker
from otelbridge.correlate.pods import PodDirectory, PodTracker
from otelbridge.correlate.startups import Correlator
from otelbridge.decode import Decoder
from otelbridge.enrich.stage import Enricher
from otelbridge.export.spool import StateStore
from otelbridge.pipeline.arbiter import ReadinessArbiter
from otelbridge.pipeline.chain import Chain
from otelbridge.pipeline.checkpointer import Checkpointer
from otelbridge.pipeline.emitter import Emitter, SpanSink
from otelbridge.pipeline.records import MetadataLookup, RecordDecoder, RecordDesk
from otelbridge.pipeline.runner import LiveRunner, Source
from otelbridge.readiness import SOURCE_PROBE, ReadinessSource
from otelbridge.sla import SlaTracker

_log = logging.getLogger(__name__)
_NS = 1_000_000_000
_LIVE_TICK_NS = _NS // 5  # live checks deadlines every 200 ms while a startup is open
# and every second when none is: what remains (tombstones, the GC budget's leak TTL) has
# deadlines of minutes, and an idle bridge should not wake five times a second
_IDLE_TICK_NS = _NS
# a snapshot prepared this recently and unclaimed announces a container (see prompt())
_EXPECTING_NS = 2 * _NS


class Pipeline:
    """One bridge's stages and threads (see the module docstring)."""

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
        record_decoder: RecordDecoder | None = None,
        on_record: Callable[[StartupRecord, list[Span]], None] | None = None,
        store: StateStore | None = None,
        readiness_sources: Sequence[ReadinessSource] = (),
        on_measured: Callable[[StartupRecord, Mapping[str, float]], None] | None = None,
        decide_every_start: bool = False,
        recorded_verdicts: bool = False,
    ) -> None:
        """``sink`` receives the spans; with a ``store`` (then the sink too), state and
        spans are committed together. ``record_decoder``: live, records are read on the
        event connection the source attaches (``lookup`` then reads only at shutdown).
        ``decide_every_start``: ask the arbiter at every ``/tasks/start`` even without
        readiness sources (a recording then holds every verdict). ``recorded_verdicts``:
        a replay of such a recording: the verdicts are its items, the arbiter decides
        nothing."""
        self.config = config
        self.counters = counters
        if clock is None:
            # replay follows event time; a store (live) needs real time, for its
            # restored deadlines are set before any event arrives
            clock = SystemClock() if store is not None else EventTimeClock()
        self._clock: Clock = clock
        wall = wall_clock if wall_clock is not None else SystemClock()
        self.enricher = Enricher(
            config.enrich,
            counters,
            readiness_label=config.readiness.label,
            sla_limits=sla.budgets(config.sla),
        )
        self.records = RecordDesk(
            self.enricher,
            counters,
            clock,
            lookup=lookup,
            asynchronous=lookup_async,
            workers=config.enrich.lookup_workers,
            metadata_timeout_s=config.enrich.metadata_timeout_s,
            decode=record_decoder,
        )
        # a probe's verdict is timed by our reading: see prompt()
        self._probing = any(source.name == SOURCE_PROBE for source in readiness_sources)
        self.runner = LiveRunner(
            self,
            counters,
            clock,
            queue_size=config.source.queue_size,
            batch_window_s=config.source.batch_window_s,
        )
        self.records.on_result(self.runner.wake)
        if self.records.stream is not None:
            self.runner.on_attach.append(self.records.stream.attach)
        self.arbiter = ReadinessArbiter(
            readiness_sources,
            self.records,
            clock,
            wall,
            probe_deadline_s=config.readiness.probe_deadline_s,
            report=self.runner.offer,
            recorded=recorded_verdicts,
        )
        self.sla = SlaTracker(config.sla, clock)
        self.gc = GcTracker(config.sla, clock, counters)
        self.sla.extra.append(self.gc.figures)
        self.pods = PodTracker(
            clock,
            settle_s=config.correlate.pod_settle_s,
            timeout_s=config.correlate.startup_timeout_s,
            idle_s=config.correlate.idle_timeout_s,
        )
        self.correlator = Correlator(
            config.correlate,
            clock,
            counters,
            on_new=self.records.on_new,
            readiness=(
                self.arbiter.ready_now
                if readiness_sources or decide_every_start or recorded_verdicts
                else None
            ),
        )
        self.emitter = Emitter(
            sink,
            self.enricher,
            config.enrich,
            counters,
            sla_tracker=self.sla,
            gc=self.gc,
            pods=self.pods,
            on_measured=on_measured,
            on_record=on_record,
        )
        self._store = store
        self.checkpointer = Checkpointer(store, self.correlator) if store is not None else None
        if self.checkpointer is not None:
            self.emitter.on_emitted = self.checkpointer.emitted
        self.chain = Chain(
            counters,
            clock,
            wall,
            decoder=Decoder(counters),
            correlator=self.correlator,
            records=self.records,
            arbiter=self.arbiter,
            emitter=self.emitter,
            gc=self.gc,
            pods=self.pods,
            checkpointer=self.checkpointer,
        )
        self.connected = threading.Event()
        """Set once the first listing of containerd went through the chain."""
        self.restored = False
        self.tap: Callable[[SourceItem], None] | None = None
        """Sees every item the chain processed, and every readiness verdict the arbiter
        decided, in the order a replay must see them (the recorder; see :meth:`feed`)."""
        self._feeding = False
        self._decisions: list[SourceItem] = []
        self.arbiter.on_decision = self._decided
        self._next_tick_ns = 0
        self._next_commit_ns = 0
        self._commit_every_ns = int(config.state.commit_interval_s * _NS)
        self._closed = False

    @property
    def pod_directory(self) -> PodDirectory:
        return self.records.pods

    @property
    def stopped(self) -> threading.Event:
        return self.runner.stop

    @property
    def failed(self) -> bool:
        """The source died of an unexpected error (the pipeline has stopped)."""
        return self.runner.failed

    @property
    def failure(self) -> str:
        return self.runner.failure

    # -- driving -----------------------------------------------------------------------------
    def feed(self, item: SourceItem) -> None:
        """Runs one item through the chain (replay; live, the event thread's).

        The tap sees the item after the chain, then the verdicts decided while it was
        processed: the container records read meanwhile are then ahead of it in a
        recording, and those verdicts after it, as a replay needs them."""
        if isinstance(item, ReconcileSnapshot):
            self.connected.set()
        if self.tap is None:
            self.chain.feed(item)
            return
        self._feeding = True
        try:
            self.chain.feed(item)
        finally:
            self._feeding = False
            decisions, self._decisions = self._decisions, []
        for out in (item, *decisions):
            self.tap(out)

    def _decided(self, signal: SourceItem) -> None:
        if self.tap is None:
            return
        if self._feeding:
            self._decisions.append(signal)
        else:
            self.tap(signal)

    def tick(self) -> None:
        self.chain.tick()

    def finish(self) -> None:
        """The input has ended: everything in flight is emitted (``incomplete``)."""
        self.chain.finish(self.config.enrich.metadata_timeout_s)

    def turn(self, idle: bool, now_ns: int) -> float:
        """The event thread's work between two items (see the runner); returns how long
        it may sleep: until the next deadline check, or the next commit of changed state.
        An idle turn (a wake-up: a lookup's result arrived) releases held startups."""
        if self.arbiter.undecided:
            self.chain.decide()  # every turn: a probe must start promptly
        if self._open():  # a startup just opened: its deadlines are checked at the fine step
            self._next_tick_ns = min(self._next_tick_ns, now_ns + _LIVE_TICK_NS)
        if now_ns >= self._next_tick_ns or (idle and self.records.holding):
            self.chain.tick()
            self._next_tick_ns = now_ns + (_LIVE_TICK_NS if self._open() else _IDLE_TICK_NS)
        due_ns = self._next_tick_ns
        checkpointer = self.checkpointer
        if checkpointer is not None and checkpointer.dirty:
            if now_ns >= self._next_commit_ns:
                checkpointer.commit()
                self._next_commit_ns = now_ns + self._commit_every_ns
            if checkpointer.dirty:  # still (a failed commit): retry at the next interval
                due_ns = min(due_ns, self._next_commit_ns)
        return max(due_ns - now_ns, 0) / _NS

    def prompt(self) -> bool:
        """Whether the next events must be read as they come (no
        ``source.batch_window_s``): a snapshot was just prepared, so a container is about
        to be created, and its record must be asked for while it exists (``ctr run --rm``
        deletes it a moment later); or a container the probe may judge has not started,
        and its probe must start at ``/tasks/start`` (the first success is its ready
        time)."""
        if self.correlator.expecting(_EXPECTING_NS):
            return True
        if not self._probing:
            return False
        may_name = self.records.may_name_readiness
        return any(may_name(record) for record in self.correlator.awaiting_start())

    def blocked(self) -> bool:
        """A started container waits for its record to decide its readiness: the events
        read after it wait too (an exit read in the same batch would otherwise make it
        ``exited`` before its verdict)."""
        return self.arbiter.undecided

    def _open(self) -> bool:
        """A startup (or a pod's) is open: its deadlines are checked every 200 ms."""
        return bool(
            self.correlator.in_flight
            or self.records.holding
            or self.arbiter.undecided
            or self.pods.starting
        )

    def offer(self, item: SourceItem) -> None:
        """Hands an item to the event thread (the source's and readiness sources' sink)."""
        self.runner.offer(item)

    def start(self, source: Source) -> None:
        """Starts the readiness sources, the source and event threads."""
        self.arbiter.start()
        self.runner.start(source)

    # -- durability --------------------------------------------------------------------------
    def restore(self) -> int | None:
        """Loads the store's checkpoint (once, before start). Returns the newest event time
        the previous run had committed (the source resumes from there)."""
        horizon = self.chain.restore()
        self.restored = True
        return horizon

    def checkpoint(self) -> bool:
        """Commits the changed state and the spans it produced, in one transaction."""
        return self.checkpointer.commit() if self.checkpointer is not None else True

    # -- stopping ----------------------------------------------------------------------------
    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Stops the threads; what the source queued is processed. Without a store,
        startups still in flight are then emitted as ``incomplete``; with one, they are
        checkpointed for the next start. Idempotent; works without start()."""
        if self._closed:
            return
        self._closed = True
        self.runner.stop.set()
        self.arbiter.shutdown()  # no verdict after this
        if self.runner.join(timeout_s):
            self.runner.drain()  # this thread is now the only one feeding the chain
        if self.checkpointer is None:
            in_flight = self.correlator.in_flight
            if in_flight:
                _log.info("shutdown: %d startup(s) in flight emitted as incomplete", in_flight)
            self.finish()
        else:
            # startups in flight are checkpointed and resumed by the next start; completed
            # ones still waiting for their record get one bounded wait, then stay pending
            self.records.wait(self.config.enrich.metadata_timeout_s)
            self.chain.release()
            self.checkpointer.commit()
            assert self._store is not None
            self._store.dropped_at_exit()
            self._store.close()
        self.records.shutdown()


__all__ = ["Pipeline"]
