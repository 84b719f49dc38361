"""The processor's HTTP side (OTLP/HTTP ingest and the API), over a stand-in aggregator:
content types and encodings, limits (413, a gzip bomb refused with flat memory), malformed
input (400), the token (401), the state directory failing (503), the rollout and namespace
documents, peers, the Flagger webhook, /metrics."""

from __future__ import annotations

import gzip
import json
import threading
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from otelbridge.core import semconv
from otelbridge.core.counters import Counters
from otelbridge.core.errors import StateError
from otelbridge.export.files import to_otlp_json
from otelbridge.processor.http_api import render_metrics
from otelbridge.processor.http_otlp import TooLarge, decompress
from otelbridge.processor.server import ProcessorServer, Tls

from .test_server_helpers import (
    TRACE,
    StandIn,
    call,
    client_context,
    request_of,
    self_signed,
    serving,
    small_config,
    span,
)

LIMIT = 64 * 1024
PB = {"Content-Type": "application/x-protobuf"}
JS = {"Content-Type": "application/json"}


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


def refused(counters: Counters) -> int:
    return counters.get(semconv.PROCESSOR_REQUESTS_REFUSED)


def body_of(*names: str) -> bytes:
    spans = [span(n, span_id=bytes([0] * 7 + [i + 1])) for i, n in enumerate(names)]
    return request_of(*spans).SerializeToString()


# -- OTLP/HTTP --------------------------------------------------------------------------------
def test_protobuf_json_and_gzip_are_accepted(server: ProcessorServer, agg: StandIn) -> None:
    status, headers, body = call(server.http_url, "POST", "/v1/traces", body_of("a"), PB)
    assert status == 200
    assert headers["content-type"] == "application/x-protobuf"
    ExportTraceServiceResponse.FromString(body)
    request = request_of(span("b", span_id=b"\x00" * 7 + b"\x02"))
    as_json = json.dumps(to_otlp_json(request)).encode()
    status, headers, body = call(server.http_url, "POST", "/v1/traces", as_json, JS)
    assert (status, headers["content-type"]) == (200, "application/json")
    assert json.loads(body) == {}
    zipped = gzip.compress(body_of("c"))
    status, _, _ = call(
        server.http_url, "POST", "/v1/traces", zipped, {**PB, "Content-Encoding": "gzip"}
    )
    assert status == 200
    deflated = zlib.compress(body_of("d"))
    status, _, _ = call(
        server.http_url, "POST", "/v1/traces", deflated, {**PB, "Content-Encoding": "deflate"}
    )
    assert status == 200
    assert [s.name for s in agg.spans()] == ["a", "b", "c", "d"]
    assert agg.spans()[1].trace_id == TRACE


def test_a_body_over_the_limit_is_413(
    server: ProcessorServer, agg: StandIn, counters: Counters
) -> None:
    big = request_of(span("x", container_id="c" * (LIMIT + 10))).SerializeToString()
    status, headers, body = call(server.http_url, "POST", "/v1/traces", big, PB)
    assert status == 413
    assert headers["content-type"] == "application/x-protobuf"
    assert status_pb2.Status.FromString(body).code == 8  # RESOURCE_EXHAUSTED
    assert agg.requests == []
    assert refused(counters) == 1


def test_a_gzip_bomb_is_413_and_memory_stays_flat(
    server: ProcessorServer, agg: StandIn, counters: Counters
) -> None:
    bomb = gzip.compress(b"\x00" * 10_000_000, compresslevel=9)
    assert len(bomb) < 20_000  # 10 MB of zeros in a few KB
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        status, _, body = call(
            server.http_url, "POST", "/v1/traces", bomb, {**JS, "Content-Encoding": "gzip"}
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert status == 413
    assert json.loads(body)["code"] == 8
    # the limit is 64 KiB: a few of those at most, never the 10 MB
    assert peak - before < 1_000_000, f"{peak - before} bytes allocated"
    assert agg.requests == []
    assert refused(counters) == 1


def test_the_bounded_decompressor() -> None:
    data = b"abc" * 1000
    assert decompress(gzip.compress(data), "gzip", 3000) == data
    assert decompress(gzip.compress(data) + gzip.compress(b"!"), "gzip", 3001) == data + b"!"
    assert decompress(zlib.compress(data), "deflate", 3000) == data
    raw = zlib.compressobj(wbits=-15)
    assert decompress(raw.compress(data) + raw.flush(), "deflate", 3000) == data
    assert decompress(data, "identity", 3000) == data
    with pytest.raises(TooLarge):
        decompress(gzip.compress(data), "gzip", 2999)
    with pytest.raises(TooLarge):
        decompress(data, "", 2999)
    with pytest.raises(ValueError, match="truncated"):
        decompress(gzip.compress(data)[:-12], "gzip", 3000)
    with pytest.raises(ValueError, match="corrupt"):
        decompress(b"\x1f\x8b garbage", "gzip", 3000)
    with pytest.raises(ValueError, match="after the end"):
        decompress(zlib.compress(data) + b"junk", "deflate", 3000)
    with pytest.raises(ValueError, match="unsupported"):
        decompress(data, "br", 3000)


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b"\xff\xff\xff garbage", PB),
        (b"{not json", JS),
        (b"[1, 2]", JS),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}', JS),
        (b"[" * 30_000 + b"]" * 30_000, JS),
        (b"not gzip", {**PB, "Content-Encoding": "gzip"}),
    ],
)
def test_malformed_bodies_are_400(
    server: ProcessorServer,
    agg: StandIn,
    counters: Counters,
    body: bytes,
    headers: dict[str, str],
) -> None:
    status, answer_headers, answer = call(server.http_url, "POST", "/v1/traces", body, headers)
    assert status == 400, answer
    if answer_headers["content-type"] == "application/json":
        assert json.loads(answer)["code"] == 3  # INVALID_ARGUMENT
    else:
        assert status_pb2.Status.FromString(answer).code == 3
    assert agg.requests == []
    assert refused(counters) == 1
    assert call(server.http_url, "POST", "/v1/traces", body_of("ok"), PB)[0] == 200


def test_other_content_types_and_encodings_are_415(
    server: ProcessorServer, counters: Counters
) -> None:
    assert call(server.http_url, "POST", "/v1/traces", b"x", {"Content-Type": "text/plain"})[0] == (
        415
    )
    headers = {**PB, "Content-Encoding": "br"}
    assert call(server.http_url, "POST", "/v1/traces", body_of("a"), headers)[0] == 415
    assert refused(counters) == 2


def test_a_state_directory_that_cannot_be_written_is_503_and_not_ready(
    server: ProcessorServer, agg: StandIn
) -> None:
    agg.fail = StateError("--state-dir /x: disk full")
    status, headers, _ = call(server.http_url, "POST", "/v1/traces", body_of("a"), PB)
    assert status == 503
    assert headers["retry-after"] == "1"
    status, _, body = call(server.http_url, "GET", "/readyz")
    assert status == 503
    assert b"disk full" in body
    agg.fail = None
    assert call(server.http_url, "POST", "/v1/traces", body_of("a"), PB)[0] == 200
    assert call(server.http_url, "GET", "/readyz")[0] == 200


# -- the token --------------------------------------------------------------------------------
def test_every_route_but_health_needs_the_token(agg: StandIn, counters: Counters) -> None:
    with serving(agg, counters=counters, token="t0ken") as server:
        url = server.http_url
        for method, path, body in [
            ("POST", "/v1/traces", body_of("a")),
            ("GET", f"/v1/rollouts/{TRACE.hex()}", None),
            ("GET", "/v1/namespaces/default", None),
            ("POST", "/v1/flagger", b"{}"),
            ("GET", "/metrics", None),
            ("GET", "/v1/counters", None),
        ]:
            assert call(url, method, path, body, PB)[0] == 401, path
            wrong = {**PB, "Authorization": "Bearer t0kem"}
            assert call(url, method, path, body, wrong)[0] == 401, path
        assert refused(counters) == 12
        assert agg.requests == []
        right = {**PB, "Authorization": "Bearer t0ken"}
        assert call(url, "POST", "/v1/traces", body_of("a"), right)[0] == 200
        assert call(url, "GET", f"/v1/rollouts/{TRACE.hex()}", None, right)[0] == 200
        assert call(url, "GET", "/healthz")[0] == 200
        assert call(url, "GET", "/readyz")[0] == 200
        assert len(agg.requests) == 1


def test_tls_serves_the_api_and_otlp_http(agg: StandIn, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    with serving(agg, tls=Tls(str(cert), str(key))) as server:
        assert server.http_url.startswith("https://")
        context = client_context(cert)
        assert call(server.http_url, "GET", "/healthz", context=context)[0] == 200
        status, _, _ = call(
            server.http_url, "POST", "/v1/traces", body_of("a"), PB, context=context
        )
        assert status == 200
    assert len(agg.requests) == 1


# -- the rollout and namespace documents ------------------------------------------------------
def test_a_rollout_is_200_for_every_verdict(server: ProcessorServer, agg: StandIn) -> None:
    for verdict in ("pass", "halt", "insufficient"):
        agg.verdict = verdict
        status, _, body = call(server.http_url, "GET", f"/v1/rollouts/{TRACE.hex()}?expect=20")
        assert status == 200
        assert json.loads(body)["verdict"] == verdict
    assert agg.asked[-1] == (TRACE, 20, False)
    call(server.http_url, "GET", f"/v1/rollouts/{TRACE.hex().upper()}?sketches=1")
    assert list(agg.asked[-1]) == [TRACE, None, True]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/rollouts/4bf92f3577b34da6a3ce929d0e0e473",
        "/v1/rollouts/4bf92f3577b34da6a3ce929d0e0e47360",
        "/v1/rollouts/4bf92f3577b34da6a3ce929d0e0e473g",
        f"/v1/rollouts/{TRACE.hex()}?expect=-1",
        f"/v1/rollouts/{TRACE.hex()}?expect=lots",
        f"/v1/rollouts/{TRACE.hex()}?sketches=maybe",
    ],
)
def test_a_malformed_rollout_query_is_400(
    server: ProcessorServer, counters: Counters, path: str
) -> None:
    status, _, body = call(server.http_url, "GET", path)
    assert status == 400
    assert "error" in json.loads(body)
    assert refused(counters) == 1


def _peer_doc(namespace: str, startups: int) -> dict[str, Any]:
    return {"trace_id": None, "namespace": namespace, "verdict": "pass", "startups": startups}


def test_a_namespace_merges_its_peers_and_names_the_one_that_fails(
    monkeypatch: pytest.MonkeyPatch, agg: StandIn
) -> None:
    from otelbridge.processor import verdict  # noqa: PLC0415

    merged: list[list[dict[str, Any]]] = []

    def merge_documents(docs: Any, _config: Any, *, expect: Any, sketches: bool = False) -> Any:
        if any(d.get("namespace") != "web" for d in docs):
            raise ValueError("another namespace")
        merged.append(list(docs))
        return {
            "namespace": "web",
            "verdict": "pass",
            "startups": sum(d["startups"] for d in docs),
            "reasons": [],
            **({"sketches": {}} if sketches else {}),
        }

    monkeypatch.setattr(verdict, "merge_documents", merge_documents)
    peer, other_ns = StandIn(), StandIn()
    agg.namespaces["web"] = {**_peer_doc("web", 2), "sketches": {}}
    peer.namespaces["web"] = {**_peer_doc("web", 3), "sketches": {}}
    other_ns.namespaces["web"] = {**_peer_doc("db", 7), "sketches": {}}
    with (
        serving(agg, peer_timeout_s=2.0) as server,
        serving(peer) as replica,
        serving(other_ns) as wrong,
    ):
        host_port = replica.http_url.removeprefix("http://")
        status, _, body = call(server.http_url, "GET", f"/v1/namespaces/web?peers={host_port}")
        assert status == 200
        doc = json.loads(body)
        assert doc["startups"] == 5
        assert doc["verdict"] == "pass"
        assert doc["peers_failed"] == []
        assert "sketches" not in doc
        assert all("sketches" in d for d in merged[-1])  # asked of itself and of the peer

        dead = "127.0.0.1:9"  # nothing listens on the discard port
        peers = f"{replica.http_url},{dead}&peers={wrong.http_url}"
        status, _, body = call(
            server.http_url, "GET", f"/v1/namespaces/web?peers={peers}&sketches=1"
        )
        assert status == 200
        doc = json.loads(body)
        assert doc["startups"] == 5
        assert doc["verdict"] == "insufficient"  # a pass needs every replica's startups
        assert len(doc["peers_failed"]) == 2
        assert any("127.0.0.1:9" in r and "unreachable" in r for r in doc["reasons"])
        assert any("not a verdict document" in r for r in doc["reasons"])
        assert "sketches" in doc


def test_peers_are_validated(server: ProcessorServer) -> None:
    too_many = ",".join(f"127.0.0.1:{port}" for port in range(1, 18))
    for peers in ("file:///etc/passwd", too_many, "http://"):
        status, _, _ = call(server.http_url, "GET", f"/v1/namespaces/web?peers={peers}")
        assert status == 400, peers


def test_a_namespace_without_peers_is_this_replicas_document(
    server: ProcessorServer, agg: StandIn
) -> None:
    agg.namespaces["k8s.io"] = _peer_doc("k8s.io", 4)
    status, _, body = call(server.http_url, "GET", "/v1/namespaces/k8s.io")
    assert (status, json.loads(body)["startups"]) == (200, 4)


# -- the Flagger webhook ----------------------------------------------------------------------
def _webhook(metadata: dict[str, Any]) -> bytes:
    return json.dumps(
        {
            "name": "podinfo",
            "namespace": "test",
            "phase": "Progressing",
            "checksum": "abc",
            "metadata": metadata,
        }
    ).encode()


@pytest.mark.parametrize(
    ("verdict", "status"), [("pass", 200), ("halt", 409), ("insufficient", 425)]
)
def test_flagger_status_codes(
    server: ProcessorServer, agg: StandIn, verdict: str, status: int
) -> None:
    agg.verdict = verdict
    got, _, body = call(
        server.http_url, "POST", "/v1/flagger", _webhook({"trace_id": TRACE.hex(), "expect": "20"})
    )
    assert got == status
    assert json.loads(body)["verdict"] == verdict
    assert agg.asked[-1] == (TRACE, 20, False)


def test_flagger_takes_a_traceparent(server: ProcessorServer, agg: StandIn) -> None:
    agg.verdict = "pass"
    traceparent = f"00-{TRACE.hex()}-00f067aa0ba902b7-01"
    status, _, _ = call(
        server.http_url, "POST", "/v1/flagger", _webhook({"traceparent": traceparent})
    )
    assert status == 200
    assert agg.asked[-1] == (TRACE, None, False)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"name": "x"}',
        _webhook({}),
        _webhook({"trace_id": "nope"}),
        _webhook({"traceparent": "00-zz"}),
        _webhook({"trace_id": TRACE.hex(), "expect": "twenty"}),
    ],
)
def test_a_malformed_webhook_is_400(
    server: ProcessorServer, counters: Counters, body: bytes
) -> None:
    status, _, answer = call(server.http_url, "POST", "/v1/flagger", body)
    assert status == 400
    assert json.loads(answer)["error"]
    assert refused(counters) == 1


def test_a_huge_webhook_is_413(server: ProcessorServer) -> None:
    assert call(server.http_url, "POST", "/v1/flagger", b" " * 100_000)[0] == 413


# -- metrics, counters, health, expiry --------------------------------------------------------
def test_metrics_are_prometheus_text(server: ProcessorServer, counters: Counters) -> None:
    counters.inc(semconv.PROCESSOR_SPANS_IGNORED, 3)
    status, headers, body = call(server.http_url, "GET", "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    assert "# TYPE otelbridge_processor_spans_ignored_total counter" in text
    assert "\notelbridge_processor_spans_ignored_total 3\n" in text
    assert "\notelbridge_processor_requests_refused_total 0\n" in text
    assert "# TYPE otelbridge_rollout_verdict gauge" in text
    assert (
        f'otelbridge_rollout_verdict{{otelbridge_rollout_name="we\\"b",'
        f'otelbridge_rollout_trace_id="{TRACE.hex()}"}} 1\n'
    ) in text
    assert "otelbridge_rollout_p99_seconds{" in text
    assert 'otelbridge_sla_budget="x"} 0.25' in text
    assert "# TYPE otelbridge_namespace_verdict gauge" in text  # declared while empty


def test_render_metrics_lines_parse() -> None:
    text = render_metrics({}, []).decode()
    for line in text.splitlines():
        assert line.startswith("# ") or len(line.split(" ")) == 2, line


def test_counters_and_health(server: ProcessorServer, counters: Counters) -> None:
    counters.inc(semconv.PROCESSOR_STARTUPS, 2)
    status, _, body = call(server.http_url, "GET", "/v1/counters")
    assert status == 200
    assert json.loads(body)["otelbridge.processor.startups"] == 2
    status, _, body = call(server.http_url, "GET", "/healthz")
    assert (status, body) == (200, b"ok\n")


def test_expire_is_called_every_interval(agg: StandIn) -> None:
    with serving(agg, expire_interval_s=0.05):
        done = threading.Event()
        done.wait(0.5)
    assert agg.expired >= 3
    count = agg.expired
    done.wait(0.2)
    assert agg.expired == count  # and no more after shutdown
