"""The HTML page's startups: the slowest as a phase waterfall, the failed ones judged one
by one, and the rollouts of a span file; each with its trace ID, linked to the trace
when the report was given a URL template (``--trace-url``)."""

from __future__ import annotations

from collections.abc import Mapping

from otelbridge import sla
from otelbridge.report import fmt
from otelbridge.report.htmlbits import e, figure, trace_link, verdict_class
from otelbridge.report.model import NamespaceReport, Report, StartupBars


def waterfall(
    ns: NamespaceReport, index: int, budgets: Mapping[str, float], trace_url: str | None
) -> str:
    """The slowest startups, by phase, then the same startups as rows with their traces."""
    from otelbridge.report import charts  # noqa: PLC0415 - matplotlib only when drawing

    if not ns.slowest:
        return ""
    svg = charts.waterfall(
        ns.slowest,
        budget_s=budgets.get(sla.STARTUP_DURATION, 0.0),
        chart_id=f"w{index}",
    )
    title = "slowest startup" if len(ns.slowest) == 1 else f"{len(ns.slowest)} slowest startups"
    rows = "".join(
        f"<tr><td>{e(s.label)}</td><td class='num'>{e(fmt.seconds(s.total_s))}</td>"
        f"<td>{e(s.outcome)}{' (partial)' if s.partial else ''}</td>"
        f"<td>{e(', '.join(s.breached) or '-')}</td><td>{trace_link(s.trace_id, trace_url)}</td>"
        "</tr>"
        for s in ns.slowest
    )
    return (
        f"<h3>The {title}, by phase</h3>"
        + figure(
            svg,
            "Each bar is one container startup from its first event: container.create "
            "(/snapshot/prepare -> /containers/create), shim.launch (-> /tasks/create), "
            "task.start (-> /tasks/start), readiness.wait (-> ready). Hatched: a phase that "
            "never completed.",
        )
        + '<table class="slowest"><tr><th>startup</th><th>took</th><th>outcome</th>'
        f"<th>budgets broken</th><th>trace</th></tr>{rows}</table>"
    )


def _stopped(startup: StartupBars) -> str:
    phase = startup.stopped_in
    if phase is None:
        return "-"
    done = next((p for p in startup.phases if p.name == phase), None)
    after = f" after {fmt.seconds(done.duration_s)}" if done is not None else ""
    return f"{phase}{after}"


def failed_startups(ns: NamespaceReport, max_ratio: float, trace_url: str | None) -> str:
    """Each failed startup (outcome exited, timeout or not_ready): how it ended, the phase
    it stopped in, why, and its trace; and the rule the rollout gate applies to them."""
    total = ns.failed_total
    if not total:
        return ""
    share = total / ns.startups if ns.startups else 1.0
    over = share > max_ratio
    verdict = (
        f"more than the gate's max_failed_ratio of {fmt.percent(max_ratio)}: a rollout "
        "gated on these startups halts"
        if over
        else f"within the gate's max_failed_ratio of {fmt.percent(max_ratio)}"
    )
    listed = f" (the latest {len(ns.failed)} listed)" if len(ns.failed) < total else ""
    rows = "".join(
        f"<tr><td>{e(s.label)}</td><td class='v-breach'>{e(s.outcome)}</td>"
        f"<td>{e(_stopped(s))}</td><td class='num'>{e(fmt.seconds(s.total_s))}</td>"
        f"<td>{e(s.reason or '-')}</td><td>{trace_link(s.trace_id, trace_url)}</td></tr>"
        for s in ns.failed
    )
    return (
        f"<h3>Failed startups: {total} of {ns.startups} ({e(fmt.percent(share))})</h3>"
        f'<p class="{"v-breach" if over else "meta"}">{e(verdict)}{e(listed)}. A failed '
        "startup has no startup_duration: the budgets alone do not see it.</p>"
        '<table class="failed"><tr><th>startup</th><th>outcome</th><th>stopped in</th>'
        f"<th>after</th><th>why</th><th>trace</th></tr>{rows}</table>"
    )


def rollouts(report: Report, trace_url: str | None) -> str:
    """The rollouts of a span file, a row each: name, trace, verdict, counts, reasons."""
    if not report.rollouts:
        return ""
    words = {"pass": "pass", "halt": "breach", "insufficient": "insufficient"}
    rows = "".join(
        f"<tr><td>{e(r.name or '(unnamed)')}</td><td>{trace_link(r.trace_id, trace_url)}</td>"
        f'<td><span class="pill {verdict_class(words.get(r.verdict, r.verdict))}">'
        f"{e(r.verdict)}</span></td><td>{r.startups}</td><td>{r.failed}</td>"
        f"<td>{r.partial}</td><td>{'<br>'.join(e(x) for x in r.reasons)}</td></tr>"
        for r in report.rollouts
    )
    return (
        '<section class="rollouts"><h2>Rollouts</h2><p>Each rollout (a trace holding '
        "startups) judged as <code>otelbridge processor</code> judges it.</p>"
        "<table><tr><th>rollout</th><th>trace</th><th>verdict</th><th>startups</th>"
        f"<th>failed</th><th>partial</th><th>reasons</th></tr>{rows}</table></section>"
    )
