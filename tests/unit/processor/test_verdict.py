"""The verdict rules as one pure function, and the merge of replicas' documents."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import pytest

from otelbridge import sla
from otelbridge.core.config import Config, GateConfig
from otelbridge.processor import verdict
from otelbridge.processor.sketch import Durations
from otelbridge.processor.verdict import Counts, judge, merge_documents

SD, SL, TR = sla.DURATIONS
CONFIG = Config()
LIMITS = sla.budgets(CONFIG.sla)


def measured(n: int, *, sd: float = 0.4, sl: float = 0.05, tr: float = 0.2) -> Durations:
    d = Durations()
    for _ in range(n):
        d.add(SD, sd, LIMITS[SD])
        d.add(SL, sl, LIMITS[SL])
        d.add(TR, tr, LIMITS[TR])
    return d


def doc(
    counts: Counts,
    durations: Durations,
    *,
    expect: int | None = None,
    config: Config = CONFIG,
    slowest: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return judge(
        counts=counts,
        durations=durations,
        slowest=slowest or [],
        config=config,
        expect=expect,
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        sketches=True,
    )


def test_a_fast_rollout_passes_with_the_documents_shape() -> None:
    got = doc(Counts(20), measured(20), expect=20)
    assert got["verdict"] == "pass" and got["reasons"] == []
    assert set(got) == {
        "trace_id", "name", "namespace", "verdict", "startups", "failed", "partial", "pods",
        "expect", "coverage", "budgets", "reasons", "slowest", "sketches",
    }  # fmt: skip
    assert got["budgets"][TR] == {
        "verdict": "pass",
        "samples": 20,
        "p99_s": pytest.approx(0.2, rel=0.01),
        "budget_s": 1.0,
        "breaches": 0,
    }
    assert (got["coverage"], got["expect"]) == (1.0, 20)


def test_a_p99_over_its_budget_halts_and_the_reason_gives_the_numbers() -> None:
    d = measured(19)
    d.add(TR, 1.43, 1.0)
    d.add(SD, 0.4, 4.0)
    d.add(SL, 0.05, 2.0)
    got = doc(Counts(20), d)
    assert got["verdict"] == "halt"
    assert got["budgets"][TR]["verdict"] == "halt"
    (reason,) = got["reasons"]
    p99 = got["budgets"][TR]["p99_s"]
    assert p99 == pytest.approx(1.43, rel=0.01)
    assert reason == (
        f"task_create_to_ready p99 {p99:.3g} s over its budget of 1 s (1 of 20 startups over)"
    )


def test_a_p99_just_over_its_budget_is_not_written_as_equal_to_it() -> None:
    assert verdict._pair(2.0031, 2.0) == "2.003"
    assert verdict._pair(1.43, 1.0) == "1.43"


def test_failed_startups_over_the_ratio_halt() -> None:
    got = doc(Counts(20, failed=1), measured(19))
    assert got["verdict"] == "halt"
    assert got["reasons"] == [
        "1 of 20 startups failed before ready (exited, timed out or not ready): 5%, over the "
        "0% allowed (gate.max_failed_ratio)"
    ]
    lenient = replace(CONFIG, gate=GateConfig(max_failed_ratio=0.1))
    assert doc(Counts(20, failed=2), measured(18), config=lenient)["verdict"] == "pass"
    assert doc(Counts(20, failed=3), measured(17), config=lenient)["verdict"] == "halt"


def test_fewer_startups_than_expected_or_the_minimum_are_insufficient() -> None:
    three = doc(Counts(3), measured(3), expect=20)
    assert (three["verdict"], three["reasons"]) == (
        "insufficient",
        ["3 of 20 expected startups seen"],
    )
    assert three["budgets"][SD]["verdict"] == "insufficient"
    few = doc(Counts(4), measured(4))
    assert few["verdict"] == "insufficient"
    assert few["reasons"] == [
        "4 startups seen, fewer than the 5 a verdict needs (gate.min_startups)"
    ]
    # a failure among too few startups is not yet a verdict
    assert doc(Counts(3, failed=3), Durations(), expect=20)["verdict"] == "insufficient"


def test_coverage_is_judged_against_expect() -> None:
    got = doc(Counts(20, partial=3), measured(17), expect=20)
    assert (got["verdict"], got["coverage"]) == ("halt", 0.85)
    assert got["reasons"] == [
        "coverage 85% under its minimum of 90%: 17 of 20 expected startups fully traced (3 partial)"
    ]
    assert doc(Counts(20, partial=3), measured(17))["verdict"] == "pass"
    assert doc(Counts(20, partial=2), measured(18), expect=20)["verdict"] == "pass"


def test_a_budget_with_too_few_samples_is_insufficient_but_does_not_hold_the_rollout() -> None:
    only_shim = Durations()
    for _ in range(20):
        only_shim.add(SL, 0.05, 2.0)
    only_shim.add(TR, 5.0, 1.0)  # one slow sample: its budget cannot judge it
    got = doc(Counts(20), only_shim)
    assert got["budgets"][TR]["verdict"] == "insufficient"
    assert got["budgets"][TR]["breaches"] == 1
    assert got["verdict"] == "pass"


def test_enough_startups_with_nothing_measured_is_insufficient_never_pass() -> None:
    got = doc(Counts(10, partial=10), Durations())
    assert got["verdict"] == "insufficient"
    assert got["reasons"] == [
        "no duration measured on 5 startups or more (gate.min_startups): startup_duration 0, "
        "shim_launch_time 0, task_create_to_ready 0 samples"
    ]


def test_every_rule_that_halts_is_a_reason() -> None:
    d = measured(20, sd=5.0, tr=1.5)
    got = doc(Counts(20, failed=2, partial=5), d, expect=20)
    assert got["verdict"] == "halt"
    assert [r.split()[0] for r in got["reasons"]] == [SD, TR, "2", "coverage"]


def test_the_slowest_are_sorted_cut_to_gate_slowest_and_copied() -> None:
    items = [
        {"trace_id": "t", "container_id": f"c{i}", "startup_duration_s": i / 10} for i in range(9)
    ]
    got = doc(Counts(9), measured(9), slowest=items)
    assert [s["container_id"] for s in got["slowest"]] == ["c8", "c7", "c6", "c5", "c4"]
    got["slowest"][0]["container_id"] = "changed"
    assert items[8]["container_id"] == "c8"


def test_judge_is_pure() -> None:
    d = measured(20)
    before = d.to_json()
    assert doc(Counts(20), d) == doc(Counts(20), d)
    assert d.to_json() == before


# -- merge_documents ----------------------------------------------------------------------------
def halves() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    a, b, whole = measured(8), measured(4, tr=1.6), measured(8)
    whole.merge(measured(4, tr=1.6))
    slow = {"trace_id": "t", "container_id": "slow", "startup_duration_s": 2.0}
    fast = {"trace_id": "t", "container_id": "fast", "startup_duration_s": 0.4}
    return (
        doc(Counts(8, failed=1), a, slowest=[fast]),
        doc(Counts(4, partial=1), b, slowest=[slow]),
        doc(Counts(12, failed=1, partial=1), whole, slowest=[slow, fast]),
    )


def test_merging_halves_gives_the_document_of_the_whole() -> None:
    a, b, whole = halves()
    assert (a["verdict"], b["verdict"]) == ("halt", "insufficient")
    merged = merge_documents([a, b], CONFIG, expect=None, sketches=True)
    assert merged == whole
    with_expect = merge_documents([a, b], CONFIG, expect=12)
    assert with_expect == merge_documents([whole], CONFIG, expect=12)
    assert (with_expect["expect"], with_expect["verdict"]) == (12, "halt")
    assert "sketches" not in merge_documents([a, b], CONFIG, expect=None)


def test_merging_nothing_is_an_unknown_rollout() -> None:
    got = merge_documents([], CONFIG, expect=3)
    assert (got["verdict"], got["startups"], got["reasons"]) == (
        "insufficient",
        0,
        ["0 of 3 expected startups seen"],
    )


def _broken(change: str) -> dict[str, Any]:
    a = halves()[0]
    broken = copy.deepcopy(a)
    if change == "no sketches":
        del broken["sketches"]
    elif change == "bad count":
        broken["startups"] = "20"
    elif change == "negative":
        broken["failed"] = -1
    elif change == "more failed than startups":
        broken["failed"] = 99
    elif change == "bad sketch":
        broken["sketches"][SD] = "%%%"
    elif change == "bad breaches":
        broken["budgets"][SD]["breaches"] = 1000
    elif change == "bad slowest":
        broken["slowest"] = [{"startup_duration_s": "slow"}]
    elif change == "other trace":
        broken["trace_id"] = "0" * 31 + "1"
    elif change == "not an object":
        return ["a", "list"]  # type: ignore[return-value]
    return broken


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ("no sketches", "carries no sketches"),
        ("bad count", "startups: expected a count"),
        ("negative", "failed: expected a count"),
        ("more failed than startups", "99 failed"),
        ("bad sketch", "not base64"),
        ("bad breaches", "breaches must be an integer"),
        ("bad slowest", "is not a number"),
        ("other trace", "about trace"),
        ("not an object", "expected an object"),
    ],
)
def test_merging_refuses_what_is_not_a_document_naming_it(change: str, match: str) -> None:
    good = halves()[0]
    with pytest.raises(ValueError, match=f"document 2: .*{match}"):
        merge_documents([good, _broken(change)], CONFIG, expect=None)


def test_the_same_startup_reported_by_two_replicas_is_listed_once() -> None:
    a, b, _ = halves()
    merged = merge_documents([a, b, b], CONFIG, expect=None)
    assert [s["container_id"] for s in merged["slowest"]] == ["slow", "fast"]
