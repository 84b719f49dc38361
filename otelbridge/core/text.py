"""Tenant text made safe to show: control characters escaped, cuts that keep escapes whole.

Container labels, image references and CRI names are written by tenants and reach span
attributes, metric attributes and log lines. A newline, carriage return or ESC in such a
value forges lines or terminal sequences downstream (``busybox:1.36\\nlatest`` reads as a
second tag in a line-based view). :func:`escape_controls` replaces every control
character, C0 (U+0000-U+001F), DEL (U+007F) and C1 (U+0080-U+009F), with a visible
escape, written as Python's ``repr`` writes it:

* ``\\n``, ``\\r``, ``\\t`` for newline, carriage return and tab;
* ``\\xNN`` (two lowercase hex digits) for the others: NUL is ``\\x00``, ESC ``\\x1b``,
  DEL ``\\x7f``, NEL ``\\x85``.

The output reads back unambiguously when the input held no backslash; a backslash already
in the input is kept as it is (escaping it would change clean values such as Windows
paths), so an escaped value and a value that literally held ``\\n`` look alike: the
``otelbridge.attributes.sanitized`` counter says that escaping happened. Other characters
(non-ASCII letters, zero-width or bidirectional formatting characters) are not touched.

:func:`truncate` cuts to a length limit without splitting such an escape.

Pure functions, any thread; this module imports nothing of otelbridge.
"""

from __future__ import annotations

import re

__all__ = ["escape_controls", "truncate"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_NAMED = {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}
_CODES = (*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0))
_ESCAPES: dict[int, str] = {c: _NAMED.get(c, f"\\x{c:02x}") for c in _CODES}
# what escape_controls writes (and text that looks the same); 4 characters at most
_ESCAPE = re.compile(r"\\(?:[nrt]|x[0-9a-f]{2})")
_LONGEST_ESCAPE = 4


def escape_controls(value: str) -> tuple[str, bool]:
    """``value`` with every control character (C0, DEL, C1) replaced by its visible
    escape (the module docstring), and whether anything was replaced.

    The result never contains a control character. A value without one is returned as
    it is (the same object, with ``False``): the common case costs one ``isprintable``
    scan, and a regex search only for values that are not printable for another reason
    (non-ASCII spaces, formatting characters). Escaping never shortens a value; each
    control character becomes 2 or 4 characters.
    """
    if value.isprintable() or _CONTROL.search(value) is None:
        return value, False
    return value.translate(_ESCAPES), True


def truncate(value: str, limit: int) -> str:
    """``value``'s first ``limit`` characters at most (``limit >= 0``); when the cut would
    fall inside an escape :func:`escape_controls` writes (``\\n``, ``\\x1b``...), it falls
    before it instead, so a cut value never ends with half an escape. Text that merely
    looks like an escape (a literal backslash, then ``n``) is treated the same, losing at
    most three more characters. A value within the limit is returned as it is."""
    if len(value) <= limit:
        return value
    # an escape split by the cut starts at most _LONGEST_ESCAPE - 1 characters before it
    at = value.find("\\", max(limit - _LONGEST_ESCAPE + 1, 0), limit)
    while at != -1:
        match = _ESCAPE.match(value, at)
        if match is not None and match.end() > limit:
            return value[:at]
        at = value.find("\\", at + 1, limit)
    return value[:limit]
