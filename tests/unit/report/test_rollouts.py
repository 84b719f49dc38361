"""The report groups a span file's startups by rollout (issue 9, Build 6): each rollout
judged as `otelbridge processor` judges it, with its name, verdict and reasons."""

from __future__ import annotations

from pathlib import Path

from otelbridge.core.config import SlaConfig
from otelbridge.report import read_span_file, render_table
from otelbridge.report.page import render_html
from tests.unit.report.synth import Startup, replay, rollout_trace, write_jsonl


def test_startups_are_grouped_and_judged_by_rollout(tmp_path: Path) -> None:
    startups = [
        *(Startup(f"ro1-fast-{i}", "web") for i in range(6)),
        *(Startup(f"ro2-probed-{i}", "web", ready_after_ms=1_500) for i in range(6)),
        *(Startup(f"ro3-{i}", "web") for i in range(2)),  # too few to judge
        *(Startup(f"alone-{i}", "web") for i in range(4)),  # their own traces: no rollout
    ]
    path = write_jsonl(tmp_path / "spans.jsonl", replay(startups).spans)
    report = read_span_file(str(path), SlaConfig(), generated_at_ns=0)
    verdicts = {r.trace_id: r for r in report.rollouts}
    assert set(verdicts) == {rollout_trace(1), rollout_trace(2), rollout_trace(3)}
    assert (verdicts[rollout_trace(1)].verdict, verdicts[rollout_trace(1)].startups) == ("pass", 6)
    slow = verdicts[rollout_trace(2)]
    assert slow.verdict == "halt"
    assert any("task_create_to_ready" in reason for reason in slow.reasons)
    assert verdicts[rollout_trace(3)].verdict == "insufficient"
    assert [r.verdict for r in report.rollouts] == ["halt", "insufficient", "pass"]  # worst first
    table = render_table(report)
    assert "rollouts (3, judged as otelbridge processor does):" in table
    assert f"trace {rollout_trace(2)}  HALT" in table
    assert report.verdict_json["rollouts"][0]["verdict"] == "halt"
    page = render_html(report)
    assert "<h2>Rollouts</h2>" in page and rollout_trace(2) in page


def test_a_file_without_rollouts_shows_none(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "spans.jsonl", replay([Startup("solo", "web")]).spans)
    report = read_span_file(str(path), SlaConfig(), generated_at_ns=0)
    assert report.rollouts == ()
    assert "rollouts (" not in render_table(report)
