"""The batch processor: batching, bounded queue, retries, flush and shutdown.

Retry arithmetic runs on a fake clock with a fake sleep (no waiting); delivery, outages and
recovery run against the real OTLP receivers over loopback with short backoffs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otelbridge.core.clock import FakeClock
from otelbridge.core.counters import Counters
from otelbridge.core.errors import ConfigError
from otelbridge.core.semconv import EXPORT_RETRIES, SPANS_DROPPED, SPANS_EXPORTED
from otelbridge.export import ExportFeedback, ExportResult, SpanExporter
from otelbridge.export.batch import BatchConfig, BatchProcessor
from otelbridge.export.otlp import OtlpGrpcExporter, OtlpHttpExporter
from otelbridge.testing.otlp import OtlpHttpReceiver, OtlpReceiver

RESOURCE = Resource(
    attributes=[KeyValue(key="service.name", value=AnyValue(string_value="containerd"))]
)
SCOPE = InstrumentationScope(name="otelbridge", version="0.1.0")


def make_spans(n: int, start: int = 0) -> list[Span]:
    return [
        Span(trace_id=bytes([7] * 16), span_id=(i + 1).to_bytes(8, "big"), name=f"s{i}")
        for i in range(start, start + n)
    ]


def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def export_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "otelbridge-export"]


class ScriptedExporter:
    """A real SpanExporter (no patching) that answers from a script, then ``then``."""

    def __init__(
        self,
        *script: ExportResult | tuple[ExportResult, ExportFeedback],
        then: ExportResult = ExportResult.SUCCESS,
    ) -> None:
        self.script = list(script)
        self.then = then
        self.calls: list[int] = []
        self.requests: list[ExportTraceServiceRequest] = []
        self.shut_down = 0
        self._feedback = ExportFeedback()

    def export(self, request: ExportTraceServiceRequest, span_count: int) -> ExportResult:
        self.calls.append(span_count)
        self.requests.append(request)
        step = self.script.pop(0) if self.script else self.then
        result, self._feedback = step if isinstance(step, tuple) else (step, ExportFeedback())
        return result

    def last_feedback(self) -> ExportFeedback:
        return self._feedback

    def shutdown(self) -> None:
        self.shut_down += 1


class RaisingExporter:
    def export(self, request: ExportTraceServiceRequest, span_count: int) -> ExportResult:
        raise RuntimeError("boom")

    def shutdown(self) -> None:
        raise RuntimeError("boom again")


class FakeTime:
    """A fake clock whose sleep advances it: a minute of retries takes no time."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.clock.advance(seconds)


def fake_processor(
    exporters: list[SpanExporter], counters: Counters, fake: FakeTime, **kwargs: Any
) -> BatchProcessor:
    return BatchProcessor(
        exporters, RESOURCE, SCOPE, counters, clock=fake.clock, sleep=fake.sleep, **kwargs
    )


# -- retry arithmetic on a fake clock -----------------------------------------------------------
def test_retries_back_off_exponentially_capped_until_max_elapsed_then_drop() -> None:
    counters, fake = Counters(), FakeTime()
    exporter = ScriptedExporter(then=ExportResult.RETRY)
    processor = fake_processor([exporter], counters, fake, max_elapsed_s=60.0)
    processor.submit(make_spans(10))
    assert processor.force_flush(timeout_s=1000) is True  # handled: given up and counted

    assert sum(fake.sleeps) == pytest.approx(60.0)
    assert 0.5 <= fake.sleeps[0] <= 1.0  # initial backoff plus jitter
    assert max(fake.sleeps) <= 5.0  # capped
    assert 4.0 <= fake.sleeps[3] <= 4.5  # 0.5 * 2**3 plus jitter
    assert fake.sleeps[4:-1] == [5.0] * len(fake.sleeps[4:-1])  # capped from here on
    assert len(exporter.calls) == len(fake.sleeps) + 1  # a last attempt right at the deadline
    assert counters.get(EXPORT_RETRIES) == len(fake.sleeps)
    assert counters.get(SPANS_DROPPED) == 10
    assert counters.get(SPANS_EXPORTED) == 0
    processor.shutdown()
    assert exporter.shut_down == 1


def test_receiver_requested_delay_is_honoured() -> None:
    counters, fake = Counters(), FakeTime()
    exporter = ScriptedExporter((ExportResult.RETRY, ExportFeedback(retry_after_s=7.0)))
    processor = fake_processor([exporter], counters, fake)
    processor.submit(make_spans(3))
    processor.shutdown(timeout_s=100)
    assert fake.sleeps == [7.0]  # longer than max_backoff_s: the receiver knows best
    assert counters.get(SPANS_EXPORTED) == 3


def test_only_the_retrying_exporter_is_retried() -> None:
    counters, fake = Counters(), FakeTime()
    failing = ScriptedExporter(then=ExportResult.FAILURE)
    flaky = ScriptedExporter(ExportResult.RETRY, ExportResult.RETRY)
    healthy = ScriptedExporter()
    processor = fake_processor([failing, flaky, healthy], counters, fake)
    processor.submit(make_spans(4))
    processor.shutdown()
    assert failing.calls == [4]
    assert flaky.calls == [4, 4, 4]
    assert healthy.calls == [4]
    assert counters.get(SPANS_DROPPED) == 4  # the failing exporter's copy
    assert counters.get(SPANS_EXPORTED) == 8  # the flaky and the healthy exporters' copies
    assert counters.get(EXPORT_RETRIES) == 2
    # All of them got the same request.
    assert flaky.requests[0] is healthy.requests[0] is failing.requests[0]


def test_partial_success_counts_rejected_spans_as_dropped() -> None:
    counters, fake = Counters(), FakeTime()
    exporter = ScriptedExporter((ExportResult.SUCCESS, ExportFeedback(rejected_spans=2)))
    processor = fake_processor([exporter], counters, fake)
    processor.submit(make_spans(5))
    processor.shutdown()
    assert counters.get(SPANS_EXPORTED) == 3
    assert counters.get(SPANS_DROPPED) == 2


def test_an_exporter_that_raises_loses_its_batch_but_not_the_processor(
    caplog: pytest.LogCaptureFixture,
) -> None:
    counters, fake = Counters(), FakeTime()
    healthy = ScriptedExporter()
    processor = fake_processor([RaisingExporter(), healthy], counters, fake)
    processor.start()
    processor.submit(make_spans(2))
    assert processor.force_flush(5)
    processor.submit(make_spans(2, start=2))
    processor.shutdown(5)
    assert healthy.calls == [2, 2]
    assert counters.get(SPANS_DROPPED) == 4
    assert counters.get(SPANS_EXPORTED) == 4
    assert "raised, which it must not" in caplog.text


def test_batches_hold_one_resource_and_one_scope_and_at_most_max_batch_size() -> None:
    counters, fake = Counters(), FakeTime()
    exporter = ScriptedExporter()
    processor = fake_processor([exporter], counters, fake, max_batch_size=4)
    processor.submit(make_spans(10))
    processor.shutdown()
    assert exporter.calls == [4, 4, 2]
    for request in exporter.requests:
        assert len(request.resource_spans) == 1
        assert request.resource_spans[0].resource == RESOURCE
        assert len(request.resource_spans[0].scope_spans) == 1
        assert request.resource_spans[0].scope_spans[0].scope == SCOPE
    names = [s.name for r in exporter.requests for s in r.resource_spans[0].scope_spans[0].spans]
    assert names == [f"s{i}" for i in range(10)]


# -- the bounded queue --------------------------------------------------------------------------
def test_a_full_queue_drops_the_newest_spans_counts_them_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    counters, fake = Counters(), FakeTime()
    exporter = ScriptedExporter()
    processor = fake_processor([exporter], counters, fake, max_queue_size=10, max_batch_size=5)
    with caplog.at_level(logging.WARNING, logger="otelbridge.export.batch"):
        processor.submit(make_spans(7))
        processor.submit(make_spans(7, start=7))  # only 3 of these fit
        processor.submit(make_spans(2, start=14))  # none fit
    assert counters.get(SPANS_DROPPED) == 6
    assert processor.queued == 10
    assert caplog.text.count("export queue full") == 1  # throttled
    processor.shutdown()
    names = [s.name for r in exporter.requests for s in r.resource_spans[0].scope_spans[0].spans]
    assert names == [f"s{i}" for i in range(10)]  # the oldest were kept
    assert counters.get(SPANS_EXPORTED) == 10


def test_submit_after_shutdown_is_dropped_and_counted() -> None:
    counters, fake = Counters(), FakeTime()
    processor = fake_processor([ScriptedExporter()], counters, fake)
    processor.shutdown()
    processor.shutdown()  # idempotent
    processor.submit(make_spans(3))
    assert counters.get(SPANS_DROPPED) == 3
    with pytest.raises(RuntimeError):
        processor.start()


def test_invalid_sizes_are_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        BatchProcessor([], RESOURCE, SCOPE, Counters(), max_queue_size=0, max_batch_size=0)
    assert len(info.value.problems) == 2


# -- against the real receivers ----------------------------------------------------------------
@pytest.fixture
def grpc_receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture
def http_receiver() -> Iterator[OtlpHttpReceiver]:
    with OtlpHttpReceiver() as receiver:
        yield receiver


def fast_processor(exporter: SpanExporter, counters: Counters, **kwargs: Any) -> BatchProcessor:
    settings: dict[str, Any] = {
        "schedule_delay_s": 0.05,
        "initial_backoff_s": 0.05,
        "max_backoff_s": 0.2,
        "max_elapsed_s": 10.0,
    }
    settings.update(kwargs)
    return BatchProcessor([exporter], RESOURCE, SCOPE, counters, **settings)


def test_spans_are_sent_after_the_schedule_delay_without_a_flush(
    grpc_receiver: OtlpReceiver,
) -> None:
    counters = Counters()
    processor = fast_processor(OtlpGrpcExporter(grpc_receiver.endpoint), counters)
    processor.start()
    processor.start()  # idempotent
    try:
        processor.submit(make_spans(3))
        spans = grpc_receiver.wait_for_spans(3, timeout_s=5)
        assert spans[0].resource == RESOURCE
        assert spans[0].scope == SCOPE
    finally:
        processor.shutdown(5)
    assert counters.get(SPANS_EXPORTED) == 3
    assert not export_threads()


def test_full_batches_go_out_at_once(grpc_receiver: OtlpReceiver) -> None:
    counters = Counters()
    processor = fast_processor(
        OtlpGrpcExporter(grpc_receiver.endpoint), counters, schedule_delay_s=30.0, max_batch_size=4
    )
    processor.start()
    try:
        processor.submit(make_spans(8))
        grpc_receiver.wait_for_spans(8, timeout_s=5)  # long before the 30 s delay
        assert [
            len(r.request.resource_spans[0].scope_spans[0].spans) for r in grpc_receiver.requests()
        ] == [4, 4]
    finally:
        processor.shutdown(5)


def test_shutdown_without_start_flushes_what_is_queued(http_receiver: OtlpHttpReceiver) -> None:
    counters = Counters()
    processor = fast_processor(OtlpHttpExporter(http_receiver.endpoint), counters)
    processor.submit(make_spans(6))
    processor.shutdown(5)
    assert len(http_receiver.spans()) == 6
    assert counters.get(SPANS_EXPORTED) == 6


def test_shutdown_after_start_flushes_what_is_queued(grpc_receiver: OtlpReceiver) -> None:
    counters = Counters()
    processor = fast_processor(
        OtlpGrpcExporter(grpc_receiver.endpoint), counters, schedule_delay_s=30.0
    )
    processor.start()
    processor.submit(make_spans(5))
    processor.shutdown(5)
    assert len(grpc_receiver.spans()) == 5
    assert not export_threads()


def test_unavailable_is_retried_until_the_receiver_accepts(grpc_receiver: OtlpReceiver) -> None:
    counters = Counters()
    grpc_receiver.set_failure(grpc.StatusCode.UNAVAILABLE)
    processor = fast_processor(OtlpGrpcExporter(grpc_receiver.endpoint), counters)
    processor.start()
    try:
        processor.submit(make_spans(4))
        grpc_receiver.wait_for_attempts(3)
        grpc_receiver.set_failure(None)
        grpc_receiver.wait_for_spans(4)
        assert processor.force_flush(5)
    finally:
        processor.shutdown(5)
    assert counters.get(EXPORT_RETRIES) >= 2
    assert counters.get(SPANS_EXPORTED) == 4
    assert counters.get(SPANS_DROPPED) == 0
    assert len(grpc_receiver.requests()) == 1  # delivered once, no duplicate


def test_invalid_argument_is_dropped_without_retry(grpc_receiver: OtlpReceiver) -> None:
    counters = Counters()
    grpc_receiver.set_failure(grpc.StatusCode.INVALID_ARGUMENT)
    processor = fast_processor(OtlpGrpcExporter(grpc_receiver.endpoint), counters)
    processor.submit(make_spans(4))
    processor.shutdown(5)
    assert grpc_receiver.attempts == 1
    assert counters.get(SPANS_DROPPED) == 4
    assert counters.get(EXPORT_RETRIES) == 0


def test_partial_success_from_the_receiver_is_counted(grpc_receiver: OtlpReceiver) -> None:
    counters = Counters()
    grpc_receiver.set_partial_success(2, "too many attributes")
    processor = fast_processor(OtlpGrpcExporter(grpc_receiver.endpoint), counters)
    processor.submit(make_spans(5))
    processor.shutdown(5)
    assert counters.get(SPANS_EXPORTED) == 3
    assert counters.get(SPANS_DROPPED) == 2


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_delivery_resumes_after_a_receiver_outage(transport: str) -> None:
    counters = Counters()
    receiver: OtlpReceiver | OtlpHttpReceiver
    exporter: SpanExporter
    if transport == "grpc":
        receiver = OtlpReceiver().start()
        exporter = OtlpGrpcExporter(receiver.endpoint, max_reconnect_backoff_s=0.1)
    else:
        receiver = OtlpHttpReceiver().start()
        exporter = OtlpHttpExporter(receiver.endpoint)
    processor = fast_processor(exporter, counters)
    processor.start()
    try:
        processor.submit(make_spans(3))
        receiver.wait_for_spans(3)
        receiver.stop()  # the collector goes away...
        processor.submit(make_spans(4, start=3))
        wait_until(lambda: counters.get(EXPORT_RETRIES) >= 3)
        receiver.start()  # ...and comes back on the same port
        spans = receiver.wait_for_spans(7, timeout_s=5)
        assert sorted(s.name for s in spans) == sorted(f"s{i}" for i in range(7))
    finally:
        processor.shutdown(5)
        receiver.stop()
    assert counters.get(SPANS_EXPORTED) == 7
    assert counters.get(SPANS_DROPPED) == 0


def test_shutdown_during_an_outage_is_bounded_and_counts_the_loss(
    grpc_receiver: OtlpReceiver,
) -> None:
    counters = Counters()
    grpc_receiver.set_failure(grpc.StatusCode.UNAVAILABLE)
    processor = fast_processor(
        OtlpGrpcExporter(grpc_receiver.endpoint),
        counters,
        initial_backoff_s=2.0,
        max_backoff_s=5.0,
        max_elapsed_s=60.0,
    )
    processor.start()
    processor.submit(make_spans(5))
    grpc_receiver.wait_for_attempts(1)
    started = time.monotonic()
    processor.shutdown(timeout_s=0.5)
    assert time.monotonic() - started < 1.5
    assert counters.get(SPANS_DROPPED) == 5
    assert not export_threads()


def test_force_flush_times_out_while_submit_never_blocks(grpc_receiver: OtlpReceiver) -> None:
    counters = Counters()
    grpc_receiver.set_delay(0.5)
    processor = fast_processor(OtlpGrpcExporter(grpc_receiver.endpoint, timeout_s=5), counters)
    processor.start()
    try:
        processor.submit(make_spans(2))
        grpc_receiver.wait_for_attempts(1)  # the export thread is now stuck in a slow call
        started = time.monotonic()
        for i in range(100):
            processor.submit(make_spans(1, start=10 + i))
        # submit never waits for export: far from the 5 s the stuck call may take (a
        # generous bound: a loaded CI machine must not make this flaky)
        assert time.monotonic() - started < 1.0
        assert processor.force_flush(timeout_s=0.1) is False
        grpc_receiver.set_delay(0)
        assert processor.force_flush(timeout_s=5) is True
    finally:
        processor.shutdown(5)
    assert counters.get(SPANS_EXPORTED) == 102


# -- configuration -----------------------------------------------------------------------------
def test_batch_config_from_env() -> None:
    assert BatchConfig.from_env({}) == BatchConfig()
    config = BatchConfig.from_env(
        {
            "OTEL_BSP_MAX_QUEUE_SIZE": "4096",
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "256",
            "OTEL_BSP_SCHEDULE_DELAY": "250",
        }
    )
    assert (config.max_queue_size, config.max_batch_size, config.schedule_delay_s) == (
        4096,
        256,
        0.25,
    )
    assert config.validate() == []


def test_batch_config_from_env_lists_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        BatchConfig.from_env(
            {
                "OTEL_BSP_MAX_QUEUE_SIZE": "lots",
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "-1",
                "OTEL_BSP_SCHEDULE_DELAY": "1.5s",
            }
        )
    assert [p.split(":")[0] for p in info.value.problems] == [
        "OTEL_BSP_MAX_QUEUE_SIZE",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
        "OTEL_BSP_SCHEDULE_DELAY",
    ]
    with pytest.raises(ConfigError, match="exceeds"):
        BatchConfig.from_env(
            {"OTEL_BSP_MAX_QUEUE_SIZE": "100", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "200"}
        )


def test_from_config_uses_every_field() -> None:
    counters, fake = Counters(), FakeTime()
    config = BatchConfig(max_queue_size=3, max_batch_size=2)
    exporter = ScriptedExporter()
    processor = BatchProcessor.from_config(
        [exporter], RESOURCE, SCOPE, counters, config, clock=fake.clock, sleep=fake.sleep
    )
    assert processor.config == config
    processor.submit(make_spans(4))
    processor.shutdown()
    assert exporter.calls == [2, 1]
    assert counters.get(SPANS_DROPPED) == 1
