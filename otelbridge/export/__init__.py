"""Export: batches of OTLP spans leave the process.

The emit stage builds ``opentelemetry.proto.trace.v1.Span`` messages directly (the
OpenTelemetry SDK's per-span path is several times too slow for the replay bar, see
docs/design.md). They wait in a *storage* (:mod:`~otelbridge.export.storage`: memory, or
the SQLite spool of :mod:`~otelbridge.export.spool`), and the one delivery engine
(:mod:`~otelbridge.export.delivery`) sends them, one lane per configured
:class:`SpanExporter`, each request one ``ExportTraceServiceRequest`` under the bridge's
resource and scope.

Layers and who retries:

* an exporter makes **one** attempt and says how it went (:class:`ExportResult`); it
  never sleeps or loops;
* the delivery engine retries ``RETRY`` results of one exporter with the one backoff
  (:class:`~otelbridge.core.backoff.Backoff`), keeping each exporter's progress apart:
  a batch is never sent again to an exporter that took it.

An exporter that learns more than the result (an OTLP partial success, a delay the
receiver asked for, the error) also implements :class:`ReportsFeedback`; the engine asks
for the :class:`ExportFeedback` right after each ``export``.

Modules: :mod:`~otelbridge.export.delivery` (the engine and its config),
:mod:`~otelbridge.export.storage` and :mod:`~otelbridge.export.spool` (where spans wait),
:mod:`~otelbridge.export.otlp` (OTLP/gRPC and OTLP/HTTP exporters),
:mod:`~otelbridge.export.otlpenv` (the one reader of ``OTEL_EXPORTER_OTLP_*``),
:mod:`~otelbridge.export.files` (jsonl, console, none; the OTLP/JSON encoding),
:mod:`~otelbridge.export.factory` (exporters and resource from ``OTEL_*`` variables).
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Final, Protocol, runtime_checkable

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)

from otelbridge.core.logutil import LogThrottle


class ExportResult(enum.Enum):
    SUCCESS = "success"
    RETRY = "retry"  # temporary: the same request may be sent again later
    FAILURE = "failure"  # permanent: sending it again will not help; drop and count


class SpanExporter(Protocol):
    """Delivers OTLP requests somewhere. Called from its delivery lane's thread only."""

    def export(self, request: ExportTraceServiceRequest, span_count: int) -> ExportResult:
        """Sends ``request`` (holding ``span_count`` spans) once. Must not raise."""
        ...

    def shutdown(self) -> None:
        """Releases connections and files. Idempotent."""
        ...


@dataclasses.dataclass(frozen=True, slots=True)
class ExportFeedback:
    """What an exporter learned from the receiver on its last attempt, beyond the result.

    ``rejected_spans`` goes with ``SUCCESS``: the receiver accepted the request but refused
    that many spans (OTLP partial success); they count as dropped, the rest as exported.
    ``retry_after_s`` goes with ``RETRY``: the receiver asked to wait at least this long
    (gRPC ``RetryInfo``, HTTP ``Retry-After``); the delivery engine honours it.
    ``error`` goes with ``RETRY`` and ``FAILURE``: what went wrong, in one line, for the
    engine's log line (which names the exporter).
    """

    rejected_spans: int = 0
    retry_after_s: float | None = None
    error: str = ""


NO_FEEDBACK: Final = ExportFeedback()


@runtime_checkable
class ReportsFeedback(Protocol):
    """Optional: an exporter that can tell more than :class:`ExportResult`.

    The delivery engine calls :meth:`last_feedback` right after :meth:`SpanExporter.export`,
    on the same thread, so an exporter can keep it in a plain attribute.
    """

    def last_feedback(self) -> ExportFeedback:
        """Feedback from the most recent ``export`` call (:data:`NO_FEEDBACK` if none)."""
        ...


def exporter_name(exporter: object) -> str:
    """How logs and lanes name an exporter: its ``name`` attribute (``otlp/grpc
    http://collector:4317``, ``jsonl /tmp/spans.jsonl``), else its class name."""
    name = getattr(exporter, "name", None)
    return name if isinstance(name, str) and name else type(exporter).__name__


__all__ = [
    "NO_FEEDBACK",
    "ExportFeedback",
    "ExportResult",
    "LogThrottle",
    "ReportsFeedback",
    "SpanExporter",
    "exporter_name",
]
