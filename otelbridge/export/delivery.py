"""The delivery engine: spans in a storage -> every exporter, each at its own pace.

One engine serves every mode: the storage is a bounded memory queue
(:class:`~otelbridge.export.storage.MemoryStorage`) or the SQLite spool
(:class:`~otelbridge.export.spool.StateStore`). Like the OpenTelemetry Collector's
exporter helper, each exporter gets its own *lane*, a thread with its own cursor in the
storage::

    pipeline --submit/commit--> storage ==> lane "otlp/grpc ..."  -> OtlpGrpcExporter
                                        ==> lane "jsonl /x.jsonl" -> JsonlExporter

Contracts:

* **per-exporter progress**: a lane reads up to ``max_batch_size`` entries after its
  cursor, sends them as ONE request (one ``ResourceSpans``, one ``ScopeSpans``) and
  moves its cursor past them once the exporter is done with them: accepted (counted
  exported, minus a partial success's rejected spans, counted dropped), refused
  permanently (counted dropped) or given up on (counted dropped). A batch is never sent
  again to an exporter that took it, whatever the others do; the storage forgets an
  entry once every lane is past it.
* **one retry policy**: a ``RETRY`` answer (collector down, overloaded) is retried with
  :class:`~otelbridge.core.backoff.Backoff` (``initial_backoff_s`` doubling to
  ``max_backoff_s``, jittered; a delay the receiver asked for is honoured). The wait is
  held: new spans do not cut it short, only shutdown does. With ``max_elapsed_s`` set
  (memory storage) a batch still failing that long after its first attempt is dropped and
  counted; with ``None`` (the spool) it is retried until the collector answers: the disk,
  not memory, absorbs the outage.
* **an exporter that raises** is counted (``otelbridge.export.errors``) and treated as a
  retry; a bug anywhere in a lane is logged, counted and waited out with the backoff:
  nothing ends a lane but shutdown.
* **batching**: a lane sends when ``max_batch_size`` entries are waiting or
  ``schedule_delay_s`` has passed since its previous send (real time: the storage's
  condition variable).
* **shutdown(timeout_s)**: lanes send what is stored until the deadline, cutting their
  backoff short; then they stop. What is left is counted dropped (memory) or stays on
  disk for the next start (spool).

"Now" for retry deadlines and log throttling comes from the injected clock, and waits
between attempts go through the injected ``sleep``, so a test runs an outage of minutes in
no time. Counting is per exporter: with two exporters every span is counted twice.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Final

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from otelbridge.core import semconv
from otelbridge.core.backoff import Backoff
from otelbridge.core.clock import Clock, SystemClock
from otelbridge.core.counters import Counters
from otelbridge.core.errors import ConfigError
from otelbridge.core.logutil import LogThrottle
from otelbridge.export import (
    NO_FEEDBACK,
    ExportFeedback,
    ExportResult,
    ReportsFeedback,
    SpanExporter,
    exporter_name,
)
from otelbridge.export.storage import Entry, Storage

__all__ = ["Delivery", "DeliveryConfig"]

log = logging.getLogger(__name__)
_EMPTY_WAIT_S = 30.0  # a safety net only: storage wakes a waiting lane when an entry comes
_NS: Final = 1_000_000_000
#: a lane that lost its exporter logs a failure at most this often (it counts every one)
_LOG_INTERVAL_S: Final = 30.0


@dataclasses.dataclass(frozen=True)
class DeliveryConfig:
    """Sizes and timings of the delivery engine. Defaults live here and nowhere else."""

    max_queue_size: int = 20480
    """Memory storage: spans held at most; beyond it new spans are dropped
    (``OTEL_BSP_MAX_QUEUE_SIZE``). The spool's bound is ``state.max_spool_mb``."""

    max_batch_size: int = 512
    """Spans per export request at most (``OTEL_BSP_MAX_EXPORT_BATCH_SIZE``)."""

    schedule_delay_s: float = 1.0
    """Longest wait before a partly filled batch is sent, in seconds
    (``OTEL_BSP_SCHEDULE_DELAY``, given in milliseconds)."""

    max_elapsed_s: float | None = 60.0
    """How long a batch is retried after its first attempt before it is dropped;
    ``None``: until it is delivered (the spool)."""

    initial_backoff_s: float = 0.5
    """Wait before the first retry; doubles with each further retry (jittered)."""

    max_backoff_s: float = 5.0
    """Longest wait between two attempts, unless the receiver asks for a longer one."""

    def validate(self) -> list[str]:
        """Every problem of this configuration (empty when it is usable)."""
        problems: list[str] = []
        if self.max_queue_size < 1:
            problems.append(f"max_queue_size: {self.max_queue_size} is not positive")
        if self.max_batch_size < 1:
            problems.append(f"max_batch_size: {self.max_batch_size} is not positive")
        elif self.max_batch_size > self.max_queue_size >= 1:
            problems.append(
                f"max_batch_size: {self.max_batch_size} exceeds max_queue_size "
                f"{self.max_queue_size}"
            )
        if not math.isfinite(self.schedule_delay_s) or self.schedule_delay_s <= 0:
            problems.append(f"schedule_delay_s: {self.schedule_delay_s} is not a positive duration")
        if self.max_elapsed_s is not None and (
            not math.isfinite(self.max_elapsed_s) or self.max_elapsed_s < 0
        ):
            problems.append(f"max_elapsed_s: {self.max_elapsed_s} is negative")
        problems.extend(_backoff_problems(self.initial_backoff_s, self.max_backoff_s))
        return problems

    def backoff(self) -> Backoff:
        return Backoff(initial_s=self.initial_backoff_s, max_s=self.max_backoff_s)

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: float | None) -> DeliveryConfig:
        """Reads ``OTEL_BSP_MAX_QUEUE_SIZE``, ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE`` and
        ``OTEL_BSP_SCHEDULE_DELAY`` (milliseconds); empty values count as unset.
        ``overrides`` replace other fields (the spool's ``max_elapsed_s=None``).

        Raises :class:`~otelbridge.core.errors.ConfigError` listing every invalid variable.
        """
        problems: list[str] = []
        default = cls()

        def integer(name: str, fallback: int) -> int:
            raw = environ.get(name, "").strip()
            if not raw:
                return fallback
            try:
                value = int(raw)
            except ValueError:
                problems.append(f"{name}: {raw!r} is not an integer")
                return fallback
            if value < 1:
                problems.append(f"{name}: {raw!r} is not positive")
                return fallback
            return value

        queue = integer("OTEL_BSP_MAX_QUEUE_SIZE", default.max_queue_size)
        batch = integer("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", default.max_batch_size)
        delay_ms = integer("OTEL_BSP_SCHEDULE_DELAY", int(default.schedule_delay_s * 1000))
        if batch > queue:
            problems.append(
                f"OTEL_BSP_MAX_EXPORT_BATCH_SIZE: {batch} exceeds OTEL_BSP_MAX_QUEUE_SIZE {queue}"
            )
        if problems:
            raise ConfigError(problems)
        config = dataclasses.replace(
            default,
            max_queue_size=queue,
            max_batch_size=batch,
            schedule_delay_s=delay_ms / 1000,
            **overrides,  # type: ignore[arg-type]
        )
        problems = config.validate()
        if problems:
            raise ConfigError(problems)
        return config


def _backoff_problems(initial_s: float, max_s: float) -> list[str]:
    problems = []
    for name, value in (("initial_backoff_s", initial_s), ("max_backoff_s", max_s)):
        if not math.isfinite(value) or value <= 0:
            problems.append(f"{name}: {value} is not a positive duration")
    if not problems and initial_s > max_s:
        problems.append(f"initial_backoff_s: {initial_s} exceeds max_backoff_s {max_s}")
    return problems


class Delivery:
    """The delivery engine (see the module docstring): one lane per exporter.

    ``start``, ``force_flush``, ``shutdown``, ``problems`` and ``alive`` may be called from
    any thread. Exporters are called from their lane's thread only, or, when
    :meth:`start` was never called, from the thread calling ``force_flush``/``shutdown``.
    """

    def __init__(
        self,
        exporters: Sequence[SpanExporter],
        storage: Storage,
        resource: Resource,
        scope: InstrumentationScope,
        counters: Counters,
        *,
        config: DeliveryConfig | None = None,
        clock: Clock | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.config = config if config is not None else DeliveryConfig()
        problems = self.config.validate()
        if problems:
            raise ConfigError(problems)
        self.storage = storage
        self._resource = resource
        self._scope = scope
        self._counters = counters
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._backoff = self.config.backoff()
        self._stop = threading.Event()  # shutdown began: cut waits short
        self._abandon = threading.Event()  # shutdown gave up waiting: lanes must stop now
        self._sleep = sleep if sleep is not None else self._default_sleep
        self._deadline_ns: int | None = None
        self._closed = False
        self._started = False
        self._lanes = [
            _Lane(self, exporter, name)
            for exporter, name in zip(exporters, _lane_names(exporters), strict=True)
        ]
        storage.attach([lane.name for lane in self._lanes])

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Starts one thread per exporter. Idempotent; ``RuntimeError`` after shutdown."""
        if self._closed:
            raise RuntimeError("Delivery.start() after shutdown()")
        if self._started:
            return
        self._started = True
        for lane in self._lanes:
            lane.start()

    def force_flush(self, timeout_s: float = 30.0) -> bool:
        """Delivers everything stored before the call; waits at most ``timeout_s``.
        True when every lane is done with it in time (delivered, or given up on and
        counted). Without :meth:`start` the lanes run on the calling thread."""
        target = self.storage.newest()
        deadline = time.monotonic() + timeout_s
        if not self._started:
            for lane in self._lanes:
                lane.drain(target, self._clock.now_ns() + int(timeout_s * _NS))
        for lane in self._lanes:
            lane.flush_to(target)
        self.storage.wake()
        while time.monotonic() < deadline:
            if all(self.storage.cursor(lane.name) >= target for lane in self._lanes):
                return True
            time.sleep(min(0.01, max(deadline - time.monotonic(), 0.0)))
        return all(self.storage.cursor(lane.name) >= target for lane in self._lanes)

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Sends what is stored for at most ``timeout_s``, then stops every lane and shuts
        the exporters down. What is left is counted dropped by a memory storage's
        lanes, kept on disk by the spool's. Idempotent; works without :meth:`start`."""
        if self._closed:
            return
        self._closed = True
        # retries end a little before timeout_s: the attempt in flight then has the rest
        # to finish and be counted before join() gives up on its thread
        self._deadline_ns = self._clock.now_ns() + int(timeout_s * 0.9 * _NS)
        self.storage.close()
        self._stop.set()
        self.storage.wake()
        if self._started:
            deadline = time.monotonic() + timeout_s
            for lane in self._lanes:
                lane.join(max(deadline - time.monotonic(), 0.0))
            self._abandon.set()
            for lane in self._lanes:
                if lane.alive():
                    log.warning(
                        "export to %s still busy at shutdown: abandoned", lane.exporter_name
                    )
        else:
            for lane in self._lanes:
                lane.drain(self.storage.newest(), self._deadline_ns)
        for lane in self._lanes:
            lane.finish()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def alive(self) -> bool:
        """False when a lane that should run is not running (never expected)."""
        return not self._started or self._closed or all(lane.alive() for lane in self._lanes)

    def problems(self) -> list[str]:
        """What stands in the way of delivery now, one line per exporter (for /readyz)."""
        out = []
        for lane in self._lanes:
            problem = lane.problem()
            if problem:
                out.append(problem)
        return out

    # -- for the lanes ---------------------------------------------------------------------
    def _default_sleep(self, seconds: float) -> None:
        # new spans never cut a backoff short (notify wakes the storage, not this); a
        # shutdown does, once: from then on lanes wait in small steps up to its deadline
        if not self._stop.is_set():
            self._stop.wait(seconds)
        else:
            self._abandon.wait(seconds)

    def past_deadline(self) -> bool:
        return self._deadline_ns is not None and self._clock.now_ns() >= self._deadline_ns

    def remaining_s(self) -> float | None:
        if self._deadline_ns is None:
            return None
        return max(self._deadline_ns - self._clock.now_ns(), 0) / _NS

    def build_request(self, spans: list[Span]) -> ExportTraceServiceRequest:
        scope_spans = ScopeSpans(scope=self._scope, spans=spans)
        resource_spans = ResourceSpans(resource=self._resource, scope_spans=[scope_spans])
        return ExportTraceServiceRequest(resource_spans=[resource_spans])


class _Lane:
    """One exporter's thread, cursor and retry state."""

    def __init__(self, engine: Delivery, exporter: SpanExporter, name: str) -> None:
        self.engine = engine
        self.exporter = exporter
        self.name = name
        self.exporter_name = exporter_name(exporter)
        self._reporter = exporter if isinstance(exporter, ReportsFeedback) else None
        self._counters = engine._counters
        self._clock = engine._clock
        self._thread: threading.Thread | None = None
        self._last_send = time.monotonic()
        self._flush_target = 0
        self._failing_since_ns: int | None = None
        self._last_error = ""
        self._fail_log = LogThrottle(_LOG_INTERVAL_S, clock=engine._clock)
        self._drop_log = LogThrottle(_LOG_INTERVAL_S, clock=engine._clock)
        self._raise_log = LogThrottle(_LOG_INTERVAL_S, clock=engine._clock)

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"otelbridge-export-{self.name}", daemon=True
        )
        self._thread.start()

    def join(self, timeout_s: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def flush_to(self, target: int) -> None:
        self._flush_target = max(self._flush_target, target)

    def problem(self) -> str | None:
        since = self._failing_since_ns
        if since is None:
            return None
        seconds = max(self._clock.now_ns() - since, 0) / _NS
        return (
            f"export to {self.exporter_name} failing for {seconds:.0f}s "
            f"({self.engine.storage.pending(self.name)} spans waiting): {self._last_error}"
        )

    def finish(self) -> None:
        """After the lane stopped: counts what a memory storage loses, shuts the
        exporter down."""
        storage = self.engine.storage
        if not storage.durable:
            left = storage.pending(self.name)
            if left:
                self._counters.inc(semconv.SPANS_DROPPED, left)
                log.warning(
                    "shutdown: %d spans not delivered to %s; dropped", left, self.exporter_name
                )
                storage.advance(self.name, storage.newest())
        try:
            self.exporter.shutdown()
        except Exception:
            log.exception("shutting down exporter %s failed", self.exporter_name)

    # -- the loop --------------------------------------------------------------------------
    def _run(self) -> None:
        failures = 0
        while not self.engine._abandon.is_set():
            try:
                if not self._step():
                    return
                failures = 0
            except Exception:  # a bug (or the storage failing) must not end delivery
                failures += 1
                self._counters.inc(semconv.PIPELINE_ERRORS)
                log.exception("export lane %s failed; going on", self.name)
                if self.engine.past_deadline():
                    return
                self.engine._sleep(self.engine._backoff.delay(failures))

    def _step(self) -> bool:
        """One turn: waits for a batch or sends one. False when the lane is done."""
        engine = self.engine
        storage = engine.storage
        config = engine.config
        # read before the flags a shutdown or a flush sets ahead of its wake(): a wake
        # that comes after this line ends the wait below even if it came before the wait
        epoch = storage.epoch()
        closing = engine.stopping
        if closing and engine.past_deadline():
            return False
        entries = storage.read(self.name, config.max_batch_size)
        if not entries:
            if closing:
                return False
            # nothing to send: sleep until an entry comes (a wait ends on it, and on wake),
            # not a schedule delay at a time (issue 12: an idle bridge polled here)
            storage.wait(self.name, 1, _EMPTY_WAIT_S, epoch)
            return True
        flushing = self._flush_target > storage.cursor(self.name)
        if len(entries) < config.max_batch_size and not closing and not flushing:
            due = self._last_send + config.schedule_delay_s
            now = time.monotonic()
            if now < due:  # let a fuller batch gather
                storage.wait(self.name, config.max_batch_size, due - now, epoch)
                return True
        self._send(entries)
        self._last_send = time.monotonic()
        return True

    def drain(self, target: int, deadline_ns: int) -> None:
        """Sends on the calling thread up to ``target`` (no lane thread runs)."""
        storage = self.engine.storage
        while storage.cursor(self.name) < target and self._clock.now_ns() < deadline_ns:
            entries = storage.read(self.name, self.engine.config.max_batch_size)
            if not entries:
                return
            self._send(entries, deadline_ns)

    def _send(self, entries: list[Entry], deadline_ns: int | None = None) -> None:
        """Sends one batch until the exporter is done with it; then moves the cursor. At
        shutdown's deadline a spool batch is left where it is (sent at the next start)."""
        engine = self.engine
        spans, corrupt = _spans_of(entries)
        if corrupt:
            self._counters.inc(semconv.SPANS_DROPPED, corrupt)
            log.warning("%d unreadable spans in the spool skipped for %s", corrupt, self.name)
        upto = entries[-1][0]
        if not spans:
            engine.storage.advance(self.name, upto)
            return
        n = len(spans)
        request = engine.build_request(spans)
        first_ns = self._clock.now_ns()
        max_elapsed = engine.config.max_elapsed_s
        attempt = 0
        while True:
            result, feedback = self._attempt(request, n)
            if engine._abandon.is_set():
                return  # shutdown gave up on this lane and counted what it held
            if result is ExportResult.SUCCESS:
                self._delivered(n, feedback, attempt, first_ns)
                break
            if result is ExportResult.FAILURE:
                self._counters.inc(semconv.SPANS_DROPPED, n)
                self._recovered()
                self._log_drop(n, f"refused permanently: {feedback.error or 'no reason given'}")
                break
            attempt += 1
            now = self._clock.now_ns()
            self._failing(now, feedback.error or "asked to retry")
            elapsed_s = (now - first_ns) / _NS
            hard = deadline_ns is not None and now >= deadline_ns
            if hard or engine.past_deadline():
                if engine.storage.durable:
                    return  # stays on disk: the next start sends it
                self._counters.inc(semconv.SPANS_DROPPED, n)
                self._log_drop(n, "shutdown came while the receiver was unavailable")
                break
            if max_elapsed is not None and elapsed_s >= max_elapsed:
                self._counters.inc(semconv.SPANS_DROPPED, n)
                self._log_drop(n, f"still failing after {elapsed_s:.1f}s of retries")
                break
            delay = engine._backoff.delay(attempt, feedback.retry_after_s)
            if (
                max_elapsed is not None
                and elapsed_s + delay > max_elapsed
                and feedback.retry_after_s
            ):
                # the receiver asks for a wait this batch cannot be given: dropped now, as
                # the Collector's exporter helper does, rather than sent too early
                self._counters.inc(semconv.SPANS_DROPPED, n)
                self._log_drop(
                    n,
                    f"the receiver asked to wait {feedback.retry_after_s:.1f}s, more than the "
                    f"{max(max_elapsed - elapsed_s, 0.0):.1f}s of retries left",
                )
                break
            for bound in (
                max_elapsed - elapsed_s if max_elapsed is not None else None,
                engine.remaining_s(),
                (deadline_ns - now) / _NS if deadline_ns is not None else None,
            ):
                if bound is not None:
                    delay = min(delay, max(bound, 0.0))
            self._log_failure(n, feedback, delay, attempt)
            engine._sleep(delay)
            if engine._abandon.is_set():
                return
            self._counters.inc(semconv.EXPORT_RETRIES)
        engine.storage.advance(self.name, upto)

    def _attempt(
        self, request: ExportTraceServiceRequest, n: int
    ) -> tuple[ExportResult, ExportFeedback]:
        try:
            result = self.exporter.export(request, n)
            feedback = self._reporter.last_feedback() if self._reporter else NO_FEEDBACK
        except Exception as exc:  # its bug: counted, and retried like a temporary failure
            self._counters.inc(semconv.EXPORT_ERRORS)
            times = self._raise_log.ready()
            if times is not None:
                log.error(
                    "exporter %s raised, which it must not (%d times since the last message)",
                    self.exporter_name,
                    times,
                    exc_info=True,
                )
            return ExportResult.RETRY, ExportFeedback(error=f"the exporter raised {exc!r}")
        return result, feedback

    def _delivered(self, n: int, feedback: ExportFeedback, attempt: int, first_ns: int) -> None:
        rejected = min(feedback.rejected_spans, n)
        self._counters.inc(semconv.SPANS_EXPORTED, n - rejected)
        if rejected:
            self._counters.inc(semconv.SPANS_DROPPED, rejected)
        if attempt:
            seconds = (self._clock.now_ns() - first_ns) / _NS
            log.warning(
                "export to %s works again: delivered after %d retries (%.1fs)",
                self.exporter_name,
                attempt,
                seconds,
            )
        self._recovered()

    def _failing(self, now_ns: int, error: str) -> None:
        if self._failing_since_ns is None:
            self._failing_since_ns = now_ns
        self._last_error = error

    def _recovered(self) -> None:
        self._failing_since_ns = None
        self._last_error = ""
        self._fail_log = LogThrottle(_LOG_INTERVAL_S, clock=self._clock)

    def _log_failure(self, n: int, feedback: ExportFeedback, delay: float, attempt: int) -> None:
        times = self._fail_log.ready()
        if times is None:
            return
        asked = (
            f" (the receiver asked for {feedback.retry_after_s:.1f}s)"
            if feedback.retry_after_s
            else ""
        )
        log.warning(
            "export to %s failed: %s; %d spans in this batch, %d waiting; retry %d in %.1fs%s%s",
            self.exporter_name,
            feedback.error or "asked to retry",
            n,
            self.engine.storage.pending(self.name),
            attempt,
            delay,
            asked,
            f" ({times} failures since the last message)" if times > 1 else "",
        )

    def _log_drop(self, n: int, why: str) -> None:
        times = self._drop_log.ready()
        if times is not None:
            log.warning(
                "dropped a batch of %d spans for %s: %s%s",
                n,
                self.exporter_name,
                why,
                f" ({times} such drops since the last message)" if times > 1 else "",
            )


def _lane_names(exporters: Sequence[SpanExporter]) -> list[str]:
    """Each exporter's lane name: its own name (a spool keeps progress under it, so the
    order of ``OTEL_TRACES_EXPORTER`` does not matter), ``#2``, ``#3`` for a repeat."""
    seen: dict[str, int] = {}
    names = []
    for exporter in exporters:
        name = exporter_name(exporter)
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name} #{seen[name]}")
    return names


def _spans_of(entries: list[Entry]) -> tuple[list[Span], int]:
    """The spans of a batch, and how many entries could not be parsed."""
    spans: list[Span] = []
    corrupt = 0
    for _, item in entries:
        if isinstance(item, Span):
            spans.append(item)
            continue
        try:
            spans.append(Span.FromString(item))
        except Exception:  # a corrupt row must not block the spool: skipped, counted
            corrupt += 1
    return spans, corrupt
