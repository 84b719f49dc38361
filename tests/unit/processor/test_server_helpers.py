"""Helpers for the processor's server tests (no tests here): a stand-in aggregator, span
builders, an HTTP client that shows status and headers, a self-signed certificate."""

from __future__ import annotations

import contextlib
import http.client
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from otelbridge.core import semconv
from otelbridge.core.config import Config
from otelbridge.core.counters import Counters
from otelbridge.core.errors import StateError
from otelbridge.core.semconv import MetricDecl
from otelbridge.processor.server import ProcessorServer, Tls

TRACE = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")


class StandIn:
    """The aggregator's interface, recording what it is given; ``verdict`` and ``fail``
    are set by the test."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.verdict = "insufficient"
        self.fail: StateError | None = None
        self.namespaces: dict[str, dict[str, Any]] = {}
        self.expired = 0
        self.closed = False
        self.asked: list[tuple[bytes, int | None, bool]] = []
        self._lock = threading.Lock()

    def ingest(self, request: ExportTraceServiceRequest) -> None:
        if self.fail is not None:
            raise self.fail
        with self._lock:
            self.requests.append(request)

    def spans(self) -> list[Span]:
        with self._lock:
            return [
                span
                for r in self.requests
                for rs in r.resource_spans
                for ss in rs.scope_spans
                for span in ss.spans
            ]

    def rollout(
        self, trace_id: bytes, *, expect: int | None = None, sketches: bool = False
    ) -> dict[str, Any]:
        self.asked.append((trace_id, expect, sketches))
        doc: dict[str, Any] = {
            "trace_id": trace_id.hex(),
            "verdict": self.verdict,
            "startups": 0,
            "expect": expect,
            "reasons": [],
        }
        if sketches:
            doc["sketches"] = {}
        return doc

    def namespace(self, name: str, *, sketches: bool = False) -> dict[str, Any]:
        doc = dict(self.namespaces.get(name, {"trace_id": None, "namespace": name}))
        if not sketches:
            doc.pop("sketches", None)
        return doc

    def gauges(self) -> list[tuple[MetricDecl, dict[str, str], float]]:
        return [
            (
                semconv.ROLLOUT_VERDICT,
                {semconv.OB_ROLLOUT_TRACE_ID: TRACE.hex(), semconv.OB_ROLLOUT_NAME: 'we"b'},
                1,
            ),
            (
                semconv.ROLLOUT_P99,
                {semconv.OB_ROLLOUT_TRACE_ID: TRACE.hex(), "otelbridge.sla.budget": "x"},
                0.25,
            ),
        ]

    def expire(self) -> None:
        self.expired += 1

    def close(self) -> None:
        self.closed = True


def attr(key: str, value: str | bool | int) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def span(
    name: str = "container.startup",
    *,
    trace_id: bytes = TRACE,
    span_id: bytes = b"\x00\x00\x00\x00\x00\x00\x00\x01",
    parent: bytes = b"",
    start_ns: int = 1_000_000_000,
    end_ns: int = 2_000_000_000,
    **attributes: str | bool | int,
) -> Span:
    return Span(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=parent,
        name=name,
        start_time_unix_nano=start_ns,
        end_time_unix_nano=end_ns,
        attributes=[attr(k.replace("_", "."), v) for k, v in attributes.items()],
    )


def request_of(*spans: Span) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=list(spans))])]
    )


def small_config(max_request_bytes: int = 64 * 1024) -> Config:
    from otelbridge.core.config import ProcessorConfig  # noqa: PLC0415

    return Config(processor=ProcessorConfig(max_request_bytes=max_request_bytes))


@contextlib.contextmanager
def serving(
    aggregator: Any,
    *,
    config: Config | None = None,
    counters: Counters | None = None,
    token: str | None = None,
    tls: Tls | None = None,
    expire_interval_s: float = 1.0,
    peer_timeout_s: float = 5.0,
) -> Iterator[ProcessorServer]:
    """A started processor server on loopback ports chosen by the kernel."""
    server = ProcessorServer(
        aggregator,
        config or small_config(),
        counters if counters is not None else Counters(semconv.PROCESSOR_COUNTERS),
        otlp_grpc_addr="127.0.0.1:0",
        http_addr="127.0.0.1:0",
        token=token,
        tls=tls,
        expire_interval_s=expire_interval_s,
        peer_timeout_s=peer_timeout_s,
    )
    server.start()
    try:
        yield server
    finally:
        server.shutdown()


def call(
    url: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    *,
    context: ssl.SSLContext | None = None,
    timeout_s: float = 10.0,
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers lowercased, body) of one request on a new connection."""
    scheme, _, hostport = url.partition("://")
    host, _, port = hostport.rpartition(":")
    conn: http.client.HTTPConnection
    if scheme == "https":
        conn = http.client.HTTPSConnection(host, int(port), timeout=timeout_s, context=context)
    else:
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout_s)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        answer = conn.getresponse()
        return (
            answer.status,
            {k.lower(): v for k, v in answer.getheaders()},
            answer.read(),
        )
    finally:
        conn.close()


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key: made with the
    ``cryptography`` package when it is installed, else with ``openssl req``."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        _self_signed_with_cryptography(cert, key)
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("neither the cryptography package nor openssl is installed")
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "ec",
                "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-keyout", str(key), "-out", str(cert), "-days", "1",
                "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
    return cert, key


def _self_signed_with_cryptography(cert_path: Path, key_path: Path) -> None:
    import datetime  # noqa: PLC0415
    import ipaddress  # noqa: PLC0415

    from cryptography import x509  # type: ignore[import-not-found]  # noqa: PLC0415
    from cryptography.hazmat.primitives import (  # type: ignore[import-not-found]  # noqa: PLC0415
        hashes,
        serialization,
    )
    from cryptography.hazmat.primitives.asymmetric import ec  # type: ignore[import-not-found]  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # type: ignore[import-not-found]  # noqa: PLC0415

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def client_context(cert: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cert))
    return context
