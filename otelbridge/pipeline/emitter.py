"""The end of the stage chain: completed records -> spans, judged, into the sink.

For a startup: its SLA durations measured (:func:`otelbridge.sla.durations`), enriched
(attributes, trace context, budgets broken), tagged when it overlapped a snapshot reclaim,
built into its span tree, observed by the SLA tracker, the metrics stage and the pod
tracker, and handed to the sink (a storage of the delivery engine). Reclaims and pods
become one span each. Every method never raises: a bug costs one item, logged and
counted (``otelbridge.pipeline.errors``), never the daemon. Event thread only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otelbridge import sla
from otelbridge.core import semconv
from otelbridge.core.config import EnrichConfig
from otelbridge.core.counters import Counters
from otelbridge.core.logutil import ThrottledLogger
from otelbridge.core.model import ReclaimRecord, StartupRecord, startup_label
from otelbridge.correlate.gc import GcTracker
from otelbridge.correlate.pods import PodStartup, PodTracker
from otelbridge.emit.reclaim import build_reclaim_span
from otelbridge.emit.spans import build_pod_span, build_startup_spans
from otelbridge.enrich.stage import Enricher
from otelbridge.sla import SlaTracker

_tlog = ThrottledLogger(logging.getLogger(__name__))


class SpanSink(Protocol):
    """Where finished spans go (a storage of the delivery engine). Must not block."""

    def submit(self, spans: Sequence[Span]) -> None: ...


class Emitter:
    """Builds and hands on the spans of completed records (see the module docstring)."""

    def __init__(
        self,
        sink: SpanSink,
        enricher: Enricher,
        enrich_config: EnrichConfig,
        counters: Counters,
        *,
        sla_tracker: SlaTracker,
        gc: GcTracker,
        pods: PodTracker,
        on_measured: Callable[[StartupRecord, Mapping[str, float]], None] | None = None,
        on_record: Callable[[StartupRecord, list[Span]], None] | None = None,
    ) -> None:
        self._sink = sink
        self._enricher = enricher
        self._enrich_config = enrich_config
        self._counters = counters
        self._emitted = counters.cell(semconv.SPANS_EMITTED)  # event thread only
        self._sla = sla_tracker
        self._gc = gc
        self._pods = pods
        self._on_measured = on_measured  # the metrics stage
        self._on_record = on_record
        self.on_emitted: Callable[[StartupRecord], None] | None = None
        """Called once a startup's spans are in the sink (the checkpointer)."""
        self.on_spans: Callable[[StartupRecord, list[Span]], None] | None = None
        """May add spans to a startup's tree before it is judged and sent (the runtime
        phases, :mod:`otelbridge.runtime`); must keep ``container.startup`` first."""

    def startup(self, record: StartupRecord) -> None:
        """Builds and hands on the spans of one startup."""
        info = record.info
        if info is not None and info.created_at_ns:
            # the container record's creation time is the identity when it is known: live,
            # replay and a restarted bridge (which may not see /containers/create) then
            # derive the same IDs
            record.incarnation_ns = info.created_at_ns
        try:
            measured = sla.durations(record)
            enrichment = self._enricher.enrich(record, measured)
            if self._gc.overlaps(record):
                enrichment.attributes.append((semconv.OB_GC_OVERLAP, True))
            bounds = record.phase_bounds()
            spans = build_startup_spans(record, enrichment, bounds)
            if self.on_spans is not None:
                self.on_spans(record, spans)
            root = spans[0]  # container.startup comes first
            self._sla.observe(
                record,
                measured,
                label=startup_label(dict(enrichment.attributes)),
                trace_id=root.trace_id.hex(),
                reason=root.status.message,
                phases=bounds[0],
            )
            if self._on_measured is not None:
                self._on_measured(record, measured)
            self._emitted.value += len(spans)
            self._sink.submit(spans)
            self._pods.observe(record)
            if self.on_emitted is not None:
                self.on_emitted(record)
            if self._on_record is not None:
                self._on_record(record, spans)
        except Exception:  # a bug must cost one startup, not the daemon
            self._counters.inc(semconv.PIPELINE_ERRORS)
            _tlog.log(
                logging.ERROR, "bug", "%s: could not emit its startup", record.key, exc_info=True
            )

    def reclaim(self, reclaim: ReclaimRecord) -> None:
        """Builds and hands on a ``snapshot.reclaim`` span."""
        try:
            span = build_reclaim_span(reclaim)
            self._emitted.value += 1
            self._sink.submit([span])
        except Exception:  # a bug must cost one span, not the daemon
            self._counters.inc(semconv.PIPELINE_ERRORS)
            _tlog.log(
                logging.ERROR, "bug", "%s: could not emit its reclaim", reclaim.key, exc_info=True
            )

    def pod(self, pod: PodStartup) -> None:
        """Builds and hands on a pod's ``pod.startup``."""
        try:
            context = pod.pod
            attrs = self._enricher.pod_attributes(
                context, outcome=pod.outcome, containers=pod.containers, partial=pod.partial
            )
            span = build_pod_span(
                context,
                self._enrich_config.policy_for(context.namespace),
                start_ns=pod.start_ns,
                end_ns=pod.end_ns or pod.start_ns,
                attributes=attrs,
                error=pod.error,
            )
            self._emitted.value += 1
            self._counters.inc(semconv.PODS_COMPLETED)
            self._sink.submit([span])
        except Exception:  # a bug must cost one pod span, not the daemon
            self._counters.inc(semconv.PIPELINE_ERRORS)
            _tlog.log(
                logging.ERROR, "bug", "%s: could not emit its pod", pod.pod.key, exc_info=True
            )


__all__ = ["Emitter", "SpanSink"]
