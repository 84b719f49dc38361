"""Span files for the report's tests, made by the real pipeline in replay mode.

Each :class:`Startup` is played as containerd would publish it (``Timeline``) through
:class:`~otelbridge.pipeline.Pipeline`; containers whose id contains ``probed`` wait for
a scripted readiness source, which the helper answers ``ready_after_ms`` after
``/tasks/start``. The spans the pipeline emits are written as OTLP/JSON lines with
:func:`otelbridge.export.files.to_otlp_json`, as the ``jsonl`` exporter writes them.

The bridge does not emit ``snapshot.reclaim`` spans or tag ``otelbridge.gc.overlap`` yet
(otelbridge/gc.py is being built), so :func:`with_gc` adds both by hand, shaped as
docs/telemetry.md and docs/sla.md describe them.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from otelbridge.core import semconv
from otelbridge.core.clock import EventTimeClock
from otelbridge.core.config import Config
from otelbridge.core.counters import Counters
from otelbridge.core.model import ContainerInfo, ContainerKey, ReadySignal, StartupRecord
from otelbridge.export.files import to_otlp_json
from otelbridge.pipeline import Pipeline
from otelbridge.readiness import ReadinessRequest, Report
from otelbridge.testing.events import Timeline

MS = 1_000_000
T0 = 1_700_000_000_000_000_000


@dataclass(frozen=True)
class Startup:
    """One container's startup. ``gaps_ms``: prepare -> create -> task create -> task
    start. ``ready_after_ms``: for ``probed`` containers, the readiness wait; ``exit``:
    the task exits during that wait; ``partial``: the bridge missed the create events;
    ``deleted``: the container is deleted before any task."""

    cid: str
    ns: str
    gaps_ms: tuple[float, float, float] = (4, 44, 9)
    ready_after_ms: float = 0.0
    exit: bool = False
    partial: bool = False
    deleted: bool = False


class Scripted:
    """A readiness source for containers with a readiness target; it remembers the
    requests and the helper answers them."""

    name = "scripted"

    def __init__(self) -> None:
        self.requests: dict[ContainerKey, ReadinessRequest] = {}

    def applies(self, info: ContainerInfo) -> bool:
        return bool(info.readiness)

    def watch(self, request: ReadinessRequest, report: Report) -> None:
        self.requests[request.key] = request

    def cancel(self, key: ContainerKey) -> None:
        self.requests.pop(key, None)

    def start(self) -> None:
        pass

    def shutdown(self) -> None:
        pass


class ListSink:
    def __init__(self) -> None:
        self.spans: list[Span] = []

    def submit(self, spans: list[Span]) -> None:
        self.spans.extend(spans)


#: containers whose id starts with ``ro<N>-`` carry the traceparent of rollout N
ROLLOUT_PARENT = "00f067aa0ba902b7"


def rollout_trace(n: int) -> str:
    return f"{n:032x}"


def _lookup(namespace: str, container_id: str) -> ContainerInfo:
    labels = {"otelbridge.io/readiness": "tcp://127.0.0.1:1"} if "probed" in container_id else {}
    if (
        container_id.startswith("ro")
        and "-" in container_id
        and container_id[2:].split("-", maxsplit=1)[0].isdigit()
    ):
        n = int(container_id[2:].split("-", maxsplit=1)[0])
        labels = {**labels, "traceparent": f"00-{rollout_trace(n)}-{ROLLOUT_PARENT}-01"}
    return ContainerInfo(namespace=namespace, id=container_id, labels=labels)


@dataclass
class Replayed:
    """What a replay gave: the pipeline (its SLA tracker judged the startups), every span
    it emitted, and the startup records as the pipeline completed them."""

    pipeline: Pipeline
    spans: list[Span]
    records: list[StartupRecord]


def replay(
    startups: Iterable[Startup], config: Config | None = None, *, apart_ms: float = 1_000
) -> Replayed:
    """Plays ``startups`` one after the other (``apart_ms`` apart) through a replay
    pipeline."""
    sink = ListSink()
    source = Scripted()
    records: list[StartupRecord] = []
    pipeline = Pipeline(
        config or Config(),
        sink,
        Counters(),
        clock=EventTimeClock(),
        lookup=_lookup,
        lookup_async=False,
        readiness_sources=[source],
        on_record=lambda record, _spans: records.append(record),
    )
    tl = Timeline(start_ns=T0)
    for s in startups:
        ns = s.ns
        create, shim, start = (int(g * MS) for g in s.gaps_ms)
        if s.deleted:
            events = [
                tl.snapshot_prepare(s.cid, ns=ns),
                tl.container_create(s.cid, after_ns=create, ns=ns),
                tl.container_delete(s.cid, after_ns=shim, ns=ns),
            ]
        elif s.partial:
            events = [
                tl.task_create(s.cid, after_ns=create + shim, ns=ns),
                tl.task_start(s.cid, after_ns=start, ns=ns),
            ]
        else:
            events = [
                tl.snapshot_prepare(s.cid, ns=ns),
                tl.container_create(s.cid, after_ns=create, ns=ns),
                tl.task_create(s.cid, after_ns=shim, ns=ns),
                tl.task_start(s.cid, after_ns=start, ns=ns),
            ]
        for env in events:
            pipeline.feed(env)
        request = source.requests.pop(ContainerKey(ns, s.cid), None)
        if request is not None:
            wait = int(s.ready_after_ms * MS)
            if s.exit:
                pipeline.feed(tl.task_exit(s.cid, 1, after_ns=wait, ns=ns))
            else:
                tl.now_ns += wait
                pipeline.feed(ReadySignal(request.key, request.attempt, tl.now_ns, "scripted"))
        tl.now_ns += int(apart_ms * MS)
    pipeline.finish()
    return Replayed(pipeline, sink.spans, records)


def _attr(key: str, value: str | bool) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def with_gc(
    spans: Sequence[Span], *, overlap_every: int, reclaim_ms: Sequence[float]
) -> list[Span]:
    """``spans`` with every ``overlap_every``-th startup tagged ``otelbridge.gc.overlap``
    and, per namespace, one ``snapshot.reclaim`` span per value of ``reclaim_ms``."""
    out: list[Span] = []
    namespaces: list[str] = []
    startups = 0
    for span in spans:
        copy = Span()
        copy.CopyFrom(span)
        if span.name == semconv.SPAN_CONTAINER_STARTUP:
            startups += 1
            if startups % overlap_every == 0:
                copy.attributes.append(_attr(semconv.OB_GC_OVERLAP, True))
            ns = next(
                a.value.string_value for a in span.attributes if a.key == "containerd.namespace"
            )
            if ns not in namespaces:
                namespaces.append(ns)
        out.append(copy)
    for n, ns in enumerate(namespaces):
        for i, ms in enumerate(reclaim_ms):
            start = T0 + (n * 1000 + i) * 997 * MS
            out.append(
                Span(
                    trace_id=bytes([n + 1, i + 1]) * 8,
                    span_id=bytes([n + 1, i + 1]) * 4,
                    name="snapshot.reclaim",
                    start_time_unix_nano=start,
                    end_time_unix_nano=start + int(ms * MS),
                    attributes=[
                        _attr(semconv.CONTAINERD_NAMESPACE, ns),
                        _attr(semconv.CONTAINER_ID, f"gone-{i}"),
                    ],
                )
            )
    return out


def write_jsonl(path: Path, spans: Sequence[Span], *, per_line: int = 25) -> Path:
    """Writes ``spans`` as OTLP/JSON lines, ``per_line`` spans per request."""
    resource = Resource(attributes=[_attr(semconv.SERVICE_NAME, "containerd")])
    with open(path, "w", encoding="utf-8") as out:
        for i in range(0, len(spans), per_line):
            request = ExportTraceServiceRequest(
                resource_spans=[
                    ResourceSpans(
                        resource=resource,
                        scope_spans=[ScopeSpans(spans=list(spans[i : i + per_line]))],
                    )
                ]
            )
            out.write(json.dumps(to_otlp_json(request), separators=(",", ":")) + "\n")
    return path


def realistic(seed: int = 7) -> list[Startup]:
    """Three namespaces: ``web`` passes, ``batch`` breaches task_create_to_ready (slow
    readiness, a few exits) and has partial startups, ``canary`` has too few samples."""
    rng = random.Random(seed)
    out: list[Startup] = []
    for i in range(48):
        out.append(
            Startup(
                f"web-{i:02d}",
                "web",
                (rng.uniform(2, 9), rng.lognormvariate(3.7, 0.35), rng.uniform(6, 16)),
            )
        )
    for i in range(36):
        slow = rng.random() < 0.25
        out.append(
            Startup(
                f"batch-probed-{i:02d}",
                "batch",
                (rng.uniform(3, 12), rng.lognormvariate(4.0, 0.45), rng.uniform(8, 25)),
                ready_after_ms=rng.uniform(900, 2600) if slow else rng.uniform(80, 400),
                exit=i in (7, 23),
            )
        )
    out += [Startup(f"batch-late-{i}", "batch", partial=True) for i in range(3)]
    out += [
        Startup(f"canary-{i}", "canary", (rng.uniform(2, 6), rng.uniform(35, 60), 10))
        for i in range(6)
    ]
    return out
