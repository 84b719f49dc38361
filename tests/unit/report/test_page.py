"""The HTML report, checked structurally (tests/unit/report/htmlcheck.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import otelbridge.report
from otelbridge import sla
from otelbridge.core.config import SlaConfig
from otelbridge.report import (
    Report,
    ReportError,
    fmt,
    read_span_file,
    render_html,
    report_from_json,
    write_html,
)
from otelbridge.report.page import anchor, why
from tests.unit.report import synth
from tests.unit.report.conftest import RECORDED
from tests.unit.report.htmlcheck import check_page, parse

NOW = 1_800_000_000_000_000_000
DEFAULT_BUDGETS = (4.0, 2.0, 1.0)


@pytest.fixture(scope="module")
def from_spans(span_file: Path) -> Report:
    return read_span_file(str(span_file), SlaConfig(), generated_at_ns=NOW)


@pytest.fixture(scope="module")
def page(from_spans: Report) -> str:
    return render_html(from_spans)


def test_a_report_from_spans_has_a_badge_per_namespace_and_every_chart(
    from_spans: Report, page: str
) -> None:
    verdicts = {ns.name: ns.verdict for ns in from_spans.namespaces}
    # per namespace: three histograms, a waterfall and the overlap comparison
    parsed = check_page(
        page,
        namespaces=verdicts,
        verdicts=verdicts,
        budgets=DEFAULT_BUDGETS,
        min_charts=5 * len(verdicts),
    )
    assert parsed.svgs == 5 * len(verdicts)
    assert parsed.title == "otelbridge SLA report: BREACH (3 namespaces)"
    # badges are in the header, before any namespace's section, and link to it
    for i, ns in enumerate(from_spans.namespaces):
        assert parsed.ids[anchor(i, ns.name)] == 1
    assert page.index('class="badge') < page.index('<section class="namespace"')
    assert "task_create_to_ready p99 2.49 s &gt; 1 s" in page  # why batch breached
    assert "6 of 20 samples needed" in page  # why canary is insufficient
    # the generation time and the source are said
    assert "2027-01-15 08:00:00 UTC" in parsed.text
    assert str(from_spans.source) in parsed.text


def test_each_histogram_draws_its_budget_and_p99(from_spans: Report, page: str) -> None:
    for ns in from_spans.namespaces:
        for budget in ns.budgets:
            assert f"budget {budget.budget_s:g} s" in page
            assert f"p99 {fmt.seconds(budget.p99_s)}" in page
    # the charts' text is text (searchable), not glyph outlines
    assert "<text" in page and "startups" in page


def test_the_waterfall_names_the_slowest_startups_and_their_phases(
    from_spans: Report, page: str
) -> None:
    batch = next(ns for ns in from_spans.namespaces if ns.name == "batch")
    for startup in batch.slowest:
        assert startup.label in page
    for phase in ("container.create", "shim.launch", "task.start", "readiness.wait"):
        assert phase in page
    assert "[exited]" in page


def test_coverage_and_gc_figures_are_shown(page: str) -> None:
    text = parse(page).text
    assert "coverage 92.3% (min 90.0%)" in text
    assert "reclaim in flight" in text and "no reclaim in flight" in text
    assert "degraded" in text


def test_a_report_from_the_api_says_why_it_has_no_charts(replayed: synth.Replayed) -> None:
    answer = json.loads(json.dumps(replayed.pipeline.sla.snapshot()))
    report = report_from_json(
        answer, kind="api", source="http://127.0.0.1:9464/v1/sla", generated_at_ns=NOW
    )
    page = render_html(report)
    parsed = check_page(
        page,
        namespaces=answer["namespaces"],
        verdicts={k: v["verdict"] for k, v in answer["namespaces"].items()},
        budgets=DEFAULT_BUDGETS,
    )
    assert parsed.svgs == 0 and parsed.png_images == 0
    assert "No histograms or waterfalls" in parsed.text
    assert "rolling window of 300 s" in parsed.text
    # the bridge's gc figures are shown as it gave them
    assert "Snapshot GC" in parsed.text


def test_names_are_escaped_and_anchors_stay_unique() -> None:
    answer = {
        "window_s": 300.0,
        "min_samples": 20,
        "budgets": {"startup_duration": 4.0, "coverage": 0.9},
        "namespaces": {
            name: {
                "verdict": "insufficient",
                "startups": 0,
                "traced": 0,
                "coverage": None,
                "coverage_verdict": "insufficient",
                "budgets": {},
                "gc": {"strange": {"nested": 1.23456}},
            }
            for name in ("<b>x</b>", "a b", "a-b")
        },
    }
    page = render_html(report_from_json(answer, kind="api", source="x", generated_at_ns=NOW))
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page
    parsed = check_page(page, namespaces=answer["namespaces"])
    assert "strange" in parsed.text and "nested: 1.235" in parsed.text


def test_no_namespace_is_a_page_that_says_so() -> None:
    answer = {"window_s": 300.0, "min_samples": 20, "budgets": {}, "namespaces": {}}
    page = render_html(report_from_json(answer, kind="api", source="x", generated_at_ns=NOW))
    parsed = check_page(page, namespaces=[])
    assert "No startups" in parsed.text
    assert "INSUFFICIENT" in parsed.title


def test_why_a_namespace_passes_names_its_tightest_budget(from_spans: Report) -> None:
    web = next(ns for ns in from_spans.namespaces if ns.name == "web")
    assert why(web, 20, 0.9).startswith("48 startups, tightest p99 at ")
    assert web.verdict == sla.Verdict.PASS.value


def test_write_html_replaces_the_file_whole(tmp_path: Path) -> None:
    answer = json.loads(RECORDED.read_text())
    report = report_from_json(answer, kind="api", source="x", generated_at_ns=NOW)
    out = tmp_path / "report.html"
    out.write_text("old")
    write_html(report, out)
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temporary left
    with pytest.raises(ReportError, match="cannot write"):
        write_html(report, tmp_path / "missing" / "report.html")


def test_without_matplotlib_html_is_one_clear_error(
    from_spans: Report, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "otelbridge.report.charts", None)
    monkeypatch.delattr(otelbridge.report, "charts", raising=False)
    with pytest.raises(ReportError, match=r"--html needs matplotlib"):
        write_html(from_spans, tmp_path / "report.html")
    assert not (tmp_path / "report.html").exists()
