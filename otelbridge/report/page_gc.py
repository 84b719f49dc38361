"""The HTML page's snapshot GC part: reclaims, leaks, and whether a reclaim in flight
slows the next create (the overlap comparison, with its chart from span files)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from otelbridge import sla
from otelbridge.report import fmt
from otelbridge.report.htmlbits import e as _e
from otelbridge.report.htmlbits import figure as _figure
from otelbridge.report.model import NamespaceReport


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def gc_section(ns: NamespaceReport, index: int, budgets: Mapping[str, float]) -> str:
    """Reclaims, leaks and the overlap comparison, from the ``gc`` object (both sources
    give the same keys); the overlap chart when the samples are there (span files)."""
    figures = ns.gc_figures
    out = ["<h3>Snapshot GC</h3>"]
    if not figures:
        out.append('<p class="empty">No GC figures for this namespace.</p>')
        return "".join(out)
    count = figures.get("reclaims")
    limit = _num(figures.get("reclaim_budget_s"))
    if count:
        degraded = figures.get("degraded", 0)
        cells = [
            ("reclaims", str(count)),
            ("p99", fmt.seconds(_num(figures.get("reclaim_p99_s")))),
        ]
        if "reclaim_max_s" in figures:
            cells.append(("slowest", fmt.seconds(_num(figures.get("reclaim_max_s")))))
        cells.append((f"degraded (&gt; {_e(fmt.budget(limit)) if limit else '?'})", str(degraded)))
        out.append(
            "<table class='gc'><tr>"
            + "".join(f"<th>{head}</th>" for head, _ in cells)
            + "</tr><tr>"
            + "".join(f"<td class='num'>{_e(value)}</td>" for _, value in cells[:-1])
            + f"<td class='num v-{'breach' if degraded else 'pass'}'>{_e(degraded)}</td>"
            + "</tr></table>"
        )
    elif count == 0:
        source = "in the file" if ns.gc is not None else "in the bridge's window"
        out.append(f'<p class="empty">No snapshot reclaims {source}.</p>')
    if "leaked" in figures:
        ttl = _num(figures.get("leak_ttl_s"))
        text = (
            f"Snapshots leaked (not removed {_e(fmt.budget(ttl)) if ttl else 'in time'} after "
            f"their container exited): <b>{_e(figures['leaked'])}</b>"
        )
        now = figures.get("leaked_now")
        if isinstance(now, list) and now:
            total = figures.get("leaked_now_total", len(now))
            more = f" and {total - len(now)} more" if isinstance(total, int) else ""
            text += f"; leaked right now: {_e(', '.join(str(x) for x in now))}{_e(more)}"
        elif ns.gc is not None:
            text += (
                " (from a file: leaked snapshots that were removed late; one never removed "
                "has no span)"
            )
        out.append(f"<p>{text}.</p>")
    if "overlapped_startups" in figures:
        out.append(_overlap(ns, index, budgets))
    extra = {k: v for k, v in figures.items() if k not in fmt.GC_KEYS}
    if extra:
        out.append(
            "<table class='gc'>"
            + "".join(
                f"<tr><td>{_e(k)}</td><td>{_e(_plain(v))}</td></tr>" for k, v in extra.items()
            )
            + "</table>"
        )
    return "".join(out)


def _overlap(ns: NamespaceReport, index: int, budgets: Mapping[str, float]) -> str:
    figures = ns.gc_figures
    if not figures.get("overlapped_startups"):
        return (
            '<p class="empty">No startup was created while a reclaim was in flight '
            "(otelbridge.gc.overlap): nothing to compare.</p>"
        )
    rows = []
    for label, suffix in (("reclaim in flight", "overlapped"), ("no reclaim in flight", "other")):
        p99 = figures.get(f"create_p99_s_{suffix}")
        rows.append(
            f"<tr><td>{label}</td>"
            f"<td class='num'>{_e(fmt.seconds(_num(figures.get(f'create_p50_s_{suffix}'))))}</td>"
            + (f"<td class='num'>{_e(fmt.seconds(_num(p99)))}</td>" if ns.gc is not None else "")
            + "</tr>"
        )
    out = [
        "<p>Does a reclaim block the next create? shim_launch_time (/containers/create -&gt; "
        f"/tasks/create) of the {_e(fmt.plural(figures['overlapped_startups'], 'startup'))} "
        "created while a "
        "snapshot reclaim was in flight (<code>otelbridge.gc.overlap</code>), against the "
        "others:</p>",
        "<table class='gc'><tr><th></th><th>median</th>"
        + ("<th>p99</th>" if ns.gc is not None else "")
        + f"</tr>{''.join(rows)}</table>",
    ]
    gc = ns.gc
    if gc is not None and gc.overlapped_s:
        from otelbridge.report import charts  # noqa: PLC0415 - matplotlib only when drawing

        svg = charts.overlap(
            gc.overlapped_s,
            gc.others_s,
            budget_s=budgets.get(sla.SHIM_LAUNCH_TIME, 0.0),
            chart_id=f"o{index}",
        )
        out.append(_figure(svg, "shim_launch_time with and without a reclaim in flight."))
    return "".join(out)


def _plain(value: Any) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {_plain(v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
