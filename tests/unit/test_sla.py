"""The SLA rules: durations, per-startup breaches, verdicts, coverage."""

from __future__ import annotations

import pytest

from otelbridge import sla
from otelbridge.core.clock import FakeClock
from otelbridge.core.config import SlaConfig
from otelbridge.core.model import ContainerKey, Outcome, StartupRecord

S = 1_000_000_000
T0 = 1_700_000_000 * S


def record(
    ns: str = "default",
    *,
    create_s: float = 0.004,
    task_create_s: float = 0.048,
    ready_s: float = 0.057,
    outcome: Outcome = Outcome.READY,
    partial: bool = False,
) -> StartupRecord:
    rec = StartupRecord(ContainerKey(ns, "c"), T0, partial=partial, outcome=outcome)
    rec.snapshot_prepare_ns = None if partial else T0
    rec.container_create_ns = T0 + int(create_s * S)
    rec.task_create_ns = T0 + int(task_create_s * S)
    rec.task_start_ns = rec.task_create_ns + S // 100
    rec.ready_ns = T0 + int(ready_s * S) if outcome is Outcome.READY else None
    rec.end_ns = rec.ready_ns or rec.task_start_ns
    return rec


def test_durations_of_a_ready_startup() -> None:
    got = sla.durations(record())
    assert got == pytest.approx(
        {"startup_duration": 0.057, "shim_launch_time": 0.044, "task_create_to_ready": 0.009}
    )


def test_a_startup_that_did_not_become_ready_has_only_its_shim_launch() -> None:
    assert set(sla.durations(record(outcome=Outcome.EXITED))) == {"shim_launch_time"}


def test_a_partial_startup_has_no_startup_duration() -> None:
    assert "startup_duration" not in sla.durations(record(partial=True))


def test_breached_names_the_budgets_in_order() -> None:
    limits = sla.budgets(SlaConfig())
    slow = sla.durations(record(task_create_s=2.5, ready_s=4.5))
    assert sla.breached(slow, limits) == [
        "startup_duration",
        "shim_launch_time",
        "task_create_to_ready",
    ]
    assert sla.breached(sla.durations(record()), limits) == []


def test_p99_is_nearest_rank() -> None:
    values = [float(i) for i in range(1, 101)]
    assert sla.p99(values) == 99.0
    assert sla.p99([5.0]) == 5.0
    with pytest.raises(ValueError):
        sla.p99([])


def test_judge_never_passes_on_too_little_data() -> None:
    assert sla.judge([0.1] * 19, 1.0, 20)["verdict"] == "insufficient"
    assert sla.judge([0.1] * 20, 1.0, 20)["verdict"] == "pass"
    breach = sla.judge([0.1] * 19 + [2.0], 1.0, 20)
    assert (breach["verdict"], breach["breaches"], breach["p99_s"]) == ("breach", 1, 2.0)
    assert sla.judge([], 1.0, 1)["p99_s"] is None


def test_a_value_equal_to_the_budget_breaches_it() -> None:
    # "p99 < 4s": the budget itself is not within it
    assert sla.judge([1.0] * 5, 1.0, 5)["verdict"] == "breach"


def test_overall_verdict() -> None:
    assert sla.overall(["pass", "pass"]) == "pass"
    assert sla.overall(["pass", "insufficient"]) == "insufficient"
    assert sla.overall(["insufficient", "breach"]) == "breach"
    assert sla.overall([]) == "insufficient"


def test_tracker_judges_each_namespace_over_its_window() -> None:
    clock = FakeClock(T0)
    tracker = sla.SlaTracker(SlaConfig(min_samples=3, window_s=60), clock)
    for _ in range(3):
        tracker.observe(record("fast"), sla.durations(record("fast")))
        slow = record("slow", ready_s=2.0)
        tracker.observe(slow, sla.durations(slow))
    snap = tracker.snapshot()
    assert snap["budgets"]["coverage"] == 0.9
    fast, slow_ns = snap["namespaces"]["fast"], snap["namespaces"]["slow"]
    assert fast["verdict"] == "pass" and fast["coverage"] == 1.0
    assert slow_ns["verdict"] == "breach"
    assert slow_ns["budgets"]["task_create_to_ready"]["verdict"] == "breach"
    assert slow_ns["budgets"]["shim_launch_time"]["verdict"] == "pass"
    clock.advance(61)
    gone = tracker.snapshot()["namespaces"]["fast"]
    assert (gone["startups"], gone["verdict"]) == (0, "insufficient")


def test_coverage_counts_partial_startups_against_it() -> None:
    tracker = sla.SlaTracker(SlaConfig(min_samples=10, coverage_min=0.9), FakeClock(T0))
    for i in range(10):
        rec = record(partial=i < 2)
        tracker.observe(rec, sla.durations(rec))
    ns = tracker.snapshot()["namespaces"]["default"]
    assert (ns["startups"], ns["traced"], ns["coverage"]) == (10, 8, 0.8)
    assert ns["coverage_verdict"] == "breach" and ns["verdict"] == "breach"


def test_extra_figures_are_merged_per_namespace() -> None:
    tracker = sla.SlaTracker(SlaConfig(), FakeClock(T0))
    tracker.extra.append(lambda ns: {"gc": {"namespace": ns}})
    tracker.observe(record(), sla.durations(record()))
    assert tracker.snapshot()["namespaces"]["default"]["gc"] == {"namespace": "default"}
