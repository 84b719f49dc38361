"""The pipeline: source -> decode -> correlate -> enrich -> emit -> export.

Two ways to drive it:

* **replay** (:meth:`Pipeline.feed` then :meth:`Pipeline.finish`): the caller's thread
  runs every stage; deadlines follow event time, so a recording gives the same spans
  however fast it is read;
* **live** (:meth:`Pipeline.start` with a :class:`Source`): the source runs on its own
  thread and hands items over a bounded queue (overflow dropped and counted); one event
  thread runs decode, correlate, enrich and emit, so the events of a container are
  handled in containerd's order; container records are looked up on a small thread pool
  when a container appears, and a completed startup waits for its lookup at most
  ``metadata_timeout_s`` without holding up other containers; the batch processor
  exports on its own thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otelbridge.clock import Clock, EventTimeClock
from otelbridge.config import Config
from otelbridge.correlate import Correlator
from otelbridge.decode import Decoder
from otelbridge.emit import semconv
from otelbridge.emit.spans import build_startup_spans
from otelbridge.enrich.stage import Enricher
from otelbridge.errors import NotFound
from otelbridge.logutil import ThrottledLogger
from otelbridge.model import (
    ContainerInfo,
    ContainerKey,
    RawEnvelope,
    ReconcileSnapshot,
    StartupRecord,
)
from otelbridge.stats import Counters

_log = logging.getLogger(__name__)
_tlog = ThrottledLogger(_log)
_NS = 1_000_000_000
_REPLAY_TICK_NS = _NS // 10  # replay checks deadlines every 100 ms of event time

SourceItem = RawEnvelope | ReconcileSnapshot
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
    lookup: Future[ContainerInfo] | None
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
        lookup: MetadataLookup | None = None,
        lookup_async: bool = True,
        on_record: Callable[[StartupRecord, list[Span]], None] | None = None,
    ) -> None:
        self.config = config
        self.counters = counters
        self._sink = sink
        self._clock: Clock = clock if clock is not None else EventTimeClock()
        self._event_clock = self._clock if isinstance(self._clock, EventTimeClock) else None
        self.enricher = Enricher(config.enrich, counters)
        self._lookup = lookup
        self._on_record = on_record
        self._pool = (
            ThreadPoolExecutor(config.enrich.lookup_workers, thread_name_prefix="otelbridge-lookup")
            if lookup is not None and lookup_async
            else None
        )
        self._lookups: dict[int, Future[ContainerInfo]] = {}
        self._pending: list[_Pending] = []
        self._metadata_timeout_ns = int(config.enrich.metadata_timeout_s * _NS)
        self.decoder = Decoder(counters)
        self.correlator = Correlator(config.correlate, self._clock, counters, on_new=self._on_new)
        self._received = counters.cell(semconv.EVENTS_RECEIVED)  # event thread only
        self._next_replay_tick_ns = 0
        self._queue: queue.Queue[SourceItem] = queue.Queue(config.source.queue_size)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self.connected = threading.Event()

    # -- stages ------------------------------------------------------------------------
    def _on_new(self, record: StartupRecord) -> None:
        if self._lookup is None or record.info is not None:
            return
        self.counters.inc(semconv.METADATA_LOOKUPS)
        if self._pool is not None:
            self._lookups[id(record)] = self._pool.submit(self._read_record, record.key)
            return
        # synchronous lookups (replay: a recorded record, no I/O)
        try:
            record.info = self._read_record(record.key)
        except NotFound:
            self.counters.inc(semconv.METADATA_FAILED)
        except Exception as exc:  # the startup goes on without its record
            self.counters.inc(semconv.METADATA_FAILED)
            _tlog.warning("lookup", "%s: container record lookup failed: %s", record.key, exc)

    def _read_record(self, key: ContainerKey) -> ContainerInfo:
        assert self._lookup is not None
        return self.enricher.admit(self._lookup(key.namespace, key.id))

    def feed(self, item: SourceItem) -> None:
        """Runs one item through every stage. Called from one thread only; never raises:
        bad input is counted by the stages, and a bug costs one item, not the daemon."""
        try:
            self._feed(item)
        except Exception:
            self.counters.inc(semconv.PIPELINE_ERRORS)
            _tlog.log(logging.ERROR, "bug", "could not process %r", item, exc_info=True)

    def _feed(self, item: SourceItem) -> None:
        if type(item) is RawEnvelope:
            self._received.value += 1
            event = self.decoder(item)
            if event is None:
                return
            clock = self._event_clock
            if clock is not None:
                # replay: "now" is the time of the newest decodable event (a corrupt
                # envelope must not move it), set before the event sets any deadline
                clock.observe(event.timestamp_ns)
            for record in self.correlator.process(event):
                self._complete(record)
            if clock is not None and event.timestamp_ns >= self._next_replay_tick_ns:
                self._next_replay_tick_ns = event.timestamp_ns + _REPLAY_TICK_NS
                self.tick()
            return
        assert isinstance(item, ReconcileSnapshot)
        self.connected.set()
        admit = self.enricher.admit
        item = dataclasses.replace(item, containers=tuple(admit(c) for c in item.containers))
        for record in self.correlator.reconcile(item):
            self._complete(record)

    def tick(self) -> None:
        """Applies deadlines and emits startups whose container record has arrived."""
        try:
            for record in self.correlator.expire():
                self._complete(record)
            if self._pending:
                self._drain(self._clock.now_ns())
        except Exception:
            self.counters.inc(semconv.PIPELINE_ERRORS)
            _tlog.log(logging.ERROR, "bug", "deadline check failed", exc_info=True)

    def _complete(self, record: StartupRecord) -> None:
        lookup = self._lookups.pop(id(record), None)
        if lookup is None:
            self._emit(record)
            return
        self._pending.append(
            _Pending(record, lookup, self._clock.now_ns() + self._metadata_timeout_ns)
        )
        self._drain(self._clock.now_ns())

    def _drain(self, now_ns: int) -> None:
        waiting: list[_Pending] = []
        for item in self._pending:
            if item.lookup is not None and not item.lookup.done() and item.deadline_ns > now_ns:
                waiting.append(item)
                continue
            self._join(item)
            self._emit(item.record)
        self._pending = waiting

    def _join(self, item: _Pending) -> None:
        lookup = item.lookup
        record = item.record
        if lookup is None:
            return
        if not lookup.done():
            lookup.cancel()
            self.counters.inc(semconv.METADATA_LATE)
            _tlog.warning("late", "%s: container record not there in time", record.key)
            return
        try:
            info = lookup.result()
        except NotFound:
            self.counters.inc(semconv.METADATA_FAILED)
            _tlog.info("gone", "%s: container gone before its record was read", record.key)
            return
        except Exception as exc:  # any lookup failure leaves the startup unenriched
            self.counters.inc(semconv.METADATA_FAILED)
            _tlog.warning("lookup", "%s: container record lookup failed: %s", record.key, exc)
            return
        if record.info is None:
            record.info = info

    def _emit(self, record: StartupRecord) -> None:
        info = record.info
        if (
            record.container_create_ns is None
            and record.attempt == 1
            and info is not None
            and info.created_at_ns
        ):
            # the create event was missed: the container record's creation time is the
            # stable identity, so live, replay and a restarted bridge derive the same IDs
            record.incarnation_ns = info.created_at_ns
        try:
            spans = build_startup_spans(record, self.enricher.enrich(record))
        except Exception:  # a bug must cost one startup, not the daemon
            _log.exception("%s: could not build spans; startup dropped", record.key)
            self.counters.inc(semconv.SPANS_DROPPED)
            return
        self.counters.inc(semconv.SPANS_EMITTED, len(spans))
        self._sink.submit(spans)
        if self._on_record is not None:
            self._on_record(record, spans)

    def finish(self) -> None:
        """The input has ended: completes every in-flight startup (``incomplete``)."""
        for record in self.correlator.flush():
            self._complete(record)
        for item in self._pending:
            if item.lookup is not None:
                with contextlib.suppress(Exception):  # _join accounts for failures
                    item.lookup.result(timeout=self.config.enrich.metadata_timeout_s)
        self._drain(self._clock.now_ns())

    # -- live --------------------------------------------------------------------------
    def offer(self, item: SourceItem) -> None:
        """Called by the source thread. Envelopes are dropped (and counted) when the
        queue is full; reconcile snapshots wait for room, they must not be lost."""
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
        """Starts the source and event threads."""
        src = threading.Thread(
            target=self._run_source, args=(source,), name="otelbridge-source", daemon=True
        )
        worker = threading.Thread(target=self._run_events, name="otelbridge-events", daemon=True)
        self._threads = [src, worker]
        worker.start()
        src.start()

    def _run_source(self, source: Source) -> None:
        try:
            source.run(self.offer, self._stop)
        except Exception:  # the source must not die silently
            _log.exception("event source failed")
            self._stop.set()

    def _run_events(self) -> None:
        get = self._queue.get
        tick_every_ns = _NS // 5
        next_tick = self._clock.now_ns() + tick_every_ns
        while True:
            try:
                item = get(timeout=0.05)
            except queue.Empty:
                item = None
            if item is not None:
                self.feed(item)
            now = self._clock.now_ns()
            if now >= next_tick or (item is None and self._pending):
                self.tick()
                next_tick = now + tick_every_ns
            if self._stop.is_set() and self._queue.empty():
                return

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Stops the threads and emits everything known: startups still in flight are
        emitted as ``incomplete`` rather than lost. Idempotent; works without start()."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout_s)
        in_flight = self.correlator.in_flight
        if in_flight:
            _log.info("shutdown: %d startup(s) in flight emitted as incomplete", in_flight)
        self.finish()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def stopped(self) -> threading.Event:
        return self._stop


__all__ = ["MetadataLookup", "Pipeline", "Source", "SourceItem", "SpanSink"]
