"""OTLP exporters (gRPC and HTTP), configured by :mod:`otelbridge.export.otlpenv`.

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
receiver's message and reports the count through :meth:`last_feedback`, so the delivery
engine counts those spans as dropped. A receiver's requested delay (gRPC ``RetryInfo``,
HTTP ``Retry-After``, read with ``googleapis-common-protos``) and the error, in one line,
are reported the same way; the engine logs them, naming the exporter. Retrying is the
engine's job.

Threading: ``export`` and ``last_feedback`` are called from the exporter's delivery lane
only; ``shutdown`` may come from another thread and makes a running ``export`` fail fast.
``export`` never raises. Constructors raise :class:`~otelbridge.core.errors.ConfigError` for an
endpoint or certificate they cannot use: that is the configuration edge.
"""

from __future__ import annotations

import email.utils
import gzip
import http.client
import json
import logging
import ssl
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError as ProtobufDecodeError
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from otelbridge import __version__
from otelbridge.core.errors import ConfigError
from otelbridge.export import NO_FEEDBACK, ExportFeedback, ExportResult, LogThrottle
from otelbridge.export.files import to_otlp_json
from otelbridge.export.otlpenv import (
    DEFAULT_GRPC_ENDPOINT,
    DEFAULT_HTTP_ENDPOINT,
    DEFAULT_TIMEOUT_S,
    Compression,
    OtlpConfig,
    endpoint_problem,
)

__all__ = [
    "GRPC_EXPORT_METHOD",
    "OtlpGrpcExporter",
    "OtlpHttpExporter",
    "create_exporter",
]

log = logging.getLogger(__name__)

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
_RETRY_INFO_TYPE: Final = error_details_pb2.RetryInfo.DESCRIPTOR.full_name


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
class _Attempts:
    """What both OTLP exporters keep between attempts: the last feedback, shut down."""

    name: str

    def __init__(self) -> None:
        self._feedback = NO_FEEDBACK
        self._closed = False
        self._partial_log = LogThrottle()

    def _begin(self) -> bool:
        """Starts an attempt: clears the last feedback; False (why in the feedback) once
        the exporter is shut down."""
        if self._closed:
            self._feedback = ExportFeedback(error=f"{self.name} is shut down")
            return False
        self._feedback = NO_FEEDBACK
        return True

    def last_feedback(self) -> ExportFeedback:
        """Partial success, retry delay or error of the most recent ``export``."""
        return self._feedback


class OtlpGrpcExporter(_Attempts):
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
        self.name = f"otlp/grpc {endpoint}"
        self._metadata = tuple((k.lower(), v) for k, v in (headers or {}).items())
        self._timeout_s = timeout_s
        self._compression = grpc.Compression.Gzip if compression == "gzip" else None
        _Attempts.__init__(self)

    def export(self, request: ExportTraceServiceRequest, span_count: int) -> ExportResult:
        """One ``Export`` call. Never raises."""
        if not self._begin():
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
            self._feedback = ExportFeedback(error=f"the call failed: {exc!r}")
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
        # the delivery engine logs the outcome, naming this exporter; detail to debug
        error = f"{code.name if code is not None else 'UNKNOWN'}: {details}"
        log.debug("otlp/grpc export of %d spans to %s: %s", span_count, self.endpoint, error)
        if retryable:
            self._feedback = ExportFeedback(retry_after_s=retry_after_s, error=error)
            return ExportResult.RETRY
        self._feedback = ExportFeedback(error=error)
        return ExportResult.FAILURE

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


# -- google.rpc.Status (googleapis-common-protos) -------------------------------------------
def _status(data: bytes) -> Any:
    """A serialized ``google.rpc.Status``, or None when it is not one."""
    try:
        return status_pb2.Status.FromString(data)
    except ProtobufDecodeError as exc:
        log.debug("unreadable grpc status details: %s", exc)
        return None


def _retry_delay_from_status(data: bytes) -> float | None:
    """The ``RetryInfo.retry_delay`` in a serialized ``google.rpc.Status``, in seconds."""
    status = _status(data)
    if status is None:
        return None
    for detail in status.details:
        if detail.type_url.rsplit("/", 1)[-1] != _RETRY_INFO_TYPE:
            continue
        info = error_details_pb2.RetryInfo()
        if not detail.Unpack(info):
            return None
        delay = info.retry_delay
        return max(0.0, float(delay.seconds) + float(delay.nanos) / 1e9)
    return None


def _status_message(data: bytes) -> str | None:
    """The ``message`` of a serialized ``google.rpc.Status``, if it is one."""
    status = _status(data)
    return str(status.message) if status is not None and status.message else None


# -- HTTP -------------------------------------------------------------------------------------
class OtlpHttpExporter(_Attempts):
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
        self.name = f"otlp/{'json' if protocol == 'http/json' else 'http'} {endpoint}"
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
        _Attempts.__init__(self)

    def export(self, request: ExportTraceServiceRequest, span_count: int) -> ExportResult:
        """One POST. Never raises."""
        if not self._begin():
            return ExportResult.FAILURE
        try:
            if self._json:
                body = json.dumps(to_otlp_json(request), separators=(",", ":")).encode()
            else:
                body = request.SerializeToString()
            if self._gzip:
                body = gzip.compress(body, compresslevel=6)
        except Exception as exc:
            self._feedback = ExportFeedback(error=f"cannot encode the spans: {exc!r}")
            return ExportResult.FAILURE
        try:
            status, response_headers, data = self._post(body)
        except (OSError, http.client.HTTPException) as exc:
            # Refused, reset, timed out, TLS handshake failed, garbled response: the next
            # attempt may well succeed on a new connection.
            self._conn.close()
            self._feedback = ExportFeedback(error=f"{type(exc).__name__}: {exc}")
            return ExportResult.RETRY
        except Exception as exc:
            # http.client refusing a header value, and the like: retrying cannot help.
            self._conn.close()
            self._feedback = ExportFeedback(error=f"the request failed: {exc!r}")
            return ExportResult.FAILURE
        if 200 <= status < 300:
            response = self._decode_response(data, response_headers)
            if response is not None:
                self._feedback = _partial_success(
                    response.partial_success, span_count, self.endpoint, self._partial_log
                )
            return ExportResult.SUCCESS
        error = f"HTTP {status} {self._error_text(data, response_headers)}".strip()
        if status in _RETRYABLE_HTTP_STATUSES:
            self._feedback = ExportFeedback(
                retry_after_s=_parse_retry_after(response_headers.get("retry-after")),
                error=error,
            )
            return ExportResult.RETRY
        self._feedback = ExportFeedback(error=error)
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
