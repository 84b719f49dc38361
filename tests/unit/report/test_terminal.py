"""The terminal table."""

from __future__ import annotations

from pathlib import Path

from otelbridge.core.config import SlaConfig
from otelbridge.report import read_span_file, render_table, report_from_json

NOW = 1_800_000_000_000_000_000


def test_one_block_per_namespace_with_every_budget(span_file: Path) -> None:
    report = read_span_file(str(span_file), SlaConfig(), generated_at_ns=NOW)
    text = render_table(report)
    assert "\x1b[" not in text
    lines = text.splitlines()
    assert lines[0] == "otelbridge SLA report: 3 namespaces, overall BREACH"
    assert lines[1].startswith(f"source: {span_file} (")
    assert "verdicts need 20 samples" in lines[2]
    blocks = text.split("\n\n")[1:]
    assert [b.split()[0] for b in blocks] == ["batch", "canary", "web"]  # worst first
    batch = blocks[0].splitlines()
    assert batch[0].startswith("batch  BREACH  39 startups, 36 traced, coverage 92.3% (>= 90.0%)")
    rows = {line.split()[0]: line.split() for line in batch[2:5]}
    assert rows["task_create_to_ready"][1:] == ["2.49", "s", "1", "s", "37", "8", "breach"]
    assert rows["shim_launch_time"][-1] == "pass"
    assert batch[5].startswith("  gc: 5 reclaims, p99 2.40 s, 1 degraded (> 2 s); 0 leaked;")
    assert batch[6].startswith("  slowest: batch-probed-20 2.56 s (ready) = container.create")
    assert "insufficient" in blocks[1]


def test_colour_only_when_asked(span_file: Path) -> None:
    report = read_span_file(str(span_file), SlaConfig(), generated_at_ns=NOW)
    text = render_table(report, color=True)
    assert "\x1b[1m\x1b[31mBREACH\x1b[0m" in text
    assert "\x1b[32mpass\x1b[0m" in text
    assert "\x1b[33minsufficient\x1b[0m" in text


def test_a_report_from_the_api_names_the_bridges_window() -> None:
    answer = {
        "window_s": 300.0,
        "min_samples": 20,
        "budgets": {"startup_duration": 4.0, "coverage": 0.9},
        "namespaces": {
            "default": {
                "verdict": "pass",
                "startups": 42,
                "traced": 42,
                "coverage": 1.0,
                "coverage_verdict": "pass",
                "budgets": {
                    "startup_duration": {
                        "verdict": "pass",
                        "samples": 42,
                        "p99_s": 0.161,
                        "budget_s": 4.0,
                        "breaches": 0,
                    }
                },
                "gc": {"reclaims": 0, "degraded": 0, "leaked": 2, "leaked_now_total": 1},
            }
        },
    }
    report = report_from_json(answer, kind="api", source="http://h:1/v1/sla", generated_at_ns=NOW)
    text = render_table(report)
    assert "source: http://h:1/v1/sla (the bridge's rolling window: 300 s)" in text
    assert "  startup_duration     161 ms      4 s       42         0  pass" in text
    assert "  gc: no reclaims; 2 leaked (1 still leaked)" in text
    assert "slowest" not in text


def test_no_startups_says_so() -> None:
    answer = {"window_s": 300.0, "min_samples": 20, "budgets": {}, "namespaces": {}}
    report = report_from_json(answer, kind="api", source="x", generated_at_ns=NOW)
    assert render_table(report).endswith("\nno startups in the window\n")
