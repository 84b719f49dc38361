"""An exporter that keeps spans in memory (the demo's waterfall, tests)."""

from __future__ import annotations

import threading

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otelbridge.export import ExportResult


class MemoryExporter:
    """Collects every exported span. Thread-safe."""

    def __init__(self) -> None:
        self._spans: list[Span] = []
        self._lock = threading.Lock()

    def export(self, request: ExportTraceServiceRequest, span_count: int) -> ExportResult:
        with self._lock:
            for resource_spans in request.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    self._spans.extend(scope_spans.spans)
        return ExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    @property
    def spans(self) -> list[Span]:
        with self._lock:
            return list(self._spans)
