"""The report as one self-contained HTML page.

Read at a glance, top down: one big coloured badge per namespace with its verdict and
why; the contract; then per namespace the budget table (p99 against budget, with a bar
showing how much of the budget the p99 uses), the startup-duration histograms with the
budget lines, the slowest startups as a phase waterfall, coverage and the GC figures with
the reclaim/create overlap comparison.

Self-contained: the style sheet is inline, the charts are inline SVG (no script, no
font, no image, nothing fetched). A report made from ``/v1/sla`` has no samples: it shows
the verdicts and figures and says why the charts are missing.

Pure apart from :func:`write_html`: the caller passes the report (and its generation
time is in it).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Final

from otelbridge import __version__, sla
from otelbridge.report import fmt
from otelbridge.report.htmlbits import VERDICT_WORDS as _VERDICT_WORDS
from otelbridge.report.htmlbits import e as _e
from otelbridge.report.htmlbits import figure as _figure
from otelbridge.report.htmlbits import verdict_class as _verdict_class
from otelbridge.report.model import DURATION_MEASURES, NamespaceReport, Report
from otelbridge.report.page_gc import gc_section
from otelbridge.report.page_startups import failed_startups, rollouts, waterfall
from otelbridge.report.verdicts import ReportError

_CSS: Final = """
:root { --pass:#2e7d32; --breach:#c62828; --insufficient:#b26a00; --ink:#1d1d1f;
  --muted:#5f6368; --line:#e3e3e3; --bg:#fafafa; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
  font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif; }
header, section, footer { max-width:1240px; margin:0 auto; padding:18px 28px; }
header { padding-top:26px; }
h1 { font-size:26px; margin:0 0 4px; }
h2 { font-size:21px; margin:0 0 6px; display:flex; align-items:center; gap:12px; }
h3 { font-size:15px; margin:22px 0 8px; color:#333; }
.meta, .note, footer { color:var(--muted); }
.meta code, .note code, footer code { color:var(--ink); }
.badges { display:flex; flex-wrap:wrap; gap:14px; margin:18px 0 10px; }
.badge { display:flex; flex-direction:column; min-width:210px; max-width:380px;
  padding:14px 18px; border-radius:10px; color:#fff; text-decoration:none;
  box-shadow:0 1px 3px rgba(0,0,0,.18); }
.badge .ns { font-size:15px; font-weight:600; opacity:.95; overflow-wrap:anywhere; }
.badge .verdict { font-size:30px; font-weight:800; letter-spacing:.04em; line-height:1.15; }
.badge .why { font-size:12.5px; opacity:.95; }
.pass { background:var(--pass); } .breach { background:var(--breach); }
.insufficient { background:var(--insufficient); }
.pill { font-size:13px; color:#fff; padding:3px 10px; border-radius:999px; font-weight:700;
  letter-spacing:.04em; }
.overall { font-size:14px; vertical-align:middle; }
section.namespace { background:#fff; border:1px solid var(--line); border-radius:12px;
  margin-top:18px; }
table { border-collapse:collapse; margin:6px 0; }
th, td { padding:5px 12px 5px 0; text-align:left; border-bottom:1px solid var(--line);
  vertical-align:middle; }
th { font-weight:600; color:#444; font-size:12.5px; }
td.num { text-align:right; font-variant-numeric:tabular-nums; }
td.v-pass { color:var(--pass); font-weight:700; } td.v-breach { color:var(--breach);
  font-weight:700; } td.v-insufficient { color:var(--insufficient); font-weight:700; }
.meter { position:relative; width:170px; height:12px; background:#eee; border-radius:6px; }
.meter span { position:absolute; left:0; top:0; bottom:0; border-radius:6px; }
.meter i { position:absolute; left:50%; top:-3px; bottom:-3px; width:2px; background:#333; }
.charts { display:grid; grid-template-columns:repeat(auto-fit,minmax(330px,1fr)); gap:10px; }
figure { margin:0; }
figure svg { max-width:100%; height:auto; display:block; }
figcaption { font-size:12px; color:var(--muted); }
.empty { color:var(--muted); font-style:italic; }
"""


def anchor(index: int, name: str) -> str:
    """The element id of a namespace's section (unique, whatever the name holds)."""
    return f"ns-{index}-{re.sub(r'[^A-Za-z0-9_-]+', '-', name)}"


def why(ns: NamespaceReport, min_samples: int, coverage_min: float) -> str:
    """A namespace's verdict in a few words: what broke, what lacks data, or how much
    headroom the tightest budget has."""
    breach = sla.Verdict.BREACH.value
    if ns.verdict == breach:
        parts = [
            f"{b.name} p99 {fmt.seconds(b.p99_s)} > {fmt.budget(b.budget_s)}"
            for b in ns.budgets
            if b.verdict == breach
        ]
        if ns.coverage_verdict == breach:
            parts.append(f"coverage {fmt.percent(ns.coverage)} < {fmt.percent(coverage_min)}")
        return "; ".join(parts)
    if ns.verdict == sla.Verdict.INSUFFICIENT.value:
        lacking = [b for b in ns.budgets if b.verdict == sla.Verdict.INSUFFICIENT.value]
        if lacking:
            fewest = min(lacking, key=lambda b: b.samples)
            return f"{fewest.name}: {fewest.samples} of {min_samples} samples needed"
        return f"{ns.startups} startups, {min_samples} needed"
    ratios = [b.p99_s / b.budget_s for b in ns.budgets if b.p99_s is not None and b.budget_s > 0]
    tightest = f", tightest p99 at {max(ratios) * 100:.0f}% of budget" if ratios else ""
    failed = f", {ns.failed_total} failed" if ns.failed_total else ""
    return f"{ns.startups} startups{tightest}{failed}"


def _badges(report: Report) -> str:
    out = []
    for i, ns in enumerate(report.namespaces):
        cls = _verdict_class(ns.verdict)
        out.append(
            f'<a class="badge {cls}" href="#{anchor(i, ns.name)}" '
            f'data-namespace="{_e(ns.name)}" data-verdict="{_e(ns.verdict)}">'
            f'<span class="ns">{_e(ns.name)}</span>'
            f'<span class="verdict">{_VERDICT_WORDS.get(ns.verdict, _e(ns.verdict.upper()))}'
            f"</span>"
            f'<span class="why">{_e(why(ns, report.min_samples, report.coverage_min))}</span></a>'
        )
    if not out:
        return '<p class="empty">No startups: no namespace to judge.</p>'
    return '<div class="badges">' + "".join(out) + "</div>"


def _source_line(report: Report) -> str:
    generated = fmt.utc(report.generated_at_ns)
    if report.has_spans:
        covered = fmt.span_range(report.first_ns, report.last_ns)
        where = (
            f"the span file <code>{_e(report.source)}</code> ({report.spans_read} spans, "
            f"{_e(covered)}); verdicts over all of its startups"
        )
    else:
        window = f"{report.window_s:g} s" if report.window_s is not None else "?"
        where = (
            f"the running bridge at <code>{_e(report.source)}</code>; verdicts over its "
            f"rolling window of {_e(window)}"
        )
    return f'<p class="meta">Generated {_e(generated)} from {where}.</p>' + _where_run(report)


def _where_run(report: Report) -> str:
    """The nodes and clusters the startups ran on, when their resources say."""
    parts = []
    if report.clusters:
        parts.append(
            f"{fmt.plural(len(report.clusters), 'cluster')}: "
            + ", ".join(f"<b>{_e(c)}</b>" for c in report.clusters)
        )
    if report.nodes:
        shown = report.nodes[:_NODES_SHOWN]
        more = len(report.nodes) - len(shown)
        parts.append(
            f"{fmt.plural(len(report.nodes), 'node')}: "
            + ", ".join(f"<b>{_e(n)}</b>" for n in shown)
            + (f" and {more} more" if more else "")
        )
    if not parts:
        return ""
    return f'<p class="meta where">{" &middot; ".join(parts)}</p>'


_NODES_SHOWN: Final = 12  # a fleet's span file names many: the busiest first


def _contract(report: Report) -> str:
    rows = "".join(
        f"<tr><td>{_e(name)}</td><td>{_e(DURATION_MEASURES.get(name, ''))}</td>"
        f"<td>{'p99 ' if name == sla.STARTUP_DURATION else ''}&lt; {_e(fmt.budget(value))}</td>"
        "</tr>"
        for name, value in report.budgets.items()
    )
    rows += (
        f"<tr><td>coverage</td><td>startups fully traced / startups seen</td>"
        f"<td>&ge; {_e(fmt.percent(report.coverage_min))}</td></tr>"
        "<tr><td>failed startups</td><td>outcome exited, timeout or not_ready / startups "
        f"(the rollout gate's rule)</td><td>&le; {_e(fmt.percent(report.failed_max_ratio))}"
        "</td></tr>"
    )
    return (
        '<table class="contract"><tr><th>budget</th><th>measures</th><th>limit</th></tr>'
        f"{rows}</table>"
        f'<p class="meta">Per namespace, the p99 (nearest rank) of each duration is judged '
        f"against its budget; fewer than {report.min_samples} samples give "
        "<b>insufficient</b>, never pass. A namespace breaches when any budget does.</p>"
    )


def _meter(p99_s: float | None, budget_s: float, verdict: str) -> str:
    if p99_s is None or budget_s <= 0:
        return ""
    share = min(p99_s / budget_s / 2, 1.0)  # the budget sits in the middle of the bar
    color = {"pass": "var(--pass)", "breach": "var(--breach)"}.get(verdict, "#b0b0b0")
    return (
        f'<div class="meter" title="p99 is {p99_s / budget_s * 100:.0f}% of the budget">'
        f'<span style="width:{share * 100:.1f}%;background:{color}"></span><i></i></div>'
    )


def _budget_table(ns: NamespaceReport, coverage_min: float) -> str:
    rows = []
    for b in ns.budgets:
        rows.append(
            f"<tr><td>{_e(b.name)}</td><td class='num'>{_e(fmt.seconds(b.p99_s))}</td>"
            f"<td class='num'>{_e(fmt.budget(b.budget_s))}</td>"
            f"<td>{_meter(b.p99_s, b.budget_s, b.verdict)}</td>"
            f"<td class='num'>{b.samples}</td><td class='num'>{b.breaches}</td>"
            f"<td class='v-{_verdict_class(b.verdict)}'>{_e(b.verdict)}</td></tr>"
        )
    cov = ns.coverage
    rows.append(
        f"<tr><td>coverage</td><td class='num'>{_e(fmt.percent(cov))}</td>"
        f"<td class='num'>&ge; {_e(fmt.percent(coverage_min))}</td><td></td>"
        f"<td class='num'>{ns.startups}</td><td class='num'>{ns.startups - ns.traced}</td>"
        f"<td class='v-{_verdict_class(ns.coverage_verdict)}'>{_e(ns.coverage_verdict)}</td></tr>"
    )
    return (
        '<table class="budgets"><tr><th>budget</th><th>p99</th><th>limit</th>'
        "<th>p99 / budget (mark: 100%)</th><th>samples</th><th>over budget</th>"
        f"<th>verdict</th></tr>{''.join(rows)}</table>"
        '<p class="meta">For coverage, "samples" are the startups seen and "over budget" '
        "the partial ones (first events missed).</p>"
    )


def _facts(ns: NamespaceReport, coverage_min: float) -> str:
    facts = [
        f"{ns.startups} startups",
        f"{ns.traced} fully traced",
        f"coverage {fmt.percent(ns.coverage)} (min {fmt.percent(coverage_min)}): "
        f"{ns.coverage_verdict}",
    ]
    if ns.outcomes:
        facts.append(
            "outcomes: "
            + ", ".join(f"{k} {v}" for k, v in sorted(ns.outcomes.items(), key=lambda kv: -kv[1]))
        )
    return '<p class="facts">' + " &middot; ".join(_e(f) for f in facts) + "</p>"


def _histograms(ns: NamespaceReport, index: int) -> str:
    from otelbridge.report import charts  # noqa: PLC0415 - matplotlib only when drawing

    figures = []
    for b in ns.budgets:
        values = ns.samples.get(b.name, ())
        title = b.name
        if not values:
            figures.append(
                f'<figure><p class="empty">{_e(title)}: nothing measured '
                f"({_e(DURATION_MEASURES.get(b.name, b.name))}).</p></figure>"
            )
            continue
        svg = charts.histogram(
            values,
            budget_s=b.budget_s,
            p99_s=b.p99_s,
            verdict=b.verdict,
            title=f"{title}: {len(values)} samples",
            chart_id=f"h{index}-{b.name}",
        )
        figures.append(
            _figure(
                svg,
                f"{b.name}: p99 {fmt.seconds(b.p99_s)}, budget {fmt.budget(b.budget_s)}, "
                f"{b.breaches} over budget",
            )
        )
    return (
        "<h3>Durations</h3>"
        '<p class="meta">Log scale. Red dashed line: the budget; black line: the p99. '
        "Samples over the budget are red.</p>"
        f'<div class="charts">{"".join(figures)}</div>'
    )


def _namespace(report: Report, ns: NamespaceReport, index: int, trace_url: str | None) -> str:
    cls = _verdict_class(ns.verdict)
    parts = [
        f'<section class="namespace" id="{anchor(index, ns.name)}">',
        f'<h2>{_e(ns.name)} <span class="pill {cls}">{_VERDICT_WORDS.get(ns.verdict, "?")}'
        "</span></h2>",
        _facts(ns, report.coverage_min),
        _budget_table(ns, report.coverage_min),
    ]
    if report.has_samples:
        parts.append(_histograms(ns, index))
        parts.append(waterfall(ns, index, report.budgets, trace_url))
    parts.append(failed_startups(ns, report.failed_max_ratio, trace_url))
    parts.append(gc_section(ns, index, report.budgets))
    parts.append("</section>")
    return "".join(parts)


def render_html(report: Report, *, trace_url: str | None = None) -> str:
    """The whole page. Draws the charts (imports matplotlib) when the report has
    samples. ``trace_url``: a URL template with ``{trace_id}`` that trace IDs link to."""
    count = len(report.namespaces)
    overall = report.verdict
    title = (
        f"otelbridge SLA report: {_VERDICT_WORDS.get(overall, overall)} "
        f"({count} namespace{'s' if count != 1 else ''})"
    )
    body = [
        "<header>",
        f'<h1>Container startup SLA <span class="pill overall {_verdict_class(overall)}">'
        f"{_VERDICT_WORDS.get(overall, '?')}</span></h1>",
        _source_line(report),
        _badges(report),
        _contract(report),
    ]
    if not report.has_samples:
        body.append(
            '<p class="note"><b>No histograms or waterfalls:</b> the bridge answered '
            "verdicts without the samples behind them (a bridge older than "
            "<code>/v1/sla?samples=1</code>). Upgrade it, or write spans to a file "
            "(<code>otelbridge run --exporter jsonl --jsonl-path FILE</code>) and run "
            "<code>otelbridge sla --spans FILE --html OUT</code>.</p>"
        )
    body.append("</header>")
    body.append(rollouts(report, trace_url))
    body += [_namespace(report, ns, i, trace_url) for i, ns in enumerate(report.namespaces)]
    body.append(
        f"<footer>otelbridge {_e(__version__)} &middot; <code>otelbridge sla</code> "
        "&middot; budgets and verdict rules: docs/sla.md</footer>"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )


def write_html(
    report: Report, path: str | os.PathLike[str], *, trace_url: str | None = None
) -> None:
    """Renders and writes the page atomically (a reader never sees half a report).
    Raises :class:`~otelbridge.report.verdicts.ReportError` when it cannot be written
    or matplotlib is missing."""
    try:
        page = render_html(report, trace_url=trace_url)
    except ImportError as exc:
        raise ReportError(
            f"--html needs matplotlib ({exc.name} is missing): pip install 'matplotlib>=3.10'"
        ) from exc
    target = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(page)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise ReportError(f"cannot write {path}: {exc.strerror or exc}") from exc
