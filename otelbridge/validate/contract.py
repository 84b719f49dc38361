"""The contract checks shared by every input: trace context, readiness target, tenant limits.

Each input (an OCI bundle, a pod template, a live container record) is reduced to its
*carriers*: the string maps the bridge reads a container's metadata from, in the bridge's
order (PRODUCT.md section 5, :mod:`otelbridge.enrich.stage`), each with the field path it
came from. The checks here then judge them with the bridge's own rules, taken from the
configuration (:class:`Rules`), so the validator and the bridge cannot disagree:

* **trace context**: every traceparent/tracestate present under the keys the bridge reads
  (``enrich.traceparent_keys`` in labels and annotations, ``enrich.env_traceparent`` in the
  process environment) is parsed by :mod:`otelbridge.core.tracecontext` (never
  re-implemented here): an invalid value is an error coded ``traceparent.<reason>`` or
  ``tracestate.<reason>``. Which value the bridge uses is decided by
  :func:`~otelbridge.core.tracecontext.resolve`, exactly as the bridge calls it; a
  different value it does not use is a ``trace.shadowed`` warning. Where
  ``[validate] require_trace_context`` matches the namespace, no traceparent at all is
  ``trace.missing``;
* **readiness target**: ``otelbridge.io/readiness`` (``readiness.label``) parses with
  :func:`otelbridge.readiness.probe.parse_target` and is at most 512 characters;
* **tenant limits**: control characters anywhere in keys or values (the bridge escapes
  them); of the labels ``enrich.label_attributes`` selects, the keys the bridge drops, the
  labels beyond ``enrich.max_label_attributes`` and the values longer than
  ``enrich.max_attribute_length``.

Only ``str`` values reach a carrier: the inputs report values of other types themselves
(``oci.annotation_value_type``, ``k8s.metadata_type``). Pure functions; never raise on any
input of the declared types.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from otelbridge.core.config import Config
from otelbridge.core.limits import MAX_LABEL_KEY, MAX_READINESS_TARGET, label_key_ok
from otelbridge.core.text import escape_controls
from otelbridge.core.tracecontext import (
    Invalid,
    Resolution,
    parse_traceparent,
    parse_tracestate,
    resolve,
)
from otelbridge.readiness.probe import parse_target
from otelbridge.validate.report import Problem, problem, shown

__all__ = [
    "MAX_LABEL_KEY",
    "MAX_READINESS_TARGET",
    "Carrier",
    "Rules",
    "check_limits",
    "check_readiness_target",
    "check_trace",
    "check_traceparent_value",
    "env_carrier",
    "label_key_kept",
    "map_carrier",
]

_TRACEPARENT_REASONS: Final = {
    "not_string": "the traceparent is not a string",
    "too_long": "the traceparent is longer than 512 characters",
    "empty": "the traceparent is empty",
    "not_ascii": "the traceparent holds non-ASCII characters",
    "version_format": "the traceparent's version is not two lowercase hex digits",
    "version_forbidden": "the traceparent's version is ff, which W3C forbids",
    "length": "a version-00 traceparent has exactly 55 characters (a later version at least 55)",
    "future_version_format": "a later-version traceparent continues after its flags without '-'",
    "format": "the traceparent lacks a '-' separator where W3C puts one",
    "trace_id_format": "the trace id is not 32 lowercase hex digits",
    "trace_id_zero": "the trace id is all zeros",
    "parent_id_format": "the parent id is not 16 lowercase hex digits",
    "parent_id_zero": "the parent id is all zeros",
    "flags_format": "the trace flags are not 2 lowercase hex digits",
}

_TRACESTATE_REASONS: Final = {
    "not_string": "the tracestate is not a string",
    "too_long": "the tracestate is longer than the bridge accepts",
    "not_ascii": "the tracestate holds non-ASCII characters",
    "too_many_members": "the tracestate has more than 32 members",
    "member_format": "a tracestate member has no '='",
    "key_format": "a tracestate key is neither a simple nor a tenant@system key",
    "value_format": "a tracestate value is empty, longer than 256 or holds ',', '=' or a "
    "non-printable character",
    "duplicate_key": "a tracestate key appears twice",
}


@dataclass(frozen=True)
class Rules:
    """The bridge's rules, as the configuration sets them, that the checks apply."""

    traceparent_keys: tuple[tuple[str, str], ...]
    """(traceparent, tracestate) keys read from labels and annotations, in order."""
    env_keys: tuple[tuple[str, str], ...]
    """(traceparent, tracestate) process environment variables read, in order."""
    readiness_label: str
    """The label/annotation key of a readiness probe target."""
    label_attributes: tuple[str, ...] = ()
    """Globs of the labels copied to spans (the ones the label limits apply to)."""
    max_label_attributes: int = 32
    max_attribute_length: int = 256
    require_trace_context: tuple[str, ...] = ()
    """Namespace globs where a traceparent is required."""
    require_readiness: bool = False
    """A pod template's container without a readiness probe is an error."""

    @classmethod
    def from_config(cls, cfg: Config) -> Rules:
        enrich = cfg.enrich
        return cls(
            traceparent_keys=tuple(
                (key, key.replace("traceparent", "tracestate")) for key in enrich.traceparent_keys
            ),
            env_keys=enrich.env_keys,
            readiness_label=cfg.readiness.label,
            label_attributes=enrich.label_attributes,
            max_label_attributes=enrich.max_label_attributes,
            max_attribute_length=enrich.max_attribute_length,
            require_trace_context=cfg.validate_.require_trace_context,
            require_readiness=cfg.validate_.require_readiness,
        )

    def trace_required(self, namespace: str) -> bool:
        """Whether ``[validate] require_trace_context`` matches ``namespace`` (globs,
        case-sensitive)."""
        return any(fnmatch.fnmatchcase(namespace, g) for g in self.require_trace_context)


@dataclass(frozen=True)
class Carrier:
    """A string map the bridge reads, where it came from, and how its keys are named.

    ``name`` is the carrier's name for :func:`~otelbridge.core.tracecontext.resolve`
    (unique among one container's carriers). ``paths`` gives the field path of a key when
    it is not ``f"{path}.{key}"`` (environment entries: ``process.env[3]``)."""

    name: str
    path: str
    values: Mapping[str, str]
    is_env: bool = False
    labels: bool = False
    """Labels: the label limits (``enrich.label_attributes`` ...) apply."""
    paths: Mapping[str, str] = field(default_factory=dict)

    def path_of(self, key: str) -> str:
        found = self.paths.get(key)
        if found is not None:
            return found
        return f"{self.path}.{key}" if self.path else key


def map_carrier(
    name: str, path: str, values: Mapping[str, str], *, labels: bool = False
) -> Carrier:
    """A carrier of labels or annotations found at ``path``."""
    return Carrier(name, path, values, labels=labels)


def env_carrier(name: str, path: str, entries: Sequence[tuple[str, str, str]]) -> Carrier:
    """A process environment as a carrier: ``entries`` are ``(field path, name, value)``
    in order; the first definition of a name is the one kept, as the bridge reads it."""
    values: dict[str, str] = {}
    paths: dict[str, str] = {}
    for entry_path, key, value in entries:
        if key not in values:
            values[key] = value
            paths[key] = entry_path
    return Carrier(name, path, values, is_env=True, paths=paths)


def _keys(carrier: Carrier, rules: Rules) -> tuple[tuple[str, str], ...]:
    return rules.env_keys if carrier.is_env else rules.traceparent_keys


def check_traceparent_value(value: str, path: str, *, note: str = "") -> list[Problem]:
    """``traceparent.<reason>`` for an invalid ``value`` at ``path`` (empty when valid)."""
    parsed = parse_traceparent(value)
    if not isinstance(parsed, Invalid):
        return []
    reason = parsed.reason
    text = _TRACEPARENT_REASONS.get(reason, reason)
    return [problem(f"traceparent.{reason}", path, f"{text}: {shown(value)}{note}")]


def _check_tracestate_value(value: str, path: str) -> list[Problem]:
    _, reason = parse_tracestate(value)
    if reason is None:
        return []
    text = _TRACESTATE_REASONS.get(reason, reason)
    return [
        problem(
            f"tracestate.{reason}",
            path,
            f"{text} (the bridge drops the whole tracestate): {shown(value, 60)}",
        )
    ]


def _winner(carriers: Sequence[Carrier], rules: Rules) -> tuple[Carrier, str] | None:
    """The carrier and key of the traceparent the bridge uses, as the bridge finds it:
    labels and annotations first (carrier-major), then the environment."""
    by_name = {c.name: c for c in carriers}
    found: Resolution = resolve(
        ((c.name, c.values) for c in carriers if not c.is_env), rules.traceparent_keys
    )
    if not found.found and rules.env_keys:
        found = resolve(((c.name, c.values) for c in carriers if c.is_env), rules.env_keys)
    if not found.found:
        return None
    name, _, key = found.source.partition(":")
    return by_name[name], key


def check_trace(
    carriers: Sequence[Carrier],
    rules: Rules,
    *,
    namespace: str,
    missing_path: str,
    required: bool | None = None,
) -> list[Problem]:
    """The trace contract of one container (or pod) whose metadata the bridge reads from
    ``carriers``, in the bridge's order. ``required`` defaults to whether
    ``require_trace_context`` matches ``namespace``; ``trace.missing`` is reported at
    ``missing_path`` (where the traceparent should be put)."""
    problems: list[Problem] = []
    present: list[tuple[Carrier, str, str]] = []
    for carrier in carriers:
        for tp_key, ts_key in _keys(carrier, rules):
            traceparent = carrier.values.get(tp_key)
            tracestate = carrier.values.get(ts_key)
            if traceparent is not None:
                present.append((carrier, tp_key, traceparent))
                problems += check_traceparent_value(traceparent, carrier.path_of(tp_key))
            if tracestate is None:
                continue
            if traceparent is None:
                problems.append(
                    problem(
                        "trace.tracestate_alone",
                        carrier.path_of(ts_key),
                        f"a tracestate without a traceparent under {tp_key!r} beside it is ignored",
                    )
                )
            else:
                problems += _check_tracestate_value(tracestate, carrier.path_of(ts_key))
    winner = _winner(carriers, rules)
    if winner is not None:
        used, used_key = winner
        used_value = used.values[used_key]
        for carrier, key, value in present:
            if (carrier is used and key == used_key) or value.strip(" \t") == used_value.strip(
                " \t"
            ):
                continue
            problems.append(
                problem(
                    "trace.shadowed",
                    carrier.path_of(key),
                    f"not used: the bridge reads {used.path_of(used_key)} first, which differs",
                )
            )
    if required is None:
        required = rules.trace_required(namespace)
    if required and winner is None:
        keys = ", ".join(tp for tp, _ in rules.traceparent_keys) or "(none configured)"
        problems.append(
            problem(
                "trace.missing",
                missing_path,
                f"namespace {shown(namespace)} requires a traceparent ([validate] "
                f"require_trace_context); none found under {keys}",
            )
        )
    return problems


def check_readiness_target(carriers: Sequence[Carrier], rules: Rules) -> list[Problem]:
    """``readiness.*`` for every readiness target present in ``carriers`` (labels and
    annotations; the bridge uses the first, but a broken one anywhere is reported)."""
    problems: list[Problem] = []
    label = rules.readiness_label
    for carrier in carriers:
        if carrier.is_env or label not in carrier.values:
            continue
        target = carrier.values[label]
        path = carrier.path_of(label)
        if len(target) > MAX_READINESS_TARGET:
            problems.append(
                problem(
                    "readiness.target_too_long",
                    path,
                    f"{len(target)} characters (at most {MAX_READINESS_TARGET}): the bridge "
                    "ignores it and the next readiness source decides",
                )
            )
            continue
        try:
            parse_target(target)
        except ValueError as exc:
            problems.append(
                problem(
                    "readiness.target_invalid",
                    path,
                    f"{exc}: {shown(target)} (tcp://HOST:PORT or http://HOST:PORT/PATH)",
                )
            )
    return problems


def label_key_kept(key: str) -> bool:
    """Whether the bridge keeps a selected label under this key: 1 to 128 printable
    ASCII characters (the enrich stage's own test)."""
    return label_key_ok(key)


def _has_controls(text: str) -> bool:
    return escape_controls(text)[1]


def check_limits(carriers: Sequence[Carrier], rules: Rules) -> list[Problem]:
    """``limits.*`` for the labels and annotations of ``carriers`` (see the module
    docstring); the environment is not tenant metadata the bridge emits."""
    problems: list[Problem] = []
    for carrier in carriers:
        if carrier.is_env:
            continue
        for key, value in carrier.values.items():
            if _has_controls(key) or _has_controls(value):
                problems.append(
                    problem(
                        "limits.control_characters",
                        carrier.path_of(key),
                        "control characters in the key or value: the bridge escapes them "
                        f"in telemetry; value {shown(value, 40)}",
                    )
                )
        if not carrier.labels or not rules.label_attributes:
            continue
        globs = rules.label_attributes
        selected = sorted(
            k for k in carrier.values if any(fnmatch.fnmatchcase(k, g) for g in globs)
        )
        kept = dropped = 0
        for key in selected:
            if not label_key_kept(key):
                problems.append(
                    problem(
                        "limits.label_key",
                        carrier.path_of(key),
                        f"selected by enrich.label_attributes but dropped: a key must be 1 to "
                        f"{MAX_LABEL_KEY} printable ASCII characters",
                    )
                )
                continue
            if kept >= rules.max_label_attributes:
                dropped += 1
                continue
            kept += 1
            length = len(escape_controls(carrier.values[key])[0])
            if length > rules.max_attribute_length:
                problems.append(
                    problem(
                        "limits.value_length",
                        carrier.path_of(key),
                        f"{length} characters: cut to enrich.max_attribute_length "
                        f"({rules.max_attribute_length}) in the span",
                    )
                )
        if dropped:
            problems.append(
                problem(
                    "limits.label_count",
                    carrier.path,
                    f"{kept + dropped} labels selected by enrich.label_attributes, at most "
                    f"{rules.max_label_attributes} are kept: {dropped} dropped",
                )
            )
    return problems
