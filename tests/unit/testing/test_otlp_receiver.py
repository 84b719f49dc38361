"""The OTLP test receivers themselves: restart on the same port, waits, faults, cleanup."""

from __future__ import annotations

import gzip
import http.client
import json
import threading

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from otelbridge.export import ExportResult
from otelbridge.export.files import to_otlp_json
from otelbridge.export.otlp import OtlpGrpcExporter, OtlpHttpExporter, _retry_delay_from_status
from otelbridge.testing.otlp import OtlpHttpReceiver, OtlpReceiver, encode_status


def request(*names: str) -> ExportTraceServiceRequest:
    spans = [Span(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name=n) for n in names]
    return ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=spans)])]
    )


def test_grpc_receiver_restarts_on_the_same_port_and_leaves_no_threads() -> None:
    before = set(threading.enumerate())
    receiver = OtlpReceiver().start()
    port = receiver.port
    assert port > 0
    assert receiver.endpoint == f"http://127.0.0.1:{port}"
    receiver.stop()
    receiver.stop()  # idempotent
    receiver.start()
    assert receiver.port == port
    exporter = OtlpGrpcExporter(receiver.endpoint)
    try:
        assert exporter.export(request("a"), 1) is ExportResult.SUCCESS
    finally:
        exporter.shutdown()
        receiver.stop()
    assert set(threading.enumerate()) <= before


def test_http_receiver_restarts_on_the_same_port_and_leaves_no_threads() -> None:
    before = set(threading.enumerate())
    with OtlpHttpReceiver() as receiver:
        port = receiver.port
        exporter = OtlpHttpExporter(receiver.endpoint)
        assert exporter.export(request("a"), 1) is ExportResult.SUCCESS  # keeps a connection
        receiver.stop()
        receiver.start()
        assert receiver.port == port
        assert receiver.endpoint == f"http://127.0.0.1:{port}/v1/traces"
        assert exporter.export(request("b"), 1) is ExportResult.SUCCESS
        exporter.shutdown()
    assert set(threading.enumerate()) <= before


def test_wait_for_spans_by_count_and_by_predicate() -> None:
    with OtlpReceiver() as receiver:
        exporter = OtlpGrpcExporter(receiver.endpoint)
        exporter.export(request("a", "b"), 2)
        exporter.export(request("c"), 1)
        exporter.shutdown()
        assert [s.name for s in receiver.wait_for_spans(3)] == ["a", "b", "c"]
        matching = receiver.wait_for_spans(lambda s: s.name != "b", count=2)
        assert [s.name for s in matching] == ["a", "c"]
        with pytest.raises(TimeoutError, match="got 3 spans"):
            receiver.wait_for_spans(4, timeout_s=0.05)
        receiver.clear()
        assert receiver.spans() == [] and receiver.attempts == 0


def test_failed_requests_are_counted_but_not_collected() -> None:
    with OtlpReceiver() as receiver:
        receiver.set_failure(grpc.StatusCode.UNAVAILABLE)
        exporter = OtlpGrpcExporter(receiver.endpoint)
        assert exporter.export(request("a"), 1) is ExportResult.RETRY
        exporter.shutdown()
        assert receiver.attempts == 1
        assert receiver.requests() == []


def _post(receiver: OtlpHttpReceiver, path: str, body: bytes, headers: dict[str, str]) -> int:
    conn = http.client.HTTPConnection(receiver.host, receiver.port, timeout=5)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_http_receiver_answers_bad_requests_with_4xx() -> None:
    with OtlpHttpReceiver() as receiver:
        pb = {"Content-Type": "application/x-protobuf"}
        assert _post(receiver, "/v1/traces", b"\xff\xff", pb) == 400
        assert _post(receiver, "/v1/traces", b"{}", {"Content-Type": "text/plain"}) == 415
        assert _post(receiver, "/v1/logs", b"", pb) == 404
        body = gzip.compress(json.dumps(to_otlp_json(request("z"))).encode())
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        assert _post(receiver, "/v1/traces", body, headers) == 200
        assert [s.name for s in receiver.spans()] == ["z"]


def test_status_details_round_trip() -> None:
    assert _retry_delay_from_status(encode_status(8, "slow down", 1.25)) == 1.25
    assert _retry_delay_from_status(encode_status(8, "no hint", None)) is None
    assert _retry_delay_from_status(b"\xff") is None  # garbage is no hint, not a crash
