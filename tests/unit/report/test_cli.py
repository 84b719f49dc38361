"""`otelbridge sla`: sources, outputs and exit codes (0 pass, 1 breach, 2 insufficient)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from otelbridge.cli import main
from tests.unit.report import synth
from tests.unit.report.conftest import RECORDED, Server, closed_port
from tests.unit.report.htmlcheck import check_page


def sla(*args: str) -> int:
    return main(["sla", *args])


def spans_of(tmp_path: Path, name: str, startups: list[synth.Startup]) -> str:
    return str(synth.write_jsonl(tmp_path / name, synth.replay(startups).spans))


@pytest.fixture
def passing(tmp_path: Path) -> str:
    return spans_of(tmp_path, "pass.jsonl", [synth.Startup(f"c{i}", "ok") for i in range(25)])


def test_every_namespace_passes_exit_0(passing: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert sla("--spans", passing) == 0
    out = capsys.readouterr().out
    assert out.startswith("otelbridge SLA report: 1 namespace, overall PASS\n")
    assert "\x1b[" not in out  # not a tty


def test_a_namespace_breaches_exit_1(span_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert sla("--spans", str(span_file)) == 1
    assert "batch  BREACH" in capsys.readouterr().out


def test_too_little_data_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    few = spans_of(tmp_path, "few.jsonl", [synth.Startup(f"c{i}", "ok") for i in range(3)])
    assert sla("--spans", few) == 2
    assert "ok  INSUFFICIENT" in capsys.readouterr().out


def test_passing_next_to_too_little_data_is_not_a_pass(tmp_path: Path) -> None:
    startups = [synth.Startup(f"a{i}", "a") for i in range(25)]
    startups += [synth.Startup(f"b{i}", "b") for i in range(3)]
    assert sla("--spans", spans_of(tmp_path, "mixed.jsonl", startups)) == 2


def test_no_startups_at_all_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert sla("--spans", str(empty)) == 2
    assert "no startups in this file" in capsys.readouterr().out


def test_the_config_sets_the_budgets(span_file: Path, tmp_path: Path) -> None:
    config = tmp_path / "otelbridge.toml"
    config.write_text("[sla]\nmin_samples = 5\ntask_create_to_ready_s = 5.0\n")
    assert sla("--spans", str(span_file), "--config", str(config)) == 0


def test_a_bad_config_is_bad_usage(
    span_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "otelbridge.toml"
    config.write_text("[sla]\nmin_samples = 0\nbogus = 1\n")
    assert sla("--spans", str(span_file), "--config", str(config)) == 2
    err = capsys.readouterr().err
    assert "sla.min_samples must be >= 1" in err and "bogus" in err


def test_a_missing_span_file_is_one_line_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert sla("--spans", str(tmp_path / "nope.jsonl")) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("otelbridge sla: cannot read ")
    assert captured.err.count("\n") == 1


def test_both_sources_at_once_is_bad_usage(span_file: Path) -> None:
    with pytest.raises(SystemExit) as exited:
        sla("--spans", str(span_file), "--from", "http://127.0.0.1:1")
    assert exited.value.code == 2


def test_json_prints_the_verdicts(span_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert sla("--spans", str(span_file), "--json", "-n", "web") == 0
    printed = json.loads(capsys.readouterr().out)
    assert list(printed["namespaces"]) == ["web"]
    assert printed["namespaces"]["web"]["verdict"] == "pass"
    assert set(printed) == {"window_s", "min_samples", "budgets", "namespaces", "rollouts"}


def test_from_a_bridge(bridge: Server, capsys: pytest.CaptureFixture[str]) -> None:
    assert sla("--from", bridge.url()) == 1
    out = capsys.readouterr().out
    assert f"source: {bridge.url()} (the bridge's rolling window: 300 s)" in out
    assert sla("--from", bridge.url(), "--namespace", "fast") == 0
    assert sla("--from", bridge.url(), "--namespace", "few") == 2


def test_from_a_bridge_as_json_is_its_answer(
    bridge: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    assert sla("--from", f"127.0.0.1:{bridge.port}", "--json") == 1
    assert json.loads(capsys.readouterr().out) == json.loads(RECORDED.read_text())


def test_the_default_source_is_the_http_addr_of_the_environment(
    bridge: Server, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OTELBRIDGE_HTTP_ADDR", f"0.0.0.0:{bridge.port}")
    assert sla() == 1
    assert f"source: http://127.0.0.1:{bridge.port}/v1/sla" in capsys.readouterr().out


def test_a_bridge_that_cannot_be_reached_is_one_line_exit_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1/sla"
    assert sla("--from", url) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.splitlines()
    assert line.startswith(f"otelbridge sla: cannot reach the bridge at {url}: ")


def test_config_is_not_used_with_a_bridge(
    bridge: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "otelbridge.toml"
    config.write_text("[sla]\nmin_samples = 1\n")
    assert sla("--from", bridge.url(), "--config", str(config)) == 1
    assert "--config is not used with a bridge" in capsys.readouterr().err


def test_html_from_a_bridge(
    bridge: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report.html"
    assert sla("--from", bridge.url(), "--html", str(out)) == 1
    assert f"wrote {out}" in capsys.readouterr().err
    recorded = json.loads(RECORDED.read_text())["namespaces"]
    check_page(
        out.read_text(),
        namespaces=recorded,
        verdicts={name: ns["verdict"] for name, ns in recorded.items()},
        budgets=(4.0, 2.0, 1.0),
    )


def test_html_from_spans_with_json_on_stdout(
    passing: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report.html"
    assert sla("--spans", passing, "--html", str(out), "--json") == 0
    assert json.loads(capsys.readouterr().out)["namespaces"]["ok"]["verdict"] == "pass"
    page = check_page(out.read_text(), namespaces=["ok"], budgets=(4.0, 2.0, 1.0), min_charts=4)
    assert page.badges[0]["data-verdict"] == "pass"


def test_an_html_file_that_cannot_be_written_is_exit_1(
    passing: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert sla("--spans", passing, "--html", str(tmp_path / "no" / "dir.html")) == 1
    assert capsys.readouterr().err.startswith("otelbridge sla: cannot write ")


def test_a_namespace_that_matches_nothing_names_those_there(
    span_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A new user typed -n nosuch and read "no startups in this file"."""
    sla("--spans", str(span_file), "-n", "nosuch")
    out = capsys.readouterr().out
    assert "no startups in the namespaces asked for in this file; it has startups in:" in out
    assert "web" in out


def test_a_recording_given_as_spans_says_to_replay_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A new user ran sla on a recording and read "0 spans"."""
    path = tmp_path / "rec.jsonl"
    path.write_text('{"format":"otelbridge-recording","version":2}\n')
    assert sla("--spans", str(path)) == 1
    assert "otelbridge replay" in capsys.readouterr().err


def test_html_goes_where_output_says(span_file: Path, tmp_path: Path) -> None:
    """`--html -o FILE` was refused (record uses -o; sla's --html took the path)."""
    out = tmp_path / "r.html"
    sla("--spans", str(span_file), "--html", "-o", str(out))
    assert out.read_text().startswith("<!DOCTYPE html>")
    other = tmp_path / "s.html"
    sla("--spans", str(span_file), "--html", str(other))
    assert other.exists()
