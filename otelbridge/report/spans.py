"""Source (b): a jsonl span file, as ``otelbridge run --exporter jsonl`` writes it.

Per namespace, each ``container.startup`` span and its phase children are turned back
into the :class:`~otelbridge.core.model.StartupRecord` moments they were built from (the
inverse of :func:`otelbridge.emit.spans.build_startup_spans`), so the durations are
measured by :func:`otelbridge.sla.durations` and judged by :func:`otelbridge.sla.judge`
and :func:`otelbridge.sla.overall` exactly as the bridge judges them:

* ``startup_duration``: the ``container.startup`` span, when the startup became ready
  and is not partial;
* ``shim_launch_time``: the ``shim.launch`` span, when it completed;
* ``task_create_to_ready``: ``task.start`` + ``readiness.wait``, when ready;
* coverage: startups not marked ``otelbridge.partial`` / all startups.

The window is the whole file: every startup in it counts, however far apart. A span
repeated in the file (an export retried after a crash) counts once. ``pod.startup`` and
any other span are not judged. GC figures come from ``snapshot.reclaim`` spans (one per
reclaimed container snapshot, with ``otelbridge.gc.degraded`` and ``otelbridge.gc.leaked``;
without them, degraded means longer than ``sla.gc_reclaim_max_s``) and the
``otelbridge.gc.overlap`` tag of startups; a reclaim counts in the namespace named by its
``containerd.namespace`` attribute when that namespace has startups in the file.
"""

from __future__ import annotations

import dataclasses
import heapq
import sys
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from otelbridge import sla
from otelbridge.core import semconv
from otelbridge.core.config import Config, SlaConfig
from otelbridge.core.errors import DecodeError
from otelbridge.core.model import (
    FAILED_OUTCOMES,
    PHASES,
    ContainerKey,
    Outcome,
    StartupRecord,
    startup_label,
)
from otelbridge.export.files import read_jsonl
from otelbridge.report.model import GcFigures, Phase, Report, StartupBars
from otelbridge.report.rollouts import rollouts_of
from otelbridge.report.verdicts import ReportError, report_from_json
from otelbridge.source.recording import parse_ctr_line

#: The namespace of spans that carry no ``containerd.namespace``.
UNKNOWN_NAMESPACE: Final = "(unknown)"
#: How many of the slowest startups per namespace the waterfall shows.
SLOWEST: Final = 10

_NS = 1_000_000_000
_ERROR = Status.StatusCode.STATUS_CODE_ERROR
_SpanKey = tuple[bytes, bytes]  # (trace id, span id)


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind)


def attributes(span: Span) -> dict[str, Any]:
    """A span's attributes as plain Python values (arrays as lists)."""
    return {kv.key: _value(kv.value) for kv in span.attributes}


@dataclass
class SpanSet:
    """The spans of a file that the report uses, each once (the last copy wins)."""

    startups: dict[_SpanKey, Span] = field(default_factory=dict)
    phases: dict[_SpanKey, dict[str, Span]] = field(default_factory=lambda: defaultdict(dict))
    reclaims: dict[_SpanKey, Span] = field(default_factory=dict)
    spans_read: int = 0
    first_ns: int | None = None
    last_ns: int | None = None
    nodes: Counter[str] = field(default_factory=Counter)
    """Startups per node (``k8s.node.name``, else ``host.name``, of their resource)."""
    clusters: set[str] = field(default_factory=set)

    def add(self, span: Span) -> None:
        self.spans_read += 1
        if self.first_ns is None or span.start_time_unix_nano < self.first_ns:
            self.first_ns = span.start_time_unix_nano
        if self.last_ns is None or span.end_time_unix_nano > self.last_ns:
            self.last_ns = span.end_time_unix_nano
        name = span.name
        if name == semconv.SPAN_CONTAINER_STARTUP:
            self.startups[(span.trace_id, span.span_id)] = span
        elif name == semconv.SPAN_SNAPSHOT_RECLAIM:
            self.reclaims[(span.trace_id, span.span_id)] = span
        elif name in _PHASE_NAMES and span.parent_span_id:
            self.phases[(span.trace_id, span.parent_span_id)][name] = span


_PHASE_NAMES = frozenset(name for name, _, _ in PHASES)


def collect(requests: Iterable[ExportTraceServiceRequest]) -> SpanSet:
    """Every span of ``requests``, sorted into startups, their phases and reclaims."""
    found = SpanSet()
    for request in requests:
        for resource_spans in request.resource_spans:
            resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
            node = resource.get(semconv.K8S_NODE_NAME) or resource.get(semconv.HOST_NAME)
            cluster = resource.get(semconv.K8S_CLUSTER_NAME)
            if cluster:
                found.clusters.add(str(cluster))
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    found.add(span)
                    if node and span.name == semconv.SPAN_CONTAINER_STARTUP:
                        found.nodes[str(node)] += 1
    return found


def startup_record(root: Span, phases: Mapping[str, Span]) -> StartupRecord:
    """The record a ``container.startup`` span and its phase spans were built from, as far
    as the spans tell: each moment is a phase's start, or its end when it completed (a
    phase with status ERROR never reached its end event). Enough for
    :func:`otelbridge.sla.durations`."""
    attrs = attributes(root)
    try:
        outcome: Outcome | None = Outcome(attrs.get(semconv.OB_STARTUP_OUTCOME))
    except ValueError:
        outcome = None
    moments: list[int | None] = [None] * 5
    for name, begin, end in PHASES:
        span = phases.get(name)
        if span is None:
            continue
        moments[begin] = span.start_time_unix_nano
        if span.status.code != _ERROR:
            moments[end] = span.end_time_unix_nano
    if outcome is Outcome.READY and moments[4] is None:
        moments[4] = root.end_time_unix_nano  # a ready startup ends when it is ready
    namespace = str(attrs.get(semconv.CONTAINERD_NAMESPACE) or UNKNOWN_NAMESPACE)
    return StartupRecord(
        key=ContainerKey(namespace, str(attrs.get(semconv.CONTAINER_ID) or "")),
        incarnation_ns=root.start_time_unix_nano,
        snapshot_prepare_ns=moments[0],
        container_create_ns=moments[1],
        task_create_ns=moments[2],
        task_start_ns=moments[3],
        ready_ns=moments[4],
        end_ns=root.end_time_unix_nano,
        outcome=outcome,
        partial=attrs.get(semconv.OB_PARTIAL) is True,
    )


def _bars(root: Span, phases: Mapping[str, Span]) -> StartupBars:
    attrs = attributes(root)
    t0 = root.start_time_unix_nano
    drawn = []
    for name, _, _ in PHASES:
        span = phases.get(name)
        if span is not None:
            drawn.append(
                Phase(
                    name=name,
                    offset_s=(span.start_time_unix_nano - t0) / _NS,
                    duration_s=(span.end_time_unix_nano - span.start_time_unix_nano) / _NS,
                    complete=span.status.code != _ERROR,
                )
            )
    breached = attrs.get(semconv.OB_SLA_BREACHED)
    return StartupBars(
        container_id=str(attrs.get(semconv.CONTAINER_ID) or ""),
        label=startup_label(attrs),
        outcome=str(attrs.get(semconv.OB_STARTUP_OUTCOME) or "?"),
        total_s=(root.end_time_unix_nano - t0) / _NS,
        partial=attrs.get(semconv.OB_PARTIAL) is True,
        breached=tuple(str(b) for b in breached) if isinstance(breached, list) else (),
        phases=tuple(drawn),
        trace_id=root.trace_id.hex(),
        reason=root.status.message if root.status.code == _ERROR else "",
    )


@dataclass
class _Namespace:
    measured: list[dict[str, float]] = field(default_factory=list)
    traced: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    bars: list[tuple[Span, Mapping[str, Span]]] = field(default_factory=list)
    failed: list[tuple[Span, Mapping[str, Span]]] = field(default_factory=list)
    reclaim_s: list[float] = field(default_factory=list)
    degraded: int = 0
    leaked: int = 0
    overlapped_startups: int = 0
    overlapped_s: list[float] = field(default_factory=list)
    others_s: list[float] = field(default_factory=list)


def from_spans(
    spans: SpanSet,
    config: SlaConfig,
    *,
    source: str,
    generated_at_ns: int,
    namespaces: Collection[str] = (),
    slowest: int = SLOWEST,
) -> Report:
    """The report of the startups in ``spans``, judged against ``config``'s budgets over
    all of them. ``namespaces``, if not empty, keeps only those."""
    wanted = set(namespaces)
    per_ns: dict[str, _Namespace] = defaultdict(_Namespace)
    left_out: set[str] = set()
    for key, root in spans.startups.items():
        phases = spans.phases.get(key, {})
        record = startup_record(root, phases)
        namespace = record.key.namespace
        if wanted and namespace not in wanted:
            left_out.add(namespace)
            continue
        state = per_ns[namespace]
        measured = sla.durations(record)
        state.measured.append(measured)
        state.traced += not record.partial
        state.outcomes[record.outcome.value if record.outcome else "?"] += 1
        state.bars.append((root, phases))
        if record.outcome is not None and record.outcome.value in FAILED_OUTCOMES:
            state.failed.append((root, phases))
        overlap = attributes(root).get(semconv.OB_GC_OVERLAP) is True
        state.overlapped_startups += overlap
        shim = measured.get(sla.SHIM_LAUNCH_TIME)
        if shim is not None:
            (state.overlapped_s if overlap else state.others_s).append(shim)
    for reclaim in spans.reclaims.values():
        attrs = attributes(reclaim)
        owner = per_ns.get(str(attrs.get(semconv.CONTAINERD_NAMESPACE) or UNKNOWN_NAMESPACE))
        if owner is None:
            continue
        took = (reclaim.end_time_unix_nano - reclaim.start_time_unix_nano) / _NS
        owner.reclaim_s.append(took)
        leaked = attrs.get(semconv.OB_GC_LEAKED) is True
        degraded = attrs.get(semconv.OB_GC_DEGRADED)
        if not isinstance(degraded, bool):  # a span of a bridge that did not say
            degraded = took > config.gc_reclaim_max_s
        owner.leaked += leaked
        owner.degraded += degraded and not leaked  # a leak is counted as a leak only

    limits = sla.budgets(config)
    judged: dict[str, dict[str, Any]] = {}
    gc: dict[str, GcFigures] = {}
    for namespace, state in per_ns.items():
        budgets = {
            name: sla.judge(
                [m[name] for m in state.measured if name in m], limits[name], config.min_samples
            )
            for name in sla.DURATIONS
        }
        coverage, cov_verdict = sla.coverage_verdict(len(state.measured), state.traced, config)
        gc[namespace] = GcFigures(
            reclaim_s=tuple(state.reclaim_s),
            degraded=state.degraded,
            leaked=state.leaked,
            reclaim_budget_s=config.gc_reclaim_max_s,
            leak_ttl_s=config.gc_leak_ttl_s,
            overlapped_startups=state.overlapped_startups,
            overlapped_s=tuple(state.overlapped_s),
            others_s=tuple(state.others_s),
        )
        judged[namespace] = {
            "verdict": sla.overall([*(b["verdict"] for b in budgets.values()), cov_verdict]),
            "startups": len(state.measured),
            "traced": state.traced,
            "coverage": coverage,
            "coverage_verdict": cov_verdict,
            "budgets": budgets,
            "gc": gc[namespace].to_json(),
        }
    first, last = spans.first_ns, spans.last_ns
    verdict_json = {
        # the verdicts look at the whole file: its "window" is the time its spans cover
        "window_s": (last - first) / _NS if first is not None and last is not None else None,
        "min_samples": config.min_samples,
        "budgets": {**limits, sla.COVERAGE: config.coverage_min},
        "namespaces": judged,
    }
    report = report_from_json(
        verdict_json, kind="spans", source=source, generated_at_ns=generated_at_ns
    )
    enriched = []
    for ns_report in report.namespaces:
        state = per_ns[ns_report.name]
        samples = {
            name: tuple(m[name] for m in state.measured if name in m) for name in sla.DURATIONS
        }
        worst = heapq.nlargest(
            slowest,
            state.bars,
            key=lambda rp: rp[0].end_time_unix_nano - rp[0].start_time_unix_nano,
        )
        enriched.append(
            dataclasses.replace(
                ns_report,
                samples=samples,
                slowest=tuple(_bars(root, phases) for root, phases in worst),
                failed=tuple(
                    _bars(root, phases)
                    for root, phases in sorted(
                        state.failed, key=lambda rp: rp[0].start_time_unix_nano
                    )
                ),
                failed_total=len(state.failed),
                outcomes=dict(state.outcomes),
                gc=gc[ns_report.name],
            )
        )
    return dataclasses.replace(
        report,
        namespaces=tuple(enriched),
        first_ns=first,
        last_ns=last,
        spans_read=spans.spans_read,
        left_out=tuple(sorted(left_out)),
        nodes=tuple(node for node, _ in spans.nodes.most_common()),
        clusters=tuple(sorted(spans.clusters)),
    )


def _refuse_a_recording(path: str) -> None:
    """A recording (or ``ctr events`` output) given for a span file: say what to do."""
    if path == "-":
        return
    try:
        with open(path, encoding="utf-8", errors="replace") as stream:
            first = next((line for line in stream if line.strip()), "").strip()
    except OSError:
        return  # read_span_file says why
    recording = first.startswith("{") and '"otelbridge-recording"' in first
    if recording or _is_ctr_events(first):
        what = "an otelbridge recording" if recording else "`ctr events` output"
        raise ReportError(
            f"{path} is {what}, not a span file: turn it into spans with `otelbridge replay "
            f"{path} --exporter jsonl --jsonl-path spans.jsonl`, then `otelbridge sla --spans "
            "spans.jsonl`"
        )


def _is_ctr_events(line: str) -> bool:
    try:
        parse_ctr_line(line)
    except Exception:  # anything it cannot read is not a ctr events line
        return False
    return True


def _requests(path: str) -> Iterator[ExportTraceServiceRequest]:
    if path == "-":
        yield from read_jsonl(sys.stdin)
        return
    with open(path, encoding="utf-8") as stream:
        yield from read_jsonl(stream)


def read_span_file(
    path: str,
    config: SlaConfig,
    *,
    generated_at_ns: int,
    namespaces: Collection[str] = (),
    slowest: int = SLOWEST,
    rules: Config | None = None,
) -> Report:
    """The report of a jsonl span file (``-``: standard input), its startups grouped by
    namespace and by rollout (judged with ``rules``' ``[gate]``; the defaults, with
    ``config`` as ``[sla]``, when not given). Raises
    :class:`~otelbridge.report.verdicts.ReportError` when it cannot be read or a line does
    not decode (naming the line)."""
    _refuse_a_recording(path)
    try:
        requests = list(_requests(path))
        spans = collect(requests)
    except OSError as exc:
        raise ReportError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ReportError(f"{path}: not a text file of OTLP/JSON lines ({exc.reason})") from exc
    except DecodeError as exc:
        raise ReportError(f"{path}: {exc}") from exc
    report = from_spans(
        spans,
        config,
        source="standard input" if path == "-" else path,
        generated_at_ns=generated_at_ns,
        namespaces=namespaces,
        slowest=slowest,
    )
    judge_with = rules if rules is not None else dataclasses.replace(Config(), sla=config)
    rollouts = rollouts_of(requests, judge_with)
    verdict_json = {**report.verdict_json, "rollouts": [dict(r.document) for r in rollouts]}
    return dataclasses.replace(
        report,
        rollouts=rollouts,
        verdict_json=verdict_json,
        failed_max_ratio=judge_with.gate.max_failed_ratio,
    )
