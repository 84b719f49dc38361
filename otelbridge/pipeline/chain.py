"""The stage chain: one item at a time through decode -> correlate -> enrich -> emit.

:meth:`Chain.feed` takes what the event thread processes, in order: containerd's
envelopes (decoded, correlated into startups and reclaims), listings of containerd
(reconciled), and readiness verdicts. A completed startup goes to its readiness arbiter
(to stop a source still watching it), to the checkpointer (as "completed, not emitted"),
and, once its container record is there or waited for long enough, to the emitter.
:meth:`Chain.tick` applies the deadlines (timeouts, idle eviction, records that took too
long, pods settled, leaked snapshots).

Deadlines follow the injected clock: the wall clock live, event time in replay (an
:class:`~otelbridge.core.clock.EventTimeClock` moved by each envelope, so a recording gives
the same spans however fast it is read). Not thread-safe: one thread feeds it.
"""

from __future__ import annotations

import dataclasses
import logging

from otelbridge.core import semconv
from otelbridge.core.clock import Clock, EventTimeClock
from otelbridge.core.counters import Counters
from otelbridge.core.logutil import ThrottledLogger
from otelbridge.core.model import (
    RawEnvelope,
    ReadySignal,
    ReconcileSnapshot,
    SourceItem,
    StartupRecord,
)
from otelbridge.correlate.gc import GcTracker
from otelbridge.correlate.pods import PodTracker
from otelbridge.correlate.startups import Correlator
from otelbridge.decode import Decoder
from otelbridge.pipeline.arbiter import ReadinessArbiter
from otelbridge.pipeline.checkpointer import Checkpointer
from otelbridge.pipeline.emitter import Emitter
from otelbridge.pipeline.records import RecordDesk

_tlog = ThrottledLogger(logging.getLogger(__name__))
_NS = 1_000_000_000
_REPLAY_TICK_NS = _NS // 10  # replay checks deadlines every 100 ms of event time
# an envelope dated this far past the machine's clock is corrupt: it must not move event
# time (replay) and time out every startup in flight
_MAX_FUTURE_NS = 24 * 3600 * _NS


class Chain:
    """The stages for one source, wired (see the module docstring)."""

    def __init__(
        self,
        counters: Counters,
        clock: Clock,
        wall: Clock,
        *,
        decoder: Decoder,
        correlator: Correlator,
        records: RecordDesk,
        arbiter: ReadinessArbiter,
        emitter: Emitter,
        gc: GcTracker,
        pods: PodTracker,
        checkpointer: Checkpointer | None = None,
    ) -> None:
        self.counters = counters
        self._clock = clock
        self._event_clock = clock if isinstance(clock, EventTimeClock) else None
        self._wall = wall
        self.decoder = decoder
        self.correlator = correlator
        self.records = records
        self.arbiter = arbiter
        self.emitter = emitter
        self.gc = gc
        self.pods = pods
        self.checkpointer = checkpointer
        self._received = counters.cell(semconv.EVENTS_RECEIVED)  # event thread only
        self._next_replay_tick_ns = 0
        # refreshed by every deadline check: reading the wall clock per event costs more
        # than the day of slack this bound has
        self._future_limit_ns = wall.now_ns() + _MAX_FUTURE_NS

    def feed(self, item: SourceItem) -> None:
        """Runs one item through every stage. Never raises: bad input is counted by the
        stages, and a bug costs one item, not the daemon."""
        try:
            self._feed(item)
        except Exception:
            self.counters.inc(semconv.PIPELINE_ERRORS)
            _tlog.log(logging.ERROR, "bug", "could not process %r", item, exc_info=True)

    def _feed(self, item: SourceItem) -> None:
        if type(item) is ReadySignal:
            self.arbiter.verdict(item)
            for record in self.correlator.ready(item):
                self.complete(record)
            return
        if type(item) is RawEnvelope:
            self._envelope(item)
            return
        assert isinstance(item, ReconcileSnapshot)
        item = dataclasses.replace(item, containers=self.records.admit_listing(item.containers))
        for record in self.correlator.reconcile(item):
            self.complete(record)

    def _envelope(self, envelope: RawEnvelope) -> None:
        self._received.value += 1
        event = self.decoder(envelope)
        if event is None:
            return
        if event.timestamp_ns > self._future_limit_ns:
            self.counters.inc(semconv.EVENTS_MALFORMED)
            _tlog.warning(
                "future", "skipping %s of %s dated in the future", envelope.topic, event.key
            )
            return
        if self.checkpointer is not None:
            self.checkpointer.observe(event.timestamp_ns)
        clock = self._event_clock
        if clock is not None:
            # replay: "now" is the time of the newest decodable event, set before the
            # event sets any deadline
            clock.observe(event.timestamp_ns)
        for record in self.correlator.process(event):
            self.complete(record)
        for reclaim in self.gc.process(event):
            self.emitter.reclaim(reclaim)
        if clock is not None and event.timestamp_ns >= self._next_replay_tick_ns:
            self._next_replay_tick_ns = event.timestamp_ns + _REPLAY_TICK_NS
            self.tick()

    def complete(self, record: StartupRecord) -> None:
        """A startup is over: emitted now, or once its container record is there."""
        self.arbiter.ended(record)
        if self.checkpointer is not None:
            self.checkpointer.completed(record)
        if not self.records.hold(record):
            self.emitter.startup(record)
            return
        self.release()

    def release(self, *, force: bool = False) -> None:
        """Emits the held startups whose record arrived (``force``: all of them)."""
        for record in self.records.release(force=force):
            self.emitter.startup(record)

    def decide(self) -> None:
        """Decides the readiness of started containers whose record has arrived."""
        for signal in self.arbiter.decide_pending():
            for done in self.correlator.ready(signal):
                self.complete(done)

    def tick(self) -> None:
        """Applies deadlines and emits startups whose container record has arrived."""
        self._future_limit_ns = self._wall.now_ns() + _MAX_FUTURE_NS
        try:
            for record in self.correlator.expire():
                self.complete(record)
            if self.records.holding:
                self.release()
            if self.arbiter.undecided:
                self.decide()
            self.gc.expire()
            for pod in self.pods.expire():
                self.emitter.pod(pod)
        except Exception:
            self.counters.inc(semconv.PIPELINE_ERRORS)
            _tlog.log(logging.ERROR, "bug", "deadline check failed", exc_info=True)

    def finish(self, metadata_timeout_s: float) -> None:
        """The input has ended: completes every in-flight startup (``incomplete``) and
        emits everything, waiting for outstanding lookups at most ``metadata_timeout_s``."""
        for record in self.correlator.flush():
            self.complete(record)
        if self.records.holding:
            self.records.wait(metadata_timeout_s)
            self.release(force=True)
        for pod in self.pods.flush():
            self.emitter.pod(pod)

    def restore(self) -> int | None:
        """Loads the checkpoint (once, before any item): in-flight startups are tracked
        again (their records looked up, readiness re-armed), startups completed but not
        emitted before the crash are emitted. Returns the newest event time the previous
        run had committed (the source resumes from there)."""
        assert self.checkpointer is not None
        cp = self.checkpointer.load()
        for record, _ in cp.in_flight:
            self.arbiter.rearm(record)
        for record in cp.unemitted:  # completed before the crash, spans never committed
            self.records.on_new(record)
            self.complete(record)
        return cp.horizon_ns


__all__ = ["Chain"]
