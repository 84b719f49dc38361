"""Exporters and resource from OTEL_* variables, and the whole export stage end to end."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otelbridge.core.counters import Counters
from otelbridge.core.errors import ConfigError
from otelbridge.core.semconv import HOST_NAME, INSTRUMENTATION_SCOPE, SERVICE_NAME, SPANS_EXPORTED
from otelbridge.export.delivery import Delivery, DeliveryConfig
from otelbridge.export.factory import build_exporters, build_resource
from otelbridge.export.files import ConsoleExporter, JsonlExporter, NoneExporter, read_jsonl
from otelbridge.export.otlp import OtlpGrpcExporter, OtlpHttpExporter
from otelbridge.export.storage import MemoryStorage
from otelbridge.testing.otlp import OtlpHttpReceiver, OtlpReceiver


def attributes(environ: dict[str, str], **kwargs: object) -> dict[str, str]:
    resource = build_resource(environ, **kwargs)  # type: ignore[arg-type]
    return {kv.key: kv.value.string_value for kv in resource.attributes}


def test_otlp_grpc_is_the_default() -> None:
    exporters = build_exporters({})
    try:
        assert len(exporters) == 1
        assert isinstance(exporters[0], OtlpGrpcExporter)
        assert exporters[0].endpoint == "http://localhost:4317"
    finally:
        for e in exporters:
            e.shutdown()


def test_several_exporters_in_order(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    exporters = build_exporters(
        {
            "OTEL_TRACES_EXPORTER": " Console , jsonl,otlp,console",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        },
        jsonl_path=path,
    )
    try:
        assert [type(e) for e in exporters] == [ConsoleExporter, JsonlExporter, OtlpHttpExporter]
        assert path.exists()
    finally:
        for e in exporters:
            e.shutdown()


def test_none() -> None:
    exporters = build_exporters({"OTEL_TRACES_EXPORTER": "none"})
    assert [type(e) for e in exporters] == [NoneExporter]


def test_bad_exporter_settings_list_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        build_exporters(
            {
                "OTEL_TRACES_EXPORTER": "otlp,zipkin,jaeger,none",
                "OTEL_EXPORTER_OTLP_TIMEOUT": "soon",
                "OTEL_EXPORTER_OTLP_COMPRESSION": "brotli",
            }
        )
    text = str(info.value)
    assert len(info.value.problems) == 4
    assert "'zipkin'" in text and "'jaeger'" in text
    assert "'none' cannot be combined" in text
    assert "OTEL_EXPORTER_OTLP_TIMEOUT" in text and "OTEL_EXPORTER_OTLP_COMPRESSION" in text


def test_unopenable_jsonl_path_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="jsonl"):
        build_exporters(
            {"OTEL_TRACES_EXPORTER": "jsonl"}, jsonl_path=tmp_path / "missing-dir" / "x.jsonl"
        )


def test_resource_defaults() -> None:
    assert attributes({}) == {SERVICE_NAME: "containerd", HOST_NAME: socket.gethostname()}
    assert attributes({}, service_name_default="otelbridge-processor")[SERVICE_NAME] == (
        "otelbridge-processor"
    )


def test_resource_attributes_are_percent_decoded_and_service_name_wins() -> None:
    attrs = attributes(
        {
            "OTEL_RESOURCE_ATTRIBUTES": (
                "service.name=from-attrs, deployment.environment=prod%2Ceu ,"
                "k8s.cluster.name=a%3Db,host.name=override"
            ),
            "OTEL_SERVICE_NAME": "runtime",
        },
        extra={"k8s.node.name": "node-1", "deployment.environment": "overridden"},
    )
    assert attrs == {
        SERVICE_NAME: "runtime",
        HOST_NAME: "override",
        "k8s.node.name": "node-1",
        "deployment.environment": "prod,eu",
        "k8s.cluster.name": "a=b",
    }
    assert attributes({"OTEL_RESOURCE_ATTRIBUTES": "service.name=svc"})[SERVICE_NAME] == "svc"


def test_bad_resource_attributes_list_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        build_resource({"OTEL_RESOURCE_ATTRIBUTES": "a=1,justkey,=novalue"})
    assert len(info.value.problems) == 2
    assert all(p.startswith("OTEL_RESOURCE_ATTRIBUTES:") for p in info.value.problems)


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf", "http/json"])
def test_environment_to_receiver_end_to_end(protocol: str, tmp_path: Path) -> None:
    receiver = OtlpReceiver() if protocol == "grpc" else OtlpHttpReceiver()
    with receiver:
        endpoint = receiver.endpoint if isinstance(receiver, OtlpReceiver) else receiver.base_url
        environ = {
            "OTEL_TRACES_EXPORTER": "otlp,jsonl",
            "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_SERVICE_NAME": "runtime",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
        }
        path = tmp_path / "spans.jsonl"
        counters = Counters()
        config = DeliveryConfig.from_env(environ)
        storage = MemoryStorage(counters, max_size=config.max_queue_size)
        delivery = Delivery(
            build_exporters(environ, jsonl_path=path),
            storage,
            build_resource(environ),
            InstrumentationScope(name=INSTRUMENTATION_SCOPE),
            counters,
            config=config,
        )
        delivery.start()
        storage.submit([Span(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="x")])
        spans = receiver.wait_for_spans(1)
        delivery.shutdown(5)
    assert spans[0].resource_attributes[SERVICE_NAME] == "runtime"
    assert spans[0].scope.name == INSTRUMENTATION_SCOPE
    with path.open() as f:
        (request,) = list(read_jsonl(f))
    assert request.resource_spans[0].scope_spans[0].spans[0].name == "x"
    assert counters.get(SPANS_EXPORTED) == 2  # once per exporter
