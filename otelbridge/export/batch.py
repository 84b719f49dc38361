"""The batch processor: a bounded span queue, one export thread, retries with backoff.

Data flow::

    emit stage --submit(spans)--> [bounded queue] --export thread--> one request per batch
                                                                      -> every exporter

Contracts:

* :meth:`BatchProcessor.submit` is called from any thread, never blocks on export and
  never raises. When the queue is full the **newest** spans (those being submitted) are
  dropped: the queue keeps the older spans, which are closer to being sent, and a drop is
  counted in ``otelbridge.spans.dropped`` with a throttled warning.
* The export thread (started by :meth:`BatchProcessor.start`) sends a batch when
  ``max_batch_size`` spans are queued or ``schedule_delay_s`` has passed since the last
  batch. Each batch is ONE ``ExportTraceServiceRequest`` with one ``ResourceSpans`` (the
  bridge's resource) holding one ``ScopeSpans`` (its instrumentation scope).
* Every exporter gets every batch. An exporter answering ``FAILURE`` loses the batch
  (counted as dropped) without affecting the others; exporters answering ``RETRY`` are
  retried, and only they, with exponential backoff and jitter (tenacity), until
  ``max_elapsed_s`` has passed since the first attempt; then the batch is dropped for them
  and counted. A delay requested by the receiver (:class:`~otelbridge.export.ExportFeedback`)
  is honoured. While one batch is being retried, later batches wait in the queue (and the
  queue may fill up and drop): that is the back-pressure of an outage, and it is counted.
* Counting, per exporter: ``otelbridge.spans.exported`` gets the spans the receiver
  accepted, ``otelbridge.spans.dropped`` the ones refused (partial success), failed or given
  up, ``otelbridge.export.retries`` one per exporter per repeated attempt. With one exporter
  (the usual case) every emitted span ends up exactly once in exported or dropped; with
  several, once per exporter.

"Now" for retry deadlines and log throttling comes from the injected clock, and the waits
between attempts go through the injected ``sleep``, so tests can run an outage of a minute
in no time. The schedule delay and the ``timeout_s`` of :meth:`force_flush` and
:meth:`shutdown` are waits on a condition variable in real time, because a fake clock
cannot wake a sleeping thread.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Final

import tenacity
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from otelbridge.core.clock import Clock, SystemClock
from otelbridge.core.counters import Counters
from otelbridge.core.errors import ConfigError, RetryableExportError
from otelbridge.core.semconv import EXPORT_RETRIES, SPANS_DROPPED, SPANS_EXPORTED
from otelbridge.export import (
    NO_FEEDBACK,
    ExportFeedback,
    ExportResult,
    LogThrottle,
    ReportsFeedback,
    SpanExporter,
)

__all__ = ["BatchConfig", "BatchProcessor"]

log = logging.getLogger(__name__)

_NS: Final = 1_000_000_000


@dataclasses.dataclass(frozen=True)
class BatchConfig:
    """Sizes and timings of the batch processor. Defaults live here and nowhere else."""

    max_queue_size: int = 20480
    """Spans held at most while waiting for export; beyond it new spans are dropped
    (``OTEL_BSP_MAX_QUEUE_SIZE``)."""

    max_batch_size: int = 512
    """Spans per export request at most (``OTEL_BSP_MAX_EXPORT_BATCH_SIZE``)."""

    schedule_delay_s: float = 1.0
    """Longest wait before a partly filled batch is sent, in seconds
    (``OTEL_BSP_SCHEDULE_DELAY``, given in milliseconds)."""

    max_elapsed_s: float = 60.0
    """How long a batch is retried after its first attempt before it is dropped."""

    initial_backoff_s: float = 0.5
    """Wait before the first retry; doubles with each further retry (plus jitter)."""

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
        for name in ("schedule_delay_s", "initial_backoff_s", "max_backoff_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                problems.append(f"{name}: {value} is not a positive duration")
        if not math.isfinite(self.max_elapsed_s) or self.max_elapsed_s < 0:
            problems.append(f"max_elapsed_s: {self.max_elapsed_s} is negative")
        if self.initial_backoff_s > self.max_backoff_s:
            problems.append(
                f"initial_backoff_s: {self.initial_backoff_s} exceeds max_backoff_s "
                f"{self.max_backoff_s}"
            )
        return problems

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> BatchConfig:
        """Reads ``OTEL_BSP_MAX_QUEUE_SIZE``, ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE`` and
        ``OTEL_BSP_SCHEDULE_DELAY`` (milliseconds); empty values count as unset.

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
        return dataclasses.replace(
            default, max_queue_size=queue, max_batch_size=batch, schedule_delay_s=delay_ms / 1000
        )


class _PendingRetryError(RetryableExportError):
    """Raised inside the retry loop while some exporter still answers RETRY; it never
    leaves this module."""

    def __init__(self, retry_after_s: float | None) -> None:
        super().__init__("some exporters asked to retry")
        self.retry_after_s = retry_after_s


class BatchProcessor:
    """Queues spans and exports them in batches on its own thread (see the module doc).

    ``start``, ``submit``, ``force_flush`` and ``shutdown`` may be called from any thread.
    Exporters are called from the export thread only, or, when :meth:`start` was never
    called, from the thread calling ``force_flush``/``shutdown``; never two at once.
    """

    def __init__(
        self,
        exporters: Sequence[SpanExporter],
        resource: Resource,
        scope: InstrumentationScope,
        counters: Counters,
        *,
        max_queue_size: int = BatchConfig.max_queue_size,
        max_batch_size: int = BatchConfig.max_batch_size,
        schedule_delay_s: float = BatchConfig.schedule_delay_s,
        max_elapsed_s: float = BatchConfig.max_elapsed_s,
        initial_backoff_s: float = BatchConfig.initial_backoff_s,
        max_backoff_s: float = BatchConfig.max_backoff_s,
        clock: Clock | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        config = BatchConfig(
            max_queue_size=max_queue_size,
            max_batch_size=max_batch_size,
            schedule_delay_s=schedule_delay_s,
            max_elapsed_s=max_elapsed_s,
            initial_backoff_s=initial_backoff_s,
            max_backoff_s=max_backoff_s,
        )
        problems = config.validate()
        if problems:
            raise ConfigError(problems)
        self.config = config
        self._exporters = list(exporters)
        self._reporters: list[ReportsFeedback | None] = [
            e if isinstance(e, ReportsFeedback) else None for e in self._exporters
        ]
        self._resource = resource
        self._scope = scope
        self._counters = counters
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._sleep = sleep if sleep is not None else self._interruptible_sleep
        # initial * 2**(attempt-1) plus up to one initial of jitter, so that bridges that lost
        # the same collector do not come back in lockstep; capped in _deliver's wait().
        self._backoff = tenacity.wait_exponential(
            multiplier=initial_backoff_s, max=max_backoff_s
        ) + tenacity.wait_random(0, initial_backoff_s)

        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[Span] = deque()
        self._accepted = 0  # spans ever put in the queue
        self._taken = 0  # spans ever taken out of it for export
        self._done = 0  # spans whose export has finished, whatever the outcome
        self._flush_target = 0  # export without waiting until _taken reaches this
        self._thread: threading.Thread | None = None
        self._closed = False  # shutdown was called: submit drops
        self._deadline_ns: int | None = None  # retries stop here (set by shutdown)
        self._wake = threading.Event()  # cuts a backoff sleep short on shutdown
        self._export_lock = threading.Lock()  # one exporting thread at a time

        self._queue_full_log = LogThrottle(clock=self._clock)
        self._closed_log = LogThrottle(clock=self._clock)
        self._failure_log = LogThrottle(clock=self._clock)
        self._retry_log = LogThrottle(clock=self._clock)

    @classmethod
    def from_config(
        cls,
        exporters: Sequence[SpanExporter],
        resource: Resource,
        scope: InstrumentationScope,
        counters: Counters,
        config: BatchConfig,
        *,
        clock: Clock | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> BatchProcessor:
        """A processor with the sizes and timings of ``config``."""
        return cls(
            exporters,
            resource,
            scope,
            counters,
            **dataclasses.asdict(config),
            clock=clock,
            sleep=sleep,
        )

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        """Starts the export thread. Idempotent; raises ``RuntimeError`` after shutdown."""
        with self._cond:
            if self._closed:
                raise RuntimeError("BatchProcessor.start() after shutdown()")
            if self._thread is not None:
                return
            # A daemon thread: a receiver that hangs must not keep the process alive after
            # shutdown() has given up waiting for it.
            self._thread = threading.Thread(target=self._run, name="otelbridge-export", daemon=True)
            self._thread.start()

    def submit(self, spans: Sequence[Span]) -> None:
        """Queues ``spans`` for export. Never blocks on export, never raises.

        Spans that do not fit (queue full, or processor shut down) are dropped and counted.
        The spans are queued as they are: the caller must not modify them afterwards.
        """
        if not spans:
            return
        with self._cond:
            if self._closed:
                accepted = 0
            else:
                accepted = min(len(spans), self.config.max_queue_size - len(self._queue))
                if accepted == len(spans):
                    self._queue.extend(spans)
                elif accepted > 0:
                    self._queue.extend(spans[:accepted])
                self._accepted += accepted
                if len(self._queue) >= self.config.max_batch_size:
                    self._cond.notify_all()
            closed = self._closed
        dropped = len(spans) - accepted
        if dropped:
            self._counters.inc(SPANS_DROPPED, dropped)
            if closed:
                n = self._closed_log.ready()
                if n is not None:
                    log.warning("spans submitted after shutdown were dropped (%d times)", n)
            else:
                n = self._queue_full_log.ready()
                if n is not None:
                    log.warning(
                        "export queue full (%d spans): dropping the newest spans "
                        "(%d submissions cut since the last warning)",
                        self.config.max_queue_size,
                        n,
                    )

    def force_flush(self, timeout_s: float = 30.0) -> bool:
        """Exports everything queued before the call; waits at most ``timeout_s``.

        Returns True when all of it has been handled (exported, or given up and counted)
        in time. Without :meth:`start`, the export runs on the calling thread, and a batch
        still being retried when ``timeout_s`` runs out is dropped and counted.
        """
        with self._cond:
            target = self._accepted
            thread = self._thread
            if thread is not None and thread.is_alive():
                self._flush_target = max(self._flush_target, target)
                self._cond.notify_all()
                return self._cond.wait_for(lambda: self._done >= target, timeout_s)
        self._drain_inline(self._clock.now_ns() + int(timeout_s * _NS))
        with self._cond:
            return self._done >= target

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Exports what is queued, stops the thread and shuts the exporters down.

        Idempotent, and works without :meth:`start` (the export then runs on the calling
        thread). Retries stop at 90 % of ``timeout_s`` (the rest is left for the attempt in
        flight), and what is still queued or failing then is dropped and counted. If an
        export attempt hangs past the deadline the thread is abandoned (it is a daemon) and
        the exporters are shut down under it, which makes the hanging attempt fail.
        """
        with self._cond:
            if self._closed:
                return
            self._closed = True
            # Retries end a little before timeout_s, which leaves the attempt in flight the
            # rest of it to finish and be counted before join() gives up on the thread.
            self._deadline_ns = self._clock.now_ns() + int(timeout_s * 0.9 * _NS)
            thread = self._thread
            self._cond.notify_all()
        self._wake.set()
        if thread is not None:
            thread.join(timeout_s)
            if thread.is_alive():
                log.warning("export thread still busy after %.1f s; abandoning it", timeout_s)
        if thread is None or not thread.is_alive():
            # Never started, or (after a bug) stopped early: the queue is ours to empty.
            self._drain_inline(self._deadline_ns)
        for exporter in self._exporters:
            try:
                exporter.shutdown()
            except Exception:
                log.exception("shutting down exporter %s failed", _name(exporter))

    @property
    def queued(self) -> int:
        """Spans waiting in the queue now."""
        with self._cond:
            return len(self._queue)

    # -- the export thread ------------------------------------------------------------------
    def _run(self) -> None:
        delay = self.config.schedule_delay_s
        next_due = time.monotonic() + delay
        while True:
            with self._cond:
                while True:
                    n = len(self._queue)
                    now = time.monotonic()
                    urgent = self._closed or self._taken < self._flush_target or now >= next_due
                    if n >= self.config.max_batch_size or (n and urgent):
                        break
                    if self._closed:
                        return  # and the queue is empty
                    if now >= next_due:
                        next_due = now + delay
                    self._cond.wait(next_due - now)
                batch = self._take_locked()
            self._export_batch(batch, None)
            next_due = time.monotonic() + delay

    def _drain_inline(self, deadline_ns: int) -> None:
        """Exports the queue on the calling thread (no export thread is running)."""
        while True:
            with self._cond:
                if not self._queue:
                    return
                batch = self._take_locked()
            self._export_batch(batch, deadline_ns)

    def _take_locked(self) -> list[Span]:
        count = min(len(self._queue), self.config.max_batch_size)
        batch = [self._queue.popleft() for _ in range(count)]
        self._taken += count
        return batch

    def _export_batch(self, batch: list[Span], deadline_ns: int | None) -> None:
        try:
            with self._export_lock:
                self._deliver(batch, deadline_ns)
        except Exception:
            # A bug here must not kill the export thread, or every later span would pile up.
            log.exception("exporting a batch of %d spans failed unexpectedly", len(batch))
        finally:
            with self._cond:
                self._done += len(batch)
                self._cond.notify_all()

    def _hard_deadline_ns(self, deadline_ns: int | None) -> int | None:
        """The caller's deadline (shutdown, or an inline flush): no attempt starts after it."""
        deadlines = [d for d in (deadline_ns, self._deadline_ns) if d is not None]
        return min(deadlines) if deadlines else None

    def _limit_ns(self, start_ns: int, deadline_ns: int | None) -> int:
        limit = start_ns + int(self.config.max_elapsed_s * _NS)
        hard = self._hard_deadline_ns(deadline_ns)
        return limit if hard is None else min(limit, hard)

    def _deliver(self, batch: list[Span], deadline_ns: int | None) -> None:
        n = len(batch)
        if not self._exporters:
            return
        start_ns = self._clock.now_ns()
        if start_ns >= self._limit_ns(start_ns, deadline_ns):
            # Shutdown's deadline has passed: no time left for even one attempt.
            self._counters.inc(SPANS_DROPPED, n * len(self._exporters))
            self._log_failure("no time left before shutdown", n, self._exporters)
            return

        request = self._build_request(batch)
        pending = list(range(len(self._exporters)))
        retrying = False

        def attempt() -> None:
            nonlocal pending, retrying
            hard = self._hard_deadline_ns(deadline_ns)
            if retrying and hard is not None and self._clock.now_ns() >= hard:
                # At max_elapsed_s one last attempt is made, but none once the caller's
                # deadline has come, so that shutdown() returns in time.
                raise _PendingRetryError(None)
            if retrying:
                self._counters.inc(EXPORT_RETRIES, len(pending))
            retrying = True
            retry: list[int] = []
            retry_after: float | None = None
            for i in pending:
                result, feedback = self._export_once(i, request, n)
                if result is ExportResult.SUCCESS:
                    accepted = n - feedback.rejected_spans
                    self._counters.inc(SPANS_EXPORTED, accepted)
                    if feedback.rejected_spans:
                        self._counters.inc(SPANS_DROPPED, feedback.rejected_spans)
                elif result is ExportResult.RETRY:
                    retry.append(i)
                    if feedback.retry_after_s is not None:
                        retry_after = max(retry_after or 0.0, feedback.retry_after_s)
                else:
                    self._counters.inc(SPANS_DROPPED, n)
                    self._log_failure("permanent failure", n, [self._exporters[i]])
            pending = retry
            if retry:
                raise _PendingRetryError(retry_after)

        def wait(state: tenacity.RetryCallState) -> float:
            delay = min(self._backoff(state), self.config.max_backoff_s)
            exc = state.outcome.exception() if state.outcome is not None else None
            if isinstance(exc, _PendingRetryError) and exc.retry_after_s is not None:
                delay = max(delay, exc.retry_after_s)
            # Never sleep past the deadline: one last attempt is made right at it.
            now = self._clock.now_ns()
            remaining = (self._limit_ns(start_ns, deadline_ns) - now) / _NS
            return max(0.0, min(delay, remaining))

        def stop(state: tenacity.RetryCallState) -> bool:
            return self._clock.now_ns() >= self._limit_ns(start_ns, deadline_ns)

        def before_sleep(state: tenacity.RetryCallState) -> None:
            times = self._retry_log.ready()
            if times is not None:
                log.info(
                    "export to %s failed temporarily; retrying in %.2f s (%d retries since "
                    "the last message)",
                    ", ".join(_name(self._exporters[i]) for i in pending),
                    state.next_action.sleep if state.next_action is not None else 0.0,
                    times,
                )

        retry_loop = tenacity.Retrying(
            sleep=self._sleep,
            stop=stop,
            wait=wait,
            retry=tenacity.retry_if_exception_type(_PendingRetryError),
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            retry_loop(attempt)
        except _PendingRetryError:
            self._counters.inc(SPANS_DROPPED, n * len(pending))
            elapsed = (self._clock.now_ns() - start_ns) / _NS
            self._log_failure(
                f"still failing after {elapsed:.1f} s of retries",
                n,
                [self._exporters[i] for i in pending],
            )

    def _export_once(
        self, index: int, request: ExportTraceServiceRequest, n: int
    ) -> tuple[ExportResult, ExportFeedback]:
        exporter = self._exporters[index]
        reporter = self._reporters[index]
        try:
            result = exporter.export(request, n)
            feedback = reporter.last_feedback() if reporter is not None else NO_FEEDBACK
        except Exception:
            log.exception("exporter %s raised, which it must not", _name(exporter))
            return ExportResult.FAILURE, NO_FEEDBACK
        return result, feedback

    def _build_request(self, batch: list[Span]) -> ExportTraceServiceRequest:
        scope_spans = ScopeSpans(scope=self._scope, spans=batch)
        resource_spans = ResourceSpans(resource=self._resource, scope_spans=[scope_spans])
        return ExportTraceServiceRequest(resource_spans=[resource_spans])

    def _log_failure(self, why: str, n: int, exporters: Sequence[SpanExporter]) -> None:
        times = self._failure_log.ready()
        if times is not None:
            log.warning(
                "dropped a batch of %d spans for %s: %s (%d such drops since the last message)",
                n,
                ", ".join(_name(e) for e in exporters),
                why,
                times,
            )

    def _interruptible_sleep(self, seconds: float) -> None:
        # The default sleep between attempts; shutdown() cuts it short so that the last
        # attempts happen before its deadline instead of after a long backoff.
        if self._wake.wait(seconds):
            self._wake.clear()


def _name(exporter: SpanExporter) -> str:
    endpoint = getattr(exporter, "endpoint", None)
    kind = type(exporter).__name__
    return f"{kind}({endpoint})" if isinstance(endpoint, str) else kind
