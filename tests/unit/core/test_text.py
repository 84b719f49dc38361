"""Tenant text: control characters escaped visibly, cuts that keep escapes whole."""

from __future__ import annotations

import ast
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otelbridge.core.text import escape_controls, truncate

CONTROLS = [chr(c) for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))]
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_ESCAPE = re.compile(r"\\(?:[nrt]|x[0-9a-f]{2})")


def unescape(text: str) -> str:
    """The inverse of escape_controls for values that held no backslash."""
    return _ESCAPE.sub(lambda m: ast.literal_eval(f'"{m.group()}"'), text)


# text rich in control characters and backslash look-alikes, plus any other character
tenant_text = st.text(
    st.one_of(
        st.sampled_from([*CONTROLS, "\\", "n", "x", "1", "b", ":"]),
        st.characters(),
    )
)
clean_text = st.text(st.characters().filter(lambda c: not _CONTROL.match(c)))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("a\nb", "a\\nb"),
        ("a\rb\tc", "a\\rb\\tc"),
        ("\x00nul", "\\x00nul"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("del\x7f", "del\\x7f"),
        ("nel\x85 csi\x9b", "nel\\x85 csi\\x9b"),
        ("busybox:1.36\nlatest", "busybox:1.36\\nlatest"),
    ],
)
def test_control_characters_become_visible_escapes(value: str, expected: str) -> None:
    assert escape_controls(value) == (expected, True)


@pytest.mark.parametrize(
    "value",
    ["", "docker.io/library/busybox:1.36", "caf\u00e9", "\u200bzero", "a\u00a0b", "C:\\x\\n"],
)
def test_a_value_without_control_characters_is_returned_as_it_is(value: str) -> None:
    out, escaped = escape_controls(value)
    assert out is value and not escaped


def test_every_control_character_is_escaped_as_repr_writes_it() -> None:
    for c in CONTROLS:
        assert escape_controls(c) == (repr(c)[1:-1], True)


@settings(max_examples=500)
@given(tenant_text)
def test_the_output_never_holds_a_control_character(value: str) -> None:
    out, escaped = escape_controls(value)
    assert _CONTROL.search(out) is None
    assert escaped == (_CONTROL.search(value) is not None)
    assert len(out) >= len(value)


@settings(max_examples=500)
@given(clean_text)
def test_clean_input_is_unchanged(value: str) -> None:
    assert escape_controls(value) == (value, False)


@settings(max_examples=500)
@given(tenant_text.map(lambda s: s.replace("\\", "")))
def test_escaping_reads_back_when_the_input_held_no_backslash(value: str) -> None:
    assert unescape(escape_controls(value)[0]) == value


# -- truncate ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "limit", "expected"),
    [
        ("abcdef", 10, "abcdef"),
        ("abcdef", 6, "abcdef"),
        ("abcdef", 3, "abc"),
        ("abc", 0, ""),
        ("ab\\x1bcd", 2, "ab"),
        ("ab\\x1bcd", 3, "ab"),  # would end in "\"
        ("ab\\x1bcd", 5, "ab"),  # would end in "\x1"
        ("ab\\x1bcd", 6, "ab\\x1b"),
        ("ab\\ncd", 3, "ab"),
        ("ab\\ncd", 4, "ab\\n"),
        ("a\\\\x1b", 4, "a\\"),  # a literal backslash, then an escape: only the escape goes
        ("a\\qrst", 3, "a\\q"),  # not an escape: cut where the limit says
    ],
)
def test_truncate_never_ends_inside_an_escape(value: str, limit: int, expected: str) -> None:
    assert truncate(value, limit) == expected


@settings(max_examples=500)
@given(tenant_text.map(lambda s: s.replace("\\", "")), st.integers(0, 40))
def test_a_cut_escaped_value_is_the_escape_of_a_prefix(value: str, limit: int) -> None:
    escaped = escape_controls(value)[0]
    cut = truncate(escaped, limit)
    assert len(cut) <= limit and escaped.startswith(cut)
    assert value.startswith(unescape(cut))  # no half escape left at the end
    assert len(cut) > limit - 4 or len(escaped) <= limit  # and nothing more than one lost
