"""Numbers for people: durations, budgets, shares, times. Pure; shared by the renderers."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from otelbridge.core import human

_NS = 1_000_000_000


def seconds(value: float | None) -> str:
    """A duration: ``0.412 ms``, ``44.0 ms``, ``161 ms``, ``1.24 s``; ``-`` for None."""
    return human.duration(value)


def budget(value: float) -> str:
    """A budget as configured: ``4 s``, ``0.5 s``, ``250 ms``."""
    return human.budget(value)


def plural(count: object, noun: str) -> str:
    """``1 startup``, ``3 startups``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def percent(share: float | None) -> str:
    return "-" if share is None else f"{share * 100:.1f}%"


def utc(ns: int) -> str:
    """``2024-05-01 12:03:04 UTC``."""
    when = dt.datetime.fromtimestamp(ns / _NS, tz=dt.UTC)
    return when.strftime("%Y-%m-%d %H:%M:%S UTC")


def span_range(first_ns: int | None, last_ns: int | None) -> str:
    """The time a file's spans cover, for the report's header."""
    if first_ns is None or last_ns is None:
        return "no spans"
    return f"{utc(first_ns)} .. {utc(last_ns)} ({seconds((last_ns - first_ns) / _NS)})"


#: The keys of the ``gc`` object (``/v1/sla`` and span files) the report reads.
GC_KEYS = frozenset(
    {
        "reclaims",
        "degraded",
        "reclaim_p99_s",
        "reclaim_max_s",
        "reclaim_budget_s",
        "leaked",
        "leaked_now",
        "leaked_now_total",
        "leak_ttl_s",
        "overlapped_startups",
        "create_p50_s_overlapped",
        "create_p50_s_other",
        "create_p99_s_overlapped",
        "create_p99_s_other",
    }
)


def gc_summary(figures: Mapping[str, Any]) -> str:
    """The ``gc`` object of the verdict JSON in one line: reclaims, degraded, leaks, the
    overlap comparison; figures this report does not know as ``key=value``."""
    if not figures:
        return "no GC figures"
    parts = []
    if "reclaims" in figures:
        count = figures["reclaims"]
        if not count:
            parts.append("no reclaims")
        else:
            text = f"{count} reclaims, p99 {seconds(_num(figures.get('reclaim_p99_s')))}"
            limit = _num(figures.get("reclaim_budget_s"))
            text += f", {figures.get('degraded', '?')} degraded"
            parts.append(text + (f" (> {budget(limit)})" if limit is not None else ""))
    if "leaked" in figures:
        text = f"{figures['leaked']} leaked"
        if "leaked_now_total" in figures:
            text += f" ({figures['leaked_now_total']} still leaked)"
        parts.append(text)
    if "overlapped_startups" in figures:
        parts.append(overlap_summary(figures))
    parts += [f"{k}={_flat(v)}" for k, v in figures.items() if k not in GC_KEYS]
    return "; ".join(parts)


def overlap_summary(figures: Mapping[str, Any]) -> str:
    """Create latency (shim_launch_time) with and without a reclaim in flight, in words."""
    count = figures.get("overlapped_startups")
    if not count:
        return "no startup overlapped a reclaim"
    return (
        f"{plural(count, 'startup')} created during a reclaim: shim_launch_time p50 "
        f"{seconds(_num(figures.get('create_p50_s_overlapped')))} vs "
        f"{seconds(_num(figures.get('create_p50_s_other')))} without"
    )


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _flat(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}={_flat(v)}" for k, v in value.items()) + "}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
