"""OTLP exporters (gRPC and HTTP) and their configuration from ``OTEL_EXPORTER_OTLP_*``.

Each exporter makes exactly **one** attempt per :meth:`export` call and maps the outcome
to :class:`~otelbridge.export.ExportResult` following the OTLP specification:

======================  ====================================================  =========
transport               outcome                                               result
======================  ====================================================  =========
gRPC                    ``OK``                                                SUCCESS
gRPC                    CANCELLED, DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE,  RETRY
                        UNAVAILABLE, DATA_LOSS; RESOURCE_EXHAUSTED only with
                        ``google.rpc.RetryInfo`` in the status details
gRPC                    any other code                                        FAILURE
HTTP                    2xx                                                   SUCCESS
HTTP                    429, 502, 503, 504; connection errors, timeouts       RETRY
HTTP                    any other status                                      FAILURE
======================  ====================================================  =========

A successful response may carry ``partial_success.rejected_spans``: the exporter logs the
receiver's message and reports the count through :meth:`last_feedback`, so the batch
processor counts those spans as dropped. A receiver's requested delay (gRPC ``RetryInfo``,
HTTP ``Retry-After``) is reported the same way. Retrying is the batch processor's job.

Threading: ``export`` and ``last_feedback`` are called from the batch processor's thread
only; ``shutdown`` may come from another thread and makes a running ``export`` fail fast.
``export`` never raises. Constructors raise :class:`~otelbridge.core.errors.ConfigError` for an
endpoint or certificate they cannot use: that is the configuration edge.
"""

from __future__ import annotations

import dataclasses
import email.utils
import gzip
import http.client
import json
import logging
import math
import os
import ssl
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final, Literal, TypeAlias, get_args

import grpc
from google.protobuf import any_pb2, duration_pb2, json_format
from google.protobuf.message import DecodeError as ProtobufDecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from otelbridge import __version__
from otelbridge.core.errors import ConfigError
from otelbridge.export import NO_FEEDBACK, ExportFeedback, ExportResult, LogThrottle
from otelbridge.export.files import to_otlp_json

__all__ = [
    "DEFAULT_GRPC_ENDPOINT",
    "DEFAULT_HTTP_ENDPOINT",
    "GRPC_EXPORT_METHOD",
    "TRACES_PATH",
    "Compression",
    "OtlpConfig",
    "OtlpGrpcExporter",
    "OtlpHttpExporter",
    "OtlpProtocol",
    "create_exporter",
    "endpoint_problem",
    "parse_key_values",
    "signal_endpoint",
]

log = logging.getLogger(__name__)

OtlpProtocol: TypeAlias = Literal["grpc", "http/protobuf", "http/json"]
Compression: TypeAlias = Literal["none", "gzip"]

PROTOCOLS: Final[tuple[str, ...]] = get_args(OtlpProtocol)
COMPRESSIONS: Final[tuple[str, ...]] = get_args(Compression)
DEFAULT_PROTOCOL: Final = "grpc"
DEFAULT_GRPC_ENDPOINT: Final = "http://localhost:4317"
DEFAULT_HTTP_ENDPOINT: Final = "http://localhost:4318/v1/traces"
DEFAULT_TIMEOUT_S: Final = 10.0
TRACES_PATH: Final = "/v1/traces"
GRPC_EXPORT_METHOD: Final = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
USER_AGENT: Final = f"otelbridge/{__version__}"

_RETRYABLE_GRPC_CODES: Final = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
_RETRYABLE_HTTP_STATUSES: Final = frozenset({429, 502, 503, 504})
_STATUS_DETAILS_KEY: Final = "grpc-status-details-bin"
_RETRY_INFO_TYPE: Final = "google.rpc.RetryInfo"
_ENV_PREFIX: Final = "OTEL_EXPORTER_OTLP_"


# -- configuration --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class OtlpConfig:
    """Where and how the OTLP exporter sends spans. Defaults live here and nowhere else."""

    endpoint: str = DEFAULT_GRPC_ENDPOINT
    """Full target. gRPC: ``http://host:port`` (plaintext), ``https://host:port`` (TLS) or
    ``host:port`` (TLS unless ``insecure``). HTTP: the complete traces URL, path included."""

    protocol: OtlpProtocol = DEFAULT_PROTOCOL
    """``grpc``, ``http/protobuf`` or ``http/json``."""

    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Sent with every request (gRPC metadata, keys lowercased; or HTTP headers)."""

    timeout_s: float = DEFAULT_TIMEOUT_S
    """Time allowed for one export attempt, in seconds."""

    insecure: bool = False
    """gRPC only, for an endpoint without a scheme: plaintext instead of TLS."""

    compression: Compression = "none"
    """``gzip`` compresses request bodies; ``none`` does not."""

    certificate: str | None = None
    """PEM file of the CA(s) that sign the receiver's certificate (TLS); ``None`` uses the
    system's trust store."""

    def validate(self) -> list[str]:
        """Every problem of this configuration (empty when it is usable)."""
        problems: list[str] = []
        if self.protocol not in PROTOCOLS:
            problems.append(f"protocol: {self.protocol!r} is not one of {', '.join(PROTOCOLS)}")
        else:
            reason = endpoint_problem(self.endpoint, self.protocol)
            if reason:
                problems.append(f"endpoint: {reason}")
        for key in self.headers:
            if not key.strip():
                problems.append("headers: a header name is empty")
        reason = _timeout_problem(self.timeout_s)
        if reason:
            problems.append(f"timeout_s: {reason}")
        if self.compression not in COMPRESSIONS:
            problems.append(
                f"compression: {self.compression!r} is not one of {', '.join(COMPRESSIONS)}"
            )
        if self.certificate is not None and not os.path.isfile(self.certificate):
            problems.append(f"certificate: {self.certificate!r} is not a readable file")
        return problems

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> OtlpConfig:
        """Reads the standard ``OTEL_EXPORTER_OTLP_[TRACES_]*`` variables.

        The ``TRACES_`` variable of a setting wins over the generic one; empty values
        count as unset. With an HTTP protocol, the generic endpoint is a base URL and gets
        ``/v1/traces`` appended, while ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is used as is.
        ``_TIMEOUT`` is in milliseconds and ``_HEADERS`` is ``k=v,k2=v2`` with
        percent-encoded keys and values.

        Raises :class:`~otelbridge.core.errors.ConfigError` listing every invalid variable.
        """
        problems: list[str] = []

        name, raw = _lookup(environ, "PROTOCOL")
        protocol: OtlpProtocol = DEFAULT_PROTOCOL
        if raw is not None:
            if raw.lower() in PROTOCOLS:
                protocol = _as_protocol(raw.lower())
            else:
                problems.append(f"{name}: {raw!r} is not one of {', '.join(PROTOCOLS)}")

        endpoint = signal_endpoint(environ, "TRACES", TRACES_PATH, protocol, problems)

        headers: dict[str, str] = {}
        name, raw = _lookup(environ, "HEADERS")
        if raw is not None:
            headers, header_problems = parse_key_values(raw)
            problems.extend(f"{name}: {p}" for p in header_problems)

        timeout_s = DEFAULT_TIMEOUT_S
        name, raw = _lookup(environ, "TIMEOUT")
        if raw is not None:
            try:
                timeout_s = float(raw) / 1000.0
            except ValueError:
                problems.append(f"{name}: {raw!r} is not a number of milliseconds")
            else:
                reason = _timeout_problem(timeout_s)
                if reason:
                    problems.append(f"{name}: {raw!r}: {reason}")
                    timeout_s = DEFAULT_TIMEOUT_S

        insecure = False
        name, raw = _lookup(environ, "INSECURE")
        if raw is not None:
            if raw.lower() in ("true", "false"):
                insecure = raw.lower() == "true"
            else:
                problems.append(f"{name}: {raw!r} is neither true nor false")

        compression: Compression = "none"
        name, raw = _lookup(environ, "COMPRESSION")
        if raw is not None:
            if raw.lower() == "gzip":
                compression = "gzip"
            elif raw.lower() != "none":
                problems.append(f"{name}: {raw!r} is not one of {', '.join(COMPRESSIONS)}")

        name, certificate = _lookup(environ, "CERTIFICATE")
        if certificate is not None and not os.path.isfile(certificate):
            problems.append(f"{name}: {certificate!r} is not a readable file")

        if problems:
            raise ConfigError(problems)
        return cls(
            endpoint=endpoint,
            protocol=protocol,
            headers=headers,
            timeout_s=timeout_s,
            insecure=insecure,
            compression=compression,
            certificate=certificate,
        )


def _as_protocol(value: str) -> OtlpProtocol:
    if value == "http/protobuf":
        return "http/protobuf"
    if value == "http/json":
        return "http/json"
    return "grpc"


def _get(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name, "").strip()
    return value or None


def _lookup(environ: Mapping[str, str], setting: str) -> tuple[str, str | None]:
    """The traces-specific variable if set, else the generic one: (name, value)."""
    specific = _ENV_PREFIX + "TRACES_" + setting
    value = _get(environ, specific)
    if value is not None:
        return specific, value
    generic = _ENV_PREFIX + setting
    return generic, _get(environ, generic)


def parse_key_values(text: str) -> tuple[dict[str, str], list[str]]:
    """Parses ``k=v,k2=v2`` with percent-decoding (the format of ``OTEL_*_HEADERS`` and
    ``OTEL_RESOURCE_ATTRIBUTES``). Returns the pairs and a problem per bad entry."""
    pairs: dict[str, str] = {}
    problems: list[str] = []
    for item in text.split(","):
        if not item.strip():
            continue  # a trailing or doubled comma is harmless
        key, sep, value = item.partition("=")
        key = urllib.parse.unquote(key.strip())
        if not sep or not key:
            problems.append(f"{item.strip()!r} is not key=value")
            continue
        pairs[key] = urllib.parse.unquote(value.strip())
    return pairs, problems


def signal_endpoint(
    environ: Mapping[str, str], signal: str, path: str, protocol: str, problems: list[str]
) -> str:
    """The endpoint of one signal (``TRACES``, ``METRICS``) by the OTLP conventions:
    ``OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT`` as is, else ``OTEL_EXPORTER_OTLP_ENDPOINT``
    (with ``path`` appended for HTTP), else the default; an invalid one is added to
    ``problems``."""
    default_http = "http://localhost:4318" + path
    endpoint = DEFAULT_GRPC_ENDPOINT if protocol == "grpc" else default_http
    specific = _get(environ, f"{_ENV_PREFIX}{signal}_ENDPOINT")
    generic = _get(environ, _ENV_PREFIX + "ENDPOINT")
    if specific is not None:
        endpoint, name = specific, f"{_ENV_PREFIX}{signal}_ENDPOINT"
    elif generic is not None:
        name = _ENV_PREFIX + "ENDPOINT"
        endpoint = generic if protocol == "grpc" else generic.rstrip("/") + path
    if specific is not None or generic is not None:
        reason = endpoint_problem(endpoint, protocol)
        if reason:
            problems.append(f"{name}: {reason}")
    return endpoint


def endpoint_problem(endpoint: str, protocol: str) -> str | None:
    """Why ``endpoint`` is not a usable OTLP endpoint for ``protocol``, or None."""
    url = endpoint
    if "://" not in endpoint:
        if protocol != "grpc":
            return f"{endpoint!r} is not an http:// or https:// URL"
        url = "http://" + endpoint  # the host:port form of gRPC: parse it like a URL
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        return f"{endpoint!r}: {exc}"
    if parts.scheme not in ("http", "https"):
        return f"{endpoint!r}: the scheme must be http or https"
    if not parts.hostname:
        return f"{endpoint!r} has no host"
    return None


def _timeout_problem(timeout_s: float) -> str | None:
    if not math.isfinite(timeout_s) or timeout_s <= 0:
        return "must be a positive duration"
    return None


def create_exporter(config: OtlpConfig) -> OtlpGrpcExporter | OtlpHttpExporter:
    """The exporter ``config.protocol`` asks for. Raises ``ConfigError`` if it is unusable."""
    problems = config.validate()
    if problems:
        raise ConfigError(problems)
    if config.protocol == "grpc":
        return OtlpGrpcExporter(
            config.endpoint,
            headers=config.headers,
            timeout_s=config.timeout_s,
            insecure=config.insecure,
            compression=config.compression,
            certificate=config.certificate,
        )
    return OtlpHttpExporter(
        config.endpoint,
        protocol="http/json" if config.protocol == "http/json" else "http/protobuf",
        headers=config.headers,
        timeout_s=config.timeout_s,
        compression=config.compression,
        certificate=config.certificate,
    )


def _read_certificate(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError([f"certificate: cannot read {path!r}: {exc}"]) from exc


# -- gRPC -----------------------------------------------------------------------------------
class OtlpGrpcExporter:
    """Sends each request with one unary ``TraceService/Export`` call.

    The channel connects lazily and reconnects by itself; its reconnect backoff is capped
    at ``max_reconnect_backoff_s`` (gRPC's default is 120 s), because with the default a
    collector that is back after an outage would only be noticed minutes later.
    ``channel_options`` are passed to gRPC after otelbridge's own and may override them.
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_GRPC_ENDPOINT,
        *,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        insecure: bool = False,
        compression: Compression = "none",
        certificate: str | None = None,
        max_reconnect_backoff_s: float = 5.0,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        reason = endpoint_problem(endpoint, "grpc")
        if reason:
            raise ConfigError([f"endpoint: {reason}"])
        if "://" in endpoint:
            parts = urllib.parse.urlsplit(endpoint)
            target, secure = parts.netloc, parts.scheme == "https"
        else:
            target, secure = endpoint, not insecure
        options = [
            ("grpc.primary_user_agent", USER_AGENT),
            ("grpc.max_reconnect_backoff_ms", int(max_reconnect_backoff_s * 1000)),
            ("grpc.initial_reconnect_backoff_ms", min(1000, int(max_reconnect_backoff_s * 1000))),
            *channel_options,
        ]
        if secure:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read_certificate(certificate)
            )
            self._channel: Any = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._call: Any = self._channel.unary_unary(
            GRPC_EXPORT_METHOD,
            request_serializer=ExportTraceServiceRequest.SerializeToString,
            response_deserializer=ExportTraceServiceResponse.FromString,
        )
        self.endpoint = endpoint
        self._metadata = tuple((k.lower(), v) for k, v in (headers or {}).items())
        self._timeout_s = timeout_s
        self._compression = grpc.Compression.Gzip if compression == "gzip" else None
        self._feedback = NO_FEEDBACK
        self._closed = False
        self._warn = LogThrottle()
        self._partial_log = LogThrottle()

    def export(self, request: ExportTraceServiceRequest, span_count: int) -> ExportResult:
        """One ``Export`` call. Never raises."""
        self._feedback = NO_FEEDBACK
        if self._closed:
            log.warning("otlp/grpc exporter is shut down; %d spans not sent", span_count)
            return ExportResult.FAILURE
        try:
            response = self._call(
                request,
                timeout=self._timeout_s,
                metadata=self._metadata,
                compression=self._compression,
            )
        except grpc.RpcError as exc:
            return self._from_rpc_error(exc, span_count)
        except Exception as exc:
            # Bad metadata, a serialization bug: a retry would fail the same way.
            log.error("otlp/grpc export to %s failed: %r", self.endpoint, exc)
            return ExportResult.FAILURE
        self._feedback = _partial_success(
            response.partial_success, span_count, self.endpoint, self._partial_log
        )
        return ExportResult.SUCCESS

    def _from_rpc_error(self, exc: Any, span_count: int) -> ExportResult:
        code = exc.code()
        details = exc.details()
        retry_after_s: float | None = None
        for key, value in exc.trailing_metadata() or ():
            if key == _STATUS_DETAILS_KEY and isinstance(value, bytes):
                retry_after_s = _retry_delay_from_status(value)
        retryable = code in _RETRYABLE_GRPC_CODES or (
            code == grpc.StatusCode.RESOURCE_EXHAUSTED and retry_after_s is not None
        )
        if retryable:
            # The batch processor logs the retry and its outcome; detail goes to debug.
            log.debug("otlp/grpc export to %s: %s %s (retryable)", self.endpoint, code, details)
            self._feedback = ExportFeedback(retry_after_s=retry_after_s)
            return ExportResult.RETRY
        n = self._warn.ready()
        if n is not None:
            log.warning(
                "otlp/grpc export of %d spans to %s failed permanently: %s %s "
                "(%d failures since the last report)",
                span_count,
                self.endpoint,
                code,
                details,
                n,
            )
        return ExportResult.FAILURE

    def last_feedback(self) -> ExportFeedback:
        """Partial success or retry delay from the most recent ``export``."""
        return self._feedback

    def shutdown(self) -> None:
        """Closes the channel (cancelling a running call). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._channel.close()


def _partial_success(
    partial: ExportTracePartialSuccess, span_count: int, endpoint: str, throttle: LogThrottle
) -> ExportFeedback:
    rejected = partial.rejected_spans
    if rejected <= 0:
        if partial.error_message:
            # A warning from the receiver with nothing rejected (OTLP allows this).
            log.info("otlp receiver %s says: %s", endpoint, partial.error_message)
        return NO_FEEDBACK
    n = throttle.ready()
    if n is not None:
        log.warning(
            "otlp receiver %s rejected %d of %d spans: %s "
            "(%d such responses since the last report)",
            endpoint,
            rejected,
            span_count,
            partial.error_message or "no reason given",
            n,
        )
    return ExportFeedback(rejected_spans=min(rejected, span_count))


# -- google.rpc.Status, read by hand -----------------------------------------------------------
# The status details of a gRPC error are a serialized google.rpc.Status. Its generated class
# lives in googleapis-common-protos, which otelbridge does not depend on; the two messages
# needed here are small enough to read from the wire format directly:
#   Status    { int32 code = 1; string message = 2; repeated google.protobuf.Any details = 3; }
#   RetryInfo { google.protobuf.Duration retry_delay = 1; }


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def _wire_fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of a serialized message: varints as int, length-delimited
    fields as bytes; fixed-width fields are skipped. Raises ValueError on a bad encoding."""
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, i = _varint(data, i)
            yield number, value
        elif wire_type == 2:
            length, i = _varint(data, i)
            if i + length > len(data):
                raise ValueError("truncated field")
            yield number, data[i : i + length]
            i += length
        elif wire_type == 1:
            i += 8
        elif wire_type == 5:
            i += 4
        else:
            raise ValueError(f"unsupported wire type {wire_type}")


def _retry_delay_from_status(status: bytes) -> float | None:
    """The ``RetryInfo.retry_delay`` in a serialized ``google.rpc.Status``, in seconds."""
    try:
        for number, value in _wire_fields(status):
            if number != 3 or not isinstance(value, bytes):
                continue
            detail = any_pb2.Any.FromString(value)
            if detail.type_url.rsplit("/", 1)[-1] != _RETRY_INFO_TYPE:
                continue
            delay = 0.0
            for inner_number, inner in _wire_fields(detail.value):
                if inner_number == 1 and isinstance(inner, bytes):
                    duration = duration_pb2.Duration.FromString(inner)
                    delay = max(0.0, duration.seconds + duration.nanos / 1e9)
            return delay
    except (ValueError, ProtobufDecodeError) as exc:
        log.debug("unreadable grpc status details: %s", exc)
    return None


def _status_message(status: bytes) -> str | None:
    """The ``message`` of a serialized ``google.rpc.Status``, if it is one."""
    try:
        for number, value in _wire_fields(status):
            if number == 2 and isinstance(value, bytes):
                return value.decode("utf-8", "replace")
    except ValueError:
        pass
    return None


# -- HTTP -------------------------------------------------------------------------------------
class OtlpHttpExporter:
    """POSTs each request to the traces URL, as protobuf or OTLP/JSON.

    One HTTP/1.1 connection is kept open between batches. When a kept-alive connection
    turns out to have been closed by the receiver meanwhile (an idle timeout), the request
    is sent once more on a fresh connection within the same attempt: that is connection
    management, not a retry of the export.
    """

    def __init__(
        self,
        endpoint: str = DEFAULT_HTTP_ENDPOINT,
        *,
        protocol: Literal["http/protobuf", "http/json"] = "http/protobuf",
        headers: Mapping[str, str] | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        compression: Compression = "none",
        certificate: str | None = None,
    ) -> None:
        reason = endpoint_problem(endpoint, protocol)
        if reason:
            raise ConfigError([f"endpoint: {reason}"])
        parts = urllib.parse.urlsplit(endpoint)
        self.endpoint = endpoint
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = parts.hostname or ""
        if parts.scheme == "https":
            try:
                context = ssl.create_default_context(cafile=certificate)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError([f"certificate: cannot use {certificate!r}: {exc}"]) from exc
            self._conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                host, parts.port, timeout=timeout_s, context=context
            )
        else:
            self._conn = http.client.HTTPConnection(host, parts.port, timeout=timeout_s)
        self._json = protocol == "http/json"
        self._gzip = compression == "gzip"
        self._headers = {
            "User-Agent": USER_AGENT,
            **(headers or {}),
            "Content-Type": "application/json" if self._json else "application/x-protobuf",
        }
        if self._gzip:
            self._headers["Content-Encoding"] = "gzip"
        self._feedback = NO_FEEDBACK
        self._closed = False
        self._warn = LogThrottle()
        self._partial_log = LogThrottle()

    def export(self, request: ExportTraceServiceRequest, span_count: int) -> ExportResult:
        """One POST. Never raises."""
        self._feedback = NO_FEEDBACK
        if self._closed:
            log.warning("otlp/http exporter is shut down; %d spans not sent", span_count)
            return ExportResult.FAILURE
        try:
            if self._json:
                body = json.dumps(to_otlp_json(request), separators=(",", ":")).encode()
            else:
                body = request.SerializeToString()
            if self._gzip:
                body = gzip.compress(body, compresslevel=6)
        except Exception as exc:
            log.error("otlp/http: cannot encode %d spans: %r", span_count, exc)
            return ExportResult.FAILURE
        try:
            status, response_headers, data = self._post(body)
        except (OSError, http.client.HTTPException) as exc:
            # Refused, reset, timed out, TLS handshake failed, garbled response: the next
            # attempt may well succeed on a new connection.
            self._conn.close()
            log.debug("otlp/http export to %s: %r (retryable)", self.endpoint, exc)
            return ExportResult.RETRY
        except Exception as exc:
            # http.client refusing a header value, and the like: retrying cannot help.
            self._conn.close()
            log.error("otlp/http export to %s failed: %r", self.endpoint, exc)
            return ExportResult.FAILURE
        if 200 <= status < 300:
            response = self._decode_response(data, response_headers)
            if response is not None:
                self._feedback = _partial_success(
                    response.partial_success, span_count, self.endpoint, self._partial_log
                )
            return ExportResult.SUCCESS
        if status in _RETRYABLE_HTTP_STATUSES:
            log.debug("otlp/http export to %s: HTTP %d (retryable)", self.endpoint, status)
            self._feedback = ExportFeedback(
                retry_after_s=_parse_retry_after(response_headers.get("retry-after"))
            )
            return ExportResult.RETRY
        n = self._warn.ready()
        if n is not None:
            log.warning(
                "otlp/http export of %d spans to %s failed permanently: HTTP %d %s "
                "(%d failures since the last report)",
                span_count,
                self.endpoint,
                status,
                self._error_text(data, response_headers),
                n,
            )
        return ExportResult.FAILURE

    def _post(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        reused = self._conn.sock is not None
        try:
            return self._request(body)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            if not reused:
                raise
            # The receiver closed the idle keep-alive connection before our request reached
            # it; a fresh connection is the normal cure (see the class docstring).
            self._conn.close()
            return self._request(body)

    def _request(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        self._conn.request("POST", self._path, body=body, headers=self._headers)
        response = self._conn.getresponse()
        data = response.read()
        headers = {k.lower(): v for k, v in response.getheaders()}
        return response.status, headers, data

    def _decode_response(
        self, data: bytes, headers: Mapping[str, str]
    ) -> ExportTraceServiceResponse | None:
        if not data:
            return None
        try:
            if headers.get("content-encoding", "").lower() == "gzip":
                data = gzip.decompress(data)
            if "json" in headers.get("content-type", ""):
                return json_format.ParseDict(
                    json.loads(data), ExportTraceServiceResponse(), ignore_unknown_fields=True
                )
            return ExportTraceServiceResponse.FromString(data)
        except Exception as exc:
            # The spans were accepted (2xx); an unreadable body only loses the partial
            # success details.
            log.debug("otlp/http: unreadable response body from %s: %s", self.endpoint, exc)
            return None

    @staticmethod
    def _error_text(data: bytes, headers: Mapping[str, str]) -> str:
        if "json" in headers.get("content-type", ""):
            try:
                obj = json.loads(data)
                message = obj.get("message") if isinstance(obj, dict) else None
                if isinstance(message, str):
                    return message
            except ValueError:
                pass
        elif "protobuf" in headers.get("content-type", ""):
            message = _status_message(data)
            if message is not None:
                return message
        return data[:200].decode("utf-8", "replace")

    def last_feedback(self) -> ExportFeedback:
        """Partial success or ``Retry-After`` from the most recent ``export``."""
        return self._feedback

    def shutdown(self) -> None:
        """Closes the connection. Idempotent."""
        self._closed = True
        self._conn.close()


def _parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds from now: either delay-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
