"""The hand-written OTLP encoding (otelbridge.emit.wire) against protobuf's own.

Every span and attribute the encoder writes must parse to the message protobuf builds
from the same values, so the spans consumers see are the same whichever way they were
built.
"""

from __future__ import annotations

import pytest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otelbridge.core.model import AttrValue
from otelbridge.emit import wire
from otelbridge.emit.spans import kv

VALUES: list[AttrValue] = [
    "",
    "web",
    "é ü 漢字 🚀",
    "x" * 127,
    "x" * 128,
    "y" * 20_000,  # a three-byte length prefix
    True,
    False,
    0,
    1,
    127,
    128,
    4242,
    -1,
    -(1 << 63),
    (1 << 63) - 1,
    0.0,
    2.5,
    -1e300,
    [],
    ["1.4.2"],
    ["a", "b", "c"],
    ("x", "y"),
]


def _kv_of(entry: bytes) -> KeyValue:
    """The KeyValue of one ``Span.attributes`` entry, through a span."""
    span = Span.FromString(entry)
    assert len(span.attributes) == 1
    return span.attributes[0]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_an_attribute_parses_to_what_protobuf_builds(value: AttrValue) -> None:
    assert _kv_of(wire.attribute("some.key", value)) == kv("some.key", value)
    assert _kv_of(wire.cached_attribute("some.key", value)) == kv("some.key", value)


def test_an_attribute_with_a_long_key() -> None:
    key = "k" * 300
    assert _kv_of(wire.attribute(key, "v")) == kv(key, "v")


def test_text_utf8_cannot_carry_becomes_a_question_mark_instead_of_failing() -> None:
    # a lone surrogate (from a hostile label decoded as JSON) has no UTF-8 form
    assert _kv_of(wire.attribute("k", "a\ud800b")).value.string_value == "a?b"
    assert _kv_of(wire.attribute("k\udfff", "v")).key == "k?"


def test_the_cache_tells_a_bool_from_an_int_and_a_str() -> None:
    kinds = [
        _kv_of(wire.cached_attribute("same", v)).value.WhichOneof("value")
        for v in (True, 1, "1", 1.0)
    ]
    assert kinds == ["bool_value", "int_value", "string_value", "double_value"]


def test_the_caches_are_bounded() -> None:
    for i in range(wire._CACHE_LIMIT + 10):
        wire.cached_attribute("namespace", f"ns-{i}")
        wire.attribute(f"key-{i}", "v")
    assert len(wire._attr_cache) <= wire._CACHE_LIMIT
    assert len(wire._key_heads) <= wire._CACHE_LIMIT


def test_per_container_values_are_not_cached() -> None:
    wire._attr_cache.clear()
    wire.cached_attribute("container.id", "abc")
    assert not wire._attr_cache


@pytest.mark.parametrize(
    ("parent", "state", "flags"),
    [
        (b"\x01" * 8, "vendor=1,other=x", 0x301),
        (b"", "", 0x101),
        (b"", "", 0),
    ],
)
def test_a_span_parses_to_what_protobuf_builds(parent: bytes, state: str, flags: int) -> None:
    trace_id, span_id = bytes(range(1, 17)), bytes(range(20, 28))
    attrs = [("container.id", "c1"), ("otelbridge.partial", False), ("process.pid", 7)]
    encoded = wire.span(
        wire.trace_fields(trace_id, state, flags),
        span_id=span_id,
        parent_span_id=parent,
        name="container.startup",
        start_ns=1_700_000_000_000_000_000,
        end_ns=(1 << 64) - 1,
        attributes=wire.attributes(attrs),
    )
    expected = Span(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=parent,
        trace_state=state,
        flags=flags,
        name="container.startup",
        kind=Span.SpanKind.SPAN_KIND_INTERNAL,
        start_time_unix_nano=1_700_000_000_000_000_000,
        end_time_unix_nano=(1 << 64) - 1,
        attributes=[kv(k, v) for k, v in attrs],
    )
    (parsed,) = wire.parse([encoded])
    assert parsed == expected
    # the same bytes protobuf writes: nothing extra, nothing out of place that matters
    assert Span.FromString(expected.SerializeToString()) == parsed


def test_zero_times_and_empty_ids_are_left_out_as_protobuf_does() -> None:
    encoded = wire.span(
        b"", span_id=b"", parent_span_id=b"", name="x", start_ns=0, end_ns=0, attributes=b""
    )
    assert wire.parse([encoded])[0] == Span(name="x", kind=Span.SpanKind.SPAN_KIND_INTERNAL)
