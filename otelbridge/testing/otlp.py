"""A real OTLP trace receiver on loopback, for tests and for trying otelbridge out.

:class:`OtlpReceiver` serves OTLP/gRPC (``TraceService/Export``, through the
opentelemetry-proto gRPC stubs); :class:`OtlpHttpReceiver` serves OTLP/HTTP on
``/v1/traces`` (protobuf and JSON, optionally gzip-compressed). Both:

* collect what they accept, thread-safely: :meth:`~_Collector.requests`,
  :meth:`~_Collector.spans` (each span with its resource and scope),
  :meth:`~_Collector.wait_for_spans`, :meth:`~_Collector.clear`;
* inject faults: ``set_failure(...)`` answers every request with an error until reset
  with ``None`` (failed requests are counted in :attr:`~_Collector.attempts` but not
  collected), :meth:`~_Collector.set_delay` answers slowly,
  :meth:`~_Collector.set_partial_success` accepts but reports rejected spans;
* can be stopped and started again on the **same** port, to simulate a collector outage.

Use them as context managers; ``stop()`` leaves no thread or socket behind::

    with OtlpReceiver() as receiver:
        exporter = OtlpGrpcExporter(receiver.endpoint)
        ...
        spans = receiver.wait_for_spans(5)
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import gzip
import http.server
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Self

import grpc
from google.protobuf import duration_pb2, json_format
from google.protobuf.message import DecodeError as ProtobufDecodeError
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otelbridge.core.errors import DecodeError
from otelbridge.export.files import from_otlp_json
from otelbridge.testing.serving import TrackingHTTPServer, serve_in_thread

__all__ = [
    "OtlpHttpReceiver",
    "OtlpReceiver",
    "ReceivedRequest",
    "ReceivedSpan",
    "encode_status",
]

log = logging.getLogger(__name__)

_STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclasses.dataclass(frozen=True, slots=True)
class ReceivedRequest:
    """One accepted export request and how it came."""

    request: ExportTraceServiceRequest
    headers: Mapping[str, str]
    """gRPC metadata or HTTP headers, names lowercased."""
    transport: str
    """``grpc``, ``http/protobuf`` or ``http/json``."""
    received_ns: int = 0
    """Wall-clock time (``time.time_ns()``) when it was accepted (freshness benchmarks)."""


@dataclasses.dataclass(frozen=True, slots=True)
class ReceivedSpan:
    """A received span with the resource and scope it was sent under."""

    resource: Resource
    scope: InstrumentationScope
    span: Span

    @property
    def name(self) -> str:
        return self.span.name

    @property
    def attributes(self) -> dict[str, Any]:
        """The span's attributes as plain Python values."""
        return _attributes(self.span.attributes)

    @property
    def resource_attributes(self) -> dict[str, Any]:
        """The resource's attributes as plain Python values."""
        return _attributes(self.resource.attributes)


def _attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: _python_value(kv.value) for kv in kvs}


def _python_value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_python_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, kind)


class _Collector:
    """What both receivers share: the collected requests and the fault settings."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._requests: list[ReceivedRequest] = []
        self._attempts = 0
        self._delay_s = 0.0
        self._rejected_spans = 0
        self._partial_message = ""
        # Set while stopping, so a handler sleeping in set_delay() wakes up at once and
        # stop() does not have to wait for it.
        self._stopping = threading.Event()

    # -- reading what arrived ---------------------------------------------------------------
    def requests(self) -> list[ReceivedRequest]:
        """The requests accepted so far, oldest first."""
        with self._cond:
            return list(self._requests)

    def spans(self) -> list[ReceivedSpan]:
        """Every span accepted so far, flattened, in arrival order."""
        with self._cond:
            return self._spans_locked()

    def _spans_locked(self) -> list[ReceivedSpan]:
        return [
            ReceivedSpan(rs.resource, ss.scope, span)
            for received in self._requests
            for rs in received.request.resource_spans
            for ss in rs.scope_spans
            for span in ss.spans
        ]

    @property
    def attempts(self) -> int:
        """Export requests that reached the receiver, failed ones included."""
        with self._cond:
            return self._attempts

    def wait_for_spans(
        self,
        want: int | Callable[[ReceivedSpan], bool] = 1,
        timeout_s: float = 5.0,
        *,
        count: int = 1,
    ) -> list[ReceivedSpan]:
        """Waits until enough spans have arrived and returns them.

        ``want`` as an int: at least that many spans; returns all spans received. ``want``
        as a predicate: at least ``count`` spans for which it is true; returns those.
        Raises ``TimeoutError`` describing what did arrive when ``timeout_s`` passes first.
        """

        def ready() -> list[ReceivedSpan] | None:
            spans = self._spans_locked()
            if isinstance(want, int):
                return spans if len(spans) >= want else None
            matching = [s for s in spans if want(s)]
            return matching if len(matching) >= count else None

        with self._cond:
            result = self._cond.wait_for(ready, timeout_s)
            if result is not None:
                return result
            names = [s.name for s in self._spans_locked()]
        goal = f"{want} spans" if isinstance(want, int) else f"{count} matching spans"
        raise TimeoutError(
            f"waited {timeout_s} s for {goal}; got {len(names)} spans: {names[:20]}"
            f" after {self.attempts} export attempts"
        )

    def wait_for_attempts(self, n: int, timeout_s: float = 5.0) -> int:
        """Waits until at least ``n`` export requests arrived (failed ones included)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._attempts >= n, timeout_s):
                raise TimeoutError(f"waited {timeout_s} s for {n} attempts; got {self._attempts}")
            return self._attempts

    def clear(self) -> None:
        """Forgets the requests received so far and the attempt count."""
        with self._cond:
            self._requests.clear()
            self._attempts = 0

    # -- faults -----------------------------------------------------------------------------
    def set_delay(self, seconds: float) -> None:
        """Answers each request only after ``seconds`` (0 to answer at once)."""
        with self._cond:
            self._delay_s = seconds

    def set_partial_success(self, rejected_spans: int, message: str = "") -> None:
        """Accepts requests but reports ``rejected_spans`` rejected (0 to reset)."""
        with self._cond:
            self._rejected_spans = rejected_spans
            self._partial_message = message

    # -- for the servers --------------------------------------------------------------------
    def _begin_attempt(self) -> None:
        with self._cond:
            self._attempts += 1
            self._cond.notify_all()
            delay = self._delay_s
        if delay > 0:
            self._stopping.wait(delay)

    def _accept(
        self, request: ExportTraceServiceRequest, headers: Mapping[str, str], transport: str
    ) -> ExportTraceServiceResponse:
        with self._cond:
            self._requests.append(
                ReceivedRequest(request, dict(headers), transport, time.time_ns())
            )
            self._cond.notify_all()
            return ExportTraceServiceResponse(
                partial_success=ExportTracePartialSuccess(
                    rejected_spans=self._rejected_spans, error_message=self._partial_message
                )
                if self._rejected_spans or self._partial_message
                else None
            )


# -- gRPC -------------------------------------------------------------------------------------
class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    def Export(  # noqa: N802 - the name is the gRPC method's
        self, request: ExportTraceServiceRequest, context: Any
    ) -> ExportTraceServiceResponse:
        receiver = self._receiver
        receiver._begin_attempt()
        failure = receiver._failure
        if failure is not None:
            code, message, retry_after_s = failure
            if retry_after_s is not None:
                details = encode_status(code.value[0], message, retry_after_s)
                context.set_trailing_metadata(((_STATUS_DETAILS_KEY, details),))
            context.abort(code, message)  # raises
        metadata = {key.lower(): value for key, value in context.invocation_metadata()}
        return receiver._accept(request, metadata, "grpc")


class OtlpReceiver(_Collector):
    """An OTLP/gRPC trace receiver on ``host`` (loopback by default).

    ``port=0`` picks a free port on the first start; later starts reuse it. ``tls`` is an
    optional pair of PEM file paths ``(certificate_chain, private_key)``: the receiver then
    speaks TLS and :attr:`endpoint` starts with ``https://``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_workers: int = 4,
        tls: tuple[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.host = host
        self.port = port
        self._max_workers = max_workers
        self._tls = tls
        self._failure: tuple[grpc.StatusCode, str, float | None] | None = None
        self._server: Any = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    @property
    def endpoint(self) -> str:
        """``http://HOST:PORT`` (``https://`` with TLS), ready for an OTLP gRPC exporter."""
        scheme = "https" if self._tls else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def set_failure(
        self,
        code: grpc.StatusCode | None,
        message: str = "injected failure",
        *,
        retry_after_s: float | None = None,
    ) -> None:
        """Answers every request with ``code`` (``None``: accept again). With
        ``retry_after_s``, the status details carry a ``google.rpc.RetryInfo``."""
        with self._cond:
            self._failure = None if code is None else (code, message, retry_after_s)

    def start(self) -> Self:
        """Starts serving (again, on the same port after a stop). Idempotent."""
        if self._server is not None:
            return self
        self._stopping.clear()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            self._max_workers, thread_name_prefix="otlp-receiver"
        )
        server = grpc.server(self._executor)
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
            _TraceService(self), server
        )
        address = f"{self.host}:{self.port}"
        try:
            if self._tls:
                with open(self._tls[0], "rb") as cert, open(self._tls[1], "rb") as key:
                    credentials = grpc.ssl_server_credentials([(key.read(), cert.read())])
                port = server.add_secure_port(address, credentials)
            else:
                port = server.add_insecure_port(address)
        except RuntimeError as exc:  # newer grpc raises instead of returning 0
            port = 0
            log.debug("binding %s failed: %s", address, exc)
        if not port:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise OSError(f"OTLP receiver cannot listen on {address}")
        self.port = port
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        """Stops serving at once: open calls are cancelled, connections closed. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.stop(grace=None).wait()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- HTTP -------------------------------------------------------------------------------------
class _HttpServer(TrackingHTTPServer):
    """A threading HTTP server that can cut its open keep-alive connections.

    Without that, a stopped receiver would go on answering on connections a client kept
    open, and an outage test would test nothing. Handler threads are not daemons, so
    ``server_close`` joins them and nothing outlives :meth:`OtlpHttpReceiver.stop`.
    """

    daemon_threads = False
    block_on_close = True

    def __init__(self, address: tuple[str, int], handler: type[_Handler], owner: OtlpHttpReceiver):
        self.owner = owner
        super().__init__(address, handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _HttpServer
    protocol_version = "HTTP/1.1"  # keep-alive, as a collector does
    timeout = 10  # an idle kept-alive connection does not hold a thread forever

    def do_POST(self) -> None:
        owner = self.server.owner
        owner._begin_attempt()
        headers = {key.lower(): value for key, value in self.headers.items()}
        length = headers.get("content-length")
        if length is None or not length.isdigit():
            self._reply(411, "text/plain", b"Content-Length required")
            return
        body = self.rfile.read(int(length))
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        is_json = content_type == "application/json"
        if self.path.split("?")[0] != owner.path:
            self._reply_status(404, f"no such path {self.path}", is_json)
            return
        failure = owner._http_failure
        if failure is not None:
            status, message, retry_after_s = failure
            extra = {} if retry_after_s is None else {"Retry-After": str(round(retry_after_s))}
            self._reply_status(status, message, is_json, extra)
            return
        if content_type not in ("application/json", "application/x-protobuf"):
            self._reply_status(415, f"unsupported content type {content_type!r}", is_json)
            return
        try:
            if headers.get("content-encoding", "").lower() == "gzip":
                body = gzip.decompress(body)
            if is_json:
                request = from_otlp_json(json.loads(body))
            else:
                request = ExportTraceServiceRequest.FromString(body)
        except (OSError, ValueError, DecodeError, ProtobufDecodeError) as exc:
            self._reply_status(400, f"undecodable request: {exc}", is_json)
            return
        response = owner._accept(request, headers, "http/json" if is_json else "http/protobuf")
        if is_json:
            data = json.dumps(json_format.MessageToDict(response)).encode()
            self._reply(200, "application/json", data)
        else:
            self._reply(200, "application/x-protobuf", response.SerializeToString())

    def _reply_status(
        self, status: int, message: str, is_json: bool, extra: Mapping[str, str] | None = None
    ) -> None:
        # OTLP/HTTP error bodies are a google.rpc.Status in the request's encoding.
        if is_json:
            data = json.dumps({"code": status, "message": message}).encode()
            self._reply(status, "application/json", data, extra)
        else:
            data = encode_status(0, message, None)
            self._reply(status, "application/x-protobuf", data, extra)

    def _reply(
        self,
        status: int,
        content_type: str,
        data: bytes,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("otlp http receiver: " + format, *args)


class OtlpHttpReceiver(_Collector):
    """An OTLP/HTTP trace receiver (``POST /v1/traces``, protobuf or JSON, gzip or not).

    ``tls`` is an optional pair of PEM file paths ``(certificate_chain, private_key)``: the
    receiver then speaks HTTPS and its URLs start with ``https://``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        path: str = "/v1/traces",
        tls: tuple[str, str] | None = None,
    ):
        super().__init__()
        self.host = host
        self.port = port
        self.path = path
        self._tls = tls
        self._http_failure: tuple[int, str, float | None] | None = None
        self._server: _HttpServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        """The full traces URL (for ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``)."""
        return f"{self.base_url}{self.path}"

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT`` (for ``OTEL_EXPORTER_OTLP_ENDPOINT``)."""
        scheme = "https" if self._tls else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def set_failure(
        self,
        status: int | None,
        message: str = "injected failure",
        *,
        retry_after_s: float | None = None,
    ) -> None:
        """Answers every request with HTTP ``status`` (``None``: accept again), with a
        ``Retry-After`` header when ``retry_after_s`` is given."""
        with self._cond:
            self._http_failure = None if status is None else (status, message, retry_after_s)

    def start(self) -> Self:
        """Starts serving (again, on the same port after a stop). Idempotent."""
        if self._server is not None:
            return self
        self._stopping.clear()
        server = _HttpServer((self.host, self.port), _Handler, self)
        self._thread = serve_in_thread(server, self._tls, "otlp-http-receiver")
        self.port = server.server_address[1]
        self._server = server
        return self

    def stop(self) -> None:
        """Stops serving and closes every connection; joins all threads. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.cut_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- google.rpc.Status (googleapis-common-protos) -------------------------------------------
def encode_status(code: int, message: str, retry_after_s: float | None) -> bytes:
    """A serialized ``google.rpc.Status``, with a ``RetryInfo`` detail if ``retry_after_s``."""
    status = status_pb2.Status(code=code, message=message)
    if retry_after_s is not None:
        seconds = int(retry_after_s)
        info = error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(
                seconds=seconds, nanos=round((retry_after_s - seconds) * 1e9)
            )
        )
        status.details.add().Pack(info)
    return bytes(status.SerializeToString())
