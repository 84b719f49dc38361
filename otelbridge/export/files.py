"""Exporters that write spans locally, and the OTLP/JSON encoding they use.

* :func:`to_otlp_json` / :func:`from_otlp_json`: an ``ExportTraceServiceRequest`` as
  OTLP/JSON (the encoding of OTLP/HTTP with ``application/json``): lowerCamelCase field
  names, trace and span ids as lowercase hex (not protobuf-JSON's base64), enums as
  integers, 64-bit integers as decimal strings.
* :class:`JsonlExporter`: one request per line, the format the OpenTelemetry Collector's
  ``file`` exporter writes, so its output can be fed to tools that read those files and
  read back with :func:`read_jsonl`.
* :class:`ConsoleExporter`: one human-readable line per span.
* :class:`NoneExporter`: accepts everything, writes nothing.

Exporters here follow :class:`otelbridge.export.SpanExporter`: ``export`` is called from
the batch processor's thread only and never raises; a write error is logged and returned
as ``FAILURE`` (a full disk or a closed pipe does not heal by retrying the same batch).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from typing import Any, TextIO

from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from otelbridge.core.errors import DecodeError
from otelbridge.export import ExportResult

__all__ = [
    "ConsoleExporter",
    "JsonlExporter",
    "NoneExporter",
    "format_span",
    "from_otlp_json",
    "read_jsonl",
    "to_otlp_json",
]

log = logging.getLogger(__name__)

# Field names of the id-carrying messages, in both spellings OTLP/JSON receivers must accept.
_RESOURCE_SPANS = ("resourceSpans", "resource_spans")
_SCOPE_SPANS = ("scopeSpans", "scope_spans")
_ID_KEYS = ("traceId", "trace_id", "spanId", "span_id", "parentSpanId", "parent_span_id")


def to_otlp_json(request: ExportTraceServiceRequest) -> dict[str, Any]:
    """Encodes ``request`` as an OTLP/JSON object (ready for ``json.dumps``).

    Fields holding their default value are omitted, as OTLP/JSON allows.
    """
    obj = json_format.MessageToDict(request, use_integers_for_enums=True)
    # MessageToDict writes bytes as base64; OTLP/JSON wants hex for the ids. The dict keeps
    # every element of every repeated field in order, so walking the message alongside the
    # dict converts each id from its raw bytes without decoding base64 again.
    for rs_msg, rs_obj in zip(request.resource_spans, obj.get("resourceSpans", ()), strict=True):
        for ss_msg, ss_obj in zip(rs_msg.scope_spans, rs_obj.get("scopeSpans", ()), strict=True):
            for span_msg, span_obj in zip(ss_msg.spans, ss_obj.get("spans", ()), strict=True):
                _hex_ids(span_msg, span_obj)
                for link_msg, link_obj in zip(
                    span_msg.links, span_obj.get("links", ()), strict=True
                ):
                    _hex_ids(link_msg, link_obj)
    return obj


def _hex_ids(msg: Span | Span.Link, obj: dict[str, Any]) -> None:
    if msg.trace_id:
        obj["traceId"] = msg.trace_id.hex()
    if msg.span_id:
        obj["spanId"] = msg.span_id.hex()
    if isinstance(msg, Span) and msg.parent_span_id:
        obj["parentSpanId"] = msg.parent_span_id.hex()


def from_otlp_json(obj: Mapping[str, Any]) -> ExportTraceServiceRequest:
    """Decodes an OTLP/JSON object into a request (the inverse of :func:`to_otlp_json`).

    Accepts lowerCamelCase and snake_case field names and ignores unknown fields, as the
    OTLP/JSON rules require of receivers. Raises :class:`~otelbridge.core.errors.DecodeError`
    on anything else that does not fit (bad hex id, wrong types).
    """
    try:
        converted = _ids_to_base64(obj)
        return json_format.ParseDict(
            converted, ExportTraceServiceRequest(), ignore_unknown_fields=True
        )
    except (ValueError, TypeError, AttributeError, json_format.ParseError) as exc:
        raise DecodeError(f"not an OTLP/JSON trace request: {exc}") from exc


def _ids_to_base64(obj: Mapping[str, Any]) -> dict[str, Any]:
    # Rebuilds only the containers on the way to the ids; everything else is shared with
    # the caller's object, which is never modified.
    out = dict(obj)
    for rs_key in _RESOURCE_SPANS:
        if rs_key not in out:
            continue
        new_rs = []
        for rs in out[rs_key]:
            new = dict(rs)
            for ss_key in _SCOPE_SPANS:
                if ss_key in new:
                    new[ss_key] = [_scope_ids_to_base64(ss) for ss in new[ss_key]]
            new_rs.append(new)
        out[rs_key] = new_rs
    return out


def _scope_ids_to_base64(ss: Mapping[str, Any]) -> dict[str, Any]:
    ss = dict(ss)
    if "spans" in ss:
        spans = []
        for span in ss["spans"]:
            new = _id_fields_to_base64(span)
            if "links" in new:
                new["links"] = [_id_fields_to_base64(link) for link in new["links"]]
            spans.append(new)
        ss["spans"] = spans
    return ss


def _id_fields_to_base64(obj: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(obj)
    for key in _ID_KEYS:
        value = out.get(key)
        if isinstance(value, str) and value:
            out[key] = base64.b64encode(bytes.fromhex(value)).decode("ascii")
    return out


def read_jsonl(stream: TextIO) -> Iterator[ExportTraceServiceRequest]:
    """Yields the requests of an OTLP/JSON-lines stream; blank lines are skipped.

    Raises :class:`~otelbridge.core.errors.DecodeError` naming the line that does not decode.
    """
    for lineno, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise DecodeError(f"line {lineno}: not JSON: {exc}") from exc
        if not isinstance(obj, dict):
            raise DecodeError(f"line {lineno}: expected a JSON object")
        try:
            yield from_otlp_json(obj)
        except DecodeError as exc:
            raise DecodeError(f"line {lineno}: {exc}") from exc


class JsonlExporter:
    """Appends each request as one OTLP/JSON line to a file or stream, flushed at once.

    ``path_or_stream``: a path (opened for appending, created if missing), an open text
    stream (written to, never closed), or ``"-"``/``None`` for standard output. The file is
    opened here, so a bad path fails at construction with ``OSError``, not on the first batch.
    """

    def __init__(self, path_or_stream: str | os.PathLike[str] | TextIO | None = None) -> None:
        self._owned = False
        self.name = "jsonl stdout"
        if path_or_stream is None or path_or_stream == "-":
            self._stream: TextIO = sys.stdout
        elif isinstance(path_or_stream, str | os.PathLike):
            self._stream = open(path_or_stream, "a", encoding="utf-8")  # noqa: SIM115
            self._owned = True
            self.name = f"jsonl {os.fspath(path_or_stream)}"
        else:
            self._stream = path_or_stream
        self._closed = False

    def export(self, request: ExportTraceServiceRequest, span_count: int) -> ExportResult:
        """Writes one line. Never raises; a write error gives ``FAILURE``."""
        if self._closed:
            log.warning("jsonl exporter is shut down; %d spans not written", span_count)
            return ExportResult.FAILURE
        try:
            line = json.dumps(to_otlp_json(request), separators=(",", ":"))
            self._stream.write(line + "\n")
            # Flushing per line keeps the file readable by a tail -f or a crash survivor.
            self._stream.flush()
        except (OSError, ValueError) as exc:  # ValueError: write to a closed stream
            log.error("jsonl exporter: could not write %d spans: %s", span_count, exc)
            return ExportResult.FAILURE
        return ExportResult.SUCCESS

    def shutdown(self) -> None:
        """Closes the file if this exporter opened it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._owned:
            try:
                self._stream.close()
            except OSError as exc:
                log.warning("jsonl exporter: closing the file failed: %s", exc)


class ConsoleExporter:
    """Prints one line per span, for people watching a terminal.

    The line holds trace id, span id, parent id (``-`` for a root), name, duration in
    milliseconds, status and its attributes as ``key=value`` (the first ``max_attributes``
    when given).
    """

    def __init__(self, stream: TextIO | None = None, *, max_attributes: int | None = None) -> None:
        self._stream: TextIO = stream if stream is not None else sys.stdout
        self._max_attributes = max_attributes

    def export(self, request: ExportTraceServiceRequest, span_count: int) -> ExportResult:
        """Writes the spans of ``request``. Never raises; a write error gives ``FAILURE``."""
        try:
            lines = [
                format_span(span, self._max_attributes)
                for rs in request.resource_spans
                for ss in rs.scope_spans
                for span in ss.spans
            ]
            if lines:
                self._stream.write("\n".join(lines) + "\n")
                self._stream.flush()
        except (OSError, ValueError) as exc:
            log.error("console exporter: could not write %d spans: %s", span_count, exc)
            return ExportResult.FAILURE
        return ExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing to release; the stream belongs to the caller."""


def format_span(span: Span, max_attributes: int | None = None) -> str:
    """One line describing ``span`` (the :class:`ConsoleExporter` format): its IDs,
    name, duration, status and attributes (all of them unless ``max_attributes``: the
    ones that explain a startup, outcome, readiness source, budgets broken, are what a
    person at a terminal looks for)."""
    duration_ms = (span.end_time_unix_nano - span.start_time_unix_nano) / 1e6
    parts = [
        f"trace={span.trace_id.hex()}",
        f"span={span.span_id.hex()}",
        f"parent={span.parent_span_id.hex() or '-'}",
        f"name={span.name}",
        f"duration={duration_ms:.3f}ms",
        f"status={_status_text(span.status)}",
    ]
    shown = span.attributes if max_attributes is None else span.attributes[:max_attributes]
    for kv in shown:
        parts.append(f"{kv.key}={_value_text(kv.value)}")
    if max_attributes is not None and len(span.attributes) > max_attributes:
        parts.append(f"(+{len(span.attributes) - max_attributes} attributes)")
    return " ".join(parts)


_STATUS_NAMES = {
    Status.STATUS_CODE_UNSET: "UNSET",
    Status.STATUS_CODE_OK: "OK",
    Status.STATUS_CODE_ERROR: "ERROR",
}


def _status_text(status: Status) -> str:
    name = _STATUS_NAMES.get(status.code, str(status.code))
    return f"{name}({status.message})" if status.message else name


def _value_text(value: AnyValue) -> str:
    kind = value.WhichOneof("value")
    if kind is None:
        return "<empty>"
    if kind == "string_value":
        text = value.string_value
        # Quote only when needed, so the common case stays easy to read and grep.
        return json.dumps(text) if (not text or any(c.isspace() for c in text)) else text
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind == "int_value":
        return str(value.int_value)
    if kind == "double_value":
        return repr(value.double_value)
    if kind == "bytes_value":
        return value.bytes_value.hex()
    if kind == "array_value":
        return "[" + ",".join(_value_text(v) for v in value.array_value.values) + "]"
    pairs = (f"{kv.key}={_value_text(kv.value)}" for kv in value.kvlist_value.values)
    return "{" + ",".join(pairs) + "}"


class NoneExporter:
    """Accepts every request and sends it nowhere (``OTEL_TRACES_EXPORTER=none``)."""

    def export(self, request: ExportTraceServiceRequest, span_count: int) -> ExportResult:
        """Returns ``SUCCESS``. Never raises."""
        return ExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing to release."""
