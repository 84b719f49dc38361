"""An independent OTLP client: the OpenTelemetry Python SDK's own exporters (gRPC and HTTP)
send startup spans shaped as docs/telemetry.md names them, children before their parents
and every span twice, to a processor over the real Aggregator. The processor's p99 of each
duration is within the sketch's accuracy (1%) of the exact nearest-rank p99 of the same
durations (otelbridge.sla.p99), and each startup counts once."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags

from otelbridge import sla
from otelbridge.core import semconv
from otelbridge.core.config import Config
from otelbridge.core.counters import Counters
from otelbridge.processor.aggregate import Aggregator
from otelbridge.processor.server import ProcessorServer
from otelbridge.processor.sketch import RELATIVE_ACCURACY

from .test_server_helpers import call, serving

STARTUPS = 300
TOKEN = "sdk-token"
RESOURCE = Resource.create({"service.name": "containerd", "host.name": "node-1"})
SCOPE = InstrumentationScope("otelbridge")
_NS = 1_000_000_000


class Ids:
    """Span IDs we control (what an SDK ``IdGenerator`` would hand out, in order)."""

    def __init__(self, seed: int) -> None:
        self._next = seed << 32

    def span_id(self) -> int:
        self._next += 1
        return self._next


@dataclass
class Rollout:
    trace_id: int
    spans: list[ReadableSpan]
    exact: dict[str, list[float]]


def _span(
    name: str,
    ids: tuple[int, int, int | None],
    at: tuple[int, int],
    attributes: dict[str, Any],
) -> ReadableSpan:
    """``ids``: (trace ID, span ID, parent span ID); ``at``: (start, end) in ns."""
    trace_id, span_id, parent = ids
    start_ns, end_ns = at

    def context(sid: int) -> SpanContext:
        return SpanContext(trace_id, sid, is_remote=False, trace_flags=TraceFlags(1))

    return ReadableSpan(
        name=name,
        context=context(span_id),
        parent=context(parent) if parent is not None else None,
        resource=RESOURCE,
        attributes=attributes,
        kind=SpanKind.INTERNAL,
        start_time=start_ns,
        end_time=end_ns,
        instrumentation_scope=SCOPE,
    )


def rollout_spans(trace_id: int, namespace: str, seed: int) -> Rollout:
    """A ``rollout`` span and ``STARTUPS`` container startups (each a container.startup
    with its four phases) under it, with lognormal phase durations."""
    rng = random.Random(seed)
    ids = Ids(seed)
    root = ids.span_id()
    t0 = 1_700_000_000 * _NS
    spans = [
        _span(
            semconv.SPAN_ROLLOUT,
            (trace_id, root, None),
            (t0, t0 + 60 * _NS),
            {semconv.OB_ROLLOUT_NAME: f"web-{seed}"},
        )
    ]
    exact: dict[str, list[float]] = {d: [] for d in sla.DURATIONS}
    for i in range(STARTUPS):
        cid = f"c-{seed}-{i}"
        common = {semconv.CONTAINER_ID: cid, semconv.CONTAINERD_NAMESPACE: namespace}
        create = int(rng.uniform(0.002, 0.01) * _NS)
        shim = int(rng.lognormvariate(-3.0, 0.6) * _NS)  # ~50 ms
        start = int(rng.uniform(0.005, 0.02) * _NS)
        ready = int(rng.lognormvariate(-1.6, 0.5) * _NS)  # ~200 ms
        begin = t0 + i * 10_000_000
        edges = [begin]
        for d in (create, shim, start, ready):
            edges.append(edges[-1] + d)
        startup = ids.span_id()
        for j, name in enumerate(
            (
                semconv.SPAN_CONTAINER_CREATE,
                semconv.SPAN_SHIM_LAUNCH,
                semconv.SPAN_TASK_START,
                semconv.SPAN_READINESS_WAIT,
            )
        ):
            spans.append(
                _span(name, (trace_id, ids.span_id(), startup), (edges[j], edges[j + 1]), common)
            )
        spans.append(
            _span(
                semconv.SPAN_CONTAINER_STARTUP,
                (trace_id, startup, root),
                (edges[0], edges[4]),
                {
                    **common,
                    semconv.OB_STARTUP_OUTCOME: "ready",
                    semconv.CONTAINER_RUNTIME_NAME: "containerd",
                    semconv.OB_READINESS_SOURCE: "probe",
                },
            )
        )
        exact[sla.STARTUP_DURATION].append((edges[4] - edges[0]) / _NS)
        exact[sla.SHIM_LAUNCH_TIME].append((edges[2] - edges[1]) / _NS)
        exact[sla.TASK_CREATE_TO_READY].append((edges[4] - edges[2]) / _NS)
    return Rollout(trace_id, spans, exact)


def send_out_of_order_and_twice(exporter: SpanExporter, spans: Sequence[ReadableSpan]) -> None:
    """Children first (phases, then startups, then the rollout span), in batches; then every
    span again, shuffled."""
    rank = {semconv.SPAN_ROLLOUT: 2, semconv.SPAN_CONTAINER_STARTUP: 1}
    ordered = sorted(spans, key=lambda s: rank.get(s.name, 0))
    again = list(spans)
    random.Random(7).shuffle(again)
    for batch in (ordered, again):
        for i in range(0, len(batch), 200):
            assert exporter.export(batch[i : i + 200]) is SpanExportResult.SUCCESS


@pytest.fixture
def counters() -> Counters:
    return Counters(semconv.PROCESSOR_COUNTERS)


@pytest.fixture
def server(counters: Counters) -> Iterator[ProcessorServer]:
    aggregator = Aggregator(Config(), counters)
    with serving(aggregator, config=Config(), counters=counters, token=TOKEN) as s:
        yield s
    aggregator.close()


def grpc_exporter(server: ProcessorServer, compressed: bool) -> SpanExporter:
    return GrpcSpanExporter(
        endpoint=f"127.0.0.1:{server.grpc_port}",
        insecure=True,
        headers={"authorization": f"Bearer {TOKEN}"},
        compression=grpc.Compression.Gzip if compressed else grpc.Compression.NoCompression,
        timeout=10,
    )


def http_exporter(server: ProcessorServer, compressed: bool) -> SpanExporter:
    return HttpSpanExporter(
        endpoint=f"{server.http_url}/v1/traces",
        headers={"Authorization": f"Bearer {TOKEN}"},
        compression=Compression.Gzip if compressed else Compression.NoCompression,
        timeout=10,
    )


@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_the_sdk_exporters_p99_within_the_sketch_accuracy(
    server: ProcessorServer, counters: Counters, transport: str, compressed: bool
) -> None:
    seed = 11 if transport == "grpc" else 23
    trace_id = (seed << 64) | 0x4BF92F3577B34DA6
    rollout = rollout_spans(trace_id, "web", seed + compressed)
    make = grpc_exporter if transport == "grpc" else http_exporter
    exporter = make(server, compressed)
    try:
        send_out_of_order_and_twice(exporter, rollout.spans)
    finally:
        exporter.shutdown()

    doc = _get_json(server, f"/v1/rollouts/{trace_id:032x}?expect={STARTUPS}")
    assert doc["startups"] == STARTUPS  # each once, though sent twice
    assert doc["failed"] == 0
    assert doc["name"] == f"web-{seed + compressed}"
    assert doc["verdict"] == "pass", doc["reasons"]
    errors = {}
    for duration in sla.DURATIONS:
        budget = doc["budgets"][duration]
        exact = sla.p99(rollout.exact[duration])
        assert budget["samples"] == STARTUPS
        errors[duration] = abs(budget["p99_s"] - exact) / exact
        assert errors[duration] <= RELATIVE_ACCURACY + 1e-9, (duration, budget["p99_s"], exact)
    print(f"{transport} {'gzip' if compressed else 'plain'}: p99 relative errors {errors}")
    total = len(rollout.spans)
    assert counters.get(semconv.PROCESSOR_SPANS_RECEIVED) == 2 * total
    assert counters.get(semconv.PROCESSOR_SPANS_DUPLICATE) == total
    assert counters.get(semconv.PROCESSOR_STARTUPS) == STARTUPS
    assert counters.get(semconv.PROCESSOR_REQUESTS_REFUSED) == 0

    namespace = _get_json(server, "/v1/namespaces/web")
    assert namespace["startups"] == STARTUPS
    assert namespace["budgets"][sla.STARTUP_DURATION]["p99_s"] == pytest.approx(
        doc["budgets"][sla.STARTUP_DURATION]["p99_s"]
    )


def test_the_sdk_exporters_without_the_token_are_refused(server: ProcessorServer) -> None:
    rollout = rollout_spans(0x5 << 64, "web", 5)
    for exporter in (
        GrpcSpanExporter(endpoint=f"127.0.0.1:{server.grpc_port}", insecure=True, timeout=5),
        HttpSpanExporter(endpoint=f"{server.http_url}/v1/traces", timeout=5),
    ):
        try:
            assert exporter.export(rollout.spans[:10]) is SpanExportResult.FAILURE
        finally:
            exporter.shutdown()
    assert _get_json(server, f"/v1/rollouts/{0x5 << 64:032x}")["startups"] == 0


def _get_json(server: ProcessorServer, path: str) -> dict[str, Any]:
    import json  # noqa: PLC0415

    status, _, body = call(
        server.http_url, "GET", path, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert status == 200, body
    doc: dict[str, Any] = json.loads(body)
    return doc


def test_a_namespace_over_two_replicas_is_the_namespace_of_the_whole(counters: Counters) -> None:
    """As the Collector's loadbalancing exporter routes them: each rollout to one replica;
    the namespace, asked of either with the other as its peer, is over both."""
    first, second = rollout_spans(0xA << 64, "web", 31), rollout_spans(0xB << 64, "web", 32)
    aggregators = [Aggregator(Config(), Counters(semconv.PROCESSOR_COUNTERS)) for _ in "ab"]
    with (
        serving(aggregators[0], config=Config(), token=TOKEN) as one,
        serving(aggregators[1], config=Config(), token=TOKEN) as two,
    ):
        for server, rollout in ((one, first), (two, second)):
            exporter = grpc_exporter(server, compressed=False)
            try:
                send_out_of_order_and_twice(exporter, rollout.spans)
            finally:
                exporter.shutdown()
        alone = _get_json(one, "/v1/namespaces/web")
        merged = _get_json(one, f"/v1/namespaces/web?peers={two.http_url}")
        reverse = _get_json(two, f"/v1/namespaces/web?peers={one.http_url}&sketches=1")
    for aggregator in aggregators:
        aggregator.close()
    assert alone["startups"] == STARTUPS
    assert merged["startups"] == reverse["startups"] == 2 * STARTUPS
    assert merged["peers_failed"] == []
    assert merged["verdict"] == "pass", merged["reasons"]
    assert "sketches" not in merged and "sketches" in reverse
    for duration in sla.DURATIONS:
        exact = sla.p99(first.exact[duration] + second.exact[duration])
        got = merged["budgets"][duration]["p99_s"]
        assert abs(got - exact) <= RELATIVE_ACCURACY * exact + 1e-9, (duration, got, exact)
        assert reverse["budgets"][duration]["p99_s"] == got
