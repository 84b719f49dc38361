"""otelbridge.emit.metrics: the instruments, the OTLP readers against real receivers
(gRPC and HTTP, written here: otelbridge.testing.otlp serves traces only), the Prometheus
text, the configuration from the environment, and docs/telemetry.md's Metrics section."""

from __future__ import annotations

import concurrent.futures
import http.server
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric

from otelbridge import sla
from otelbridge.core import semconv
from otelbridge.core.clock import FakeClock
from otelbridge.core.config import Config, SlaConfig
from otelbridge.core.counters import Counters
from otelbridge.core.errors import ConfigError
from otelbridge.core.model import (
    ContainerInfo,
    ContainerKey,
    CriInfo,
    Outcome,
    PodContext,
    StartupRecord,
)
from otelbridge.core.tracecontext import NOT_FOUND
from otelbridge.emit import metrics as metrics_module
from otelbridge.emit.metrics import (
    PROMETHEUS_CONTENT_TYPE,
    BridgeMetrics,
    MetricsConfig,
    prometheus_name,
)
from otelbridge.pipeline import Pipeline
from otelbridge.testing.events import Timeline

DOC = (Path(__file__).parents[3] / "docs" / "telemetry.md").read_text(encoding="utf-8")
NO_EXPORT = "3600000"  # OTEL_METRIC_EXPORT_INTERVAL: tests flush by hand
NS = 1_000_000_000


# -- receivers ------------------------------------------------------------------------------
class GrpcMetricsReceiver(metrics_service_pb2_grpc.MetricsServiceServicer):
    """A real OTLP/gRPC MetricsService on loopback keeping every request it accepts."""

    def __init__(self) -> None:
        self.requests: list[ExportMetricsServiceRequest] = []
        self.metadata: list[dict[str, str]] = []
        self._cond = threading.Condition()
        self._server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=2))
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(self, self._server)  # type: ignore[no-untyped-call]
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def Export(  # noqa: N802 - the gRPC method's name
        self, request: ExportMetricsServiceRequest, context: Any
    ) -> ExportMetricsServiceResponse:
        with self._cond:
            self.requests.append(request)
            self.metadata.append(dict(context.invocation_metadata()))
            self._cond.notify_all()
        return ExportMetricsServiceResponse()

    def wait(self, n: int = 1, timeout_s: float = 10.0) -> list[ExportMetricsServiceRequest]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.requests) >= n, timeout_s)
            return list(self.requests)

    def __enter__(self) -> Self:
        self._server.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._server.stop(grace=None)


class HttpMetricsReceiver:
    """OTLP/HTTP protobuf on loopback: keeps (path, headers, request) of every POST."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, Mapping[str, str], ExportMetricsServiceRequest]] = []
        received = self.posts

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportMetricsServiceRequest.FromString(body)
                received.append(
                    (self.path, {k.lower(): v for k, v in self.headers.items()}, request)
                )
                data = ExportMetricsServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


# -- helpers --------------------------------------------------------------------------------
def startup(
    namespace: str = "default", cid: str = "c1", *, pod_namespace: str = ""
) -> StartupRecord:
    info = None
    if pod_namespace:
        info = ContainerInfo(
            namespace,
            cid,
            cri=CriInfo(
                kind="container", sandbox_id="sb", pod_name="web-0", pod_namespace=pod_namespace
            ),
        )
    return StartupRecord(key=ContainerKey(namespace, cid), incarnation_ns=1, info=info)


def sla_document(coverage: float | None = 0.95) -> dict[str, Any]:
    """Shaped like docs/sla.md's /v1/sla answer."""
    return {
        "window_s": 300.0,
        "min_samples": 20,
        "budgets": {
            "startup_duration": 4.0,
            "shim_launch_time": 2.0,
            "task_create_to_ready": 1.0,
            "coverage": 0.9,
        },
        "namespaces": {
            "default": {
                "verdict": "breach",
                "startups": 42,
                "traced": 40,
                "coverage": coverage,
                "coverage_verdict": "pass",
                "budgets": {
                    "startup_duration": {
                        "verdict": "pass",
                        "samples": 42,
                        "p99_s": 0.161,
                        "budget_s": 4.0,
                        "breaches": 0,
                    },
                    "shim_launch_time": {
                        "verdict": "pass",
                        "samples": 42,
                        "p99_s": 0.129,
                        "budget_s": 2.0,
                        "breaches": 0,
                    },
                    "task_create_to_ready": {
                        "verdict": "breach",
                        "samples": 42,
                        "p99_s": 1.2,
                        "budget_s": 1.0,
                        "breaches": 3,
                    },
                },
                "gc": {"reclaims": 0},
            },
            "k8s.io": {
                "verdict": "insufficient",
                "startups": 0,
                "traced": 0,
                "coverage": None,
                "coverage_verdict": "insufficient",
                "budgets": {
                    name: {
                        "verdict": "insufficient",
                        "samples": 0,
                        "p99_s": None,
                        "budget_s": 1.0,
                        "breaches": 0,
                    }
                    for name in sla.DURATIONS
                },
            },
        },
    }


def env(**extra: str) -> dict[str, str]:
    return {"OTEL_METRIC_EXPORT_INTERVAL": NO_EXPORT, **extra}


@pytest.fixture
def counters() -> Counters:
    c = Counters()
    c.inc(semconv.EVENTS_RECEIVED, 7)
    c.inc(semconv.EVENTS_DROPPED, 2)
    c.inc(semconv.STARTUPS_PARTIAL)
    c.inc(semconv.TRACEPARENT_INVALID, 3)
    cell = c.cell(semconv.STATE_EVICTED)
    cell.value += 4
    return c


@pytest.fixture
def prom(counters: Counters) -> Iterator[BridgeMetrics]:
    m = BridgeMetrics(
        Config(), counters, sla_document, environ=env(OTEL_METRICS_EXPORTER="prometheus")
    )
    yield m
    m.shutdown()


def by_name(request: ExportMetricsServiceRequest) -> dict[str, Metric]:
    return {
        m.name: m for rm in request.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
    }


def attrs(point: Any) -> dict[str, str]:
    return {kv.key: kv.value.string_value for kv in point.attributes}


def scrape(m: BridgeMetrics) -> str:
    code, body, kind = m.prometheus_route()
    assert (code, kind) == (200, PROMETHEUS_CONTENT_TYPE)
    return body.decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- OTLP over gRPC -------------------------------------------------------------------------
def test_otlp_grpc_exports_histograms_counters_and_gauges(counters: Counters) -> None:
    with GrpcMetricsReceiver() as receiver:
        m = BridgeMetrics(
            Config(),
            counters,
            sla_document,
            environ=env(
                OTEL_METRICS_EXPORTER="otlp",
                OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:1",  # the METRICS_ one wins
                OTEL_EXPORTER_OTLP_METRICS_ENDPOINT=receiver.endpoint,
                OTEL_EXPORTER_OTLP_METRICS_HEADERS="x-tenant=node%20a",
                OTEL_SERVICE_NAME="bridge-under-test",
            ),
        )
        try:
            for seconds in (0.004, 0.03, 0.03, 0.9, 1.0, 1.2, 50.0):
                m.record_startup(startup(), {sla.TASK_CREATE_TO_READY: seconds})
            m.record_startup(
                startup("k8s.io", "c2", pod_namespace="shop"),
                {
                    sla.STARTUP_DURATION: 3.5,
                    sla.SHIM_LAUNCH_TIME: 0.1,
                    sla.TASK_CREATE_TO_READY: 0.2,
                },
            )
            assert m.force_flush()
            request = receiver.wait()[-1]
        finally:
            m.shutdown()

    assert receiver.metadata[-1]["x-tenant"] == "node a"
    resource = {
        kv.key: kv.value.string_value for kv in request.resource_metrics[0].resource.attributes
    }
    assert resource["service.name"] == "bridge-under-test"
    assert request.resource_metrics[0].scope_metrics[0].scope.name == semconv.INSTRUMENTATION_SCOPE
    got = by_name(request)

    ready = got[semconv.TASK_CREATE_TO_READY_HISTOGRAM.name]
    assert ready.unit == "s"
    assert ready.description == semconv.TASK_CREATE_TO_READY_HISTOGRAM.description
    points = {tuple(sorted(attrs(p).items())): p for p in ready.histogram.data_points}
    default = points[(("containerd.namespace", "default"),)]
    assert list(default.explicit_bounds) == [
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        0.75,
        1.0,
        1.5,
        2.0,
        5.0,
        10.0,
    ]
    # per bucket (OTLP buckets are not cumulative): (-inf,0.005] ... (10,+inf); 1.0 is <= 1
    assert list(default.bucket_counts) == [1, 0, 0, 2, 0, 0, 0, 0, 2, 1, 0, 0, 0, 1]
    assert default.count == 7
    assert default.sum == pytest.approx(0.004 + 0.03 + 0.03 + 0.9 + 1.0 + 1.2 + 50.0)
    pod = points[(("containerd.namespace", "k8s.io"), ("k8s.namespace.name", "shop"))]
    assert pod.count == 1
    assert set(attrs(pod)) == {"containerd.namespace", "k8s.namespace.name"}  # no pod names

    startup_hist = got[semconv.STARTUP_DURATION_HISTOGRAM.name].histogram.data_points
    assert [p.count for p in startup_hist] == [1]
    assert list(startup_hist[0].explicit_bounds) == [
        0.02,
        0.04,
        0.1,
        0.2,
        0.4,
        1.0,
        2.0,
        3.0,
        4.0,
        6.0,
        8.0,
        20.0,
        40.0,
    ]
    assert got[semconv.SHIM_LAUNCH_HISTOGRAM.name].histogram.data_points[0].sum == pytest.approx(
        0.1
    )

    expected = counters.snapshot()
    for decl in semconv.COUNTERS:
        metric = got[decl.name]
        assert metric.unit == decl.unit
        assert metric.sum.is_monotonic
        assert [p.as_int for p in metric.sum.data_points] == [expected[decl.name]], decl.name
    assert got[semconv.STATE_EVICTED.name].sum.data_points[0].as_int == 4  # a Cell counts too

    coverage = got[semconv.SLA_COVERAGE.name]
    assert coverage.unit == "1"
    # k8s.io has no coverage yet (None): no point for it
    assert [(attrs(p), p.as_double) for p in coverage.gauge.data_points] == [
        ({"containerd.namespace": "default"}, 0.95)
    ]
    verdicts = {
        (a["containerd.namespace"], a["otelbridge.sla.budget"]): p.as_int
        for p in got[semconv.SLA_VERDICT.name].gauge.data_points
        for a in [attrs(p)]
    }
    assert verdicts == {
        ("default", "startup_duration"): 0,
        ("default", "shim_launch_time"): 0,
        ("default", "task_create_to_ready"): 1,
        ("default", "coverage"): 0,
        ("k8s.io", "startup_duration"): 2,
        ("k8s.io", "shim_launch_time"): 2,
        ("k8s.io", "task_create_to_ready"): 2,
        ("k8s.io", "coverage"): 2,
    }


def test_counters_are_read_at_each_collection_and_stay_cumulative(counters: Counters) -> None:
    with GrpcMetricsReceiver() as receiver:
        m = BridgeMetrics(
            Config(),
            counters,
            sla_document,
            environ=env(
                OTEL_METRICS_EXPORTER="otlp", OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint
            ),
        )
        try:
            m.record_startup(startup(), {sla.SHIM_LAUNCH_TIME: 0.2})
            assert m.force_flush()
            counters.inc(semconv.EVENTS_RECEIVED, 10)
            m.record_startup(startup(), {sla.SHIM_LAUNCH_TIME: 0.3})
            assert m.force_flush()
            first, second = receiver.wait(2)[:2]
        finally:
            m.shutdown()
    assert by_name(first)[semconv.EVENTS_RECEIVED.name].sum.data_points[0].as_int == 7
    assert by_name(second)[semconv.EVENTS_RECEIVED.name].sum.data_points[0].as_int == 17
    assert by_name(second)[semconv.SHIM_LAUNCH_HISTOGRAM.name].histogram.data_points[0].count == 2


def test_periodic_export_follows_the_interval(counters: Counters) -> None:
    with GrpcMetricsReceiver() as receiver:
        m = BridgeMetrics(
            Config(),
            counters,
            sla_document,
            environ={
                "OTEL_METRICS_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                "OTEL_METRIC_EXPORT_INTERVAL": "100",
            },
        )
        try:
            assert len(receiver.wait(2, timeout_s=5.0)) >= 2
        finally:
            m.shutdown()


def test_shutdown_exports_the_last_collection(counters: Counters) -> None:
    with GrpcMetricsReceiver() as receiver:
        m = BridgeMetrics(
            Config(),
            counters,
            sla_document,
            environ=env(
                OTEL_METRICS_EXPORTER="otlp", OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint
            ),
        )
        m.record_startup(startup(), {sla.STARTUP_DURATION: 0.5})
        m.shutdown()
        last = receiver.wait()[-1]
    assert (
        by_name(last)[semconv.STARTUP_DURATION_HISTOGRAM.name].histogram.data_points[0].count == 1
    )


# -- OTLP over HTTP -------------------------------------------------------------------------
def test_otlp_http_protobuf_posts_to_v1_metrics_of_the_generic_endpoint(counters: Counters) -> None:
    with HttpMetricsReceiver() as receiver:
        m = BridgeMetrics(
            Config(),
            counters,
            sla_document,
            environ=env(
                OTEL_METRICS_EXPORTER="otlp",
                OTEL_EXPORTER_OTLP_PROTOCOL="http/json",  # the spans' choice: protobuf here
                OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{receiver.port}/",
                OTEL_EXPORTER_OTLP_HEADERS="authorization=Bearer%20t",
            ),
        )
        try:
            m.record_startup(startup(), {sla.SHIM_LAUNCH_TIME: 0.7})
            assert m.force_flush()
        finally:
            m.shutdown()
    path, headers, request = receiver.posts[0]
    assert path == "/v1/metrics"
    assert headers["content-type"] == "application/x-protobuf"
    assert headers["authorization"] == "Bearer t"
    hist = by_name(request)[semconv.SHIM_LAUNCH_HISTOGRAM.name].histogram.data_points[0]
    assert hist.count == 1
    assert hist.sum == pytest.approx(0.7)


# -- Prometheus -----------------------------------------------------------------------------
def test_prometheus_text_has_cumulative_buckets_per_namespace(prom: BridgeMetrics) -> None:
    for seconds in (0.004, 0.03, 0.9, 1.0, 1.2, 50.0):
        prom.record_startup(startup(), {sla.TASK_CREATE_TO_READY: seconds})
    prom.record_startup(
        startup("k8s.io", "p", pod_namespace="shop"), {sla.TASK_CREATE_TO_READY: 0.2}
    )
    text = scrape(prom)
    name = "otelbridge_task_create_to_ready_duration_seconds"
    assert f"# TYPE {name} histogram\n" in text
    assert f"# HELP {name} {semconv.TASK_CREATE_TO_READY_HISTOGRAM.description}\n" in text
    buckets = re.findall(
        rf'^{name}_bucket\{{containerd_namespace="default",le="([^"]+)"\}} (\d+)$',
        text,
        re.MULTILINE,
    )
    assert buckets == [
        ("0.005", "1"),
        ("0.01", "1"),
        ("0.025", "1"),
        ("0.05", "2"),
        ("0.1", "2"),
        ("0.25", "2"),
        ("0.5", "2"),
        ("0.75", "2"),
        ("1.0", "4"),
        ("1.5", "5"),
        ("2.0", "5"),
        ("5.0", "5"),
        ("10.0", "5"),
        ("+Inf", "6"),
    ]
    assert f'{name}_count{{containerd_namespace="default"}} 6\n' in text
    assert re.search(rf'^{name}_sum\{{containerd_namespace="default"\}} 53\.13\d*$', text, re.M)
    assert (
        f'{name}_bucket{{containerd_namespace="k8s.io",k8s_namespace_name="shop",le="0.25"}} 1\n'
        in text
    )


def test_prometheus_text_has_counters_gauges_and_target_info(prom: BridgeMetrics) -> None:
    text = scrape(prom)
    assert "# TYPE otelbridge_events_received_total counter\n" in text
    assert "otelbridge_events_received_total 7\n" in text
    assert "otelbridge_events_dropped_total 2\n" in text
    assert "otelbridge_startups_partial_total 1\n" in text
    assert "otelbridge_state_evicted_total 4\n" in text
    assert "otelbridge_traceparent_invalid_total 3\n" in text
    assert "otelbridge_pods_completed_total 0\n" in text
    for decl in semconv.COUNTERS:
        assert f"\n{prometheus_name(decl.name, decl.unit, 'counter')} " in text, decl.name
    assert "# TYPE otelbridge_sla_coverage_ratio gauge\n" in text
    assert 'otelbridge_sla_coverage_ratio{containerd_namespace="default"} 0.95\n' in text
    assert "# TYPE otelbridge_sla_verdict gauge\n" in text
    assert (
        'otelbridge_sla_verdict{containerd_namespace="default",'
        'otelbridge_sla_budget="task_create_to_ready"} 1\n' in text
    )
    assert (
        'otelbridge_sla_verdict{containerd_namespace="k8s.io",otelbridge_sla_budget="coverage"} 2\n'
        in text
    )
    assert re.search(r'^target_info\{.*service_name="containerd".*\} 1$', text, re.MULTILINE)
    # histograms appear with their first sample
    assert "otelbridge_startup_duration_seconds" not in text


def test_prometheus_text_is_well_formed(prom: BridgeMetrics) -> None:
    prom.record_startup(startup(), {sla.STARTUP_DURATION: 0.3})
    families: dict[str, str] = {}
    sample = re.compile(
        r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? '
        r"(-?[0-9.e+-]+|\+Inf|-Inf|NaN)$"
    )
    text = scrape(prom)
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name not in families, f"{name} declared twice"
            families[name] = kind
        elif not line.startswith("# HELP "):
            match = sample.match(line)
            assert match, line
            base = re.sub(r"_(bucket|sum|count)$", "", match.group(1))
            assert match.group(1) in families or families.get(base) == "histogram", line


def test_prometheus_escapes_label_values_and_merges_colliding_keys(counters: Counters) -> None:
    m = BridgeMetrics(
        Config(),
        counters,
        sla_document,
        environ=env(
            OTEL_METRICS_EXPORTER="prometheus",
            OTEL_RESOURCE_ATTRIBUTES='team.name=a"b\\c,team_name=x,9lives=cat',
        ),
    )
    try:
        text = scrape(m)
    finally:
        m.shutdown()
    line = next(line for line in text.splitlines() if line.startswith("target_info{"))
    assert 'team_name="a\\"b\\\\c;x"' in line
    assert 'key_9lives="cat"' in line


def test_prometheus_route_is_404_when_not_enabled(counters: Counters) -> None:
    with GrpcMetricsReceiver() as receiver:
        m = BridgeMetrics(
            Config(),
            counters,
            sla_document,
            environ=env(
                OTEL_METRICS_EXPORTER="otlp", OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint
            ),
        )
        try:
            assert m.prometheus_route()[0] == 404
        finally:
            m.shutdown()


def test_prometheus_through_the_status_server(prom: BridgeMetrics, counters: Counters) -> None:
    import urllib.request  # noqa: PLC0415

    from otelbridge.status import StatusServer  # noqa: PLC0415

    prom.record_startup(startup(), {sla.SHIM_LAUNCH_TIME: 0.2})
    server = StatusServer(
        "127.0.0.1:0",
        counters,
        health=lambda: [],
        readiness=lambda: [],
        routes={"/metrics": prom.prometheus_route},
    )
    server.start()
    try:
        url = f"http://127.0.0.1:{server.address[1]}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read().decode()
            assert response.headers["Content-Type"] == PROMETHEUS_CONTENT_TYPE
    finally:
        server.shutdown()
    assert (
        'otelbridge_shim_launch_duration_seconds_bucket{containerd_namespace="default",le="0.2"} 1'
        in body
    )


# -- the pipeline's hook ----------------------------------------------------------------------
def test_pipeline_on_measured_feeds_the_histograms(counters: Counters) -> None:
    from otelbridge.core.clock import EventTimeClock  # noqa: PLC0415

    class Sink:
        def submit(self, spans: list[Any]) -> None:
            pass

    pipeline_ref: list[Pipeline] = []
    m = BridgeMetrics(
        Config(),
        counters,
        lambda: pipeline_ref[0].sla.snapshot(),  # noqa: PLW0108 - the pipeline comes after
        environ=env(OTEL_METRICS_EXPORTER="prometheus"),
    )
    pipeline = Pipeline(
        Config(), Sink(), counters, clock=EventTimeClock(), on_measured=m.record_startup
    )
    pipeline_ref.append(pipeline)
    try:
        tl = Timeline()
        for cid in ("a", "b", "c"):
            for envelope in tl.run_container(
                cid, ns="ci", gaps_ns=(4_000_000, 44_000_000, 9_000_000)
            ):
                pipeline.feed(envelope)
        pipeline.finish()
        text = scrape(m)
    finally:
        pipeline.shutdown()
        m.shutdown()
    # readiness source "started": ready at /tasks/start, 9 ms after /tasks/create
    ready = "otelbridge_task_create_to_ready_duration_seconds_bucket"
    assert f'{ready}{{containerd_namespace="ci",le="0.01"}} 3' in text
    assert (
        'otelbridge_shim_launch_duration_seconds_bucket{containerd_namespace="ci",le="0.05"} 3'
        in text
    )
    assert 'otelbridge_startup_duration_seconds_count{containerd_namespace="ci"} 3' in text
    # the real SlaTracker's snapshot: 3 samples < min_samples 20
    verdict = 'otelbridge_sla_verdict{containerd_namespace="ci",otelbridge_sla_budget="%s"} %d'
    assert verdict % ("startup_duration", 2) in text
    assert 'otelbridge_sla_coverage_ratio{containerd_namespace="ci"} 1.0' in text


def test_verdict_gauge_follows_a_real_sla_tracker(counters: Counters) -> None:
    clock = FakeClock()
    tracker = sla.SlaTracker(SlaConfig(min_samples=2), clock)
    for seconds in (0.1, 3.0):
        record = startup("web")
        record.outcome = Outcome.READY
        tracker.observe(record, {sla.TASK_CREATE_TO_READY: seconds, sla.SHIM_LAUNCH_TIME: 0.1})
    m = BridgeMetrics(
        Config(), counters, tracker.snapshot, environ=env(OTEL_METRICS_EXPORTER="prometheus")
    )
    try:
        text = scrape(m)
    finally:
        m.shutdown()
    verdict = 'otelbridge_sla_verdict{{containerd_namespace="web",otelbridge_sla_budget="{}"}} {}\n'
    assert verdict.format("task_create_to_ready", 1) in text
    assert verdict.format("shim_launch_time", 0) in text
    assert verdict.format("startup_duration", 2) in text  # never measured: insufficient
    assert verdict.format("coverage", 0) in text
    assert 'otelbridge_sla_coverage_ratio{containerd_namespace="web"} 1.0\n' in text


def test_pod_context_gives_the_kubernetes_namespace(prom: BridgeMetrics) -> None:
    record = startup("k8s.io", "app")
    pod = PodContext("k8s.io", "sb", "web-0", "payments", "uid-1", 1, NOT_FOUND)
    record.info = ContainerInfo("k8s.io", "app", pod=pod)
    prom.record_startup(record, {sla.SHIM_LAUNCH_TIME: 0.1})
    text = scrape(prom)
    assert 'containerd_namespace="k8s.io",k8s_namespace_name="payments",le="0.1"} 1\n' in text
    assert "web-0" not in text and "uid-1" not in text


def test_record_startup_skips_what_it_cannot_measure_and_never_raises(
    prom: BridgeMetrics, counters: Counters
) -> None:
    prom.record_startup(
        startup(),
        {
            "unknown": 1.0,
            sla.SHIM_LAUNCH_TIME: -0.5,
            sla.STARTUP_DURATION: float("nan"),
            sla.TASK_CREATE_TO_READY: float("inf"),
        },
    )
    assert "_duration_seconds" not in scrape(prom)
    prom.record_startup(None, {sla.SHIM_LAUNCH_TIME: 0.1})  # type: ignore[arg-type]
    assert counters.get(semconv.PIPELINE_ERRORS) == 1


def test_callbacks_survive_a_failing_sla_snapshot(counters: Counters) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("boom")

    m = BridgeMetrics(Config(), counters, broken, environ=env(OTEL_METRICS_EXPORTER="prometheus"))
    try:
        text = scrape(m)
    finally:
        m.shutdown()
    assert "otelbridge_events_received_total 7\n" in text
    assert "otelbridge_sla_verdict" not in text


def test_boundaries_follow_the_configured_budgets(counters: Counters) -> None:
    config = Config(sla=SlaConfig(task_create_to_ready_s=0.3, startup_duration_p99_s=10.0))
    m = BridgeMetrics(config, counters, sla_document, environ=env(OTEL_METRICS_EXPORTER="none"))
    assert m.boundaries[semconv.TASK_CREATE_TO_READY_HISTOGRAM.name] == (
        0.0015,
        0.003,
        0.0075,
        0.015,
        0.03,
        0.075,
        0.15,
        0.225,
        0.3,
        0.45,
        0.6,
        1.5,
        3.0,
    )
    assert 10.0 in m.boundaries[semconv.STARTUP_DURATION_HISTOGRAM.name]
    assert m.boundaries[
        semconv.SHIM_LAUNCH_HISTOGRAM.name
    ] == semconv.SHIM_LAUNCH_HISTOGRAM.boundaries(2.0)


# -- none, shutdown, logging --------------------------------------------------------------------
def test_none_runs_no_reader_and_no_thread(counters: Counters) -> None:
    before = set(threading.enumerate())
    m = BridgeMetrics(Config(), counters, sla_document, environ={"OTEL_METRICS_EXPORTER": "none"})
    assert m.config.exporters == ()
    m.record_startup(startup(), {sla.SHIM_LAUNCH_TIME: 0.1})
    assert m.prometheus_route()[0] == 404
    assert not m.force_flush()
    assert set(threading.enumerate()) - before == set()
    m.shutdown()
    m.shutdown()


def test_shutdown_is_idempotent_and_quiet(
    counters: Counters, caplog: pytest.LogCaptureFixture
) -> None:
    with GrpcMetricsReceiver() as receiver:
        m = BridgeMetrics(
            Config(),
            counters,
            sla_document,
            environ=env(
                OTEL_METRICS_EXPORTER="otlp,prometheus",
                OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
            ),
        )
        with caplog.at_level(logging.WARNING):
            m.shutdown()
            m.shutdown()
            m.record_startup(startup(), {sla.SHIM_LAUNCH_TIME: 0.1})
            assert m.prometheus_route()[0] == 503
            assert not m.force_flush()
    assert caplog.records == []


def test_no_collector_shutdown_is_bounded_and_export_errors_are_throttled(
    counters: Counters, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics_module._export_log_filter, "_throttles", {})  # a fresh start
    port = free_port()  # nobody listens there
    m = BridgeMetrics(
        Config(),
        counters,
        sla_document,
        environ=env(
            OTEL_METRICS_EXPORTER="otlp",
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
            OTEL_EXPORTER_OTLP_TIMEOUT="500",
        ),
    )
    with caplog.at_level(logging.WARNING):
        for _ in range(4):
            m.force_flush(timeout_s=5.0)
        started = time.monotonic()
        m.shutdown(timeout_s=1.0)
        took = time.monotonic() - started
    assert took < 3.0
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(failures) == 1, [r.getMessage() for r in caplog.records]  # 4+ failed exports
    assert str(port) in failures[0].getMessage()


def test_export_log_filter_lets_the_first_through_then_counts() -> None:
    records: list[logging.LogRecord] = []
    flt = metrics_module._ThrottleExportLogs(interval_s=3600.0)

    def emit(level: int, msg: str, *args: object) -> None:
        record = logging.LogRecord("x", level, __file__, 1, msg, args, None)
        if flt.filter(record):
            records.append(record)

    emit(logging.ERROR, "Failed to export %s to %s", "metrics", "a:1")
    emit(logging.ERROR, "Failed to export %s to %s", "metrics", "a:1")
    emit(logging.WARNING, "Transient error %s", "UNAVAILABLE")
    emit(logging.DEBUG, "Failed to export %s to %s", "metrics", "a:1")
    assert [r.getMessage() for r in records] == [
        "Failed to export metrics to a:1",
        "Transient error UNAVAILABLE",
        "Failed to export metrics to a:1",  # DEBUG passes untouched
    ]
    flt._throttles[("x", "Failed to export %s to %s")]._last_ns = 0  # the interval has passed
    emit(logging.ERROR, "Failed to export %s to %s", "metrics", "a:1")
    assert (
        records[-1].getMessage() == "Failed to export metrics to a:1 (1 similar messages held back)"
    )


# -- configuration ----------------------------------------------------------------------------
def test_defaults() -> None:
    cfg = MetricsConfig.from_env({})
    assert cfg == MetricsConfig()
    assert cfg.exporters == ("otlp", "prometheus")
    assert (cfg.otlp.endpoint, cfg.otlp.protocol, cfg.export_interval_s) == (
        "http://localhost:4317",
        "grpc",
        60.0,
    )
    http = MetricsConfig.from_env({"OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/protobuf"})
    assert http.otlp.endpoint == "http://localhost:4318/v1/metrics"


def test_metrics_variables_win_and_are_parsed(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here")
    cfg = MetricsConfig.from_env(
        {
            "OTEL_METRICS_EXPORTER": " Prometheus , otlp,prometheus",
            "OTEL_METRIC_EXPORT_INTERVAL": "15000",
            "OTEL_METRIC_EXPORT_TIMEOUT": "5000",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://base:4318",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "2000",
            "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT": "3000",
            "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION": "gzip",
            "OTEL_EXPORTER_OTLP_CERTIFICATE": str(ca),
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
        }
    )
    assert cfg.exporters == ("prometheus", "otlp")
    assert (cfg.export_interval_s, cfg.export_timeout_s) == (15.0, 5.0)
    assert (cfg.otlp.protocol, cfg.otlp.endpoint) == (
        "http/protobuf",
        "http://base:4318/v1/metrics",
    )
    assert (cfg.otlp.timeout_s, cfg.otlp.compression, cfg.otlp.certificate, cfg.otlp.insecure) == (
        3.0,
        "gzip",
        str(ca),
        True,
    )


def test_every_problem_of_the_environment_is_reported_at_once(counters: Counters) -> None:
    bad = {
        "OTEL_METRICS_EXPORTER": "otlp,none,statsd",
        "OTEL_METRIC_EXPORT_INTERVAL": "soon",
        "OTEL_METRIC_EXPORT_TIMEOUT": "-1",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/json",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "ftp://x",
        "OTEL_EXPORTER_OTLP_HEADERS": "novalue",
        "OTEL_EXPORTER_OTLP_METRICS_INSECURE": "maybe",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "zstd",
        "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE": "/nonexistent.pem",
    }
    with pytest.raises(ConfigError) as info:
        BridgeMetrics(Config(), counters, sla_document, environ=bad)
    text = "\n".join(info.value.problems)
    for needle in (
        "'statsd'",
        "'none' cannot be combined",
        "OTEL_METRIC_EXPORT_INTERVAL",
        "OTEL_METRIC_EXPORT_TIMEOUT",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_METRICS_INSECURE",
        "OTEL_EXPORTER_OTLP_COMPRESSION",
        "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE",
    ):
        assert needle in text, needle
    assert len(info.value.problems) == 10


def test_a_programmatic_config_is_validated(counters: Counters) -> None:
    with pytest.raises(ConfigError) as info:
        BridgeMetrics(
            Config(),
            counters,
            sla_document,
            metrics_config=MetricsConfig(exporters=("otlp", "carbon"), export_interval_s=0),
        )
    assert len(info.value.problems) == 2


def test_resource_attributes_of_the_spans_are_used(counters: Counters) -> None:
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue  # noqa: PLC0415
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource  # noqa: PLC0415

    resource = Resource(
        attributes=[
            KeyValue(key="service.name", value=AnyValue(string_value="spans-name")),
            KeyValue(key="k8s.node.name", value=AnyValue(string_value="node-7")),
        ]
    )
    m = BridgeMetrics(
        Config(),
        counters,
        sla_document,
        environ=env(OTEL_METRICS_EXPORTER="prometheus"),
        resource=resource,
    )
    try:
        info = next(line for line in scrape(m).splitlines() if line.startswith("target_info"))
    finally:
        m.shutdown()
    assert info == 'target_info{k8s_node_name="node-7",service_name="spans-name"} 1'


# -- declarations and docs/telemetry.md --------------------------------------------------------
def test_histograms_name_the_sla_durations_and_verdicts_the_sla_verdicts() -> None:
    assert [h.budget for h in semconv.HISTOGRAMS] == list(sla.DURATIONS)
    assert set(semconv.SLA_VERDICT_VALUES) == {v.value for v in sla.Verdict}
    for h in semconv.HISTOGRAMS:
        for budget in (0.3, 1.0, 2.0, 4.0, 7.5):
            bounds = h.boundaries(budget)
            assert budget in bounds
            assert list(bounds) == sorted(set(bounds))


def test_metric_names_are_unique_and_never_collide_in_prometheus() -> None:
    declared = [
        *((c.name, c.unit, "counter") for c in semconv.COUNTERS),
        *((h.name, h.unit, "histogram") for h in semconv.HISTOGRAMS),
        *((g.name, g.unit, "gauge") for g in semconv.GAUGES),
    ]
    assert len({name for name, _, _ in declared}) == len(declared)
    assert len({prometheus_name(*d) for d in declared}) == len(declared)


def metrics_section() -> str:
    start = DOC.index("\n## Metrics\n")
    end = DOC.find("\n## ", start + 1)
    return DOC[start : end if end != -1 else len(DOC)]


def test_docs_list_every_metric_with_unit_prometheus_name_and_buckets() -> None:
    section = metrics_section()
    limits = sla.budgets(SlaConfig())
    for h in semconv.HISTOGRAMS:
        buckets = ", ".join(f"{b:g}" for b in h.boundaries(limits[h.budget]))
        prom = prometheus_name(h.name, h.unit, "histogram")
        row = (
            f"| histogram | `{h.name}` | `{h.unit}` | `{prom}` "
            f"| `containerd.namespace`, `k8s.namespace.name` | {buckets} |"
        )
        assert row in section, row
        flat = " ".join(section.split())
        assert f"`{h.name}` is the `{h.budget}` budget's" in flat or (
            f"`{h.name}` the `{h.budget}` one's" in flat
        ), h.name
    for g in semconv.GAUGES:
        assert (
            f"| gauge | `{g.name}` | `{g.unit}` | `{prometheus_name(g.name, g.unit, 'gauge')}` |"
            in section
        )
    factors = ", ".join(f"{f:g}" for f in semconv.BUDGET_BUCKET_FACTORS)
    assert f"times {factors}, so the budget is always a boundary" in " ".join(section.split())
    for value, code in semconv.SLA_VERDICT_VALUES.items():
        assert f"{code} {value}" in section
    for key in semconv.METRIC_ATTRIBUTES:
        assert f"`{key}`" in section


def test_docs_counter_rule_holds_for_every_counter() -> None:
    section = metrics_section()
    assert "| counter | every counter of the table above | its unit |" in section
    for c in semconv.COUNTERS:  # "its name with `_` and `_total`"
        assert prometheus_name(c.name, c.unit, "counter") == c.name.replace(".", "_") + "_total"
        assert f"| `{c.name}` | `{c.unit}` |" in DOC  # the counters' table gives the unit


def test_docs_name_nothing_undeclared_in_the_metrics_section() -> None:
    declared = {h.name for h in semconv.HISTOGRAMS} | {g.name for g in semconv.GAUGES}
    named = set(re.findall(r"`(otelbridge\.[a-z_.]+)`", metrics_section()))
    assert named - declared - set(semconv.METRIC_ATTRIBUTES) == set()
