"""What an SLA report holds, whichever source it was built from.

A :class:`Report` is built from a running bridge's ``GET /v1/sla`` (verdicts and figures
only) or from a jsonl span file (the same verdicts, computed here, plus the raw durations
and the slowest startups' phases the charts need). Renderers (terminal, HTML) read it and
nothing else. Everything here is immutable and JSON-free: parsing lives in
:mod:`otelbridge.report.sources`.

Times are seconds (``*_s``, floats) because the report is an edge meant for people; the
span time range keeps the spans' integer nanoseconds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from otelbridge import sla

SourceKind = Literal["api", "spans"]

#: What each duration budget measures, for the contract table. Everywhere else a
#: duration is called by its one name, the budget's (``startup_duration``, ...).
DURATION_MEASURES: Final[Mapping[str, str]] = {
    sla.STARTUP_DURATION: "first event -> ready",
    sla.SHIM_LAUNCH_TIME: "/containers/create -> /tasks/create",
    sla.TASK_CREATE_TO_READY: "/tasks/create -> ready",
}


@dataclass(frozen=True, slots=True)
class BudgetResult:
    """One duration budget's verdict in one namespace (an entry of ``/v1/sla``'s
    ``budgets``). ``p99_s`` is None when nothing was measured."""

    name: str
    verdict: str
    samples: int
    p99_s: float | None
    budget_s: float
    breaches: int


@dataclass(frozen=True, slots=True)
class Phase:
    """One phase span of a startup, placed relative to the startup's start.
    ``complete`` is false for a phase that began but never ended (status ERROR)."""

    name: str
    offset_s: float
    duration_s: float
    complete: bool


@dataclass(frozen=True, slots=True)
class StartupBars:
    """One startup as the waterfall draws it: its ``container.startup`` span and the
    phase spans under it, in phase order."""

    container_id: str
    label: str
    outcome: str
    total_s: float
    partial: bool
    breached: tuple[str, ...]
    phases: tuple[Phase, ...]
    trace_id: str = ""
    reason: str = ""
    """Why it failed: its ``container.startup`` status message (empty when ready)."""

    @property
    def stopped_in(self) -> str | None:
        """The phase a failed startup stopped in (its incomplete phase), or None."""
        for phase in self.phases:
            if not phase.complete:
                return phase.name
        return None


@dataclass(frozen=True, slots=True)
class Spread:
    """A group of samples summed up: count, median and p99, both nearest rank (values
    that occurred, as the bridge computes them); None when the group is empty."""

    samples: int
    median_s: float | None
    p99_s: float | None

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            return cls(0, None, None)
        return cls(len(values), sla.p50(values), sla.p99(values))


@dataclass(frozen=True, slots=True)
class GcFigures:
    """The GC budget in one namespace, from a span file's ``snapshot.reclaim`` spans and
    the ``otelbridge.gc.overlap`` tag of its startups.

    ``reclaim_s``: each reclaim's duration; ``degraded``: reclaims marked
    ``otelbridge.gc.degraded`` (else slower than ``reclaim_budget_s``) and not leaked,
    as the bridge counts them; ``leaked``: reclaims of snapshots that had been reported
    leaked (a snapshot never removed has no span, so a file cannot show it).
    ``overlapped_startups``: startups tagged ``otelbridge.gc.overlap``;
    ``overlapped_s`` / ``others_s``: the ``shim_launch_time`` of the tagged startups and
    of the others, the evidence that reclaims do not block creates.
    """

    reclaim_s: tuple[float, ...]
    degraded: int
    leaked: int
    reclaim_budget_s: float
    leak_ttl_s: float
    overlapped_startups: int
    overlapped_s: tuple[float, ...]
    others_s: tuple[float, ...]

    @property
    def reclaims(self) -> Spread:
        return Spread.of(self.reclaim_s)

    @property
    def overlapped(self) -> Spread:
        return Spread.of(self.overlapped_s)

    @property
    def others(self) -> Spread:
        return Spread.of(self.others_s)

    def to_json(self) -> dict[str, Any]:
        """The ``gc`` object of the verdict JSON: the keys of the bridge's ``/v1/sla``
        that a span file can tell (not ``leaked_now``), plus ``reclaim_max_s`` and the
        p99s of the overlap comparison."""
        reclaims, overlapped, others = self.reclaims, self.overlapped, self.others
        return {
            "reclaims": reclaims.samples,
            "degraded": self.degraded,
            "reclaim_p99_s": reclaims.p99_s,
            "reclaim_max_s": max(self.reclaim_s) if self.reclaim_s else None,
            "reclaim_budget_s": self.reclaim_budget_s,
            "leaked": self.leaked,
            "leak_ttl_s": self.leak_ttl_s,
            "overlapped_startups": self.overlapped_startups,
            "create_p50_s_overlapped": overlapped.median_s,
            "create_p50_s_other": others.median_s,
            "create_p99_s_overlapped": overlapped.p99_s,
            "create_p99_s_other": others.p99_s,
        }


@dataclass(frozen=True)
class NamespaceReport:
    """One containerd namespace: its verdicts and, from a span file, what the charts
    draw.

    ``samples`` maps each duration budget to every value measured (from the API only
    when asked with ``?samples=1``); ``slowest`` are the slowest startups, slowest first;
    ``failed`` the failed ones (outcome exited, timeout or not_ready; from the API the
    latest of them), ``failed_total`` how many failed; ``outcomes`` counts
    startups by ``otelbridge.startup.outcome``; ``gc`` is set from span files,
    ``gc_figures`` holds the ``gc`` object of the verdict JSON as it came (the API's
    may carry figures this report does not know; they are shown as they are).
    """

    name: str
    verdict: str
    startups: int
    traced: int
    coverage: float | None
    coverage_verdict: str
    budgets: tuple[BudgetResult, ...]
    samples: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    slowest: tuple[StartupBars, ...] = ()
    failed: tuple[StartupBars, ...] = ()
    failed_total: int = 0
    outcomes: Mapping[str, int] = field(default_factory=dict)
    gc: GcFigures | None = None
    gc_figures: Mapping[str, Any] = field(default_factory=dict)

    def budget(self, name: str) -> BudgetResult | None:
        for result in self.budgets:
            if result.name == name:
                return result
        return None

    @property
    def broken(self) -> list[str]:
        """The budgets (and ``coverage``) whose verdict is ``breach``."""
        out = [b.name for b in self.budgets if b.verdict == sla.Verdict.BREACH.value]
        if self.coverage_verdict == sla.Verdict.BREACH.value:
            out.append(sla.COVERAGE)
        return out


@dataclass(frozen=True)
class RolloutReport:
    """One rollout of a span file (a trace holding startups), judged as the processor
    judges it: ``verdict`` pass, halt or insufficient, with the reasons. ``document`` is
    the processor's verdict document as it came."""

    trace_id: str
    name: str
    verdict: str
    startups: int
    failed: int
    partial: int
    reasons: tuple[str, ...] = ()
    document: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Report:
    """A whole report: where it came from, the contract it judged, every namespace.

    ``verdict_json`` is the verdict JSON (the ``/v1/sla`` shape, docs/sla.md) that
    ``otelbridge sla --json`` prints. ``window_s`` is the bridge's rolling window (API)
    or the time the file's spans cover (span file: the verdicts look at all of them).
    """

    kind: SourceKind
    source: str
    generated_at_ns: int
    window_s: float | None
    min_samples: int
    budgets: Mapping[str, float]
    coverage_min: float
    namespaces: tuple[NamespaceReport, ...]
    verdict_json: Mapping[str, Any]
    first_ns: int | None = None
    last_ns: int | None = None
    spans_read: int = 0
    rollouts: tuple[RolloutReport, ...] = ()
    """From a span file: its startups grouped by rollout (the trace that caused them)."""
    left_out: tuple[str, ...] = ()
    """Namespaces the source has that ``-n`` did not ask for (to say when none matched)."""
    nodes: tuple[str, ...] = ()
    """The nodes the startups ran on (``k8s.node.name``, else ``host.name``)."""
    clusters: tuple[str, ...] = ()
    """The clusters they ran in (``k8s.cluster.name`` of the bridges' resource)."""
    failed_max_ratio: float = 0.0
    """The gate's ``max_failed_ratio``: more failed startups than this halt a rollout."""

    @property
    def verdict(self) -> str:
        """Over every namespace, by :func:`otelbridge.sla.overall`: ``breach`` if any
        namespace breaches, else ``insufficient`` if any lacks data (or there is none),
        else ``pass``."""
        return sla.overall(ns.verdict for ns in self.namespaces)

    @property
    def has_spans(self) -> bool:
        """Whether it was built from a span file."""
        return self.kind == "spans"

    @property
    def has_samples(self) -> bool:
        """Whether the charts' data (raw durations, phases) is there: always from a
        span file, from a bridge when it was asked for (``/v1/sla?samples=1``)."""
        return self.has_spans or any(ns.samples or ns.slowest for ns in self.namespaces)
