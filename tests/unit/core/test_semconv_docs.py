"""docs/telemetry.md and otelbridge.core.semconv must name the same things."""

from __future__ import annotations

import re
from pathlib import Path

from otelbridge.core import semconv, tracecontext
from otelbridge.core.model import Outcome

DOC = (Path(__file__).parents[3] / "docs" / "telemetry.md").read_text(encoding="utf-8")


def first_column_names() -> set[str]:
    """Backticked names opening a table row: `| `name` | ...`."""
    return set(re.findall(r"^\| `([^`]+)` \|", DOC, flags=re.MULTILINE))


def test_every_declared_name_is_documented() -> None:
    documented = first_column_names()
    declared = (
        set(semconv.SPAN_NAMES)
        | set(semconv.EVENT_NAMES)
        | set(semconv.RESOURCE_ATTRIBUTES)
        | set(semconv.SPAN_ATTRIBUTES)
        | {c.name for c in semconv.COUNTERS}
        | {c.name for c in semconv.PROCESSOR_COUNTERS}
        | {g.name for g in semconv.PROCESSOR_GAUGES}
    )
    assert declared - documented == set()


def test_every_documented_name_is_declared() -> None:
    declared = (
        set(semconv.SPAN_NAMES)
        | set(semconv.EVENT_NAMES)
        | set(semconv.RESOURCE_ATTRIBUTES)
        | set(semconv.SPAN_ATTRIBUTES)
        | {c.name for c in semconv.COUNTERS}
        | {c.name for c in semconv.PROCESSOR_COUNTERS}
        | {g.name for g in semconv.PROCESSOR_GAUGES}
        | {o.value for o in Outcome}
        | set(tracecontext.TRACEPARENT_INVALID_REASONS)
        | {"container.label.<key>"}
    )
    assert first_column_names() - declared == set()


def test_counter_units_match() -> None:
    for counter in (*semconv.COUNTERS, *semconv.PROCESSOR_COUNTERS, *semconv.PROCESSOR_GAUGES):
        assert f"| `{counter.name}` | `{counter.unit}` |" in DOC, counter.name


def test_every_reason_and_outcome_is_documented() -> None:
    for reason in tracecontext.TRACEPARENT_INVALID_REASONS:
        assert f"| `{reason}` |" in DOC, reason
    for reason in tracecontext.TRACESTATE_INVALID_REASONS:
        assert f"`{reason}`" in DOC, reason
    for outcome in Outcome:
        assert f"| `{outcome.value}` |" in DOC, outcome
