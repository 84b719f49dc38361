"""OTLP/JSON encoding and the local exporters (jsonl, console, none)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from otelbridge.core.errors import DecodeError
from otelbridge.export import ExportResult
from otelbridge.export.files import (
    ConsoleExporter,
    JsonlExporter,
    NoneExporter,
    format_span,
    from_otlp_json,
    read_jsonl,
    to_otlp_json,
)

TRACE_ID = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
SPAN_ID = bytes.fromhex("00f067aa0ba902b7")
PARENT_ID = bytes.fromhex("b7ad6b7169203331")
LINK_TRACE_ID = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
LINK_SPAN_ID = bytes.fromhex("53995c3f42cd8ad8")


def kv(key: str, **value: object) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(**value))  # type: ignore[arg-type]


def sample_request() -> ExportTraceServiceRequest:
    span = Span(
        trace_id=TRACE_ID,
        span_id=SPAN_ID,
        parent_span_id=PARENT_ID,
        name="container.startup",
        kind=Span.SPAN_KIND_INTERNAL,
        start_time_unix_nano=1_700_000_000_123_456_789,
        end_time_unix_nano=1_700_000_001_623_456_789,
        attributes=[
            kv("container.id", string_value="abc123"),
            kv("process.pid", int_value=4242),
            kv("otelbridge.partial", bool_value=True),
            kv(
                "container.image.tags",
                array_value=ArrayValue(values=[AnyValue(string_value="1.2")]),
            ),
        ],
        links=[Span.Link(trace_id=LINK_TRACE_ID, span_id=LINK_SPAN_ID)],
        status=Status(code=Status.STATUS_CODE_ERROR, message="exited"),
        events=[Span.Event(time_unix_nano=1_700_000_001_000_000_000, name="container.oom")],
    )
    root = Span(trace_id=TRACE_ID, span_id=PARENT_ID, name="pod.startup")
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(attributes=[kv("service.name", string_value="containerd")]),
                scope_spans=[
                    ScopeSpans(
                        scope=InstrumentationScope(name="otelbridge", version="0.1.0"),
                        spans=[span, root],
                    )
                ],
            )
        ]
    )


def test_otlp_json_uses_hex_ids_camel_case_int_enums_and_string_int64() -> None:
    obj = to_otlp_json(sample_request())
    span = obj["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert span["traceId"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert span["spanId"] == "00f067aa0ba902b7"
    assert span["parentSpanId"] == "b7ad6b7169203331"
    assert span["links"] == [
        {"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "53995c3f42cd8ad8"}
    ]
    assert span["kind"] == 1
    assert span["status"] == {"code": 2, "message": "exited"}
    assert span["startTimeUnixNano"] == "1700000000123456789"
    assert span["events"][0]["timeUnixNano"] == "1700000001000000000"
    assert {"key": "process.pid", "value": {"intValue": "4242"}} in span["attributes"]
    root = obj["resourceSpans"][0]["scopeSpans"][0]["spans"][1]
    assert "parentSpanId" not in root  # a root span has none (default values are omitted)
    # It is plain JSON.
    json.dumps(obj)


def test_otlp_json_round_trip() -> None:
    request = sample_request()
    assert from_otlp_json(to_otlp_json(request)) == request
    # ...also through text, as a file would carry it.
    assert from_otlp_json(json.loads(json.dumps(to_otlp_json(request)))) == request


def test_from_otlp_json_accepts_snake_case_and_ignores_unknown_fields() -> None:
    obj = {
        "resource_spans": [
            {
                "scope_spans": [
                    {
                        "spans": [
                            {
                                "trace_id": TRACE_ID.hex(),
                                "span_id": SPAN_ID.hex(),
                                "parent_span_id": PARENT_ID.hex(),
                                "name": "x",
                                "start_time_unix_nano": 5,
                                "futureField": True,
                            }
                        ]
                    }
                ]
            }
        ]
    }
    span = from_otlp_json(obj).resource_spans[0].scope_spans[0].spans[0]
    assert (span.trace_id, span.span_id, span.parent_span_id) == (TRACE_ID, SPAN_ID, PARENT_ID)
    assert span.start_time_unix_nano == 5


def test_from_otlp_json_does_not_modify_its_argument() -> None:
    obj = to_otlp_json(sample_request())
    before = json.dumps(obj, sort_keys=True)
    from_otlp_json(obj)
    assert json.dumps(obj, sort_keys=True) == before


@pytest.mark.parametrize(
    "obj",
    [
        {"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "not-hex"}]}]}]},
        {"resourceSpans": [{"scopeSpans": [{"spans": [{"name": 5}]}]}]},
        {"resourceSpans": "nope"},
    ],
)
def test_from_otlp_json_rejects_bad_input_with_decode_error(obj: dict[str, object]) -> None:
    with pytest.raises(DecodeError):
        from_otlp_json(obj)


def test_jsonl_exporter_appends_one_request_per_line(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    path.write_text("")  # appending to an existing file keeps its lines
    exporter = JsonlExporter(path)
    first, second = sample_request(), ExportTraceServiceRequest()
    second.CopyFrom(first)
    second.resource_spans[0].scope_spans[0].spans[0].name = "other"
    assert exporter.export(first, 2) is ExportResult.SUCCESS
    # Flushed after each line: readable while the exporter is still open.
    assert path.read_text().count("\n") == 1
    assert exporter.export(second, 2) is ExportResult.SUCCESS
    exporter.shutdown()
    exporter.shutdown()

    lines = path.read_text().splitlines()
    assert len(lines) == 2
    assert json.loads(lines[0])["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"] == (
        TRACE_ID.hex()
    )
    with path.open() as f:
        assert list(read_jsonl(f)) == [first, second]

    # Reopening appends.
    again = JsonlExporter(str(path))
    again.export(first, 2)
    again.shutdown()
    assert len(path.read_text().splitlines()) == 3


def test_jsonl_exporter_after_shutdown_fails(tmp_path: Path) -> None:
    exporter = JsonlExporter(tmp_path / "x.jsonl")
    exporter.shutdown()
    assert exporter.export(sample_request(), 2) is ExportResult.FAILURE


def test_jsonl_exporter_to_a_stream_and_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    stream = io.StringIO()
    exporter = JsonlExporter(stream)
    exporter.export(sample_request(), 2)
    exporter.shutdown()
    assert not stream.closed  # not ours to close
    assert from_otlp_json(json.loads(stream.getvalue())) == sample_request()

    for target in ("-", None):
        stdout_exporter = JsonlExporter(target)
        stdout_exporter.export(sample_request(), 2)
        stdout_exporter.shutdown()
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2
    assert from_otlp_json(json.loads(out[0])) == sample_request()


def test_jsonl_write_error_is_a_failure_not_an_exception() -> None:
    stream = io.StringIO()
    exporter = JsonlExporter(stream)
    stream.close()
    assert exporter.export(sample_request(), 2) is ExportResult.FAILURE


def test_read_jsonl_names_the_bad_line() -> None:
    good = json.dumps(to_otlp_json(sample_request()))
    with pytest.raises(DecodeError, match="line 3"):
        list(read_jsonl(io.StringIO(good + "\n\n{not json\n")))


def test_console_exporter_prints_one_line_per_span() -> None:
    stream = io.StringIO()
    exporter = ConsoleExporter(stream, max_attributes=3)
    assert exporter.export(sample_request(), 2) is ExportResult.SUCCESS
    exporter.shutdown()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0] == (
        "trace=4bf92f3577b34da6a3ce929d0e0e4736 span=00f067aa0ba902b7 parent=b7ad6b7169203331 "
        "name=container.startup duration=1500.000ms status=ERROR(exited) "
        "container.id=abc123 process.pid=4242 otelbridge.partial=true (+1 attributes)"
    )
    assert "parent=- name=pod.startup duration=0.000ms status=UNSET" in lines[1]


def test_format_span_quotes_strings_with_spaces_and_shows_arrays() -> None:
    span = Span(
        name="x",
        attributes=[
            kv("a", string_value="two words"),
            kv("b", array_value=ArrayValue(values=[AnyValue(int_value=1), AnyValue(int_value=2)])),
        ],
    )
    assert format_span(span).endswith('a="two words" b=[1,2]')


def test_none_exporter_accepts_everything() -> None:
    exporter = NoneExporter()
    assert exporter.export(sample_request(), 2) is ExportResult.SUCCESS
    exporter.shutdown()


def test_the_console_exporter_shows_every_attribute_by_default() -> None:
    """A new user could not see what explained a startup: `(+9 attributes)`."""
    stream = io.StringIO()
    ConsoleExporter(stream).export(sample_request(), 2)
    first = stream.getvalue().splitlines()[0]
    assert "attributes)" not in first
    assert first.count("=") >= 10  # ids, name, duration, status and all four attributes
