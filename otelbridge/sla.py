"""The startup SLA: budgets, per-startup breaches, per-namespace verdicts.

Budgets (PRODUCT.md section 2, ``[sla]`` in the config):

* ``startup_duration``: first event -> ready, p99 under ``startup_duration_p99_s`` (4 s);
* ``shim_launch_time``: ``/containers/create`` -> ``/tasks/create``, under 2 s;
* ``task_create_to_ready``: ``/tasks/create`` -> ready, under 1 s;
* coverage: at least ``coverage_min`` (90%) of startups fully traced, per namespace.

Per startup, :func:`breached` names the budgets its own durations broke (the span
attribute ``otelbridge.sla.breached``). Per namespace, :class:`SlaTracker` keeps the
startups completed in a rolling window and judges the p99 of each duration against its
budget: ``pass``, ``breach``, or ``insufficient`` when fewer than ``min_samples``
startups were measured (never ``pass`` on too little data). Coverage counts every
startup seen: a partial one (first events missed, found by listing) is not covered.

The functions are pure; the tracker is fed on the event thread and read (under a lock)
by the status API.
"""

from __future__ import annotations

import enum
import math
import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from otelbridge.core.clock import Clock
from otelbridge.core.config import SlaConfig
from otelbridge.core.model import FAILED_OUTCOMES, Outcome, PhaseBound, StartupRecord

STARTUP_DURATION: Final = "startup_duration"
SHIM_LAUNCH_TIME: Final = "shim_launch_time"
TASK_CREATE_TO_READY: Final = "task_create_to_ready"
COVERAGE: Final = "coverage"
#: the duration budgets, in the order they are reported
DURATIONS: Final = (STARTUP_DURATION, SHIM_LAUNCH_TIME, TASK_CREATE_TO_READY)

_NS = 1_000_000_000
_MAX_SAMPLES = 20_000  # per namespace and window: bounds memory under a flood
#: ``/v1/sla?samples=1``: how many of the slowest startups, and of the latest failed
#: ones, each namespace lists
SLOWEST: Final = 10
FAILED_LISTED: Final = 50


class Verdict(enum.Enum):
    PASS = "pass"
    BREACH = "breach"
    INSUFFICIENT = "insufficient"


def budgets(config: SlaConfig) -> dict[str, float]:
    """Budget of each duration, in seconds."""
    return {
        STARTUP_DURATION: config.startup_duration_p99_s,
        SHIM_LAUNCH_TIME: config.shim_launch_s,
        TASK_CREATE_TO_READY: config.task_create_to_ready_s,
    }


def durations(record: StartupRecord) -> dict[str, float]:
    """The measurable durations of a startup, in seconds. Only a startup that became
    ready has a ``startup_duration`` or ``task_create_to_ready``; a phase whose two
    events were not both seen is not measured."""
    out: dict[str, float] = {}
    if record.container_create_ns is not None and record.task_create_ns is not None:
        out[SHIM_LAUNCH_TIME] = (record.task_create_ns - record.container_create_ns) / _NS
    if record.outcome is Outcome.READY and record.ready_ns is not None:
        if not record.partial:
            out[STARTUP_DURATION] = (record.ready_ns - record.start_ns) / _NS
        if record.task_create_ns is not None:
            out[TASK_CREATE_TO_READY] = (record.ready_ns - record.task_create_ns) / _NS
    return out


def breached(measured: Mapping[str, float], limits: Mapping[str, float]) -> list[str]:
    """The budgets these durations broke, in the order of :data:`DURATIONS`."""
    return [name for name in DURATIONS if name in measured and measured[name] > limits[name]]


def p99(values: Sequence[float]) -> float:
    """The 99th percentile, nearest-rank (a value that occurred, never interpolated)."""
    if not values:
        raise ValueError("p99 of nothing")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def p50(values: Sequence[float]) -> float:
    """The median, nearest-rank (a value that occurred, never interpolated)."""
    if not values:
        raise ValueError("p50 of nothing")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.5 * len(ordered)) - 1)]


def coverage_verdict(startups: int, traced: int, config: SlaConfig) -> tuple[float | None, str]:
    """(coverage, verdict) of a namespace: insufficient below ``min_samples`` startups,
    pass at ``coverage_min`` or more, else breach."""
    coverage = traced / startups if startups else None
    if startups < config.min_samples:
        return coverage, Verdict.INSUFFICIENT.value
    if coverage is not None and coverage >= config.coverage_min:
        return coverage, Verdict.PASS.value
    return coverage, Verdict.BREACH.value


def judge(values: Sequence[float], budget: float, min_samples: int) -> dict[str, Any]:
    """One duration's verdict over a window of samples."""
    if len(values) < min_samples:
        return {
            "verdict": Verdict.INSUFFICIENT.value,
            "samples": len(values),
            "p99_s": p99(values) if values else None,
            "budget_s": budget,
            "breaches": sum(1 for v in values if v > budget),
        }
    worst = p99(values)
    return {
        "verdict": (Verdict.PASS if worst < budget else Verdict.BREACH).value,
        "samples": len(values),
        "p99_s": worst,
        "budget_s": budget,
        "breaches": sum(1 for v in values if v > budget),
    }


def overall(verdicts: Iterable[str]) -> str:
    """A namespace's verdict: breach if any budget is breached, else insufficient if any
    lacks data, else pass."""
    seen = set(verdicts)
    if Verdict.BREACH.value in seen:
        return Verdict.BREACH.value
    if Verdict.INSUFFICIENT.value in seen or not seen:
        return Verdict.INSUFFICIENT.value
    return Verdict.PASS.value


class StartupFacts(NamedTuple):
    """What the detailed ``/v1/sla`` tells of one startup: who it was, its trace, how it
    ended and why, and the moments its phases are drawn from. (A tuple: one is kept per
    startup in the window, and building a tuple costs a fraction of a frozen dataclass.)"""

    container_id: str
    label: str
    trace_id: str
    outcome: str
    partial: bool
    reason: str
    start_ns: int
    end_ns: int
    phases: tuple[tuple[str, int, int, bool], ...]  # (name, begin_ns, end_ns, complete)
    breached: tuple[str, ...]

    @classmethod
    def of(
        cls,
        record: StartupRecord,
        measured: Mapping[str, float],
        limits: Mapping[str, float],
        *,
        label: str,
        trace_id: str,
        reason: str,
        phases: Sequence[PhaseBound] | None = None,
    ) -> StartupFacts:
        """``phases``: ``record.phase_bounds()[0]`` when the caller has it already."""
        if phases is None:
            phases, _missing = record.phase_bounds()
        return cls(
            container_id=record.key.id,
            label=label,
            trace_id=trace_id,
            outcome=record.outcome.value if record.outcome is not None else "",
            partial=record.partial,
            reason=reason,
            start_ns=record.start_ns,
            end_ns=record.end_ns if record.end_ns is not None else record.start_ns,
            phases=tuple(phases),
            breached=tuple(breached(measured, limits)),
        )

    @property
    def total_ns(self) -> int:
        return self.end_ns - self.start_ns

    def to_json(self) -> dict[str, Any]:
        """One entry of ``slowest`` or ``failed`` (docs/sla.md)."""
        return {
            "container_id": self.container_id,
            "label": self.label,
            "trace_id": self.trace_id,
            "outcome": self.outcome,
            "partial": self.partial,
            "reason": self.reason,
            "total_s": self.total_ns / _NS,
            "breached": list(self.breached),
            "phases": [
                {
                    "name": name,
                    "offset_s": (begin - self.start_ns) / _NS,
                    "duration_s": (end - begin) / _NS,
                    "complete": complete,
                }
                for name, begin, end, complete in self.phases
            ],
        }


@dataclass(slots=True)
class _Sample:
    at_ns: int  # the clock time it was observed
    traced: bool
    values: dict[str, float]
    facts: StartupFacts | None = None


class SlaTracker:
    """Rolling per-namespace windows of completed startups. ``observe`` runs on the
    event thread; ``snapshot`` from any thread (the status API)."""

    def __init__(self, config: SlaConfig, clock: Clock) -> None:
        self._cfg = config
        self._clock = clock
        self._limits = budgets(config)
        self._window_ns = int(config.window_s * _NS)
        self._windows: dict[str, deque[_Sample]] = {}
        self._lock = threading.Lock()
        self.extra: list[Any] = []
        """Callables ``(namespace) -> dict`` adding figures to each namespace (GC)."""
        self.resource: dict[str, str] = {}
        """The bridge's resource attributes (node, cluster), shown by the report."""

    @property
    def limits(self) -> dict[str, float]:
        return dict(self._limits)

    def observe(
        self,
        record: StartupRecord,
        measured: Mapping[str, float],
        *,
        label: str = "",
        trace_id: str = "",
        reason: str = "",
        phases: Sequence[PhaseBound] | None = None,
    ) -> None:
        """Counts one completed startup in its namespace's window. ``label``,
        ``trace_id`` and ``reason`` (its span's status message) are what the detailed
        snapshot lists it by; ``phases`` as :meth:`StartupFacts.of` takes them."""
        namespace = record.key.namespace
        facts = StartupFacts.of(
            record,
            measured,
            self._limits,
            label=label,
            trace_id=trace_id,
            reason=reason,
            phases=phases,
        )
        sample = _Sample(self._clock.now_ns(), not record.partial, dict(measured), facts)
        with self._lock:
            window = self._windows.setdefault(namespace, deque(maxlen=_MAX_SAMPLES))
            window.append(sample)

    def _trim(self, window: deque[_Sample], now: int) -> None:
        while window and window[0].at_ns <= now - self._window_ns:
            window.popleft()

    def snapshot(self, *, detail: bool = False) -> dict[str, Any]:
        """The verdicts of every namespace seen (JSON-ready; the ``/v1/sla`` answer).
        With ``detail`` (``/v1/sla?samples=1``) each namespace also lists its samples,
        outcomes, slowest and latest failed startups: what the report's charts draw."""
        now = self._clock.now_ns()
        cfg = self._cfg
        with self._lock:
            windows = {}
            for namespace, window in self._windows.items():
                self._trim(window, now)
                windows[namespace] = list(window)
        namespaces = {ns: self._judge_namespace(samples) for ns, samples in windows.items()}
        for namespace, figures in namespaces.items():
            for extra in self.extra:
                figures.update(extra(namespace))
            if detail:
                figures.update(_detail(windows[namespace]))
        return {
            **({"resource": dict(self.resource)} if self.resource else {}),
            "window_s": cfg.window_s,
            "min_samples": cfg.min_samples,
            "budgets": {
                **{name: limit for name, limit in self._limits.items()},
                COVERAGE: cfg.coverage_min,
            },
            "namespaces": namespaces,
        }

    def _judge_namespace(self, samples: list[_Sample]) -> dict[str, Any]:
        cfg = self._cfg
        judged = {
            name: judge(
                [s.values[name] for s in samples if name in s.values],
                self._limits[name],
                cfg.min_samples,
            )
            for name in DURATIONS
        }
        seen = len(samples)
        traced = sum(1 for s in samples if s.traced)
        coverage, covered = coverage_verdict(seen, traced, cfg)
        return {
            "verdict": overall([*(j["verdict"] for j in judged.values()), covered]),
            "startups": seen,
            "traced": traced,
            "coverage": coverage,
            "coverage_verdict": covered,
            "budgets": judged,
        }


def _detail(samples: Sequence[_Sample]) -> dict[str, Any]:
    """A window's samples as the report charts them (see :meth:`SlaTracker.snapshot`)."""
    outcomes: dict[str, int] = {}
    facts = [s.facts for s in samples if s.facts is not None]
    for f in facts:
        outcomes[f.outcome or "?"] = outcomes.get(f.outcome or "?", 0) + 1
    slowest = sorted(facts, key=lambda f: f.total_ns, reverse=True)[:SLOWEST]
    failed = [f for f in facts if f.outcome in FAILED_OUTCOMES]
    return {
        "samples": {
            name: [s.values[name] for s in samples if name in s.values] for name in DURATIONS
        },
        "outcomes": outcomes,
        "slowest": [f.to_json() for f in slowest],
        "failed": [f.to_json() for f in failed[-FAILED_LISTED:]],
        "failed_total": len(failed),
    }
