"""Replay CPU per container startup, side by side with its references, in one run.

Bar (PRODUCT.md section 8): the bridge spends <= 0.2 ms of CPU per startup in replay
(>= 5,000 startups per second on one core), reported against the cost of encoding the
same spans directly with the OTLP protobufs.

Measured, each as CPU time (``time.process_time``) per startup, median of the rounds:

* ``bridge``: envelopes -> decode -> correlate -> enrich (a recorded container record
  with a traceparent label) -> emit -> one ``ExportTraceServiceRequest`` per 512 spans,
  serialized (what the exporter sends);
* ``direct OTLP``: the same spans with the same attributes (the startup's 5 and the
  removed container's ``snapshot.reclaim``) built directly as protobuf messages from
  precomputed values, and serialized the same way: the floor;
* ``SDK``: the same spans through the OpenTelemetry SDK's tracer and its OTLP encoder.

Run: ``.venv/bin/python benchmarks/replay.py [--startups N] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context

from otelbridge.core import semconv
from otelbridge.core.clock import EventTimeClock
from otelbridge.core.config import Config
from otelbridge.core.counters import Counters
from otelbridge.core.model import ContainerInfo, RawEnvelope
from otelbridge.emit.spans import kv
from otelbridge.pipeline import Pipeline
from otelbridge.source.recording import Recording
from otelbridge.testing.events import Timeline

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
BATCH = 512
RESOURCE = Resource(attributes=[kv(semconv.SERVICE_NAME, "containerd"), kv("host.name", "bench")])
SCOPE = InstrumentationScope(name="otelbridge")
INTERNAL = Span.SpanKind.SPAN_KIND_INTERNAL


class EncodingSink:
    """Batches spans into requests and serializes them, as the OTLP exporter would."""

    def __init__(self) -> None:
        self.batch: list[Span] = []
        self.bytes = 0
        self.spans = 0
        self.first: list[Span] = []  # the first startup's spans, kept for shape()

    def submit(self, spans: Sequence[Span]) -> None:
        if len(self.first) < 6:
            self.first.extend(spans)
        self.batch.extend(spans)
        if len(self.batch) >= BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.batch:
            return
        request = ExportTraceServiceRequest(
            resource_spans=[
                ResourceSpans(
                    resource=RESOURCE, scope_spans=[ScopeSpans(scope=SCOPE, spans=self.batch)]
                )
            ]
        )
        self.bytes += len(request.SerializeToString())
        self.spans += len(self.batch)
        self.batch = []


def make_input(n: int) -> tuple[list[RawEnvelope], Recording]:
    timeline = Timeline()
    recording = Recording()
    envelopes: list[RawEnvelope] = []
    for i in range(n):
        cid = f"bench-{i:06d}"
        envelopes.extend(timeline.run_container(cid))
        recording.containers[("default", cid)] = ContainerInfo(
            namespace="default",
            id=cid,
            image="registry.example:5000/team/web:1.4.2",
            runtime="io.containerd.runc.v2",
            snapshotter="overlayfs",
            snapshot_key=cid,
            created_at_ns=timeline.now_ns,
            labels={"traceparent": TRACEPARENT, "app": "web", "tier": "frontend"},
            annotations={"traceparent": TRACEPARENT},
        )
    return envelopes, recording


def run_bridge(envelopes: list[RawEnvelope], recording: Recording) -> tuple[float, EncodingSink]:
    sink = EncodingSink()
    pipeline = Pipeline(
        Config(),
        sink,
        Counters(),
        clock=EventTimeClock(),
        lookup=recording.lookup,
        lookup_async=False,
    )
    start = time.process_time()
    feed = pipeline.feed
    for env in envelopes:
        feed(env)
    pipeline.finish()
    sink.flush()
    return time.process_time() - start, sink


def reference_values(sink_spans: int, n: int) -> list[dict[str, Any]]:
    """Per-startup values the direct encoder starts from (times, ids, attributes)."""
    base = 1_700_000_000_000_000_000
    out = []
    for i in range(n):
        t = base + i * 100_000_000
        out.append(
            {
                "trace_id": bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736"),
                "parent": bytes.fromhex("00f067aa0ba902b7"),
                "ids": [(i * 8 + k + 1).to_bytes(8, "big") for k in range(5)],
                "times": (t, t + 4_000_000, t + 48_000_000, t + 57_000_000, t + 57_000_000),
                "cid": f"bench-{i:06d}",
            }
        )
    return out


def _root_attrs(cid: str) -> list[tuple[str, Any]]:
    """The attributes the bridge puts on this benchmark's ``container.startup``."""
    return [
        (semconv.CONTAINER_ID, cid),
        (semconv.CONTAINER_NAME, cid),
        (semconv.CONTAINER_RUNTIME_NAME, "containerd"),
        (semconv.CONTAINERD_NAMESPACE, "default"),
        (semconv.OB_STARTUP_OUTCOME, "ready"),
        (semconv.OB_STARTUP_ATTEMPT, 1),
        (semconv.OB_PARTIAL, False),
        (semconv.OB_READINESS_SOURCE, "started"),
        (semconv.CONTAINER_IMAGE_NAME, "registry.example:5000/team/web"),
        (semconv.CONTAINER_IMAGE_TAGS, ["1.4.2"]),
        (semconv.CONTAINERD_RUNTIME_NAME, "io.containerd.runc.v2"),
        (semconv.CONTAINERD_SNAPSHOTTER, "overlayfs"),
        (semconv.PROCESS_PID, 4242),
        (semconv.OB_TRACE_CONTEXT_SOURCE, "label:traceparent"),
        (semconv.OB_LINK_POLICY, "parent"),
    ]


def _reclaim_attrs(cid: str) -> list[tuple[str, Any]]:
    return [
        (semconv.CONTAINER_ID, cid),
        (semconv.CONTAINERD_NAMESPACE, "default"),
        (semconv.OB_GC_SNAPSHOT_KEY, cid),
        (semconv.OB_GC_DEGRADED, False),
        (semconv.CONTAINERD_SNAPSHOTTER, "overlayfs"),
    ]


def shape(spans: Sequence[Span]) -> list[tuple[object, ...]]:
    """What must match between the bridge's spans and the references' for the ratio to
    compare the same work: names, kinds, flags, parents, attribute keys and kinds."""
    return [
        (
            s.name,
            s.kind,
            s.flags,
            bool(s.parent_span_id),
            [(a.key, a.value.WhichOneof("value")) for a in s.attributes],
            len(s.links),
            s.status.code,
        )
        for s in spans
    ]


def run_direct(values: list[dict[str, Any]], sink: EncodingSink | None = None) -> float:
    """The floor: the same spans built straight into protobufs: the startup's 5 (15
    attributes on the root) and, the container being removed, its snapshot.reclaim."""
    sink = sink if sink is not None else EncodingSink()
    names = ("container.create", "shim.launch", "task.start", "readiness.wait")
    start = time.process_time()
    for v in values:
        ids, times, cid = v["ids"], v["times"], v["cid"]
        child_attrs = [kv(semconv.CONTAINER_ID, cid), kv(semconv.CONTAINERD_NAMESPACE, "default")]
        spans = [
            Span(
                trace_id=v["trace_id"],
                span_id=ids[0],
                parent_span_id=v["parent"],
                flags=0x301,  # sampled, remote parent
                name="container.startup",
                kind=INTERNAL,
                start_time_unix_nano=times[0],
                end_time_unix_nano=times[4],
                attributes=[kv(k, x) for k, x in _root_attrs(cid)],
            )
        ]
        for k, name in enumerate(names):
            spans.append(
                Span(
                    trace_id=v["trace_id"],
                    span_id=ids[k + 1],
                    parent_span_id=ids[0],
                    flags=0x101,
                    name=name,
                    kind=INTERNAL,
                    start_time_unix_nano=times[k],
                    end_time_unix_nano=times[k + 1],
                    attributes=child_attrs,
                )
            )
        spans.append(
            Span(
                trace_id=v["trace_id"][::-1],
                span_id=ids[0][::-1],
                flags=0x101,
                name="snapshot.reclaim",
                kind=INTERNAL,
                start_time_unix_nano=times[4] + 12_000_000,
                end_time_unix_nano=times[4] + 22_000_000,
                attributes=[kv(k, x) for k, x in _reclaim_attrs(cid)],
            )
        )
        sink.submit(spans)
    sink.flush()
    return time.process_time() - start


def run_sdk(values: list[dict[str, Any]]) -> float:
    """The same spans through the OpenTelemetry SDK and its OTLP protobuf encoder."""
    batch: list[ReadableSpan] = []

    class Encode(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            batch.extend(spans)
            if len(batch) >= BATCH:
                encode_spans(batch).SerializeToString()
                batch.clear()
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Encode()))
    tracer = provider.get_tracer("otelbridge")
    names = ("container.create", "shim.launch", "task.start", "readiness.wait")
    start = time.process_time()
    for v in values:
        times, cid = v["times"], v["cid"]
        parent = SpanContext(
            int.from_bytes(v["trace_id"], "big"),
            int.from_bytes(v["parent"], "big"),
            True,
            TraceFlags(1),
        )
        root = tracer.start_span(
            "container.startup",
            context=set_span_in_context(NonRecordingSpan(parent)),
            start_time=times[0],
            attributes=dict(_root_attrs(cid)),
        )
        ctx = set_span_in_context(root)
        for k, name in enumerate(names):
            child = tracer.start_span(
                name,
                context=ctx,
                start_time=times[k],
                attributes={semconv.CONTAINER_ID: cid, semconv.CONTAINERD_NAMESPACE: "default"},
            )
            child.end(end_time=times[k + 1])
        root.end(end_time=times[4])
        reclaim = tracer.start_span(
            "snapshot.reclaim",
            start_time=times[4] + 12_000_000,
            attributes=dict(_reclaim_attrs(cid)),
        )
        reclaim.end(end_time=times[4] + 22_000_000)
    if batch:
        encode_spans(batch).SerializeToString()
    elapsed = time.process_time() - start
    provider.shutdown()
    return elapsed


def median_us(runs: list[float], n: int) -> float:
    return statistics.median(runs) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--startups", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-sdk", action="store_true", help="skip the (slow) SDK reference")
    args = parser.parse_args()
    n = args.startups
    envelopes, recording = make_input(n)
    values = reference_values(0, n)
    # the floor must encode what the bridge emits, or the ratio compares different work
    _, bridge_sink = run_bridge(envelopes[:80], recording)
    direct_sink = EncodingSink()
    run_direct(values[:1], direct_sink)
    if shape(bridge_sink.first[:6]) != shape(direct_sink.first[:6]):
        raise SystemExit(
            "the direct floor no longer encodes the spans the bridge emits:\n"
            f"  bridge {shape(bridge_sink.first[:6])}\n  direct {shape(direct_sink.first[:6])}"
        )
    bridge: list[float] = []
    direct: list[float] = []
    sdk: list[float] = []
    spans = 0
    # interleaved rounds, so drift in machine load hits every variant alike
    for _ in range(args.rounds):
        elapsed, sink = run_bridge(envelopes, recording)
        bridge.append(elapsed)
        spans = sink.spans
        direct.append(run_direct(values))
        if not args.no_sdk:
            sdk.append(run_sdk(values))
    b, d = median_us(bridge, n), median_us(direct, n)
    print(
        f"replay of {n} container startups ({len(envelopes)} envelopes, {spans} spans), "
        f"median of {args.rounds} rounds, CPU time per startup:"
    )
    print(f"  bridge (decode..encode)   {b:8.1f} us   {1e6 / b:8.0f} startups/s per core")
    print(f"  direct OTLP protobufs     {d:8.1f} us   (the floor)")
    if sdk:
        s = median_us(sdk, n)
        print(f"  OpenTelemetry SDK + OTLP  {s:8.1f} us")
    print(f"  ratio bridge / direct     {b / d:8.2f}")
    if sdk:
        print(f"  ratio SDK / direct        {s / d:8.2f}")
    verdict = "meets" if b <= 200 else "MISSES"
    print(f"  bar: <= 200 us per startup (>= 5000/s per core): {verdict}")


if __name__ == "__main__":
    main()
