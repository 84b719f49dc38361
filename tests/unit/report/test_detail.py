"""Issue 10, item 6: what a new user missed in the report.

* a report from a running bridge had no charts: ``/v1/sla?samples=1`` gives the samples
  and startups behind the verdicts, and the report draws them;
* the node and cluster were not shown; trace IDs were not links (``--trace-url``);
* failed startups were only counted: each is listed with how it ended, where, why;
* the p99 and budget labels of a histogram overlapped;
* one duration had three names.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from otelbridge import sla
from otelbridge.core.clock import FakeClock
from otelbridge.core.config import SlaConfig
from otelbridge.core.model import ContainerKey, Outcome, StartupRecord
from otelbridge.httpd import Request
from otelbridge.report import (
    ReportError,
    check_trace_url,
    from_bridge,
    read_span_file,
    render_html,
    render_table,
)
from otelbridge.report.htmlbits import trace_link
from otelbridge.status import _wants_detail
from tests.unit.report import synth
from tests.unit.report.conftest import Server
from tests.unit.report.htmlcheck import check_page

S = 1_000_000_000
T0 = 1_700_000_000 * S
NOW = 1_800_000_000 * S
TRACE = "0af7651916cd43dd8448eb211c80319c"


def record(cid: str, *, ready_s: float | None, create_s: float = 0.01) -> StartupRecord:
    rec = StartupRecord(ContainerKey("web", cid), T0)
    rec.snapshot_prepare_ns = T0
    rec.container_create_ns = T0 + int(create_s * S)
    rec.task_create_ns = T0 + int(0.05 * S)
    rec.task_start_ns = T0 + int(0.06 * S)
    if ready_s is None:  # exits while its readiness is awaited
        rec.outcome = Outcome.EXITED
        rec.end_ns = T0 + int(0.5 * S)
    else:
        rec.outcome = Outcome.READY
        rec.ready_ns = rec.end_ns = T0 + int(ready_s * S)
    return rec


def tracker_with_startups() -> sla.SlaTracker:
    tracker = sla.SlaTracker(SlaConfig(min_samples=5), FakeClock(T0))
    tracker.resource = {"host.name": "box", "k8s.node.name": "node-7", "k8s.cluster.name": "eu-1"}
    for i in range(12):
        rec = record(f"c{i}", ready_s=0.1 + i / 10)
        tracker.observe(rec, sla.durations(rec), label=f"web-{i}/app", trace_id=TRACE)
    failed = record("bad", ready_s=None)
    tracker.observe(
        failed,
        sla.durations(failed),
        label="web-bad/app",
        trace_id=TRACE,
        reason="the task exited before the container was ready (exit status 3)",
    )
    return tracker


def test_the_plain_answer_is_unchanged_and_the_detail_is_asked_for() -> None:
    plain = tracker_with_startups().snapshot()
    assert set(plain["namespaces"]["web"]) == {
        "verdict",
        "startups",
        "traced",
        "coverage",
        "coverage_verdict",
        "budgets",
    }
    assert plain["resource"]["k8s.node.name"] == "node-7"
    asked = Request("GET", "/v1/sla", {}, {"samples": ["1"]}, {}, b"")
    assert _wants_detail(asked)
    assert not _wants_detail(Request("GET", "/v1/sla", {}, {}, {}, b""))


def test_the_detail_holds_samples_outcomes_the_slowest_and_the_failed() -> None:
    web = tracker_with_startups().snapshot(detail=True)["namespaces"]["web"]
    assert len(web["samples"][sla.STARTUP_DURATION]) == 12
    assert len(web["samples"][sla.SHIM_LAUNCH_TIME]) == 13  # the failed one launched
    assert web["outcomes"] == {"ready": 12, "exited": 1}
    slowest = web["slowest"]
    assert len(slowest) == sla.SLOWEST
    assert slowest[0]["label"] == "web-11/app" and slowest[0]["total_s"] == pytest.approx(1.2)
    assert [p["name"] for p in slowest[0]["phases"]] == [
        "container.create",
        "shim.launch",
        "task.start",
        "readiness.wait",
    ]
    (failed,) = web["failed"]
    assert web["failed_total"] == 1
    assert failed["outcome"] == "exited" and failed["trace_id"] == TRACE
    assert failed["reason"].endswith("(exit status 3)")
    assert failed["phases"][-1] == {
        "name": "readiness.wait",
        "offset_s": pytest.approx(0.06),
        "duration_s": pytest.approx(0.44),
        "complete": False,
    }


def test_a_report_from_a_bridge_with_samples_draws_the_charts(tmp_path: Path) -> None:
    answer = tracker_with_startups().snapshot(detail=True)
    server = Server({"/v1/sla": (200, json.dumps(answer).encode())})
    try:
        report = from_bridge(server.url(), generated_at_ns=NOW, samples=True)
    finally:
        server.close()
    assert server.asked == ["/v1/sla?samples=1"]
    assert report.has_samples and not report.has_spans
    assert report.nodes == ("node-7",) and report.clusters == ("eu-1",)
    template = "http://jaeger:16686/trace/{trace_id}"
    html = render_html(report, trace_url=template)
    page = check_page(
        html,
        namespaces=["web"],
        min_charts=4,  # three histograms and the waterfall
        trace_url=template,
    )
    flat = " ".join(page.text.split())
    assert "1 cluster: eu-1 · 1 node: node-7" in flat
    assert f'href="http://jaeger:16686/trace/{TRACE}"' in html
    assert "Failed startups: 1 of 13" in page.text
    assert "readiness.wait after 440 ms" in page.text  # where it stopped
    table = render_table(report)
    assert "on cluster eu-1; 1 node: node-7" in table
    assert "web-bad/app exited in readiness.wait: the task exited" in table
    assert f"trace {TRACE}" in table


def test_failed_startups_of_a_span_file_are_listed_and_judged(tmp_path: Path) -> None:
    startups = [synth.Startup(f"ok{i}", "web") for i in range(20)]
    startups += [
        synth.Startup(f"ex-probed-{i}", "web", ready_after_ms=300, exit=True) for i in range(2)
    ]
    path = synth.write_jsonl(tmp_path / "s.jsonl", synth.replay(startups).spans)
    report = read_span_file(str(path), SlaConfig(), generated_at_ns=NOW)
    (ns,) = report.namespaces
    assert ns.failed_total == 2 and {s.outcome for s in ns.failed} == {"exited"}
    assert all(len(s.trace_id) == 32 and s.reason for s in ns.failed)
    text = check_page(render_html(report), namespaces=[ns.name]).text
    assert "Failed startups: 2 of 22" in text
    assert "more than the gate's max_failed_ratio of 0.0%: a rollout gated on these" in text


def test_a_trace_url_template_is_checked_and_only_hex_ids_are_linked() -> None:
    assert check_trace_url("https://grafana/explore?trace={trace_id}")
    for bad in ("http://jaeger/trace/", "ftp://x/{trace_id}", "{trace_id}"):
        with pytest.raises(ReportError):
            check_trace_url(bad)
    assert "href" not in trace_link('"><script>', "http://j/{trace_id}")
    assert trace_link(TRACE, None) == f"<code>{TRACE}</code>"


def test_one_name_per_duration(tmp_path: Path) -> None:
    startups = [synth.Startup(f"c{i}", "web") for i in range(20)]
    path = synth.write_jsonl(tmp_path / "names.jsonl", synth.replay(startups).spans)
    report = read_span_file(str(path), SlaConfig(), generated_at_ns=NOW)
    text = check_page(render_html(report), namespaces=[report.namespaces[0].name]).text
    for other in ("create->ready", "create-&gt;ready", "shim launch", "startup duration"):
        assert other not in text.lower()


@pytest.mark.parametrize(
    ("budget_s", "p99_s", "lo", "hi"),
    [
        (2.0, 2.3, 0.1, 4.5),  # p99 just right of the budget, near the right edge
        (1.0, 1.68, 0.2, 4.0),  # both in the middle
        (4.0, 0.085, 0.02, 7.2),  # far apart, the budget at the right edge
        (1.0, 1.0, 0.3, 2.5),  # on the same line
        (0.5, 0.03, 0.01, 1.0),  # the p99 near the left edge
    ],
)
def test_the_budget_and_p99_labels_cross_neither_each_other_nor_a_line(
    budget_s: float, p99_s: float, lo: float, hi: float
) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    from otelbridge.report import charts  # noqa: PLC0415

    fig = Figure(figsize=(4.3, 2.75))
    ax = fig.add_subplot()
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    lines = [(budget_s, f"budget {budget_s:g} s", True), (p99_s, f"p99 {p99_s:.3g} s", False)]
    charts._line_labels(ax, lo, hi, lines)
    renderer = FigureCanvasAgg(fig).get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    frame = ax.get_window_extent(renderer)
    assert len(boxes) == 2
    a, b = boxes
    apart = min(a.x1, b.x1) - max(a.x0, b.x0) <= 1 or min(a.y1, b.y1) - max(a.y0, b.y0) <= 1
    assert apart, boxes
    for box in boxes:
        assert frame.x0 - 1 <= box.x0 and box.x1 <= frame.x1 + 1, (box, frame)
        for x, _, _ in lines:
            at = ax.transData.transform((x, 1))[0]
            assert not box.x0 + 1 < at < box.x1 - 1, (x, box)
