"""A report from a jsonl span file: the bridge's own verdicts, rebuilt from its spans."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from otelbridge import sla
from otelbridge.core.clock import FakeClock
from otelbridge.core.config import Config, SlaConfig
from otelbridge.core.model import ContainerKey, StartupRecord
from otelbridge.core.tracecontext import TraceContext
from otelbridge.emit.spans import provisioning_span
from otelbridge.export.files import read_jsonl
from otelbridge.report import ReportError, Spread, collect, from_spans, read_span_file
from otelbridge.report.spans import startup_record
from otelbridge.sla import coverage_verdict
from tests.unit.report import synth
from tests.unit.report.conftest import RECLAIM_MS

NOW = 1_800_000_000_000_000_000


def load(path: Path, config: SlaConfig | None = None, **kwargs: object):  # type: ignore[no-untyped-def]
    return read_span_file(str(path), config or SlaConfig(), generated_at_ns=NOW, **kwargs)  # type: ignore[arg-type]


def test_verdicts_equal_the_bridges_own_on_the_same_startups(
    replayed: synth.Replayed, span_file: Path
) -> None:
    report = load(span_file)
    # the pipeline judged the same startups with otelbridge.sla (its window holds them all)
    theirs = replayed.pipeline.sla.snapshot()
    mine = report.verdict_json
    assert set(mine["namespaces"]) == set(theirs["namespaces"]) == {"web", "batch", "canary"}
    for name, judged in theirs["namespaces"].items():
        ours = {k: v for k, v in mine["namespaces"][name].items() if k != "gc"}
        assert ours == {k: v for k, v in judged.items() if k != "gc"}, name
    assert mine["budgets"] == theirs["budgets"]
    assert mine["min_samples"] == theirs["min_samples"]
    # the three verdicts the data was made for
    verdicts = {ns.name: ns.verdict for ns in report.namespaces}
    assert verdicts == {"web": "pass", "batch": "breach", "canary": "insufficient"}
    assert report.verdict == "breach"
    assert report.namespaces[0].broken == [sla.TASK_CREATE_TO_READY]


def test_every_startup_is_measured_as_the_bridge_measured_it(
    replayed: synth.Replayed, span_file: Path
) -> None:
    spans = collect(read_jsonl(span_file.open()))
    rebuilt = {}
    for key, root in spans.startups.items():
        record = startup_record(root, spans.phases.get(key, {}))
        rebuilt[record.key] = record
    assert len(rebuilt) == len(replayed.records) == 93
    outcomes = set()
    for original in replayed.records:
        record = rebuilt[original.key]
        outcomes.add(original.outcome)
        assert record.partial == original.partial
        assert record.outcome == original.outcome
        assert sla.durations(record) == sla.durations(original), original.key
    assert {o.value for o in outcomes if o} == {"ready", "exited"}


def test_samples_and_the_slowest_startups_are_kept_for_the_charts(span_file: Path) -> None:
    report = load(span_file)
    batch = next(ns for ns in report.namespaces if ns.name == "batch")
    judged = {b.name: b for b in batch.budgets}
    for name in sla.DURATIONS:
        assert len(batch.samples[name]) == judged[name].samples
        assert sla.p99(batch.samples[name]) == judged[name].p99_s
    assert len(batch.slowest) == 10
    totals = [s.total_s for s in batch.slowest]
    assert totals == sorted(totals, reverse=True)
    assert totals[0] == max(batch.samples[sla.STARTUP_DURATION])
    worst = batch.slowest[0]
    assert [p.name for p in worst.phases] == [
        "container.create",
        "shim.launch",
        "task.start",
        "readiness.wait",
    ]
    assert worst.phases[0].offset_s == 0
    assert worst.breached == ("task_create_to_ready",)
    # the exited ones: their readiness.wait never completed
    exited = [s for s in batch.slowest if s.outcome == "exited"]
    for startup in exited:
        assert not startup.phases[-1].complete
    assert batch.outcomes == {"ready": 37, "exited": 2}
    assert (batch.startups, batch.traced) == (39, 36)


def test_gc_figures_come_from_reclaim_spans_and_overlap_tags(span_file: Path) -> None:
    report = load(span_file)
    for ns in report.namespaces:
        gc = ns.gc
        assert gc is not None
        assert sorted(gc.reclaim_s) == sorted(ms / 1000 for ms in RECLAIM_MS)
        assert gc.degraded == 1  # the 2.4 s one (no otelbridge.gc.degraded on these spans)
        figures = ns.gc_figures
        assert figures["reclaims"] == len(RECLAIM_MS)
        assert figures["reclaim_p99_s"] == 2.4
        assert figures["reclaim_budget_s"] == 2.0
        assert figures["overlapped_startups"] == gc.overlapped_startups > 0
        assert len(gc.overlapped_s) + len(gc.others_s) == len(ns.samples[sla.SHIM_LAUNCH_TIME])
        assert figures["create_p50_s_overlapped"] == gc.overlapped.median_s
    # the gc object has the keys of the bridge's /v1/sla that a file can tell
    assert set(report.verdict_json["namespaces"]["web"]["gc"]) >= {
        "reclaims",
        "degraded",
        "reclaim_p99_s",
        "reclaim_budget_s",
        "leaked",
        "leak_ttl_s",
        "overlapped_startups",
        "create_p50_s_overlapped",
        "create_p50_s_other",
    }


def test_the_degraded_and_leaked_attributes_of_reclaim_spans_win(
    replayed: synth.Replayed, tmp_path: Path
) -> None:
    spans = synth.with_gc(replayed.spans, overlap_every=1000, reclaim_ms=(100.0, 3000.0))
    for span in spans:
        if span.name == "snapshot.reclaim":
            fast = span.end_time_unix_nano - span.start_time_unix_nano < 10**9
            # the fast one says degraded (a bridge with a tighter budget), the slow one
            # was a leak: counted as leaked, not as degraded
            span.attributes.append(synth._attr("otelbridge.gc.degraded", fast))
            span.attributes.append(synth._attr("otelbridge.gc.leaked", not fast))
    report = load(synth.write_jsonl(tmp_path / "s.jsonl", spans))
    gc = report.namespaces[0].gc_figures
    assert (gc["reclaims"], gc["degraded"], gc["leaked"]) == (2, 1, 1)


def test_a_span_written_twice_counts_once(replayed: synth.Replayed, tmp_path: Path) -> None:
    once = synth.write_jsonl(tmp_path / "once.jsonl", replayed.spans)
    twice = tmp_path / "twice.jsonl"
    twice.write_text(once.read_text() * 2)
    assert load(twice).verdict_json["namespaces"] == load(once).verdict_json["namespaces"]


def test_the_window_is_the_whole_file(tmp_path: Path) -> None:
    # 40 startups an hour apart: the bridge's 5-minute window would hold one at a time
    startups = [synth.Startup(f"c{i}", "default") for i in range(40)]
    replayed = synth.replay(startups, apart_ms=3600_000)
    assert replayed.pipeline.sla.snapshot()["namespaces"]["default"]["startups"] == 1
    report = load(synth.write_jsonl(tmp_path / "s.jsonl", replayed.spans))
    [ns] = report.namespaces
    assert ns.startups == 40 and ns.verdict == "pass"
    assert report.window_s is not None and report.window_s > 39 * 3600
    assert report.window_s == pytest.approx((report.last_ns - report.first_ns) / 1e9)  # type: ignore[operator]


def test_namespaces_can_be_chosen(span_file: Path) -> None:
    report = load(span_file, namespaces=["web", "nope"])
    assert [ns.name for ns in report.namespaces] == ["web"]
    assert list(report.verdict_json["namespaces"]) == ["web"]
    assert report.verdict == "pass"


def test_the_configs_budgets_judge_the_file(span_file: Path) -> None:
    strict = SlaConfig(shim_launch_s=0.05, min_samples=5)
    report = load(span_file, strict)
    verdicts = {ns.name: ns.verdict for ns in report.namespaces}
    assert verdicts == {"web": "breach", "batch": "breach", "canary": "breach"}
    web = report.namespaces[2]
    assert web.budget(sla.SHIM_LAUNCH_TIME).budget_s == 0.05  # type: ignore[union-attr]
    assert report.verdict_json["budgets"]["shim_launch_time"] == 0.05


def test_spans_that_are_not_startups_are_not_judged(
    replayed: synth.Replayed, tmp_path: Path
) -> None:
    rollout = provisioning_span(
        TraceContext(b"\x01" * 16, b"\x02" * 8, 1), name="rollout", start_ns=1, end_ns=2
    )
    path = synth.write_jsonl(tmp_path / "s.jsonl", [rollout, *replayed.spans])
    report = load(path)
    assert sum(ns.startups for ns in report.namespaces) == 93
    assert report.spans_read == len(replayed.spans) + 1


def test_an_empty_file_has_no_namespace_and_judges_insufficient(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    report = load(path)
    assert report.namespaces == () and report.verdict == "insufficient"
    assert report.window_s is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"resourceSpans": []}\nnot json\n', "line 2: not JSON"),
        ("[1, 2]\n", "line 1: expected a JSON object"),
        ('{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}\n', "line 1"),
    ],
)
def test_a_bad_line_is_named(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(ReportError, match=message):
        load(path)


def test_a_missing_or_binary_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match=r"cannot read .*No such file"):
        load(tmp_path / "nope.jsonl")
    binary = tmp_path / "bin.jsonl"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ReportError, match="not a text file"):
        load(binary)


def _tracker_coverage(startups: int, traced: int, config: SlaConfig) -> tuple[object, str]:
    tracker = sla.SlaTracker(config, FakeClock(NOW))
    for i in range(startups):
        record = StartupRecord(key=ContainerKey("ns", f"c{i}"), incarnation_ns=NOW)
        record.partial = i >= traced
        tracker.observe(record, {})
    judged = tracker.snapshot()["namespaces"]["ns"]
    return judged["coverage"], judged["coverage_verdict"]


@pytest.mark.parametrize(
    ("startups", "traced"), [(1, 1), (4, 3), (5, 5), (5, 4), (10, 9), (10, 8), (20, 18), (20, 17)]
)
def test_the_coverage_rule_is_the_trackers(startups: int, traced: int) -> None:
    config = SlaConfig(min_samples=5, coverage_min=0.9)
    assert coverage_verdict(startups, traced, config) == _tracker_coverage(startups, traced, config)


def test_the_verdict_json_is_json(span_file: Path) -> None:
    report = load(span_file)
    again = json.loads(json.dumps(report.verdict_json))
    assert again["namespaces"]["batch"]["verdict"] == "breach"


def test_from_spans_takes_spans_read_elsewhere(replayed: synth.Replayed, tmp_path: Path) -> None:
    path = synth.write_jsonl(tmp_path / "s.jsonl", replayed.spans)
    with path.open() as stream:
        spans = collect(read_jsonl(stream))
    report = from_spans(spans, Config().sla, source="memory", generated_at_ns=NOW, slowest=3)
    assert all(len(ns.slowest) == 3 for ns in report.namespaces)
    assert report.source == "memory"


def test_spreads_are_nearest_rank_like_the_bridges() -> None:
    assert Spread.of([]) == Spread(0, None, None)
    assert Spread.of([0.3, 0.1, 0.2]) == Spread(3, 0.2, 0.3)
    assert Spread.of([0.1, 0.2]).median_s == 0.1  # a value that occurred, not 0.15
