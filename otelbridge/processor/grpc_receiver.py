"""The processor's OTLP/gRPC receiver: ``TraceService/Export`` into the aggregator.

Answers, as the OTLP specification has receivers answer (the Collector's exporter retries
UNAVAILABLE, and gives up on the others):

* OK with an empty ``ExportTraceServiceResponse``: the request was accepted, and with a
  state directory it is on disk;
* RESOURCE_EXHAUSTED: the message is larger than ``max_request_bytes``, compressed or
  after decompression (gRPC's own ``max_receive_message_length``: the processor never
  sees the message, so these are not in ``otelbridge.processor.requests.refused``);
* INVALID_ARGUMENT: the message is not an ``ExportTraceServiceRequest``;
* UNAUTHENTICATED: a token is required and the ``authorization`` metadata is not
  ``Bearer <token>`` (checked before the message is read);
* UNAVAILABLE: the state directory cannot be written (:class:`StateError`): nothing was
  acknowledged, the Collector sends the request again.

Bounded: at most ``max_concurrent_rpcs`` calls at once (beyond: RESOURCE_EXHAUSTED), run
by ``workers`` threads; idle connections are closed after ``_IDLE_CONNECTION_MS``.
"""

from __future__ import annotations

import concurrent.futures
import hmac
import logging
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError as ProtobufDecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from otelbridge.core import semconv
from otelbridge.core.counters import Counters
from otelbridge.core.errors import StateError
from otelbridge.httpd import CannotListen

log = logging.getLogger(__name__)

SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
_IDLE_CONNECTION_MS = 300_000
_MAX_SEND_BYTES = 1024 * 1024  # our answers are empty messages or short statuses

Ingest = Callable[[ExportTraceServiceRequest], None]
"""Takes an accepted request; raises :class:`StateError` when it cannot be kept."""


class GrpcReceiver:
    """An OTLP/gRPC trace receiver on ``addr`` (``HOST:PORT``; port 0 picks one), bound at
    construction (:class:`CannotListen` if it cannot), serving from :meth:`start`."""

    def __init__(
        self,
        addr: str,
        ingest: Ingest,
        counters: Counters,
        *,
        max_request_bytes: int,
        token: str | None = None,
        tls: tuple[bytes, bytes] | None = None,
        workers: int = 8,
        max_concurrent_rpcs: int = 64,
    ) -> None:
        """``tls`` is (certificate chain PEM, private key PEM). ``ingest`` runs on the
        receiver's worker threads, concurrently."""
        self._ingest = ingest
        self._counters = counters
        self._executor = concurrent.futures.ThreadPoolExecutor(
            workers, thread_name_prefix="otelbridge-otlp-grpc"
        )
        interceptors = [_TokenCheck(token.encode(), counters)] if token else []
        self._server = grpc.server(
            self._executor,
            interceptors=interceptors,
            maximum_concurrent_rpcs=max_concurrent_rpcs,
            options=[
                ("grpc.max_receive_message_length", max_request_bytes),
                ("grpc.max_send_message_length", _MAX_SEND_BYTES),
                ("grpc.so_reuseport", 0),  # another process on the port is an error
                ("grpc.max_connection_idle_ms", _IDLE_CONNECTION_MS),
            ],
        )
        # The request stays bytes until Export parses it: grpc's own deserializer would
        # answer a request that does not parse with INTERNAL, not INVALID_ARGUMENT.
        handler = grpc.unary_unary_rpc_method_handler(
            self._export,
            request_deserializer=None,
            response_serializer=ExportTraceServiceResponse.SerializeToString,
        )
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {"Export": handler}),)
        )
        try:
            if tls is not None:
                credentials = grpc.ssl_server_credentials([(tls[1], tls[0])])
                port = self._server.add_secure_port(addr, credentials)
            else:
                port = self._server.add_insecure_port(addr)
        except RuntimeError as exc:  # grpc raises where it used to return 0
            log.debug("binding %s failed: %s", addr, exc)
            port = 0
        if not port:
            self._executor.shutdown(wait=False)
            raise CannotListen([f"--otlp-grpc-addr {addr}: cannot listen (in use?)"])
        self.port: int = port
        """The port listened on (the one chosen when ``addr`` asked for port 0)."""

    def start(self) -> None:
        self._server.start()

    def shutdown(self, grace_s: float = 2.0) -> None:
        """Stops accepting calls; the calls in flight get ``grace_s`` to finish, then are
        cancelled. Idempotent; works without :meth:`start`."""
        self._server.stop(grace=grace_s).wait()
        self._executor.shutdown(wait=True)

    def _export(self, data: bytes, context: Any) -> ExportTraceServiceResponse:
        try:
            request = ExportTraceServiceRequest.FromString(data)
        except (ProtobufDecodeError, ValueError, RecursionError) as exc:
            self._counters.inc(semconv.PROCESSOR_REQUESTS_REFUSED)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"not an OTLP trace request: {exc}")
        try:
            self._ingest(request)
        except StateError as exc:
            log.warning("OTLP/gRPC request not kept: %s", exc)
            context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot keep the spans: {exc}")
        except Exception:
            log.exception("OTLP/gRPC request failed")
            context.abort(grpc.StatusCode.INTERNAL, "internal error")
        return ExportTraceServiceResponse()


class _TokenCheck(grpc.ServerInterceptor):  # type: ignore[misc]
    """UNAUTHENTICATED, before the message is read, unless ``authorization`` metadata is
    ``Bearer <token>`` (compared in constant time)."""

    def __init__(self, token: bytes, counters: Counters) -> None:
        self._token = token
        self._counters = counters

        def deny(_request: Any, context: Any) -> None:
            self._counters.inc(semconv.PROCESSOR_REQUESTS_REFUSED)
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "a bearer token is required")

        self._deny = grpc.unary_unary_rpc_method_handler(deny, request_deserializer=None)

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        for key, value in details.invocation_metadata or ():
            if key.lower() != "authorization" or not isinstance(value, str):
                continue
            scheme, _, credentials = value.strip().partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(
                credentials.strip().encode(), self._token
            ):
                return continuation(details)
        return self._deny
