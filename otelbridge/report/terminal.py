"""The report as a terminal table: one block per namespace. Pure: report in, text out.

::

    fast  PASS  24 startups, 24 traced, coverage 100.0% (>= 90%): pass
      budget                     p99   budget  samples  breaches  verdict
      startup_duration       161 ms      4 s       24         0  pass
      ...
      gc: no snapshot.reclaim spans; no startup overlapped a reclaim
      slowest: web-7 1.24 s (ready) = container.create 4.00 ms + shim.launch 44.0 ms + ...

Colours (ANSI) only when asked: the caller decides (a tty, no ``NO_COLOR``).
"""

from __future__ import annotations

from otelbridge import sla
from otelbridge.report import fmt
from otelbridge.report.model import NamespaceReport, Report

_GREEN, _RED, _YELLOW, _BOLD, _DIM, _RESET = (
    "\x1b[32m",
    "\x1b[31m",
    "\x1b[33m",
    "\x1b[1m",
    "\x1b[2m",
    "\x1b[0m",
)
_TINT = {
    sla.Verdict.PASS.value: _GREEN,
    sla.Verdict.BREACH.value: _RED,
    sla.Verdict.INSUFFICIENT.value: _YELLOW,
}


def _paint(text: str, verdict: str, color: bool, *, bold: bool = False) -> str:
    if not color:
        return text
    return f"{_BOLD if bold else ''}{_TINT.get(verdict, '')}{text}{_RESET}"


def header(report: Report) -> list[str]:
    """The lines above the namespaces: overall verdict, source, contract."""
    count = len(report.namespaces)
    lines = [
        f"otelbridge SLA report: {count} namespace{'s' if count != 1 else ''}, "
        f"overall {report.verdict.upper()}"
    ]
    if report.has_spans:
        lines.append(
            f"source: {report.source} ({report.spans_read} spans, "
            f"{fmt.span_range(report.first_ns, report.last_ns)}); verdicts over all of them"
        )
    else:
        window = f"{report.window_s:g} s" if report.window_s is not None else "?"
        lines.append(f"source: {report.source} (the bridge's rolling window: {window})")
    limits = ", ".join(
        f"{name} {'p99 ' if name == sla.STARTUP_DURATION else ''}< {fmt.budget(value)}"
        for name, value in report.budgets.items()
    )
    lines.append(
        f"budgets: {limits}, coverage >= {fmt.percent(report.coverage_min)}; "
        f"verdicts need {report.min_samples} samples"
    )
    where = []
    if report.clusters:
        where.append("cluster " + ", ".join(report.clusters))
    if report.nodes:
        more = len(report.nodes) - _NODES_SHOWN
        where.append(
            fmt.plural(len(report.nodes), "node")
            + ": "
            + ", ".join(report.nodes[:_NODES_SHOWN])
            + (f" and {more} more" if more > 0 else "")
        )
    if where:
        lines.append("on " + "; ".join(where))
    return lines


_NODES_SHOWN = 6
_FAILED_SHOWN = 3  # the latest few: the HTML report lists them all


def namespace_block(ns: NamespaceReport, coverage_min: float, *, color: bool) -> list[str]:
    """The table of one namespace."""
    lines = [
        f"{_paint(ns.name, ns.verdict, color, bold=True)}  "
        f"{_paint(ns.verdict.upper(), ns.verdict, color, bold=True)}  "
        f"{ns.startups} startups, {ns.traced} traced, coverage {fmt.percent(ns.coverage)} "
        f"(>= {fmt.percent(coverage_min)}): "
        f"{_paint(ns.coverage_verdict, ns.coverage_verdict, color)}"
    ]
    width = max([len("budget"), *(len(b.name) for b in ns.budgets)])
    lines.append(
        f"  {'budget':<{width}}  {'p99':>9}  {'budget':>7}  {'samples':>7}  "
        f"{'breaches':>8}  verdict"
    )
    for b in ns.budgets:
        lines.append(
            f"  {b.name:<{width}}  {fmt.seconds(b.p99_s):>9}  {fmt.budget(b.budget_s):>7}  "
            f"{b.samples:>7}  {b.breaches:>8}  {_paint(b.verdict, b.verdict, color)}"
        )
    lines.append(f"  gc: {fmt.gc_summary(ns.gc_figures)}")
    if ns.slowest:
        worst = ns.slowest[0]
        parts = " + ".join(
            f"{p.name} {fmt.seconds(p.duration_s)}{'' if p.complete else ' (unfinished)'}"
            for p in worst.phases
        )
        text = f"  slowest: {worst.label} {fmt.seconds(worst.total_s)} ({worst.outcome})"
        text += f" = {parts}" if parts else ""
        lines.append(f"{_DIM}{text}{_RESET}" if color else text)
    if ns.failed_total:
        lines.append(
            "  "
            + _paint(f"failed: {ns.failed_total} of {ns.startups}", "breach", color)
            + " (outcome exited, timeout or not_ready)"
        )
        for s in ns.failed[-_FAILED_SHOWN:]:
            stopped = f" in {s.stopped_in}" if s.stopped_in else ""
            trace = f" trace {s.trace_id}" if s.trace_id else ""
            lines.append(f"    {s.label} {s.outcome}{stopped}: {s.reason or '?'}{trace}")
    return lines


def rollout_block(report: Report, *, color: bool) -> list[str]:
    """The rollouts of a span file, a line each, with the reasons of those that did not
    pass (judged as ``otelbridge processor`` judges them)."""
    if not report.rollouts:
        return []
    lines = ["", f"rollouts ({len(report.rollouts)}, judged as otelbridge processor does):"]
    verdicts = {"pass": "pass", "halt": "breach", "insufficient": "insufficient"}
    for r in report.rollouts:
        tint = verdicts.get(r.verdict, r.verdict)
        lines.append(
            f"  {r.name or '(unnamed)'}  trace {r.trace_id}  "
            f"{_paint(r.verdict.upper(), tint, color, bold=True)}  "
            f"{r.startups} startups, {r.failed} failed, {r.partial} partial"
        )
        lines += [f"    - {reason}" for reason in r.reasons]
    return lines


def render_table(report: Report, *, color: bool = False) -> str:
    """The whole report as text, ending with a newline."""
    lines = header(report)
    lines += rollout_block(report, color=color)
    if not report.namespaces:
        where = " in this file" if report.has_spans else " in the window"
        if report.left_out:
            lines += [
                "",
                f"no startups in the namespaces asked for{where}; it has startups in: "
                + ", ".join(report.left_out),
            ]
        else:
            lines += ["", "no startups" + where]
    for ns in report.namespaces:
        lines.append("")
        lines += namespace_block(ns, report.coverage_min, color=color)
    return "\n".join(lines) + "\n"
