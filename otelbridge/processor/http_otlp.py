"""OTLP/HTTP trace ingest (``POST /v1/traces``) and its bounded decompression.

Answers, as the OTLP/HTTP specification has receivers answer (error bodies are a
``google.rpc.Status`` in the request's encoding; the Collector's exporter retries 503):

* 200 with an ``ExportTraceServiceResponse`` (protobuf or JSON, as the request): the
  spans were accepted, and with a state directory they are on disk;
* 400 a body that does not decode (not protobuf, not OTLP/JSON, corrupt gzip);
* 413 a body over ``max_request_bytes``, compressed or decompressed;
* 415 a content type other than ``application/x-protobuf`` / ``application/json``, or a
  ``Content-Encoding`` other than ``gzip``, ``deflate``, ``identity``;
* 401 without the bearer token (:mod:`otelbridge.httpd`);
* 503 (``Retry-After: 1``) when the state directory cannot be written.

:func:`decompress` never holds more than ``limit + 1`` decompressed bytes: a gzip bomb
(10 MB of zeros in 10 KB) is refused after decompressing one byte over the limit.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Callable, Mapping

from google.protobuf import json_format
from google.protobuf.message import DecodeError as ProtobufDecodeError
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from otelbridge import httpd
from otelbridge.core import semconv
from otelbridge.core.counters import Counters
from otelbridge.core.errors import DecodeError, StateError
from otelbridge.export.files import from_otlp_json

log = logging.getLogger(__name__)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
TRACES_PATH = "/v1/traces"
_MAX_GZIP_MEMBERS = 64
# the google.rpc.Code of each refusal, for the Status body
_GRPC_CODES = {400: 3, 401: 16, 411: 3, 413: 8, 415: 3, 500: 13, 503: 14}


class TooLarge(ValueError):
    """The decompressed body is larger than the limit."""


def decompress(data: bytes, encoding: str, limit: int) -> bytes:
    """``data`` decoded per ``Content-Encoding`` (``gzip``, several members allowed;
    ``deflate``, zlib-wrapped or raw; ``identity``), holding at most ``limit + 1`` bytes
    of output at any time. Raises :class:`TooLarge` beyond ``limit``, ValueError when the
    data is corrupt or the encoding unknown."""
    if encoding in ("", "identity"):
        if len(data) > limit:
            raise TooLarge(f"{len(data)} bytes")
        return data
    if encoding in ("gzip", "x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == "deflate":
        zlib_header = len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0
        wbits = zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS
    else:
        raise ValueError(f"unsupported Content-Encoding {encoding!r}")
    out = bytearray()
    for _ in range(_MAX_GZIP_MEMBERS):
        engine = zlib.decompressobj(wbits)
        try:
            while True:
                out += engine.decompress(data, limit + 1 - len(out))
                if len(out) > limit:
                    raise TooLarge(f"over {limit} bytes decompressed")
                data = engine.unconsumed_tail
                if engine.eof or not data:
                    break
        except zlib.error as exc:
            raise ValueError(f"corrupt {encoding} data: {exc}") from exc
        if not engine.eof:
            raise ValueError(f"truncated {encoding} data")
        data = engine.unused_data
        if not data:
            return bytes(out)
        if wbits != 16 + zlib.MAX_WBITS:
            raise ValueError(f"data after the end of the {encoding} stream")
    raise ValueError(f"more than {_MAX_GZIP_MEMBERS} gzip members")


def _media_type(headers: Mapping[str, str]) -> str:
    return headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _status(status: int, message: str, headers: Mapping[str, str]) -> httpd.Response:
    """An OTLP/HTTP error answer: a ``google.rpc.Status`` in the request's encoding."""
    code = _GRPC_CODES.get(status, 2)
    extra = {"Retry-After": "1"} if status == 503 else {}
    if _media_type(headers) == JSON:
        body = json.dumps({"code": code, "message": message}).encode()
        return httpd.Response(status, body, JSON, extra)
    body = status_pb2.Status(code=code, message=message).SerializeToString()
    return httpd.Response(status, body, PROTOBUF, extra)


def parse(body: bytes, media_type: str) -> ExportTraceServiceRequest:
    """A decompressed body as a request; DecodeError when it is not one."""
    try:
        if media_type == JSON:
            obj = json.loads(body)
            if not isinstance(obj, dict):
                raise DecodeError("OTLP/JSON: not an object")
            return from_otlp_json(obj)
        return ExportTraceServiceRequest.FromString(body)
    except (ProtobufDecodeError, ValueError, RecursionError, TypeError) as exc:
        raise DecodeError(f"not an OTLP trace request: {exc}") from exc


def traces_route(
    ingest: Callable[[ExportTraceServiceRequest], None],
    counters: Counters,
    *,
    max_request_bytes: int,
) -> httpd.Route:
    """``POST /v1/traces`` into ``ingest`` (run on the connection's thread, concurrently);
    ``ingest`` raises :class:`StateError` when it cannot keep the spans."""

    def refuse(status: int, message: str, headers: Mapping[str, str]) -> httpd.Response:
        counters.inc(semconv.PROCESSOR_REQUESTS_REFUSED)
        return _status(status, message, headers)

    def handler(request: httpd.Request) -> httpd.Response:
        headers = request.headers
        media_type = _media_type(headers)
        if media_type not in (PROTOBUF, JSON):
            return refuse(415, f"unsupported Content-Type {media_type!r}", headers)
        encoding = headers.get("content-encoding", "").strip().lower()
        try:
            body = decompress(request.body, encoding, max_request_bytes)
        except TooLarge as exc:
            return refuse(413, f"request too large: {exc}", headers)
        except ValueError as exc:
            status = 415 if "unsupported" in str(exc) else 400
            return refuse(status, str(exc), headers)
        try:
            parsed = parse(body, media_type)
        except DecodeError as exc:
            return refuse(400, str(exc), headers)
        del body
        try:
            ingest(parsed)
        except StateError as exc:
            log.warning("OTLP/HTTP request not kept: %s", exc)
            return _status(503, f"cannot keep the spans: {exc}", headers)
        response = ExportTraceServiceResponse()
        if media_type == JSON:
            return httpd.Response(
                200, json.dumps(json_format.MessageToDict(response)).encode(), JSON
            )
        return httpd.Response(200, response.SerializeToString(), PROTOBUF)

    return httpd.Route(
        "POST",
        TRACES_PATH,
        handler,
        max_body_bytes=max_request_bytes,
        refusal=_status,
    )
