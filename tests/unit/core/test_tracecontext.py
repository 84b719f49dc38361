"""W3C Trace Context parsing: traceparent, tracestate, carrier resolution.

The vectors below are built from the rules of W3C Trace Context Level 1/2 (not copied from
the specification's examples); the property tests compare the parser with a deliberately
different formulation of the same rules (one big regex per value).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otelbridge.core import tracecontext as tc
from otelbridge.core.tracecontext import (
    DEFAULT_KEYS,
    MAX_TRACEPARENT_LENGTH,
    MAX_TRACESTATE_LENGTH,
    NOT_FOUND,
    TRACEPARENT_INVALID_REASONS,
    TRACESTATE_INVALID_REASONS,
    Invalid,
    Resolution,
    TraceContext,
    parse_traceparent,
    parse_tracestate,
    resolve,
)

TID = "5d3c9e0b7a1f4e2d8c6b0a9f1e2d3c4b"
PID = "a1b2c3d4e5f60718"
TID2 = "00000000000000000000000000000abc"
PID2 = "0000000000000001"


def tp(version: str = "00", tid: str = TID, pid: str = PID, flags: str = "01") -> str:
    return f"{version}-{tid}-{pid}-{flags}"


VALID = tp()
VALID2 = tp(tid=TID2, pid=PID2, flags="00")


def ok(value: str) -> TraceContext:
    result = parse_traceparent(value)
    assert isinstance(result, TraceContext), result
    return result


def reason(value: str) -> str:
    result = parse_traceparent(value)
    assert isinstance(result, Invalid), result
    return result.reason


def replace_at(s: str, index: int, char: str) -> str:
    return s[:index] + char + s[index + 1 :]


# -- traceparent: valid ---------------------------------------------------------------------


def test_valid_version_00_sampled() -> None:
    ctx = ok(VALID)
    assert ctx.trace_id == bytes.fromhex(TID)
    assert ctx.span_id == bytes.fromhex(PID)
    assert ctx.trace_flags == 1
    assert ctx.sampled is True
    assert ctx.version == 0
    assert ctx.trace_state == ""
    assert ctx.trace_id_hex == TID
    assert ctx.span_id_hex == PID


def test_valid_version_00_unsampled() -> None:
    ctx = ok(tp(flags="00"))
    assert ctx.trace_flags == 0
    assert ctx.sampled is False


@pytest.mark.parametrize(("flags", "value", "sampled"), [("02", 2, False), ("03", 3, True)])
def test_unknown_flag_bits_are_kept(flags: str, value: int, sampled: bool) -> None:
    ctx = ok(tp(flags=flags))
    assert ctx.trace_flags == value
    assert ctx.sampled is sampled
    assert ctx.to_traceparent() == tp(flags=flags)


def test_ff_flags_are_valid() -> None:
    assert ok(tp(flags="ff")).trace_flags == 0xFF


def test_ids_with_mostly_zeros_are_valid() -> None:
    ctx = ok(VALID2)
    assert ctx.trace_id_hex == TID2
    assert ctx.span_id_hex == PID2


@pytest.mark.parametrize("ows", [" ", "\t", " \t ", "\t\t"])
def test_surrounding_ows_is_stripped(ows: str) -> None:
    assert ok(ows + VALID + ows).to_traceparent() == VALID
    assert ok(ows + VALID).to_traceparent() == VALID
    assert ok(VALID + ows).to_traceparent() == VALID


def test_future_version_of_exactly_55_chars() -> None:
    ctx = ok(tp(version="01"))
    assert ctx.version == 1
    assert ctx.to_traceparent() == VALID


@pytest.mark.parametrize("suffix", ["-", "-x", "-whatever-comes-next", "-" + "z" * 100])
def test_future_version_longer_with_dash_after_flags(suffix: str) -> None:
    ctx = ok(tp(version="cc", flags="00") + suffix)
    assert ctx.version == 0xCC
    assert ctx.trace_flags == 0
    assert ctx.to_traceparent() == tp(flags="00")


def test_highest_allowed_version() -> None:
    assert ok(tp(version="fe")).version == 0xFE


def test_max_length_counts_the_raw_value() -> None:
    padding = MAX_TRACEPARENT_LENGTH - len(VALID)
    assert ok(" " * padding + VALID).to_traceparent() == VALID
    assert reason(" " * (padding + 1) + VALID) == "too_long"


# -- traceparent: invalid -------------------------------------------------------------------

INVALID_TRACEPARENTS: list[tuple[str, str, str]] = [
    # (id, value, reason)
    ("empty", "", "empty"),
    ("only-ows", " \t \t", "empty"),
    ("too-long", "0" * (MAX_TRACEPARENT_LENGTH + 1), "too_long"),
    ("future-version-too-long", tp(version="01") + "-" + "a" * 500, "too_long"),
    ("non-ascii-in-trace-id", replace_at(VALID, 10, "\u00e9"), "not_ascii"),
    ("fullwidth-digit", replace_at(VALID, 40, "\uff11"), "not_ascii"),
    ("nbsp-is-not-ows", "\u00a0" + VALID, "not_ascii"),
    ("emoji-suffix", VALID + "\U0001f600", "not_ascii"),
    ("version-one-char", "0", "version_format"),
    ("version-non-hex", tp(version="0g"), "version_format"),
    ("version-uppercase", tp(version="0A"), "version_format"),
    ("version-uppercase-ff", tp(version="FF"), "version_format"),
    ("version-dash", "-0" + VALID[2:], "version_format"),
    ("version-ff", tp(version="ff"), "version_forbidden"),
    ("version-ff-longer", tp(version="ff") + "-x", "version_forbidden"),
    ("v00-only-version", "00", "length"),
    ("v00-short-trace-id", tp(tid=TID[:-1]), "length"),
    ("v00-long-trace-id", tp(tid=TID + "a"), "length"),
    ("v00-short-parent-id", tp(pid=PID[:-1]), "length"),
    ("v00-long-parent-id", tp(pid=PID + "a"), "length"),
    ("v00-one-char-flags", tp(flags="1"), "length"),
    ("v00-three-char-flags", tp(flags="001"), "length"),
    ("v00-trailing-dash", VALID + "-", "length"),
    ("v00-trailing-fields", VALID + "-what-ever", "length"),
    ("v00-trailing-newline", VALID + "\n", "length"),
    ("v00-leading-newline", "\n" + VALID, "version_format"),
    ("v00-inner-space-added", VALID[:20] + " " + VALID[20:], "length"),
    ("future-short", tp(version="01", tid=TID[:-1]), "length"),
    ("future-no-dash-after-flags", tp(version="01") + "x", "future_version_format"),
    ("future-longer-flags", tp(version="01", flags="010"), "future_version_format"),
    ("dash-after-version-missing", "00_" + VALID[3:], "format"),
    ("dash-after-trace-id-missing", replace_at(VALID, 35, "."), "format"),
    ("dash-after-parent-id-missing", replace_at(VALID, 52, "_"), "format"),
    ("fields-shifted", f"00-{TID}a-{PID[:-1]}-01", "format"),
    ("trace-id-uppercase", tp(tid=TID.upper()), "trace_id_format"),
    ("trace-id-one-uppercase", tp(tid=replace_at(TID, 31, "B")), "trace_id_format"),
    ("trace-id-non-hex", tp(tid=replace_at(TID, 0, "g")), "trace_id_format"),
    ("trace-id-inner-space", tp(tid=replace_at(TID, 5, " ")), "trace_id_format"),
    ("trace-id-inner-tab", tp(tid=replace_at(TID, 5, "\t")), "trace_id_format"),
    ("trace-id-plus", tp(tid="+" + TID[1:]), "trace_id_format"),
    ("trace-id-zero", tp(tid="0" * 32), "trace_id_zero"),
    ("trace-id-zero-wins-over-later-errors", tp(tid="0" * 32, pid="X" * 16), "trace_id_zero"),
    ("parent-id-uppercase", tp(pid=PID.upper()), "parent_id_format"),
    ("parent-id-non-hex", tp(pid=replace_at(PID, 15, "z")), "parent_id_format"),
    ("parent-id-underscore", tp(pid="0_" + PID[2:]), "parent_id_format"),
    ("parent-id-zero", tp(pid="0" * 16), "parent_id_zero"),
    ("flags-uppercase", tp(flags="0A"), "flags_format"),
    ("flags-non-hex", tp(flags="0g"), "flags_format"),
    ("flags-space", tp(flags=" 1"), "flags_format"),
    ("flags-negative", tp(flags="-1"), "flags_format"),
    ("future-bad-flags", tp(version="01", flags="0x"), "flags_format"),
    ("future-bad-flags-longer", tp(version="7f", flags="G0") + "-more", "flags_format"),
]


@pytest.mark.parametrize(
    ("value", "expected"),
    [pytest.param(value, expected, id=case) for case, value, expected in INVALID_TRACEPARENTS],
)
def test_invalid_traceparent(value: str, expected: str) -> None:
    assert expected in TRACEPARENT_INVALID_REASONS
    assert reason(value) == expected


def test_every_traceparent_reason_has_a_vector() -> None:
    covered = {expected for _, _, expected in INVALID_TRACEPARENTS} | {"not_string"}
    assert covered == set(TRACEPARENT_INVALID_REASONS)


def test_non_string_is_a_result_not_an_exception() -> None:
    assert parse_traceparent(VALID.encode()) == Invalid("not_string")  # type: ignore[arg-type]
    assert parse_traceparent(None) == Invalid("not_string")  # type: ignore[arg-type]


# -- TraceContext ---------------------------------------------------------------------------


def test_to_traceparent_round_trip() -> None:
    for value in (VALID, VALID2, tp(flags="ff")):
        assert ok(value).to_traceparent() == value
        assert ok(ok(value).to_traceparent()) == ok(value)


def test_to_traceparent_always_emits_version_00() -> None:
    assert ok(tp(version="42") + "-extra").to_traceparent() == VALID


def test_trace_context_is_frozen() -> None:
    ctx = ok(VALID)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.trace_flags = 0  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"trace_id": b"\x01" * 15},
        {"trace_id": bytes(16)},
        {"trace_id": b"\x01" * 17},
        {"span_id": bytes(8)},
        {"span_id": b"\x01" * 7},
        {"trace_flags": 256},
        {"trace_flags": -1},
        {"version": 0xFF},
        {"version": -1},
    ],
)
def test_constructor_rejects_what_cannot_be_emitted(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {
        "trace_id": bytes.fromhex(TID),
        "span_id": bytes.fromhex(PID),
        "trace_flags": 1,
    }
    with pytest.raises(ValueError):
        TraceContext(**(base | kwargs))  # type: ignore[arg-type]


# -- tracestate -----------------------------------------------------------------------------


def members(n: int) -> list[str]:
    return [f"k{i}=v{i}" for i in range(n)]


VALID_TRACESTATES: list[tuple[str, str, str]] = [
    # (id, value, normalised)
    ("empty", "", ""),
    ("only-ows-and-commas", " ,\t, ,,", ""),
    ("simple", "vendor1=value1", "vendor1=value1"),
    ("two", "a=1,b=2", "a=1,b=2"),
    ("order-kept", "z=1,a=2", "z=1,a=2"),
    ("ows-around-members", " a=1 ,\t b=2\t", "a=1,b=2"),
    ("empty-members", ",a=1,,, ,b=2,", "a=1,b=2"),
    ("multi-tenant", "acme@sys=x", "acme@sys=x"),
    ("tenant-starts-with-digit", "0acme@sys=x", "0acme@sys=x"),
    ("key-charset", "a0_-*/=x", "a0_-*/=x"),
    ("tenant-charset", "9a_-*/@s0_-*/=x", "9a_-*/@s0_-*/=x"),
    ("key-256", "k" * 256 + "=x", "k" * 256 + "=x"),
    ("tenant-241-system-14", "t" * 241 + "@" + "s" * 14 + "=x", "t" * 241 + "@" + "s" * 14 + "=x"),
    ("value-256", "k=" + "v" * 256, "k=" + "v" * 256),
    ("value-printable", "k=!~ x<>;:\"'{}", "k=!~ x<>;:\"'{}"),
    ("value-leading-space-kept", "k= x", "k= x"),
    ("value-trailing-space-is-ows", "k=x  ", "k=x"),
    ("value-trailing-space-before-comma", "k=x  ,j=y", "k=x,j=y"),
    ("32-members", ",".join(members(32)), ",".join(members(32))),
    ("32-members-plus-empties", ", ," + " , ".join(members(32)) + ",,", ",".join(members(32))),
    ("same-value-different-keys", "a=1,b=1", "a=1,b=1"),
    ("tenant-and-plain-same-prefix", "a=1,a@b=2", "a=1,a@b=2"),
]


@pytest.mark.parametrize(
    ("value", "normalised"),
    [pytest.param(value, normalised, id=case) for case, value, normalised in VALID_TRACESTATES],
)
def test_valid_tracestate(value: str, normalised: str) -> None:
    assert parse_tracestate(value) == (normalised, None)


INVALID_TRACESTATES: list[tuple[str, str, str]] = [
    ("too-long", "a=" + "b" * MAX_TRACESTATE_LENGTH, "too_long"),
    ("too-long-even-if-only-commas", "," * (MAX_TRACESTATE_LENGTH + 1), "too_long"),
    ("non-ascii-value", "a=caf\u00e9", "not_ascii"),
    ("non-ascii-key", "\u00e9=1", "not_ascii"),
    ("33-members", ",".join(members(33)), "too_many_members"),
    ("33-members-last-broken", ",".join([*members(32), "BROKEN"]), "too_many_members"),
    ("no-equals", "vendor", "member_format"),
    ("no-equals-second", "a=1,vendor", "member_format"),
    ("comma-in-value", "a=1,2", "member_format"),
    ("uppercase-key", "Vendor=1", "key_format"),
    ("all-uppercase-key", "ROJO=1", "key_format"),
    ("key-starts-with-digit", "0abc=1", "key_format"),
    ("key-starts-with-underscore", "_a=1", "key_format"),
    ("key-dot", "a.b=1", "key_format"),
    ("key-space", "a b=1", "key_format"),
    ("ows-before-equals", "a =1", "key_format"),
    ("empty-key", "=1", "key_format"),
    ("key-257", "k" * 257 + "=x", "key_format"),
    ("tenant-242", "t" * 242 + "@s=x", "key_format"),
    ("system-15", "t@" + "s" * 15 + "=x", "key_format"),
    ("system-uppercase", "t@S=x", "key_format"),
    ("system-starts-with-digit", "t@1s=x", "key_format"),
    ("empty-tenant", "@s=x", "key_format"),
    ("empty-system", "t@=x", "key_format"),
    ("two-at-signs", "t@s@x=1", "key_format"),
    ("empty-value", "a=", "value_format"),
    ("value-only-spaces", "a=   ,b=1", "value_format"),
    ("equals-in-value", "a=b=c", "value_format"),
    ("value-257", "k=" + "v" * 257, "value_format"),
    ("tab-in-value", "a=x\ty", "value_format"),
    ("tab-leading-value", "a=\tx", "value_format"),
    ("del-in-value", "a=x\x7f", "value_format"),
    ("control-in-value", "a=x\x01y", "value_format"),
    ("newline-after-value", "a=x\n", "value_format"),
    ("duplicate-key", "a=1,a=2", "duplicate_key"),
    ("duplicate-key-same-value", "a=1,b=2,a=1", "duplicate_key"),
    ("duplicate-tenant-key", "t@s=1 , t@s=2", "duplicate_key"),
]


@pytest.mark.parametrize(
    ("value", "expected"),
    [pytest.param(value, expected, id=case) for case, value, expected in INVALID_TRACESTATES],
)
def test_invalid_tracestate_is_discarded_whole(value: str, expected: str) -> None:
    assert expected in TRACESTATE_INVALID_REASONS
    assert parse_tracestate(value) == ("", expected)


def test_every_tracestate_reason_has_a_vector() -> None:
    covered = {expected for _, _, expected in INVALID_TRACESTATES} | {"not_string"}
    assert covered == set(TRACESTATE_INVALID_REASONS)


def test_tracestate_non_string() -> None:
    assert parse_tracestate(None) == ("", "not_string")  # type: ignore[arg-type]


def test_tracestate_at_the_length_cap_is_parsed() -> None:
    value = "a=1" + " " * (MAX_TRACESTATE_LENGTH - 3)
    assert len(value) == MAX_TRACESTATE_LENGTH
    assert parse_tracestate(value) == ("a=1", None)


def test_longest_valid_tracestate_fits_under_the_cap() -> None:
    # 32 distinct 256-character keys, each with a 256-character value.
    longest = ",".join("k" + f"{i:03d}" + "k" * 252 + "=" + "v" * 256 for i in range(32))
    assert len(longest) == 16447
    assert parse_tracestate(longest) == (longest, None)


# -- resolve --------------------------------------------------------------------------------


def test_nothing_found() -> None:
    assert resolve([]) is NOT_FOUND
    result = resolve([("label", {"other": VALID}), ("env", {"traceparent_": VALID})])
    assert result == NOT_FOUND
    assert not result.found
    assert (result.context, result.source, result.invalid_reason) == (None, "", None)


def test_found_valid_with_source() -> None:
    result = resolve([("label", {"traceparent": VALID})])
    assert result.found
    assert result.context == ok(VALID)
    assert result.source == "label:traceparent"
    assert result.invalid_reason is None
    assert result.tracestate_invalid_reason is None


def test_first_carrier_wins() -> None:
    result = resolve(
        [
            ("pod_annotation", {"tracing.k8s.io/traceparent": VALID}),
            ("label", {"traceparent": VALID2}),
            ("env", {"TRACEPARENT": VALID2}),
        ]
    )
    assert result.source == "pod_annotation:tracing.k8s.io/traceparent"
    assert result.context == ok(VALID)


def test_carrier_order_beats_key_order() -> None:
    # The later carrier has the higher-priority key, the earlier carrier still wins.
    result = resolve(
        [
            ("label", {"TRACEPARENT": VALID}),
            ("annotation", {"tracing.k8s.io/traceparent": VALID2}),
        ]
    )
    assert result.source == "label:TRACEPARENT"
    assert result.context == ok(VALID)


def test_key_order_within_a_carrier() -> None:
    labels = {"TRACEPARENT": VALID2, "traceparent": VALID2, "tracing.k8s.io/traceparent": VALID}
    result = resolve([("label", labels)])
    assert result.source == "label:tracing.k8s.io/traceparent"
    assert result.context == ok(VALID)


def test_empty_carriers_are_skipped() -> None:
    result = resolve([("pod_annotation", {}), ("label", {}), ("env", {"TRACEPARENT": VALID})])
    assert result.source == "env:TRACEPARENT"


def test_invalid_does_not_fall_through() -> None:
    result = resolve(
        [
            ("pod_annotation", {"tracing.k8s.io/traceparent": tp(version="ff")}),
            ("label", {"traceparent": VALID}),
        ]
    )
    assert result.found
    assert result.context is None
    assert result.source == "pod_annotation:tracing.k8s.io/traceparent"
    assert result.invalid_reason == "version_forbidden"


def test_invalid_does_not_fall_through_to_a_later_key() -> None:
    result = resolve([("label", {"tracing.k8s.io/traceparent": "garbage", "traceparent": VALID})])
    assert result.context is None
    assert result.invalid_reason == "version_format"


def test_present_but_empty_counts_as_found() -> None:
    result = resolve([("env", {"TRACEPARENT": ""}), ("label", {"traceparent": VALID})])
    assert result.source == "env:TRACEPARENT"
    assert result.invalid_reason == "empty"
    assert result.context is None


def test_tracestate_paired_from_same_carrier() -> None:
    result = resolve(
        [("label", {"traceparent": VALID, "tracestate": " a=1 , b=2 "})],
    )
    assert result.context is not None
    assert result.context.trace_state == "a=1,b=2"
    assert result.tracestate_invalid_reason is None


def test_tracestate_from_another_carrier_is_not_used() -> None:
    result = resolve(
        [
            ("pod_annotation", {"tracing.k8s.io/tracestate": "a=1"}),
            ("label", {"traceparent": VALID}),
            ("env", {"TRACESTATE": "b=2", "tracestate": "c=3"}),
        ]
    )
    assert result.source == "label:traceparent"
    assert result.context is not None
    assert result.context.trace_state == ""


def test_tracestate_under_an_unpaired_key_is_not_used() -> None:
    carrier = {"traceparent": VALID, "TRACESTATE": "a=1", "tracing.k8s.io/tracestate": "b=2"}
    result = resolve([("label", carrier)])
    assert result.context is not None
    assert result.context.trace_state == ""


def test_invalid_tracestate_keeps_the_context() -> None:
    result = resolve([("env", {"TRACEPARENT": VALID, "TRACESTATE": "a=1,a=2"})])
    assert result.context == ok(VALID)
    assert result.context is not None
    assert result.context.trace_state == ""
    assert result.invalid_reason is None
    assert result.tracestate_invalid_reason == "duplicate_key"


def test_tracestate_ignored_when_traceparent_invalid() -> None:
    result = resolve([("env", {"TRACEPARENT": "00-bad", "TRACESTATE": "BAD"})])
    assert result.invalid_reason == "length"
    assert result.tracestate_invalid_reason is None


def test_empty_tracestate_is_not_invalid() -> None:
    result = resolve([("env", {"TRACEPARENT": VALID, "TRACESTATE": " "})])
    assert result.context == ok(VALID)
    assert result.tracestate_invalid_reason is None


def test_custom_keys_and_generator_carriers() -> None:
    keys = [("x-tp", "x-ts")]
    carriers = (c for c in [("a", {"traceparent": VALID2}), ("b", {"x-tp": VALID, "x-ts": "k=v"})])
    result = resolve(carriers, keys)
    assert result.source == "b:x-tp"
    assert result.context is not None
    assert result.context.trace_state == "k=v"


def test_no_keys_finds_nothing() -> None:
    assert resolve([("label", {"traceparent": VALID})], keys=()) is NOT_FOUND


def test_non_string_value_in_carrier() -> None:
    carrier: Mapping[str, object] = {"traceparent": 42}
    result = resolve([("label", carrier)])  # type: ignore[list-item]
    assert result.invalid_reason == "not_string"


def test_default_keys() -> None:
    assert DEFAULT_KEYS == (
        ("tracing.k8s.io/traceparent", "tracing.k8s.io/tracestate"),
        ("traceparent", "tracestate"),
        ("TRACEPARENT", "TRACESTATE"),
    )


def test_public_api_is_pinned() -> None:
    assert sorted(tc.__all__) == sorted(
        [
            "DEFAULT_KEYS",
            "ENV_TRACEPARENT",
            "ENV_TRACESTATE",
            "MAX_TRACEPARENT_LENGTH",
            "MAX_TRACESTATE_LENGTH",
            "MAX_TRACESTATE_MEMBERS",
            "NOT_FOUND",
            "TRACEPARENT_INVALID_REASONS",
            "TRACESTATE_INVALID_REASONS",
            "Invalid",
            "ParseResult",
            "Resolution",
            "TraceContext",
            "parse_traceparent",
            "parse_tracestate",
            "resolve",
        ]
    )


def test_reason_lists_are_unique_snake_case() -> None:
    for reasons in (TRACEPARENT_INVALID_REASONS, TRACESTATE_INVALID_REASONS):
        assert len(set(reasons)) == len(reasons)
        for r in reasons:
            assert re.fullmatch(r"[a-z]+(_[a-z]+)*", r)


def test_resolution_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        NOT_FOUND.source = "x"  # type: ignore[misc]
    assert isinstance(NOT_FOUND, Resolution)


# -- properties -----------------------------------------------------------------------------

# An independent statement of the traceparent rules, as one regex plus the few rules a
# regex says badly. Only validity is compared, not the reason.
_ORACLE_TP = re.compile(
    r"(?!ff)([0-9a-f]{2})-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}(-.*)?",
    re.DOTALL,
)


def oracle_traceparent_valid(value: str) -> bool:
    if len(value) > MAX_TRACEPARENT_LENGTH:
        return False
    s = value.strip(" \t")
    m = _ORACLE_TP.fullmatch(s)
    if m is None or not s.isascii():
        return False
    return not (m.group(1) == "00" and m.group(2) is not None)


_ORACLE_MEMBER = re.compile(
    r"((?:[a-z][-a-z0-9_*/]{0,255})|(?:[a-z0-9][-a-z0-9_*/]{0,240}@[a-z][-a-z0-9_*/]{0,13}))"
    r"=[ -+\--<>-~]{0,255}[!-+\--<>-~]"
)


def oracle_tracestate_valid(value: str) -> bool:
    if len(value) > MAX_TRACESTATE_LENGTH or not value.isascii():
        return False
    items = [m.strip(" \t") for m in value.split(",")]
    items = [m for m in items if m]
    if len(items) > 32:
        return False
    keys = []
    for item in items:
        m = _ORACLE_MEMBER.fullmatch(item)
        if m is None:
            return False
        keys.append(m.group(1))
    return len(set(keys)) == len(keys)


hexes = st.text(alphabet="0123456789abcdef", min_size=1, max_size=1)
ows = st.text(alphabet=" \t", max_size=3)


@st.composite
def valid_v00(draw: st.DrawFn) -> str:
    trace_id = draw(st.binary(min_size=16, max_size=16).filter(any))
    span_id = draw(st.binary(min_size=8, max_size=8).filter(any))
    flags = draw(st.integers(0, 255))
    return f"00-{trace_id.hex()}-{span_id.hex()}-{flags:02x}"


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[str]) -> str:
    """A valid value with a few single-character edits: near misses of every rule."""
    s = draw(base)
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(s)))
        c = draw(st.sampled_from("0f-AgF \t,=\u00e9\n") | st.characters())
        kind = draw(st.sampled_from(["replace", "insert", "delete"]))
        if kind == "replace":
            s = s[:i] + c + s[i + 1 :]
        elif kind == "insert":
            s = s[:i] + c + s[i:]
        else:
            s = s[:i] + s[i + 1 :]
    return s


@st.composite
def any_version_traceparent(draw: st.DrawFn) -> str:
    version = draw(hexes) + draw(hexes)
    tail = draw(st.sampled_from(["", "-", "-x", "x", "-00-ab"]))
    return draw(ows) + "-".join([version, *draw(valid_v00()).split("-")[1:]]) + tail + draw(ows)


traceparent_inputs = st.one_of(
    st.text(),
    st.text(alphabet="0123456789abcdefF- \t"),
    valid_v00(),
    mutated(valid_v00()),
    any_version_traceparent(),
    mutated(any_version_traceparent()),
)


@settings(max_examples=500)
@given(traceparent_inputs)
def test_parse_traceparent_never_raises_and_matches_oracle(value: str) -> None:
    result = parse_traceparent(value)
    assert isinstance(result, TraceContext | Invalid)
    if isinstance(result, Invalid):
        assert result.reason in TRACEPARENT_INVALID_REASONS
    assert isinstance(result, TraceContext) == oracle_traceparent_valid(value)


@settings(max_examples=500)
@given(traceparent_inputs)
def test_any_accepted_traceparent_round_trips(value: str) -> None:
    result = parse_traceparent(value)
    if not isinstance(result, TraceContext):
        return
    stripped = value.strip(" \t")
    if result.version == 0:
        # Strictness shows here: anything accepted must be exactly what we would emit.
        assert result.to_traceparent() == stripped
    else:
        assert result.to_traceparent() == "00" + stripped[2:55]
    assert parse_traceparent(result.to_traceparent()) == dataclasses.replace(result, version=0)


@given(ows, valid_v00(), ows)
def test_valid_v00_always_parses(before: str, value: str, after: str) -> None:
    result = parse_traceparent(before + value + after)
    assert isinstance(result, TraceContext)
    assert result.to_traceparent() == value


simple_key = st.from_regex(r"[a-z][a-z0-9_\-*/]{0,12}", fullmatch=True)
tenant_key = st.from_regex(r"[a-z0-9][a-z0-9_\-*/]{0,8}@[a-z][a-z0-9_\-*/]{0,13}", fullmatch=True)
ts_value = st.from_regex(
    r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,12}[\x21-\x2b\x2d-\x3c\x3e-\x7e]", fullmatch=True
)


@st.composite
def valid_tracestate(draw: st.DrawFn) -> tuple[str, str]:
    """(raw value with OWS and empty members, expected normalised value)."""
    keys = draw(st.lists(simple_key | tenant_key, unique=True, max_size=32))
    items = [f"{k}={draw(ts_value)}" for k in keys]
    raw = draw(st.sampled_from(["", ",", " , "]))
    for item in items:
        raw += draw(st.sampled_from(["", " ", "\t "])) + item + draw(ows)
        raw += draw(st.sampled_from([",", " ,", ", ,", ",,\t"]))
    return raw, ",".join(items)


tracestate_inputs = st.one_of(
    st.text(),
    st.text(alphabet="abz09_-*/@=, \tA~!\x7f.\u00e9"),
    valid_tracestate().map(lambda pair: pair[0]),
    mutated(valid_tracestate().map(lambda pair: pair[0])),
)


@settings(max_examples=500)
@given(tracestate_inputs)
def test_parse_tracestate_never_raises_and_matches_oracle(value: str) -> None:
    normalised, why = parse_tracestate(value)
    assert isinstance(normalised, str)
    if why is None:
        assert oracle_tracestate_valid(value)
        # Normalising is idempotent and leaves no OWS or empty members.
        assert parse_tracestate(normalised) == (normalised, None)
        assert normalised == normalised.strip(" \t,")
        assert ",," not in normalised
        assert " ," not in normalised
        assert ", " not in normalised
    else:
        assert normalised == ""
        assert why in TRACESTATE_INVALID_REASONS
        assert not oracle_tracestate_valid(value)


@given(valid_tracestate())
def test_valid_tracestate_normalises(pair: tuple[str, str]) -> None:
    raw, expected = pair
    assert parse_tracestate(raw) == (expected, None)


carrier_maps = st.dictionaries(
    st.sampled_from([k for pair in DEFAULT_KEYS for k in pair]) | st.text(max_size=8),
    traceparent_inputs | tracestate_inputs,
    max_size=6,
)


@given(st.lists(st.tuples(st.text(max_size=5), carrier_maps), max_size=4))
def test_resolve_never_raises(carriers: list[tuple[str, dict[str, str]]]) -> None:
    result = resolve(carriers)
    assert isinstance(result, Resolution)
    if result.context is not None:
        assert result.invalid_reason is None
        assert result.found
    if result.invalid_reason is not None:
        assert result.context is None
        assert result.tracestate_invalid_reason is None
    if not result.found:
        assert result == NOT_FOUND
