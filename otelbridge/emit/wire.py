"""Emit: the OTLP wire encoding of the spans built for every startup and reclaim.

Building a ``Span`` message field by field costs a Python-to-C crossing per field and a
copy per attribute; encoding the same span as protobuf bytes in Python and parsing them
once (``Span.FromString``) costs about half as much, and an attribute that repeats
across startups (namespace, runtime, outcome, image) is encoded once and reused as
bytes. The result is an ordinary ``Span``: every consumer (the sink, the SLA tracker, the
runtime phases) sees the same message as before.

Only what those spans use is encoded here: IDs, trace state, flags, name, kind
(internal), times and attributes. A status, events or links are set on the parsed message
by the caller (they are rare). Field numbers are those of
``opentelemetry/proto/trace/v1/trace.proto`` and ``common/v1/common.proto``.

Text is encoded as UTF-8; a character UTF-8 cannot carry (a lone surrogate from a
hostile label) becomes ``?`` rather than failing the span. Pure functions; the caches
are touched by the event thread only.
"""

from __future__ import annotations

from struct import Struct

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otelbridge.core import semconv
from otelbridge.core.model import AttrValue

_FIXED64 = Struct("<Q").pack
_FIXED32 = Struct("<I").pack
_from_bytes = Span.FromString
_SHORT = tuple(bytes((n,)) for n in range(128))  # varints of one byte

# tags: (field number << 3) | wire type (0 varint, 1 fixed64, 2 length-delimited, 5 fixed32)
_TRACE_ID = b"\x0a"  # Span.trace_id = 1
_SPAN_ID = b"\x12"  # Span.span_id = 2
_TRACE_STATE = b"\x1a"  # Span.trace_state = 3
_PARENT_SPAN_ID = b"\x22"  # Span.parent_span_id = 4
_NAME = b"\x2a"  # Span.name = 5
_KIND_INTERNAL = b"\x30\x01"  # Span.kind = 6, SPAN_KIND_INTERNAL
_START = b"\x39"  # Span.start_time_unix_nano = 7
_END = b"\x41"  # Span.end_time_unix_nano = 8
_ATTRIBUTE = b"\x4a"  # Span.attributes = 9
_FLAGS = b"\x85\x01"  # Span.flags = 16
_KEY = b"\x0a"  # KeyValue.key = 1
_VALUE = b"\x12"  # KeyValue.value = 2
_STRING_VALUE = b"\x0a"  # AnyValue.string_value = 1
_TRUE = b"\x10\x01"  # AnyValue.bool_value = 2
_FALSE = b"\x10\x00"
_INT_VALUE = b"\x18"  # AnyValue.int_value = 3


def _length(n: int) -> bytes:
    """``n`` as a varint (a length prefix)."""
    if n < 128:
        return _SHORT[n]
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _text(value: str) -> bytes:
    return value.encode("utf-8", "replace")


def any_value(value: AttrValue) -> AnyValue:
    """One attribute value as an ``AnyValue``. ``bool`` is tested before ``int`` (it is
    one); a sequence becomes an array of strings."""
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    return AnyValue(array_value=ArrayValue(values=[AnyValue(string_value=str(v)) for v in value]))


def _varint(n: int) -> bytes:
    """An ``int64`` as protobuf writes it (a negative one as its 64-bit complement)."""
    if n < 0:
        n += 1 << 64
    return _length(n)


def _value(value: AttrValue) -> bytes:
    """An ``AnyValue``, serialized. Every member of its oneof is written, zero included."""
    kind = type(value)
    if kind is str:
        v = _text(value)  # type: ignore[arg-type]
        return _STRING_VALUE + _length(len(v)) + v
    if kind is bool:
        return _TRUE if value else _FALSE
    if kind is int and -(1 << 63) <= value < (1 << 63):  # type: ignore[operator]
        return _INT_VALUE + _varint(value)  # type: ignore[arg-type]
    return any_value(value).SerializeToString()  # floats, sequences, subclasses: rare


_CACHE_LIMIT = 4096
_key_heads: dict[str, bytes] = {}


def attribute(key: str, value: AttrValue) -> bytes:
    """One ``Span.attributes`` entry (its tag included): ``KeyValue{key, value}``."""
    head = _key_heads.get(key)
    if head is None:
        k = _text(key)
        if len(_key_heads) >= _CACHE_LIMIT:
            _key_heads.clear()
        head = _key_heads[key] = _KEY + _length(len(k)) + k + _VALUE
    encoded = _value(value)
    body = head + _length(len(encoded)) + encoded
    return _ATTRIBUTE + _length(len(body)) + body


#: Attributes whose values are unique per container: never cached.
_PER_CONTAINER = frozenset(
    {
        semconv.CONTAINER_ID,
        semconv.CONTAINER_NAME,
        semconv.PROCESS_PID,
        semconv.PROCESS_EXIT_CODE,
        semconv.OB_GC_SNAPSHOT_KEY,
    }
)
_attr_cache: dict[tuple[object, ...], bytes] = {}


def _cache_key(key: str, value: AttrValue) -> tuple[object, ...] | None:
    """What a repeating attribute is cached under; ``None``: not cached. The value's
    type is part of it: ``(key, True)`` and ``(key, 1)`` hash alike."""
    if key in _PER_CONTAINER:
        return None
    kind = type(value)
    if kind is str:
        return (key, value)
    if kind is bool or kind is int or kind is float:
        return (key, kind, value)
    if kind is list or kind is tuple:
        return (key, tuple, *value)  # type: ignore[misc]  # image tags: strings
    return None


def cached_attribute(key: str, value: AttrValue) -> bytes:
    """:func:`attribute`, reused for values that repeat across startups. The cache is
    bounded; a full cache is emptied rather than evicted piecemeal."""
    cache_key = _cache_key(key, value)
    if cache_key is None:
        return attribute(key, value)
    found = _attr_cache.get(cache_key)
    if found is None:
        if len(_attr_cache) >= _CACHE_LIMIT:
            _attr_cache.clear()
        found = _attr_cache[cache_key] = attribute(key, value)
    return found


def attributes(pairs: list[tuple[str, AttrValue]]) -> bytes:
    """The ``Span.attributes`` entries of ``pairs``, in order: :func:`cached_attribute`
    of each, its common case (a string value) inlined, as this runs for every span."""
    cache = _attr_cache
    per_container = _PER_CONTAINER
    out = []
    for pair in pairs:
        found = cache.get(pair) if type(pair[1]) is str else None
        if found is None:
            key, value = pair
            found = attribute(key, value) if key in per_container else cached_attribute(key, value)
        out.append(found)
    return b"".join(out)


def trace_fields(trace_id: bytes, trace_state: str, flags: int) -> bytes:
    """The fields spans of one trace with the same flags share, serialized: the trace
    id, the trace state and the flags (each left out when empty, as protobuf does)."""
    parts = [
        _TRACE_ID + _length(len(trace_id)) + trace_id if trace_id else b"",
        _TRACE_STATE + _length(len(state := _text(trace_state))) + state if trace_state else b"",
        _FLAGS + _FIXED32(flags) if flags else b"",
    ]
    return b"".join(parts)


_names: dict[str, bytes] = {}


def span(
    shared: bytes,
    *,
    span_id: bytes,
    parent_span_id: bytes,
    name: str,
    start_ns: int,
    end_ns: int,
    attributes: bytes,
) -> bytes:
    """A ``Span`` of kind internal, serialized: ``shared`` from :func:`trace_fields`,
    ``attributes`` from :func:`attributes`. Empty IDs and zero times are left out."""
    encoded_name = _names.get(name)
    if encoded_name is None:
        n = _text(name)
        if len(_names) >= _CACHE_LIMIT:
            _names.clear()
        encoded_name = _names[name] = _NAME + _length(len(n)) + n
    parts = [
        shared,
        _SPAN_ID + _length(len(span_id)) + span_id if span_id else b"",
        _PARENT_SPAN_ID + _length(len(parent_span_id)) + parent_span_id if parent_span_id else b"",
        encoded_name,
        _KIND_INTERNAL,
        _START + _FIXED64(start_ns) if start_ns else b"",
        _END + _FIXED64(end_ns) if end_ns else b"",
        attributes,
    ]
    return b"".join(parts)


def parse(encoded: list[bytes]) -> list[Span]:
    """Serialized spans as messages. (One parse of them all as a ``ScopeSpans`` costs
    more: listing its spans builds a wrapper per span.)"""
    return [_from_bytes(s) for s in encoded]


__all__ = [
    "any_value",
    "attribute",
    "attributes",
    "cached_attribute",
    "parse",
    "span",
    "trace_fields",
]
