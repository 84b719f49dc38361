"""The report's charts, drawn with matplotlib and returned as inline SVG text.

* :func:`histogram`: one duration's samples in one namespace on a log axis, the part
  above the budget in red, with the budget and the p99 drawn as vertical lines;
* :func:`waterfall`: the slowest startups, one horizontal bar each, stacked by phase
  (``container.create``, ``shim.launch``, ``task.start``, ``readiness.wait``), with the
  ``startup_duration`` budget when it is on the scale;
* :func:`overlap`: ``shim_launch_time`` of startups created while a snapshot reclaim was
  in flight against the others.

Figures are :class:`matplotlib.figure.Figure` objects made directly, never through
pyplot: no GUI backend is loaded, no global figure registry grows, and nothing needs a
display; the SVG is written by matplotlib's own SVG backend inside an ``rc_context``,
so the caller's matplotlib settings are left alone. Text stays text in the SVG (searchable,
crisp, drawn with the reader's sans-serif font: no font is embedded or fetched). Element
ids are prefixed with the chart's id, so several charts can share one HTML page.

Callers import this module only when they draw: importing matplotlib takes a while.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final

import matplotlib as mpl
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from otelbridge import sla
from otelbridge.core import semconv
from otelbridge.report import fmt
from otelbridge.report.model import StartupBars

#: Colours of the phases (the terminal waterfall's hues) and of the verdicts.
PHASE_COLORS: Final = {
    semconv.SPAN_CONTAINER_CREATE: "#4c78a8",
    semconv.SPAN_SHIM_LAUNCH: "#b279a2",
    semconv.SPAN_TASK_START: "#e39c37",
    semconv.SPAN_READINESS_WAIT: "#54a24b",
}
VERDICT_COLORS: Final = {
    sla.Verdict.PASS.value: "#2e7d32",
    sla.Verdict.BREACH.value: "#c62828",
    sla.Verdict.INSUFFICIENT.value: "#b26a00",
}
_WITHIN = "#4f8fbf"
_OVER = "#d9534f"
_INK = "#222222"
_FLOOR_S = 1e-4  # a log axis has no zero: shorter durations are drawn at 0.1 ms

_STYLE: Final[dict[Any, Any]] = {
    "svg.fonttype": "none",
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Helvetica", "Arial"],
    "font.size": 9.0,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.edgecolor": "#888888",
    "axes.titlesize": 9.5,
    "axes.titleweight": "bold",
    "xtick.color": "#444444",
    "ytick.color": "#444444",
    "legend.frameon": False,
    "legend.fontsize": 8.0,
    "hatch.color": "#c62828",
}


@contextmanager
def _style(chart_id: str) -> Iterator[None]:
    rc: dict[Any, Any] = {**_STYLE, "svg.hashsalt": chart_id}
    with mpl.rc_context(rc):
        yield


_ID = re.compile(r'\bid="([^"]+)"')
_REF = re.compile(r'(url\(#|href="#)([^)"]+)')


def _to_svg(fig: Figure, chart_id: str) -> str:
    """The figure as an ``<svg>`` element ready to inline: no XML prolog or metadata,
    every id prefixed with ``chart_id``."""
    out = io.StringIO()
    fig.savefig(out, format="svg", metadata={"Date": None, "Creator": None, "Format": None})
    text = out.getvalue()
    text = text[text.index("<svg") :]
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.S)
    text = _ID.sub(lambda m: f'id="{chart_id}-{m.group(1)}"', text)
    text = _REF.sub(lambda m: f"{m.group(1)}{chart_id}-{m.group(2)}", text)
    return text.strip()


def _seconds_axis(ax: Axes, *, log: bool) -> None:
    # matplotlib's default log-axis labels go through mathtext, which costs more than
    # the rest of the chart: plain text labels ("10 ms", "1 s") are clearer and cheap
    if log:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: fmt.budget(x) if x > 0 else "0"))


def _margins(fig: Figure, *, left: float, right: float, top: float, bottom: float) -> None:
    """Fixed margins in inches (a layout engine would draw every chart twice)."""
    width, height = fig.get_size_inches()
    fig.subplots_adjust(
        left=left / width, right=1 - right / width, top=1 - top / height, bottom=bottom / height
    )


def _line_labels(ax: Axes, lo: float, hi: float, lines: Sequence[tuple[float, str, bool]]) -> None:
    """Labels the vertical lines of a log axis (``(x, text, bold)``: the budget in bold)
    in the free band above the bars, next to its line, so that no label crosses the
    other line or another label; when one row cannot hold both, the second goes a row
    lower."""

    def at(x: float) -> float:
        return (math.log(x) - math.log(lo)) / (math.log(hi) - math.log(lo))

    def span(x: float, text: str, side: str) -> tuple[float, float]:
        width = 0.018 * (len(text) + 1)  # an 8-point character on the chart's width
        return (at(x), at(x) + width) if side == "left" else (at(x) - width, at(x))

    def fits(x: float, text: str, side: str, others: Sequence[float]) -> bool:
        a, b = span(x, text, side)
        return a >= 0 and b <= 1 and not any(a < at(o) < b for o in others)

    placed: list[tuple[float, str, bool, str, float]] = []
    taken: list[tuple[float, float]] = []
    for x, text, bold in sorted(lines, key=lambda line: line[0]):
        others = [o for o, _, _ in lines if o != x]
        sides = [side for side in ("right", "left") if fits(x, text, side, others)] or [
            "right" if at(x) > 0.5 else "left"
        ]
        row = 0.97
        for side in sides:
            a, b = span(x, text, side)
            if all(b <= c or a >= d for c, d in taken):
                break
        else:
            side, row = sides[0], 0.86  # a row lower: the headroom holds two
            a, b = span(x, text, side)
            crossed = [o for o in others if a < at(o) < b]
            anchor = x
            if crossed:  # end the label at the line it would cross, under that one's
                anchor = min(crossed) if side == "right" else max(crossed)
            placed.append((anchor, text, bold, side, row))
            continue
        taken.append((a, b))
        placed.append((x, text, bold, side, row))
    for x, text, bold, side, row in placed:
        ax.text(
            x,
            row,
            f"{text} " if side == "right" else f" {text}",
            transform=ax.get_xaxis_transform(),
            ha=side,
            va="top",
            fontsize=8.5 if bold else 8,
            fontweight="bold" if bold else "normal",
            color=VERDICT_COLORS["breach"] if bold else _INK,
        )


def histogram(
    values: Sequence[float],
    *,
    budget_s: float,
    p99_s: float | None,
    verdict: str,
    title: str,
    chart_id: str,
) -> str:
    """One duration's distribution with its budget line (red, dashed) and p99 line."""
    with _style(chart_id):
        fig = Figure(figsize=(4.3, 2.75))
        _margins(fig, left=0.5, right=0.15, top=0.3, bottom=0.75)
        ax = fig.add_subplot()
        data = np.maximum(np.asarray(values, dtype=float), _FLOOR_S)
        lo = min(float(data.min()) if data.size else budget_s, budget_s) / 1.8
        hi = max(float(data.max()) if data.size else budget_s, budget_s) * 1.8
        edges = np.geomspace(lo, hi, 41)
        within, _ = np.histogram(data[data <= budget_s], edges)
        over, _ = np.histogram(data[data > budget_s], edges)
        # two filled outlines, the over-budget part stacked on the rest: two paths,
        # where a bar chart would make a rectangle per bin
        ax.stairs(within, edges, fill=True, color=_WITHIN, label=f"within budget ({within.sum()})")
        ax.stairs(
            within + over,
            edges,
            baseline=within,
            fill=True,
            color=_OVER,
            label=f"over budget ({over.sum()})",
        )
        _seconds_axis(ax, log=True)
        if math.log10(hi / lo) < 2.5:  # few decades: label 2x and 5x too
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.set_xlim(lo, hi)
        # the top quarter stays free for the line labels
        ax.set_ylim(0, max(int((within + over).max()), 1) * 1.45)
        ax.set_ylabel("startups")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.axvline(budget_s, color=VERDICT_COLORS["breach"], ls="--", lw=1.6)
        labels = [(budget_s, f"budget {fmt.budget(budget_s)}", True)]
        if p99_s is not None:
            at = max(p99_s, _FLOOR_S)
            ax.axvline(at, color=_INK, lw=1.2)
            labels.append((at, f"p99 {fmt.seconds(p99_s)}", False))
        _line_labels(ax, lo, hi, labels)
        ax.set_title(title, loc="left")
        ax.set_title(
            verdict.upper(), loc="right", color=VERDICT_COLORS.get(verdict, _INK), fontsize=9
        )
        fig.legend(loc="lower left", bbox_to_anchor=(0.01, 0.0), ncols=2, handlelength=1.0)
        return _to_svg(fig, chart_id)


def waterfall(startups: Sequence[StartupBars], *, budget_s: float, chart_id: str) -> str:
    """The slowest startups (given slowest first, drawn top down), stacked by phase.
    Unfinished phases are hatched; a startup that did not become ready says how it
    ended next to its total."""
    with _style(chart_id):
        n = len(startups)
        fig = Figure(figsize=(9.4, 0.3 * n + 1.2))
        _margins(fig, left=2.35, right=0.2, top=0.42, bottom=0.5)
        ax = fig.add_subplot()
        longest = max((s.total_s for s in startups), default=0.0) or 1e-3
        for row, startup in enumerate(startups):
            y = n - 1 - row
            for phase in startup.phases:
                ax.barh(
                    y,
                    max(phase.duration_s, longest / 800),  # a zero-length phase stays a mark
                    left=phase.offset_s,
                    height=0.64,
                    color=PHASE_COLORS.get(phase.name, "#999999"),
                    hatch=None if phase.complete else "////",
                    edgecolor="white" if phase.complete else VERDICT_COLORS["breach"],
                    linewidth=0.4,
                )
            note = "" if startup.outcome == "ready" else f"  [{startup.outcome}]"
            if startup.partial:
                note += "  [partial]"
            ax.text(
                startup.total_s,
                y,
                f"  {fmt.seconds(startup.total_s)}{note}",
                va="center",
                fontsize=8,
                color=VERDICT_COLORS["breach"] if startup.breached or note else _INK,
            )
        labels = [_short(s.label) for s in startups]
        ax.set_yticks(range(n), labels=list(reversed(labels)), fontsize=8)
        ax.set_ylim(-0.6, n - 0.4)
        right = longest * 1.22
        handles: list[Patch | Line2D] = [
            Patch(color=color, label=name) for name, color in PHASE_COLORS.items()
        ]
        if budget_s <= longest * 1.6:
            ax.axvline(budget_s, color=VERDICT_COLORS["breach"], ls="--", lw=1.4)
            right = max(right, budget_s * 1.08)
            label = f"startup budget {fmt.budget(budget_s)}"
        else:
            label = f"startup budget {fmt.budget(budget_s)} (beyond this scale)"
        handles.append(Line2D([], [], color=VERDICT_COLORS["breach"], ls="--", label=label))
        ax.set_xlim(0, right)
        _seconds_axis(ax, log=False)
        ax.set_xlabel("seconds since the container's first event")
        fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.005, 0.995), ncols=5)
        ax.grid(axis="x", color="#e5e5e5", lw=0.6)
        ax.set_axisbelow(True)
        return _to_svg(fig, chart_id)


def _short(label: str, width: int = 34) -> str:
    return label if len(label) <= width else label[: width - 3] + "..."


def overlap(
    overlapped: Sequence[float], others: Sequence[float], *, budget_s: float, chart_id: str
) -> str:
    """``shim_launch_time`` with a reclaim in flight against without: box plots with
    every sample as a dot, and the budget when it is on the scale."""
    with _style(chart_id):
        fig = Figure(figsize=(7.0, 1.9))
        _margins(fig, left=2.1, right=0.2, top=0.15, bottom=0.5)
        ax = fig.add_subplot()
        groups = [list(others), list(overlapped)]
        names = [
            f"no reclaim in flight (n={len(others)})",
            f"reclaim in flight (n={len(overlapped)})",
        ]
        ax.boxplot(
            groups,
            orientation="horizontal",
            tick_labels=names,
            widths=0.5,
            showfliers=False,
            medianprops={"color": _INK},
        )
        rng = np.random.default_rng(0)  # the same jitter every time: reports can be diffed
        for y, group in enumerate(groups, start=1):
            if group:
                jitter = rng.uniform(-0.12, 0.12, len(group))
                ax.scatter(group, np.full(len(group), y) + jitter, s=9, alpha=0.55, color=_WITHIN)
        longest = max((max(g) for g in groups if g), default=budget_s)
        right = longest * 1.15
        if budget_s <= longest * 1.6:
            ax.axvline(budget_s, color=VERDICT_COLORS["breach"], ls="--", lw=1.4)
            right = max(right, budget_s * 1.08)
        ax.set_xlim(0, max(right, 1e-3))
        _seconds_axis(ax, log=False)
        ax.set_xlabel("shim_launch_time (/containers/create -> /tasks/create)")
        return _to_svg(fig, chart_id)
