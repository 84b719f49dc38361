"""The processor as a service: both OTLP receivers and the API around one aggregator.

:class:`ProcessorServer` binds, at construction, the OTLP/gRPC receiver
(:mod:`.grpc_receiver`) and one bounded HTTP server (:mod:`otelbridge.httpd`) for
OTLP/HTTP (:mod:`.http_otlp`) and the API (:mod:`.http_api`); between :meth:`start` and
:meth:`shutdown` it serves them and calls the aggregator's ``expire()`` every
``expire_interval_s`` on a thread of its own.

The same bearer token and the same TLS certificate serve the three. The aggregator is
the caller's: it is used from many threads at once (its ``ingest`` is thread-safe), and
closed by the caller after :meth:`shutdown`.
"""

from __future__ import annotations

import logging
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otelbridge import httpd
from otelbridge.core import semconv
from otelbridge.core.config import Config
from otelbridge.core.counters import Counters
from otelbridge.core.errors import ConfigError, StateError
from otelbridge.processor.grpc_receiver import GrpcReceiver
from otelbridge.processor.http_api import Aggregating, Api
from otelbridge.processor.http_otlp import traces_route

__all__ = ["HTTP_IDLE_TIMEOUT_S", "HTTP_MAX_CONNECTIONS", "ProcessorServer", "Tls"]

log = logging.getLogger(__name__)

HTTP_MAX_CONNECTIONS = 64
"""Open HTTP connections at most (OTLP/HTTP and the API together)."""
HTTP_IDLE_TIMEOUT_S = 15.0
"""Seconds an HTTP connection has to deliver its request (an 8 MiB body included)."""


@dataclass(frozen=True)
class Tls:
    """The certificate (chain) and private key, PEM files, that every receiver serves."""

    cert_file: str
    key_file: str

    def load(self) -> tuple[bytes, bytes, ssl.SSLContext, ssl.SSLContext]:
        """(certificate PEM, key PEM, server context, context verifying peers). The peers'
        context trusts the system's roots and this certificate itself (replicas of one
        deployment serve the same one). ConfigError naming the file if unusable."""
        server = httpd.tls_context(self.cert_file, self.key_file)
        try:
            cert = Path(self.cert_file).read_bytes()
            key = Path(self.key_file).read_bytes()
            peers = ssl.create_default_context()
            peers.load_verify_locations(self.cert_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError([f"--tls-cert {self.cert_file}: {exc}"]) from exc
        peers.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # a leaf certificate as anchor
        return cert, key, server, peers


class ProcessorServer:
    """Both OTLP receivers and the API over ``aggregator``."""

    def __init__(
        self,
        aggregator: Aggregating,
        config: Config,
        counters: Counters,
        *,
        otlp_grpc_addr: str,
        http_addr: str,
        token: str | None = None,
        tls: Tls | None = None,
        expire_interval_s: float = 1.0,
        http_idle_timeout_s: float = HTTP_IDLE_TIMEOUT_S,
        peer_timeout_s: float = 5.0,
    ) -> None:
        """Binds both addresses (``HOST:PORT``, port 0 picks one): ConfigError when an
        address is malformed or the TLS files unusable, :class:`httpd.CannotListen` when
        an address cannot be listened on (nothing is left bound then)."""
        self._aggregator = aggregator
        self._counters = counters
        self._state_problem: str | None = None
        self._expire_problem: str | None = None
        self._started = threading.Event()
        self._stopping = threading.Event()
        self._interval_s = expire_interval_s
        limit = config.processor.max_request_bytes
        cert_key = server_tls = peer_tls = None
        if tls is not None:
            cert, key, server_tls, peer_tls = tls.load()
            cert_key = (cert, key)
        api = Api(
            aggregator,
            config,
            counters,
            health=self.health,
            readiness=self.readiness,
            token=token,
            peer_tls=peer_tls,
            peer_timeout_s=peer_timeout_s,
        )
        self._grpc = GrpcReceiver(
            otlp_grpc_addr,
            self._ingest,
            counters,
            max_request_bytes=limit,
            token=token,
            tls=cert_key,
        )
        try:
            self._http = httpd.HttpServer(
                http_addr,
                [traces_route(self._ingest, counters, max_request_bytes=limit), *api.routes()],
                name="processor",
                max_connections=HTTP_MAX_CONNECTIONS,
                idle_timeout_s=http_idle_timeout_s,
                token=token,
                tls=server_tls,
                on_refused=lambda _status: counters.inc(semconv.PROCESSOR_REQUESTS_REFUSED),
            )
        except ConfigError:
            self._grpc.shutdown(grace_s=0)
            raise
        self._expirer = threading.Thread(
            target=self._expire_loop, name="otelbridge-processor-expire", daemon=True
        )

    @property
    def grpc_port(self) -> int:
        """The OTLP/gRPC port listened on."""
        return self._grpc.port

    @property
    def http_url(self) -> str:
        """``http(s)://HOST:PORT`` of OTLP/HTTP and the API."""
        return self._http.url

    def start(self) -> None:
        self._expirer.start()
        self._grpc.start()
        self._http.start()
        self._started.set()

    def shutdown(self) -> None:
        """Stops both receivers (gRPC calls in flight get 2 s) and the expiry thread.
        Idempotent; works without :meth:`start`. Does not close the aggregator."""
        self._stopping.set()
        self._grpc.shutdown()
        self._http.shutdown()
        if self._expirer.is_alive():
            self._expirer.join()

    def health(self) -> list[str]:
        """``/healthz``: problems that need a restart (none so far: see :meth:`readiness`)."""
        return [] if self._expire_problem is None else [f"expiry fails: {self._expire_problem}"]

    def readiness(self) -> list[str]:
        """``/readyz``: not serving yet, or the state directory refused the last request."""
        problems = [] if self._started.is_set() else ["starting"]
        if self._state_problem is not None:
            problems.append(f"spans cannot be kept: {self._state_problem}")
        return problems

    def _ingest(self, request: ExportTraceServiceRequest) -> None:
        try:
            self._aggregator.ingest(request)
        except StateError as exc:
            self._state_problem = str(exc)
            raise
        self._state_problem = None

    def _expire_loop(self) -> None:
        while not self._stopping.wait(self._interval_s):
            try:
                self._aggregator.expire()
            except Exception as exc:  # logged once per run of failures: it runs every second
                if self._expire_problem is None:
                    log.exception("processor: expiring rollouts failed")
                self._expire_problem = str(exc) or type(exc).__name__
            else:
                self._expire_problem = None
