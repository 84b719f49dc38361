"""Strict W3C Trace Context parsing: ``traceparent`` and ``tracestate`` values.

Pure functions, no I/O, no logging. Runs once per container startup on values that the
workload controls (labels, annotations, environment), so every entry point:

* never raises on any ``str`` input (nor on a non-``str`` value that slipped through an
  untyped mapping): a rejected value comes back as a result with a short, stable reason;
* bounds its cost: inputs longer than a fixed cap are rejected before any other work.

Traceparent rules (W3C Trace Context Level 1, higher versions as Level 1/2 describe them):
``version-traceid-parentid-flags``, all lowercase hex; version ``ff`` is forbidden;
version ``00`` is exactly 55 characters; a higher version is at least 55 characters and, if
longer, has ``-`` right after the flags (the rest is ignored); trace id and parent id must
not be all zeros. Spaces and tabs around the value (HTTP OWS) are stripped first; any other
deviation (inner whitespace, uppercase hex, non-ASCII) is invalid.

``Invalid.reason`` values of :func:`parse_traceparent` (also the values of the
``otelbridge.traceparent.invalid`` span attribute), checked in this order:

=========================  =====================================================
``not_string``             the value is not a ``str`` (a caller bug, never raised)
``too_long``               longer than ``MAX_TRACEPARENT_LENGTH`` before stripping
``empty``                  empty, or only spaces/tabs
``not_ascii``              contains a non-ASCII character
``version_format``         the first two characters are not lowercase hex
``version_forbidden``      version ``ff``
``length``                 version ``00`` and not exactly 55 characters, or a
                           higher version shorter than 55
``future_version_format``  a higher version longer than 55 whose 56th character
                           is not ``-``
``format``                 a ``-`` separator missing at position 2, 35 or 52
``trace_id_format``        trace id is not 32 lowercase hex digits
``trace_id_zero``          trace id is all zeros
``parent_id_format``       parent id is not 16 lowercase hex digits
``parent_id_zero``         parent id is all zeros
``flags_format``           flags are not 2 lowercase hex digits
=========================  =====================================================

Reasons returned by :func:`parse_tracestate` (values of ``otelbridge.tracestate.invalid``),
checked in this order (members left to right for the last four):

=========================  =====================================================
``not_string``             the value is not a ``str`` (a caller bug, never raised)
``too_long``               longer than ``MAX_TRACESTATE_LENGTH``
``not_ascii``              contains a non-ASCII character
``too_many_members``       more than 32 non-empty list-members
``member_format``          a list-member without ``=``
``key_format``             a key that is neither a simple nor a ``tenant@system`` key
``value_format``           a value that is empty, longer than 256, or has a character
                           outside 0x20-0x7E, or ``,`` or ``=`` (tab included)
``duplicate_key``          a key seen earlier in the same value
=========================  =====================================================
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Final, TypeAlias

__all__ = [
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

# -- limits ---------------------------------------------------------------------------------

#: Longest raw ``traceparent`` accepted (before OWS stripping). Version 00 needs 55; the
#: slack leaves room for future versions that append fields, while keeping a hostile
#: label from costing more than a bounded scan.
MAX_TRACEPARENT_LENGTH: Final = 512

#: Most list-members a ``tracestate`` may carry (W3C).
MAX_TRACESTATE_MEMBERS: Final = 32

#: Longest raw ``tracestate`` accepted. The longest valid value without OWS is
#: 32 members x (256 key + "=" + 256 value) + 31 commas = 16447 characters; 17 KiB leaves
#: about 1 KiB for OWS and empty members. Scanning costs a few ns per character, so the cap
#: bounds a hostile value to roughly a hundred microseconds.
MAX_TRACESTATE_LENGTH: Final = 17_408

# -- reasons --------------------------------------------------------------------------------

NOT_STRING: Final = "not_string"
TOO_LONG: Final = "too_long"
EMPTY: Final = "empty"
NOT_ASCII: Final = "not_ascii"
VERSION_FORMAT: Final = "version_format"
VERSION_FORBIDDEN: Final = "version_forbidden"
LENGTH: Final = "length"
FUTURE_VERSION_FORMAT: Final = "future_version_format"
FORMAT: Final = "format"
TRACE_ID_FORMAT: Final = "trace_id_format"
TRACE_ID_ZERO: Final = "trace_id_zero"
PARENT_ID_FORMAT: Final = "parent_id_format"
PARENT_ID_ZERO: Final = "parent_id_zero"
FLAGS_FORMAT: Final = "flags_format"

TOO_MANY_MEMBERS: Final = "too_many_members"
MEMBER_FORMAT: Final = "member_format"
KEY_FORMAT: Final = "key_format"
VALUE_FORMAT: Final = "value_format"
DUPLICATE_KEY: Final = "duplicate_key"

#: Every reason :func:`parse_traceparent` can return, in check order.
TRACEPARENT_INVALID_REASONS: Final = (
    NOT_STRING,
    TOO_LONG,
    EMPTY,
    NOT_ASCII,
    VERSION_FORMAT,
    VERSION_FORBIDDEN,
    LENGTH,
    FUTURE_VERSION_FORMAT,
    FORMAT,
    TRACE_ID_FORMAT,
    TRACE_ID_ZERO,
    PARENT_ID_FORMAT,
    PARENT_ID_ZERO,
    FLAGS_FORMAT,
)

#: Every reason :func:`parse_tracestate` can return.
TRACESTATE_INVALID_REASONS: Final = (
    NOT_STRING,
    TOO_LONG,
    NOT_ASCII,
    TOO_MANY_MEMBERS,
    MEMBER_FORMAT,
    KEY_FORMAT,
    VALUE_FORMAT,
    DUPLICATE_KEY,
)

# -- lookup keys ----------------------------------------------------------------------------

#: Default (traceparent key, tracestate key) pairs, tried in this order within a carrier:
#: the Kubernetes pod-annotation convention, the bare W3C header names, and OpenTelemetry's
#: environment-variable carrier names.
#: The OpenTelemetry environment-variable carrier's names.
ENV_TRACEPARENT: Final = "TRACEPARENT"
ENV_TRACESTATE: Final = "TRACESTATE"

DEFAULT_KEYS: Final[tuple[tuple[str, str], ...]] = (
    ("tracing.k8s.io/traceparent", "tracing.k8s.io/tracestate"),
    ("traceparent", "tracestate"),
    (ENV_TRACEPARENT, ENV_TRACESTATE),
)

# -- internals ------------------------------------------------------------------------------

# HTTP optional whitespace: the only characters stripped around a value or a list-member.
_OWS: Final = " \t"
# ``s.strip(_LOWER_HEX)`` is empty exactly when every character of ``s`` is lowercase hex
# (for a non-empty ``s``): a cheap per-field test for the version and for diagnosing
# rejected values, where one regex over the whole layout would not say which field broke.
_LOWER_HEX: Final = "0123456789abcdef"
_ZERO_TRACE_ID: Final = "0" * 32
_ZERO_PARENT_ID: Final = "0" * 16
_ZERO_TRACE_ID_BYTES: Final = bytes(16)
_ZERO_SPAN_ID_BYTES: Final = bytes(8)
# Length of a version-00 traceparent, and the minimum for any version.
_V00_LENGTH: Final = 55

# The fixed part shared by every version: version, trace id, parent id, flags. Used with
# match (anchored at the start only) because a future version may continue after the flags.
_LAYOUT_RE: Final = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")

# Around the whole tracestate, what may be stripped before splitting: OWS and empty members.
_OWS_AND_COMMA: Final = " \t,"
# One separator between two non-empty members: a comma, then any run of OWS and further
# commas (empty and whitespace-only members are allowed and dropped). It starts with the
# literal comma on purpose: a leading "[ \t]*" would rescan every long run of spaces from
# each of its positions, quadratic on a hostile value. OWS before a comma stays on the
# member and is stripped there.
_SEPARATOR_RE: Final = re.compile(r",[ \t,]*")

# Simple key, or multi-tenant ``tenant@system`` key. Used with fullmatch only: ``$`` would
# accept a trailing newline.
_KEY_RE: Final = re.compile(
    r"[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13}"
)
# 1-256 printable ASCII characters except "," and "=", the last one not a space. Members
# reach it with trailing OWS already stripped, so the last-character rule cannot fire today;
# it stays so the pattern states the whole W3C grammar for a value.
_VALUE_RE: Final = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")


def _layout_reason(s: str) -> str:
    """Why ``s`` (a stripped value of at least 55 characters) does not match the layout.

    Checks in the documented order; the version was checked by the caller.
    """
    # Every slice has its full width, so an empty strip result means "all lowercase hex".
    if s[2] != "-" or s[35] != "-" or s[52] != "-":
        return FORMAT
    if s[3:35].strip(_LOWER_HEX):
        return TRACE_ID_FORMAT
    if s[3:35] == _ZERO_TRACE_ID:
        return TRACE_ID_ZERO
    if s[36:52].strip(_LOWER_HEX):
        return PARENT_ID_FORMAT
    if s[36:52] == _ZERO_PARENT_ID:
        return PARENT_ID_ZERO
    return FLAGS_FORMAT


@dataclass(frozen=True, slots=True)
class TraceContext:
    """A parsed, valid W3C trace context.

    The constructor checks the invariants that :meth:`to_traceparent` relies on (id sizes,
    non-zero ids, byte-sized flags, a version other than ``ff``) and raises ``ValueError``
    when they do not hold: building a bad one is a programming error. The parsers never
    raise; they only build valid instances. ``trace_state`` is not re-validated here: it is
    expected to come from :func:`parse_tracestate` (normalised, or ``""``).
    """

    trace_id: bytes
    """16 bytes, not all zero."""
    span_id: bytes
    """8 bytes, not all zero: the parent-id of the traceparent."""
    trace_flags: int
    """0-255, passed on unchanged (bit 0 is ``sampled``; other bits are kept as received)."""
    trace_state: str = ""
    """Normalised tracestate header value (members joined by ``,``), ``""`` if none."""
    version: int = 0
    """Version the value was received with (0-254); emitting always uses version 00."""

    def __post_init__(self) -> None:
        if len(self.trace_id) != 16 or self.trace_id == _ZERO_TRACE_ID_BYTES:
            raise ValueError("trace_id must be 16 bytes, not all zero")
        if len(self.span_id) != 8 or self.span_id == _ZERO_SPAN_ID_BYTES:
            raise ValueError("span_id must be 8 bytes, not all zero")
        if not 0 <= self.trace_flags <= 0xFF:
            raise ValueError("trace_flags must be 0-255")
        if not 0 <= self.version <= 0xFE:
            raise ValueError("version must be 0-254 (ff is forbidden)")

    @property
    def sampled(self) -> bool:
        """The W3C ``sampled`` flag (bit 0 of ``trace_flags``)."""
        return bool(self.trace_flags & 0x01)

    @property
    def trace_id_hex(self) -> str:
        """Trace id as 32 lowercase hex digits."""
        return self.trace_id.hex()

    @property
    def span_id_hex(self) -> str:
        """Span (parent) id as 16 lowercase hex digits."""
        return self.span_id.hex()

    def to_traceparent(self) -> str:
        """The version-00 ``traceparent`` value for this context.

        Always version 00, whatever version was received: a sender emits the version it
        implements, and fields a future version appended were not parsed.
        """
        return f"00-{self.trace_id.hex()}-{self.span_id.hex()}-{self.trace_flags:02x}"


@dataclass(frozen=True, slots=True)
class Invalid:
    """A rejected value; ``reason`` is one of the documented reason strings."""

    reason: str


ParseResult: TypeAlias = TraceContext | Invalid


def parse_traceparent(value: str) -> ParseResult:
    """Parse a ``traceparent`` value strictly; never raises.

    Returns a :class:`TraceContext` (with ``trace_state=""``) or :class:`Invalid` whose
    ``reason`` is in ``TRACEPARENT_INVALID_REASONS``. When several rules are broken, the
    reason is the first in the module docstring's order.
    """
    if not isinstance(value, str):
        return Invalid(NOT_STRING)
    # Cap before stripping so that even the strip is bounded.
    if len(value) > MAX_TRACEPARENT_LENGTH:
        return Invalid(TOO_LONG)
    s = value.strip(_OWS)
    if not s:
        return Invalid(EMPTY)
    if not s.isascii():
        return Invalid(NOT_ASCII)

    version_hex = s[:2]
    if len(version_hex) != 2 or version_hex.strip(_LOWER_HEX):
        return Invalid(VERSION_FORMAT)
    if version_hex == "ff":
        return Invalid(VERSION_FORBIDDEN)
    n = len(s)
    if version_hex == "00":
        if n != _V00_LENGTH:
            return Invalid(LENGTH)
    elif n < _V00_LENGTH:
        return Invalid(LENGTH)
    elif n > _V00_LENGTH and s[_V00_LENGTH] != "-":
        # A later version may append fields, but only after a separator; anything glued to
        # the flags means the flags we would read are not the flags the sender meant.
        return Invalid(FUTURE_VERSION_FORMAT)

    # One regex pass over the 55-character layout is the common (valid) case; only a
    # value that fails it pays for the field-by-field diagnosis.
    layout = _LAYOUT_RE.match(s)
    if layout is None:
        return Invalid(_layout_reason(s))
    _, trace_id, parent_id, flags = layout.groups()
    if trace_id == _ZERO_TRACE_ID:
        return Invalid(TRACE_ID_ZERO)
    if parent_id == _ZERO_PARENT_ID:
        return Invalid(PARENT_ID_ZERO)

    # Inputs are validated hex, so fromhex/int cannot fail (both would otherwise accept
    # whitespace or underscores).
    return TraceContext(
        trace_id=bytes.fromhex(trace_id),
        span_id=bytes.fromhex(parent_id),
        trace_flags=int(flags, 16),
        trace_state="",
        version=int(version_hex, 16),
    )


def parse_tracestate(value: str) -> tuple[str, str | None]:
    """Parse and normalise a ``tracestate`` value; never raises.

    Returns ``(normalised, None)`` when valid, ``("", reason)`` when not: an invalid
    tracestate is discarded whole, as W3C requires, with ``reason`` in
    ``TRACESTATE_INVALID_REASONS``. The normalised form joins the members with ``,`` and no
    whitespace, in the received order. Spaces and tabs around members are OWS and dropped,
    so a value never keeps a trailing space; a leading space inside a value is kept (the
    grammar allows it). Empty members are skipped and do not count toward the limit of 32;
    an empty or all-OWS value is valid and normalises to ``""``.
    """
    if not isinstance(value, str):
        return "", NOT_STRING
    if len(value) > MAX_TRACESTATE_LENGTH:
        return "", TOO_LONG
    if not value.isascii():
        return "", NOT_ASCII

    # Split on runs of commas and the OWS around them, in C, so empty members cost nothing
    # in the Python loop; maxsplit stops the scan once a 33rd member is certain.
    body = value.strip(_OWS_AND_COMMA)
    if not body:
        return "", None
    members = _SEPARATOR_RE.split(body, maxsplit=MAX_TRACESTATE_MEMBERS)
    if len(members) > MAX_TRACESTATE_MEMBERS:
        return "", TOO_MANY_MEMBERS
    seen: set[str] = set()
    for i, raw in enumerate(members):
        member = raw.rstrip(_OWS)
        members[i] = member
        key, sep, val = member.partition("=")
        if not sep:
            return "", MEMBER_FORMAT
        if _KEY_RE.fullmatch(key) is None:
            return "", KEY_FORMAT
        # val may still contain "=" (a second separator); the value pattern excludes it.
        if _VALUE_RE.fullmatch(val) is None:
            return "", VALUE_FORMAT
        if key in seen:
            return "", DUPLICATE_KEY
        seen.add(key)
    return ",".join(members), None


@dataclass(frozen=True, slots=True)
class Resolution:
    """Which trace context a container carries, and how it was found.

    Exactly one of three shapes:

    * nothing found: ``context is None``, ``source == ""``, both reasons ``None``;
    * found and valid: ``context`` set, ``source`` set, ``invalid_reason is None``;
      ``tracestate_invalid_reason`` is set when a paired tracestate was present but dropped;
    * found but invalid: ``context is None``, ``source`` set, ``invalid_reason`` set
      (the tracestate is then not examined and its reason is ``None``).
    """

    context: TraceContext | None
    """The parsed context, or ``None`` when none was found or it was invalid."""
    source: str
    """``"<carrier>:<key>"`` of the traceparent used (e.g. ``"label:traceparent"``), or ``""``."""
    invalid_reason: str | None
    """Why the traceparent found at ``source`` was rejected, or ``None``."""
    tracestate_invalid_reason: str | None
    """Why the paired tracestate was dropped, or ``None``."""

    @property
    def found(self) -> bool:
        """Whether any configured traceparent key was present in a carrier."""
        return bool(self.source)


#: The resolution when no carrier holds any configured traceparent key.
NOT_FOUND: Final = Resolution(
    context=None, source="", invalid_reason=None, tracestate_invalid_reason=None
)


def resolve(
    carriers: Iterable[tuple[str, Mapping[str, str]]],
    keys: Sequence[tuple[str, str]] = DEFAULT_KEYS,
) -> Resolution:
    """Find the container's trace context across carriers; never raises on ``str`` data.

    ``carriers`` are ``(name, values)`` pairs in priority order, e.g.
    ``[("pod_annotation", pod), ("label", labels), ("annotation", oci), ("env", env)]``;
    ``keys`` are ``(traceparent_key, tracestate_key)`` pairs in priority order. The search
    is carrier-major: every key is tried in the first carrier before the next carrier is
    looked at, because where a value comes from (the pod spec vs. the image's environment)
    decides trust more than which spelling was used. Keys match exactly (case-sensitive).

    The first traceparent key *present* wins, even when its value is empty or invalid: the
    result is then invalid and later carriers are not consulted, so a broken value surfaces
    instead of being silently replaced by another one. The tracestate is read only from the
    same carrier, under the key paired with the winning traceparent key.
    """
    for carrier_name, values in carriers:
        for traceparent_key, tracestate_key in keys:
            raw = values.get(traceparent_key)
            if raw is None:
                continue
            source = f"{carrier_name}:{traceparent_key}"
            parsed = parse_traceparent(raw)
            if isinstance(parsed, Invalid):
                return Resolution(
                    context=None,
                    source=source,
                    invalid_reason=parsed.reason,
                    tracestate_invalid_reason=None,
                )
            state_reason: str | None = None
            raw_state = values.get(tracestate_key)
            if raw_state is not None:
                state, state_reason = parse_tracestate(raw_state)
                if state:
                    parsed = replace(parsed, trace_state=state)
            return Resolution(
                context=parsed,
                source=source,
                invalid_reason=None,
                tracestate_invalid_reason=state_reason,
            )
    return NOT_FOUND
