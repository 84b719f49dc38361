"""The OTLP exporters against a real receiver on loopback, and their env configuration."""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from otelbridge.core.errors import ConfigError
from otelbridge.export import ExportFeedback, ExportResult
from otelbridge.export.otlp import OtlpGrpcExporter, OtlpHttpExporter, create_exporter
from otelbridge.export.otlpenv import OtlpConfig
from otelbridge.testing.otlp import OtlpHttpReceiver, OtlpReceiver


def make_request(n: int = 3) -> ExportTraceServiceRequest:
    spans = [
        Span(
            trace_id=bytes([1] * 16),
            span_id=(i + 1).to_bytes(8, "big"),
            name=f"span-{i}",
            start_time_unix_nano=1_700_000_000_000_000_000,
            end_time_unix_nano=1_700_000_000_250_000_000,
        )
        for i in range(n)
    ]
    resource = Resource(
        attributes=[KeyValue(key="service.name", value=AnyValue(string_value="containerd"))]
    )
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=resource,
                scope_spans=[
                    ScopeSpans(scope=InstrumentationScope(name="otelbridge"), spans=spans)
                ],
            )
        ]
    )


# -- gRPC ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def grpc_receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture
def receiver(grpc_receiver: OtlpReceiver) -> Iterator[OtlpReceiver]:
    grpc_receiver.start()  # a test may have stopped it
    grpc_receiver.clear()
    yield grpc_receiver
    grpc_receiver.set_failure(None)
    grpc_receiver.set_delay(0)
    grpc_receiver.set_partial_success(0)


@pytest.fixture
def grpc_exporter(receiver: OtlpReceiver) -> Iterator[OtlpGrpcExporter]:
    exporter = OtlpGrpcExporter(receiver.endpoint, timeout_s=2.0)
    yield exporter
    exporter.shutdown()


def test_grpc_success_delivers_the_request_with_headers_as_metadata(
    receiver: OtlpReceiver,
) -> None:
    exporter = OtlpGrpcExporter(
        receiver.endpoint, headers={"X-Tenant": "blue", "authorization": "Bearer t"}
    )
    try:
        assert exporter.export(make_request(3), 3) is ExportResult.SUCCESS
    finally:
        exporter.shutdown()
    spans = receiver.wait_for_spans(3)
    assert [s.name for s in spans] == ["span-0", "span-1", "span-2"]
    assert spans[0].resource_attributes == {"service.name": "containerd"}
    assert spans[0].scope.name == "otelbridge"
    headers = receiver.requests()[0].headers
    assert headers["x-tenant"] == "blue"
    assert headers["authorization"] == "Bearer t"
    assert headers["user-agent"].startswith("otelbridge/")


def test_grpc_gzip_compression_is_accepted(receiver: OtlpReceiver) -> None:
    exporter = OtlpGrpcExporter(receiver.endpoint, compression="gzip")
    try:
        assert exporter.export(make_request(2), 2) is ExportResult.SUCCESS
    finally:
        exporter.shutdown()
    assert receiver.requests()[0].request == make_request(2)


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.DATA_LOSS,
    ],
)
def test_grpc_retryable_codes_give_retry(
    receiver: OtlpReceiver, grpc_exporter: OtlpGrpcExporter, code: grpc.StatusCode
) -> None:
    receiver.set_failure(code)
    assert grpc_exporter.export(make_request(), 3) is ExportResult.RETRY
    assert receiver.attempts == 1
    assert receiver.spans() == []


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.RESOURCE_EXHAUSTED,  # without RetryInfo: permanent per the spec
    ],
)
def test_grpc_other_codes_give_failure(
    receiver: OtlpReceiver, grpc_exporter: OtlpGrpcExporter, code: grpc.StatusCode
) -> None:
    receiver.set_failure(code, "go away")
    assert grpc_exporter.export(make_request(), 3) is ExportResult.FAILURE


def test_grpc_resource_exhausted_with_retry_info_gives_retry_and_the_delay(
    receiver: OtlpReceiver, grpc_exporter: OtlpGrpcExporter
) -> None:
    receiver.set_failure(grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down", retry_after_s=2.5)
    assert grpc_exporter.export(make_request(), 3) is ExportResult.RETRY
    assert grpc_exporter.last_feedback() == ExportFeedback(
        retry_after_s=2.5, error="RESOURCE_EXHAUSTED: slow down"
    )


def test_grpc_receiver_down_gives_retry(receiver: OtlpReceiver) -> None:
    exporter = OtlpGrpcExporter(receiver.endpoint, timeout_s=2.0)
    receiver.stop()
    try:
        assert exporter.export(make_request(), 3) is ExportResult.RETRY
    finally:
        exporter.shutdown()


def test_grpc_slow_receiver_hits_the_timeout_and_gives_retry(receiver: OtlpReceiver) -> None:
    receiver.set_delay(2.0)
    exporter = OtlpGrpcExporter(receiver.endpoint, timeout_s=0.2)
    try:
        assert exporter.export(make_request(), 3) is ExportResult.RETRY  # DEADLINE_EXCEEDED
    finally:
        exporter.shutdown()


def test_grpc_partial_success_is_logged_and_reported(
    receiver: OtlpReceiver, grpc_exporter: OtlpGrpcExporter, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.set_partial_success(2, "attribute too long")
    with caplog.at_level(logging.WARNING, logger="otelbridge.export.otlp"):
        assert grpc_exporter.export(make_request(3), 3) is ExportResult.SUCCESS
    assert grpc_exporter.last_feedback().rejected_spans == 2
    assert "attribute too long" in caplog.text
    # The next successful export has no feedback left over.
    receiver.set_partial_success(0)
    assert grpc_exporter.export(make_request(3), 3) is ExportResult.SUCCESS
    assert grpc_exporter.last_feedback() == ExportFeedback()


def test_grpc_export_after_shutdown_fails_without_raising(
    grpc_exporter: OtlpGrpcExporter,
) -> None:
    grpc_exporter.shutdown()
    grpc_exporter.shutdown()
    assert grpc_exporter.export(make_request(), 3) is ExportResult.FAILURE


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def test_grpc_tls_with_a_ca_certificate_file(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    with OtlpReceiver(tls=(str(cert), str(key))) as receiver:
        assert receiver.endpoint.startswith("https://")
        trusting = OtlpGrpcExporter(receiver.endpoint, certificate=str(cert), timeout_s=5)
        untrusting = OtlpGrpcExporter(receiver.endpoint, timeout_s=5)  # system CAs only
        try:
            assert trusting.export(make_request(1), 1) is ExportResult.SUCCESS
            assert untrusting.export(make_request(1), 1) is ExportResult.RETRY  # UNAVAILABLE
        finally:
            trusting.shutdown()
            untrusting.shutdown()
        assert len(receiver.spans()) == 1


def test_grpc_endpoint_without_scheme_uses_insecure_flag(receiver: OtlpReceiver) -> None:
    exporter = OtlpGrpcExporter(f"127.0.0.1:{receiver.port}", insecure=True)
    try:
        assert exporter.export(make_request(1), 1) is ExportResult.SUCCESS
    finally:
        exporter.shutdown()


def test_grpc_bad_endpoint_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="scheme"):
        OtlpGrpcExporter("ftp://collector:4317")


# -- HTTP ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def http_receiver_module() -> Iterator[OtlpHttpReceiver]:
    with OtlpHttpReceiver() as receiver:
        yield receiver


@pytest.fixture
def http_receiver(http_receiver_module: OtlpHttpReceiver) -> Iterator[OtlpHttpReceiver]:
    http_receiver_module.start()
    http_receiver_module.clear()
    yield http_receiver_module
    http_receiver_module.set_failure(None)
    http_receiver_module.set_delay(0)
    http_receiver_module.set_partial_success(0)


@pytest.mark.parametrize("protocol", ["http/protobuf", "http/json"])
@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_http_success_in_both_encodings(
    http_receiver: OtlpHttpReceiver, protocol: str, compression: str
) -> None:
    exporter = OtlpHttpExporter(
        http_receiver.endpoint,
        protocol="http/json" if protocol == "http/json" else "http/protobuf",
        compression="gzip" if compression == "gzip" else "none",
        headers={"X-Tenant": "blue"},
    )
    try:
        assert exporter.export(make_request(3), 3) is ExportResult.SUCCESS
        assert exporter.export(make_request(2), 2) is ExportResult.SUCCESS  # kept-alive
    finally:
        exporter.shutdown()
    received = http_receiver.requests()
    assert [r.request for r in received] == [make_request(3), make_request(2)]
    first = received[0]
    assert first.transport == protocol
    assert first.headers["x-tenant"] == "blue"
    expected_type = "application/json" if protocol == "http/json" else "application/x-protobuf"
    assert first.headers["content-type"] == expected_type
    assert first.headers.get("content-encoding") == ("gzip" if compression == "gzip" else None)


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_http_retryable_statuses_give_retry(http_receiver: OtlpHttpReceiver, status: int) -> None:
    http_receiver.set_failure(status, retry_after_s=3)
    exporter = OtlpHttpExporter(http_receiver.endpoint)
    try:
        assert exporter.export(make_request(), 3) is ExportResult.RETRY
        assert exporter.last_feedback().retry_after_s == 3.0
    finally:
        exporter.shutdown()


@pytest.mark.parametrize("status", [400, 401, 403, 413, 500])
def test_http_other_statuses_give_failure(
    http_receiver: OtlpHttpReceiver, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    http_receiver.set_failure(status, "bad request body")
    exporter = OtlpHttpExporter(http_receiver.endpoint)
    try:
        assert exporter.export(make_request(), 3) is ExportResult.FAILURE
    finally:
        exporter.shutdown()
    # the google.rpc.Status message, decoded, for the delivery engine's log line
    assert exporter.last_feedback().error == f"HTTP {status} bad request body"


def test_http_wrong_path_gives_failure(http_receiver: OtlpHttpReceiver) -> None:
    exporter = OtlpHttpExporter(http_receiver.base_url + "/v1/nothing")
    try:
        assert exporter.export(make_request(), 3) is ExportResult.FAILURE
    finally:
        exporter.shutdown()


@pytest.mark.parametrize("protocol", ["http/protobuf", "http/json"])
def test_http_partial_success_is_reported(http_receiver: OtlpHttpReceiver, protocol: str) -> None:
    http_receiver.set_partial_success(1, "one too many")
    exporter = OtlpHttpExporter(
        http_receiver.endpoint,
        protocol="http/json" if protocol == "http/json" else "http/protobuf",
    )
    try:
        assert exporter.export(make_request(3), 3) is ExportResult.SUCCESS
        assert exporter.last_feedback().rejected_spans == 1
    finally:
        exporter.shutdown()


def test_http_receiver_down_gives_retry_and_a_restart_is_picked_up(
    http_receiver: OtlpHttpReceiver,
) -> None:
    exporter = OtlpHttpExporter(http_receiver.endpoint)
    try:
        assert exporter.export(make_request(1), 1) is ExportResult.SUCCESS
        http_receiver.stop()
        assert exporter.export(make_request(1), 1) is ExportResult.RETRY
        http_receiver.start()
        assert exporter.export(make_request(1), 1) is ExportResult.SUCCESS
    finally:
        exporter.shutdown()


def test_http_closed_keepalive_connection_is_not_a_failed_export(
    http_receiver: OtlpHttpReceiver,
) -> None:
    exporter = OtlpHttpExporter(http_receiver.endpoint)
    try:
        assert exporter.export(make_request(1), 1) is ExportResult.SUCCESS
        # A receiver restart closes the kept-alive connection under the exporter.
        http_receiver.stop()
        http_receiver.start()
        assert exporter.export(make_request(1), 1) is ExportResult.SUCCESS
    finally:
        exporter.shutdown()
    assert len(http_receiver.spans()) == 2


def test_http_timeout_gives_retry(http_receiver: OtlpHttpReceiver) -> None:
    http_receiver.set_delay(2.0)
    exporter = OtlpHttpExporter(http_receiver.endpoint, timeout_s=0.2)
    try:
        assert exporter.export(make_request(1), 1) is ExportResult.RETRY
    finally:
        exporter.shutdown()


def test_https_with_a_ca_certificate_file(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    with OtlpHttpReceiver(tls=(str(cert), str(key))) as receiver:
        assert receiver.endpoint.startswith("https://")
        trusting = OtlpHttpExporter(receiver.endpoint, certificate=str(cert))
        untrusting = OtlpHttpExporter(receiver.endpoint)  # system CAs only
        try:
            assert trusting.export(make_request(1), 1) is ExportResult.SUCCESS
            assert untrusting.export(make_request(1), 1) is ExportResult.RETRY
        finally:
            trusting.shutdown()
            untrusting.shutdown()
        assert len(receiver.spans()) == 1


def test_http_unsendable_header_is_a_failure_not_an_exception(
    http_receiver: OtlpHttpReceiver,
) -> None:
    exporter = OtlpHttpExporter(http_receiver.endpoint, headers={"x-bad": "line\nbreak"})
    try:
        assert exporter.export(make_request(1), 1) is ExportResult.FAILURE
    finally:
        exporter.shutdown()


def test_http_endpoint_must_be_a_url() -> None:
    with pytest.raises(ConfigError):
        OtlpHttpExporter("localhost:4318")


# -- configuration from the environment -------------------------------------------------------
P = "OTEL_EXPORTER_OTLP_"


def test_from_env_defaults() -> None:
    config = OtlpConfig.from_env({})
    assert config == OtlpConfig(
        endpoint="http://localhost:4317",
        protocol="grpc",
        headers={},
        timeout_s=10.0,
        insecure=False,
        compression="none",
        certificate=None,
    )
    http = OtlpConfig.from_env({P + "PROTOCOL": "http/protobuf"})
    assert http.endpoint == "http://localhost:4318/v1/traces"


@pytest.mark.parametrize(
    ("env", "endpoint"),
    [
        ({P + "ENDPOINT": "http://col:4317"}, "http://col:4317"),
        ({P + "ENDPOINT": "col:4317"}, "col:4317"),
        ({P + "PROTOCOL": "http/protobuf", P + "ENDPOINT": "http://col:4318"}, "http://col:4318/v1/traces"),
        ({P + "PROTOCOL": "http/json", P + "ENDPOINT": "https://col/otlp/"}, "https://col/otlp/v1/traces"),
        ({P + "PROTOCOL": "http/protobuf", P + "TRACES_ENDPOINT": "http://col:4318/custom"}, "http://col:4318/custom"),
        (
            {
                P + "PROTOCOL": "http/protobuf",
                P + "ENDPOINT": "http://generic:4318",
                P + "TRACES_ENDPOINT": "http://specific:4318/v1/traces",
            },
            "http://specific:4318/v1/traces",
        ),
        ({P + "ENDPOINT": "   "}, "http://localhost:4317"),  # empty counts as unset
    ],
)  # fmt: skip
def test_from_env_endpoint(env: dict[str, str], endpoint: str) -> None:
    assert OtlpConfig.from_env(env).endpoint == endpoint


def test_from_env_reads_every_setting_and_traces_variables_win() -> None:
    config = OtlpConfig.from_env(
        {
            P + "PROTOCOL": "grpc",
            P + "TRACES_PROTOCOL": "HTTP/JSON",
            P + "HEADERS": "generic=1",
            P + "TRACES_HEADERS": "api-key=a%20b%3Dc, x-team = runtime ,",
            P + "TIMEOUT": "1000",
            P + "TRACES_TIMEOUT": "2500",
            P + "INSECURE": "false",
            P + "TRACES_INSECURE": "TRUE",
            P + "COMPRESSION": "none",
            P + "TRACES_COMPRESSION": "gzip",
        }
    )
    assert config.protocol == "http/json"
    assert config.endpoint == "http://localhost:4318/v1/traces"
    assert config.headers == {"api-key": "a b=c", "x-team": "runtime"}
    assert config.timeout_s == 2.5
    assert config.insecure is True
    assert config.compression == "gzip"
    assert config.validate() == []


def test_from_env_certificate(tmp_path: Path) -> None:
    cert = tmp_path / "ca.pem"
    cert.write_text("not checked here")
    assert OtlpConfig.from_env({P + "CERTIFICATE": str(cert)}).certificate == str(cert)
    config = OtlpConfig.from_env({P + "TRACES_CERTIFICATE": str(cert), P + "CERTIFICATE": "/x"})
    assert config.certificate == str(cert)


def test_from_env_lists_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        OtlpConfig.from_env(
            {
                P + "TRACES_PROTOCOL": "http/thrift",
                P + "ENDPOINT": "http://col:notaport",
                P + "HEADERS": "novalue,=empty",
                P + "TIMEOUT": "ten",
                P + "TRACES_INSECURE": "yes",
                P + "COMPRESSION": "zstd",
                P + "CERTIFICATE": "/does/not/exist.pem",
            }
        )
    problems = info.value.problems
    assert len(problems) == 8, problems
    for variable in (
        P + "TRACES_PROTOCOL",
        P + "ENDPOINT",
        P + "TIMEOUT",
        P + "TRACES_INSECURE",
        P + "COMPRESSION",
        P + "CERTIFICATE",
    ):
        assert any(p.startswith(variable + ":") for p in problems), (variable, problems)
    assert sum(p.startswith(P + "HEADERS:") for p in problems) == 2
    assert "http/thrift" in str(info.value)


@pytest.mark.parametrize("value", ["0", "-5", "nan"])
def test_from_env_rejects_non_positive_timeouts(value: str) -> None:
    with pytest.raises(ConfigError, match=P + "TIMEOUT"):
        OtlpConfig.from_env({P + "TIMEOUT": value})


def test_from_env_http_endpoint_needs_a_scheme() -> None:
    with pytest.raises(ConfigError, match="not an http"):
        OtlpConfig.from_env({P + "PROTOCOL": "http/protobuf", P + "ENDPOINT": "col:4318"})


def test_validate_lists_every_problem() -> None:
    config = OtlpConfig(endpoint="nope://", timeout_s=0, certificate="/missing.pem")
    problems = config.validate()
    assert [p.split(":")[0] for p in problems] == ["endpoint", "timeout_s", "certificate"]


def test_config_from_env_drives_a_real_export(
    receiver: OtlpReceiver, http_receiver: OtlpHttpReceiver
) -> None:
    grpc_exporter = create_exporter(
        OtlpConfig.from_env({P + "ENDPOINT": receiver.endpoint, P + "HEADERS": "k=v"})
    )
    http_exporter = create_exporter(
        OtlpConfig.from_env(
            {
                P + "PROTOCOL": "http/json",
                P + "ENDPOINT": http_receiver.base_url,
                P + "TIMEOUT": "3000",
            }
        )
    )
    try:
        assert isinstance(grpc_exporter, OtlpGrpcExporter)
        assert isinstance(http_exporter, OtlpHttpExporter)
        assert grpc_exporter.export(make_request(1), 1) is ExportResult.SUCCESS
        assert http_exporter.export(make_request(1), 1) is ExportResult.SUCCESS
    finally:
        grpc_exporter.shutdown()
        http_exporter.shutdown()
    assert receiver.requests()[0].headers["k"] == "v"
    assert http_receiver.requests()[0].transport == "http/json"
