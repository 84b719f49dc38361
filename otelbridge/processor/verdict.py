"""The verdict of a rollout (or a namespace): one pure function, used by the processor for
what it holds and by the gate after merging what several replicas hold.

:func:`judge` turns counts, :class:`~otelbridge.processor.sketch.Durations` and the
slowest startups into the document ``GET /v1/rollouts/{trace_id}`` answers::

    {"trace_id", "name", "namespace", "verdict": "pass"|"halt"|"insufficient",
     "startups", "failed", "partial", "pods", "expect", "coverage",
     "budgets": {<duration>: {"verdict", "samples", "p99_s", "budget_s", "breaches"}},
     "reasons": [...], "slowest": [...], "sketches": {...} (only when asked)}

The rules (``[gate]`` and ``[sla]`` of the config), in order:

1. **insufficient** while ``startups < max(gate.min_startups, expect or 0)``;
2. **halt** when any budget with enough samples (``gate.min_startups``) has its p99 over
   the budget; or ``failed / startups > gate.max_failed_ratio``; or, ``expect`` given,
   ``coverage < sla.coverage_min``;
3. **insufficient** when no budget has enough samples (nothing measured: never ``pass`` on
   too little data);
4. else **pass**.

A budget with fewer samples than ``gate.min_startups`` is ``insufficient`` itself, and by
itself neither halts nor holds back a rollout that has enough startups (a rollout of
failed startups has no ``startup_duration`` samples: it halts on its failures). ``reasons``
names every rule that halted, or why the verdict is insufficient, in plain sentences with
the numbers and budgets.

:func:`merge_documents` merges documents that carry their sketches (``?sketches=1``):
counts add, breaches add, sketches merge, the slowest are the top of the union; then
:func:`judge` again. Merging the documents of any split of the same startups gives the
document of the whole (sketch merges are exact).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from otelbridge import sla
from otelbridge.core.config import Config
from otelbridge.core.model import FAILED_OUTCOMES
from otelbridge.processor.sketch import Durations

PASS: Final = "pass"
HALT: Final = "halt"
INSUFFICIENT: Final = "insufficient"
VERDICTS: Final = (PASS, HALT, INSUFFICIENT)

_SLOWEST_KEYS: Final = frozenset(
    {
        "trace_id",
        "container_id",
        "namespace",
        "k8s_namespace",
        "pod",
        "outcome",
        "startup_duration_s",
        "dominant_phase",
        "phases",
    }
)


@dataclass(frozen=True, slots=True)
class Counts:
    """The startups behind a document: ``startups`` (distinct container.startup spans),
    ``failed`` (outcome exited, timeout or not_ready), ``partial`` (first events missed:
    not covered), ``pods`` (distinct pod.startup spans)."""

    startups: int = 0
    failed: int = 0
    partial: int = 0
    pods: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.startups + other.startups,
            self.failed + other.failed,
            self.partial + other.partial,
            self.pods + other.pods,
        )


def judge(
    *,
    counts: Counts,
    durations: Durations,
    slowest: Sequence[Mapping[str, Any]],
    config: Config,
    expect: int | None,
    trace_id: str | None = None,
    name: str | None = None,
    namespace: str | None = None,
    sketches: bool = False,
) -> dict[str, Any]:
    """The verdict document (see the module docstring). Pure: the same arguments give the
    same document. ``slowest`` items are copied as given, the first ``gate.slowest`` of
    them, sorted by :func:`slowest_order`; ``sketches`` adds the base64 sketches."""
    gate = config.gate
    limits = sla.budgets(config.sla)
    budgets: dict[str, dict[str, Any]] = {}
    over: list[str] = []
    measured = 0
    for duration in sla.DURATIONS:
        samples = durations.samples(duration)
        p99 = durations.p99(duration)
        limit = limits[duration]
        breaches = durations.breaches(duration)
        if samples < gate.min_startups:
            verdict = INSUFFICIENT
        elif p99 is not None and p99 > limit:
            verdict = HALT
            over.append(
                f"{duration} p99 {_pair(p99, limit)} s over its budget of {_num(limit)} s "
                f"({breaches} of {samples} startups over)"
            )
        else:
            verdict = PASS
        if verdict != INSUFFICIENT:
            measured += 1
        budgets[duration] = {
            "verdict": verdict,
            "samples": samples,
            "p99_s": None if p99 is None else round(p99, 6),
            "budget_s": limit,
            "breaches": breaches,
        }

    startups = counts.startups
    denominator = max(startups, expect or 0)
    coverage = (startups - counts.partial) / denominator if denominator else None
    reasons: list[str] = []
    needed = max(gate.min_startups, expect or 0)
    if startups < needed:
        verdict = INSUFFICIENT
        if expect is not None and startups < expect:
            reasons.append(f"{startups} of {expect} expected startups seen")
        else:
            reasons.append(
                f"{startups} startups seen, fewer than the {gate.min_startups} a verdict "
                "needs (gate.min_startups)"
            )
    else:
        reasons.extend(over)
        if counts.failed / startups > gate.max_failed_ratio:
            reasons.append(
                f"{counts.failed} of {startups} startups failed before ready (exited, timed "
                f"out or not ready): {_pct(counts.failed / startups)}, over the "
                f"{_pct(gate.max_failed_ratio)} allowed (gate.max_failed_ratio)"
            )
        if expect is not None and coverage is not None and coverage < config.sla.coverage_min:
            reasons.append(
                f"coverage {_pct(coverage)} under its minimum of "
                f"{_pct(config.sla.coverage_min)}: {startups - counts.partial} of "
                f"{denominator} expected startups fully traced ({counts.partial} partial)"
            )
        if reasons:
            verdict = HALT
        elif measured == 0:
            verdict = INSUFFICIENT
            reasons.append(
                f"no duration measured on {gate.min_startups} startups or more (gate."
                "min_startups): "
                + ", ".join(f"{d} {budgets[d]['samples']}" for d in sla.DURATIONS)
                + " samples"
            )
        else:
            verdict = PASS

    doc: dict[str, Any] = {
        "trace_id": trace_id,
        "name": name,
        "namespace": namespace,
        "verdict": verdict,
        "startups": startups,
        "failed": counts.failed,
        "partial": counts.partial,
        "pods": counts.pods,
        "expect": expect,
        "coverage": None if coverage is None else round(coverage, 6),
        "budgets": budgets,
        "reasons": reasons,
        "slowest": [dict(item) for item in sorted(slowest, key=slowest_order)[: gate.slowest]],
    }
    if sketches:
        doc["sketches"] = durations.to_json()
    return doc


def slowest_order(item: Mapping[str, Any]) -> tuple[float, str, str, str]:
    """Sort key of the slowest startups: longest first, then by trace, namespace and
    container id, so every replica and every merge lists ties alike."""
    return (
        -float(item.get("startup_duration_s") or 0.0),
        str(item.get("trace_id") or ""),
        str(item.get("namespace") or ""),
        str(item.get("container_id") or ""),
    )


def merge_documents(
    docs: Sequence[Mapping[str, Any]],
    config: Config,
    *,
    expect: int | None,
    sketches: bool = False,
) -> dict[str, Any]:
    """One document from the documents of several replicas about the same rollout (or
    namespace), each carrying ``sketches``: counts and breaches add, sketches merge, the
    slowest are the top ``gate.slowest`` of the union, ``name`` is any non-null one; then
    :func:`judge`. ValueError, naming the document (its position in ``docs``), for one
    that is not such a document or is about another rollout or namespace."""
    counts = Counts()
    durations = Durations()
    slowest: list[dict[str, Any]] = []
    seen_slowest: set[tuple[Any, ...]] = set()
    trace_id: str | None = None
    namespace: str | None = None
    name: str | None = None
    for i, doc in enumerate(docs):
        where = f"document {i + 1}"
        if not isinstance(doc, Mapping):
            raise ValueError(f"{where}: expected an object, got {type(doc).__name__}")
        try:
            counts += _counts(doc)
            durations.merge(Durations.from_json(_sketches(doc), breaches=_breaches(doc)))
            items = _slowest(doc)
            doc_trace = _optional_str(doc, "trace_id")
            doc_ns = _optional_str(doc, "namespace")
            doc_name = _optional_str(doc, "name")
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from exc
        if doc_trace is not None:
            if trace_id is not None and doc_trace != trace_id:
                raise ValueError(f"{where}: about trace {doc_trace}, the others {trace_id}")
            trace_id = doc_trace
        if doc_ns is not None:
            if namespace is not None and doc_ns != namespace:
                raise ValueError(f"{where}: about namespace {doc_ns}, the others {namespace}")
            namespace = doc_ns
        name = name or doc_name
        for item in items:
            identity = tuple(str(item.get(k)) for k in sorted(_SLOWEST_KEYS - {"phases"}))
            if identity not in seen_slowest:  # the same startup reported by two replicas
                seen_slowest.add(identity)
                slowest.append(item)
    return judge(
        counts=counts,
        durations=durations,
        slowest=slowest,
        config=config,
        expect=expect,
        trace_id=trace_id,
        name=name,
        namespace=namespace,
        sketches=sketches,
    )


# -- reading a document ---------------------------------------------------------------------
def _int(doc: Mapping[str, Any], key: str, *, default: int | None = None) -> int:
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key}: expected a count (an integer >= 0), got {value!r}")
    return value


def _counts(doc: Mapping[str, Any]) -> Counts:
    counts = Counts(
        _int(doc, "startups"),
        _int(doc, "failed"),
        _int(doc, "partial"),
        _int(doc, "pods", default=0),
    )
    if counts.failed > counts.startups or counts.partial > counts.startups:
        raise ValueError(
            f"{counts.failed} failed and {counts.partial} partial of {counts.startups} startups"
        )
    return counts


def _sketches(doc: Mapping[str, Any]) -> Mapping[str, str]:
    found = doc.get("sketches")
    if not isinstance(found, Mapping):
        raise ValueError("carries no sketches (ask the processor with ?sketches=1)")
    return found


def _breaches(doc: Mapping[str, Any]) -> dict[str, int]:
    budgets = doc.get("budgets")
    if not isinstance(budgets, Mapping):
        raise ValueError("budgets: expected an object")
    out: dict[str, int] = {}
    for duration in sla.DURATIONS:
        entry = budgets.get(duration)
        if entry is None:
            continue
        if not isinstance(entry, Mapping):
            raise ValueError(f"budgets.{duration}: expected an object")
        out[duration] = _int(entry, "breaches", default=0)
    return out


def _slowest(doc: Mapping[str, Any]) -> list[dict[str, Any]]:
    items = doc.get("slowest", [])
    if not isinstance(items, list):
        raise ValueError("slowest: expected a list")
    out: list[dict[str, Any]] = []
    for item in items:
        if not isinstance(item, Mapping):
            raise ValueError("slowest: expected a list of objects")
        seconds = item.get("startup_duration_s")
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not math.isfinite(seconds)
        ):
            raise ValueError(f"slowest: startup_duration_s {seconds!r} is not a number")
        out.append(dict(item))
    return out


def _optional_str(doc: Mapping[str, Any], key: str) -> str | None:
    value = doc.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{key}: expected a string or null, got {value!r}")
    return value


# -- wording --------------------------------------------------------------------------------
def _num(value: float) -> str:
    """A duration in seconds for a sentence: 3 significant digits (1, 0.41, 1.43, 12.3)."""
    return f"{value:.3g}"


def _pair(value: float, limit: float) -> str:
    """``value`` with enough digits that it does not read as equal to ``limit``."""
    for digits in (3, 4, 5, 6):
        text = f"{value:.{digits}g}"
        if text != f"{limit:.{digits}g}":
            return text
    return repr(value)


def _pct(ratio: float) -> str:
    text = f"{ratio * 100:.1f}".rstrip("0").rstrip(".")
    return f"{text}%"


__all__ = [
    "FAILED_OUTCOMES",
    "HALT",
    "INSUFFICIENT",
    "PASS",
    "VERDICTS",
    "Counts",
    "judge",
    "merge_documents",
    "slowest_order",
]
