"""The rollouts of a span file: its startups grouped by the trace that caused them.

A rollout is a trace that holds a ``rollout`` span (``otelbridge rollout``), or whose
``container.startup`` / ``pod.startup`` spans name a parent span the file does not hold
(a provisioning span of the rollout system, sent elsewhere). Each is judged exactly as
``otelbridge processor`` judges it: the file's spans go through the processor's own
:class:`~otelbridge.processor.aggregate.Aggregator` (in memory), and its document gives
the verdict, the counts and the reasons, with ``[sla]``'s budgets and ``[gate]``'s rules.
Startups that are their own trace are not a rollout and are left out here (the
namespaces judge them).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)

from otelbridge.core import semconv
from otelbridge.core.config import Config
from otelbridge.core.counters import Counters
from otelbridge.processor.aggregate import Aggregator
from otelbridge.report.model import RolloutReport

_STARTUPS = frozenset({semconv.SPAN_CONTAINER_STARTUP, semconv.SPAN_POD_STARTUP})


def rollouts_of(
    requests: Iterable[ExportTraceServiceRequest], config: Config
) -> tuple[RolloutReport, ...]:
    """The rollouts of ``requests`` (see the module docstring), slowest verdict first:
    halt, then insufficient, then pass; in each, by name."""
    aggregator = Aggregator(config, Counters(semconv.PROCESSOR_COUNTERS))
    held: set[tuple[bytes, bytes]] = set()
    parents: list[tuple[bytes, bytes]] = []
    rollouts: set[bytes] = set()
    for request in requests:
        aggregator.ingest(request)
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    held.add((span.trace_id, span.span_id))
                    if span.name == semconv.SPAN_ROLLOUT:
                        rollouts.add(span.trace_id)
                    elif span.name in _STARTUPS and span.parent_span_id:
                        parents.append((span.trace_id, span.parent_span_id))
    rollouts |= {trace for trace, parent in parents if (trace, parent) not in held}
    out = [_report(trace, aggregator.rollout(trace)) for trace in rollouts]
    order = {"halt": 0, "insufficient": 1, "pass": 2}
    return tuple(sorted(out, key=lambda r: (order.get(r.verdict, 3), r.name, r.trace_id)))


def _report(trace: bytes, document: dict[str, Any]) -> RolloutReport:
    reasons: Sequence[Any] = document.get("reasons") or ()
    return RolloutReport(
        trace_id=trace.hex(),
        name=str(document.get("name") or ""),
        verdict=str(document.get("verdict")),
        startups=int(document.get("startups") or 0),
        failed=int(document.get("failed") or 0),
        partial=int(document.get("partial") or 0),
        reasons=tuple(str(r) for r in reasons),
        document=document,
    )


__all__ = ["rollouts_of"]
