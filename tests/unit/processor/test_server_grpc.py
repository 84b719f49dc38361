"""The processor's OTLP/gRPC receiver, over a stand-in aggregator: accepted requests,
RESOURCE_EXHAUSTED (also for a request that is only too large once decompressed),
INVALID_ARGUMENT, UNAUTHENTICATED, UNAVAILABLE when the state cannot be kept, TLS."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from otelbridge.core import semconv
from otelbridge.core.counters import Counters
from otelbridge.core.errors import StateError
from otelbridge.processor.grpc_receiver import GrpcReceiver
from otelbridge.processor.server import ProcessorServer, Tls

from .test_server_helpers import StandIn, request_of, self_signed, serving, small_config, span

LIMIT = 64 * 1024
METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


@pytest.fixture
def agg() -> StandIn:
    return StandIn()


@pytest.fixture
def counters() -> Counters:
    return Counters(semconv.PROCESSOR_COUNTERS)


@pytest.fixture
def server(agg: StandIn, counters: Counters) -> Iterator[ProcessorServer]:
    with serving(agg, counters=counters, config=small_config(LIMIT)) as s:
        yield s


def export(
    port: int,
    request: ExportTraceServiceRequest | bytes,
    *,
    metadata: tuple[tuple[str, str], ...] = (),
    compression: grpc.Compression = grpc.Compression.NoCompression,
    credentials: Any = None,
) -> grpc.StatusCode:
    """The status of one Export call (bytes are sent as they are)."""
    target = f"127.0.0.1:{port}"
    channel = (
        grpc.secure_channel(target, credentials)
        if credentials is not None
        else grpc.insecure_channel(target)
    )
    with channel:
        call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        data = request if isinstance(request, bytes) else request.SerializeToString()
        try:
            answer = call(data, metadata=metadata, compression=compression, timeout=10)
        except grpc.RpcError as exc:
            return exc.code()
        ExportTraceServiceResponse.FromString(answer)
        return grpc.StatusCode.OK


def test_an_export_is_accepted(server: ProcessorServer, agg: StandIn) -> None:
    stub = trace_service_pb2_grpc.TraceServiceStub(  # type: ignore[no-untyped-call]
        grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    )
    answer = stub.Export(request_of(span("a"), span("b")), timeout=10)
    assert isinstance(answer, ExportTraceServiceResponse)
    assert [s.name for s in agg.spans()] == ["a", "b"]
    assert export(server.grpc_port, request_of(span("c")), compression=grpc.Compression.Gzip) == (
        grpc.StatusCode.OK
    )
    assert len(agg.spans()) == 3


def test_a_message_over_the_limit_is_resource_exhausted(
    server: ProcessorServer, agg: StandIn
) -> None:
    big = request_of(span("x", container_id="c" * (LIMIT + 10)))
    assert export(server.grpc_port, big) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert agg.requests == []
    assert export(server.grpc_port, request_of(span("ok"))) == grpc.StatusCode.OK


def test_a_compressed_message_too_large_once_decompressed_is_resource_exhausted(
    server: ProcessorServer, agg: StandIn
) -> None:
    bomb = request_of(span("x", container_id="\x00" * (20 * LIMIT)))
    status = export(server.grpc_port, bomb, compression=grpc.Compression.Gzip)
    assert status == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert agg.requests == []


@pytest.mark.parametrize("garbage", [b"\xff\xff\xff\xff", b"\x0a\x05abc", b"\x0a" * 300])
def test_a_message_that_does_not_parse_is_invalid_argument(
    server: ProcessorServer, agg: StandIn, counters: Counters, garbage: bytes
) -> None:
    assert export(server.grpc_port, garbage) == grpc.StatusCode.INVALID_ARGUMENT
    assert agg.requests == []
    assert counters.get(semconv.PROCESSOR_REQUESTS_REFUSED) == 1


def test_the_state_failing_is_unavailable_so_the_collector_retries(
    server: ProcessorServer, agg: StandIn
) -> None:
    agg.fail = StateError("--state-dir /x: disk full")
    assert export(server.grpc_port, request_of(span("a"))) == grpc.StatusCode.UNAVAILABLE
    assert server.readiness() == ["spans cannot be kept: --state-dir /x: disk full"]
    agg.fail = None
    assert export(server.grpc_port, request_of(span("a"))) == grpc.StatusCode.OK
    assert server.readiness() == []


@pytest.mark.parametrize(
    "metadata",
    [(), (("authorization", "Bearer nope"),), (("authorization", "t0ken"),)],
)
def test_without_the_token_it_is_unauthenticated(
    agg: StandIn, counters: Counters, metadata: tuple[tuple[str, str], ...]
) -> None:
    with serving(agg, counters=counters, token="t0ken") as server:
        status = export(server.grpc_port, request_of(span("a")), metadata=metadata)
        assert status == grpc.StatusCode.UNAUTHENTICATED
        assert agg.requests == []
        assert counters.get(semconv.PROCESSOR_REQUESTS_REFUSED) == 1
        right = (("authorization", "Bearer t0ken"),)
        assert export(server.grpc_port, request_of(span("a")), metadata=right) == (
            grpc.StatusCode.OK
        )
        assert len(agg.requests) == 1


def test_tls(agg: StandIn, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    with serving(agg, tls=Tls(str(cert), str(key))) as server:
        trusting = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        assert export(server.grpc_port, request_of(span("a")), credentials=trusting) == (
            grpc.StatusCode.OK
        )
        assert export(server.grpc_port, request_of(span("a"))) == grpc.StatusCode.UNAVAILABLE
    assert len(agg.requests) == 1


def test_an_address_in_use_cannot_be_listened_on(server: ProcessorServer, agg: StandIn) -> None:
    from otelbridge.httpd import CannotListen  # noqa: PLC0415

    with pytest.raises(CannotListen, match="cannot listen"):
        GrpcReceiver(
            f"127.0.0.1:{server.grpc_port}",
            agg.ingest,
            Counters(semconv.PROCESSOR_COUNTERS),
            max_request_bytes=LIMIT,
        )


def test_shutdown_works_without_start(agg: StandIn) -> None:
    receiver = GrpcReceiver(
        "127.0.0.1:0", agg.ingest, Counters(semconv.PROCESSOR_COUNTERS), max_request_bytes=LIMIT
    )
    receiver.shutdown()
    receiver.shutdown()
