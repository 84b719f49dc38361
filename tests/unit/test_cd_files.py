"""The CD integration files a user copies (deploy/argo, deploy/flagger, examples/ci) say
what they mean and stay true to otelbridge.

Argo Rollouts, Flagger and Prometheus cannot run here, so:

* every YAML parses and has the kinds and fields its controller needs;
* the Argo web template is *evaluated* (:mod:`otelbridge.testing.argo`, a small
  evaluator of its args, URL, jsonPath and conditions, and of Argo's assessment of a
  metric's measurements) against documents served by the stand-in processor of
  test_gate.py: Successful for the passing rollout, Failed for the halting one,
  Inconclusive when it stays insufficient. The lead runs the same evaluator against a
  live processor end to end;
* the job template's command line is parsed by otelbridge's own parser;
* the Flagger MetricTemplates query the metric and label names the processor's
  ``/metrics`` renders;
* the CI script passes ``sh -n`` (and shellcheck when installed) and runs for real,
  with the real ``otelbridge rollout exec`` and ``otelbridge gate``, against the stand-in.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from otelbridge import cli, gate_inputs, sla
from otelbridge.core import semconv
from otelbridge.processor.http_api import render_metrics
from otelbridge.testing import argo
from tests.unit.test_gate import (
    TRACE_ID,
    TRACEPARENT,
    StandInProcessor,
    dead_url,
    fast,
    slow_readiness,
)

ROOT = Path(__file__).parents[2]
ARGO = ROOT / "deploy" / "argo"
FLAGGER = ROOT / "deploy" / "flagger"
CI_SCRIPT = ROOT / "examples" / "ci" / "deploy-and-gate.sh"


def documents(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    assert docs, f"{path} holds no document"
    assert all(isinstance(d, dict) for d in docs)
    return docs


def only(path: Path) -> dict[str, Any]:
    (doc,) = documents(path)
    return doc


def web_template() -> dict[str, Any]:
    return only(ARGO / "analysis-template.yaml")


def job_template() -> dict[str, Any]:
    return only(ARGO / "analysis-template-job.yaml")


# -- every file parses, with the right kinds ------------------------------------------------


def yaml_files() -> list[Path]:
    return sorted([*ARGO.glob("*.yaml"), *ARGO.glob("*.yml"), *FLAGGER.glob("*.y*ml")])


def test_the_files_are_there() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in yaml_files()}
    assert names == {
        "deploy/argo/analysis-template.yaml",
        "deploy/argo/analysis-template-job.yaml",
        "deploy/flagger/canary.yaml",
        "deploy/flagger/metric-template.yaml",
    }


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: p.name)
def test_every_yaml_parses_with_known_kinds(path: Path) -> None:
    kinds = {
        "AnalysisTemplate": "argoproj.io/v1alpha1",
        "Canary": "flagger.app/v1beta1",
        "MetricTemplate": "flagger.app/v1beta1",
    }
    for doc in documents(path):
        assert doc.get("kind") in kinds, doc.get("kind")
        assert doc["apiVersion"] == kinds[doc["kind"]]
        assert doc["metadata"]["name"]
        assert isinstance(doc["spec"], dict)


def _declared_args(template: dict[str, Any]) -> dict[str, str | None]:
    return {a["name"]: a.get("value") for a in template["spec"].get("args") or []}


@pytest.mark.parametrize("template", [web_template(), job_template()], ids=["web", "job"])
def test_every_arg_used_is_declared(template: dict[str, Any]) -> None:
    used = set(re.findall(r"\{\{args\.([A-Za-z0-9_.\-]+)\}\}", yaml.safe_dump(template)))
    assert used <= set(_declared_args(template)), used - set(_declared_args(template))
    assert {"trace-id", "expect"} <= used
    # the rollout's own values have no default: a missing one must not pass silently
    assert _declared_args(template)["trace-id"] is None
    assert _declared_args(template)["expect"] is None


def test_the_web_template_asks_the_processor_for_the_verdict() -> None:
    (metric,) = web_template()["spec"]["metrics"]
    web = metric["provider"]["web"]
    assert web["url"] == ("{{args.processor}}/v1/rollouts/{{args.trace-id}}?expect={{args.expect}}")
    assert web["jsonPath"] == "{$.verdict}"
    assert web.get("method", "GET") == "GET"
    assert metric["successCondition"] == 'result == "pass"'
    assert metric["failureCondition"] == 'result == "halt"'
    for key in ("interval", "count", "consecutiveErrorLimit", "inconclusiveLimit"):
        assert key in metric, key
    # insufficient measurements are tolerated while the startups arrive, up to count - 1:
    # so "insufficient until the end" is Inconclusive, and a halt fails at once
    assert metric["inconclusiveLimit"] == metric["count"] - 1
    assert metric.get("failureLimit", 0) == 0
    assert argo.parse_duration(metric["interval"]) > 0
    default = _declared_args(web_template())["processor"]
    assert default is not None and gate_inputs.processor_base(default) == default


def _job_command(template: dict[str, Any], args: dict[str, str]) -> list[str]:
    resolved = argo.resolve_args(template, args)
    spec = resolved["provider"]["job"]["spec"]
    (container,) = spec["template"]["spec"]["containers"]
    return [*container["command"], *container["args"]]


def test_the_job_template_runs_the_gate_once() -> None:
    template = job_template()
    (metric,) = template["spec"]["metrics"]
    job = metric["provider"]["job"]["spec"]
    assert job["backoffLimit"] == 0  # a retried gate would wait again and repeat itself
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    assert metric["count"] == 1
    command = _job_command(template, {"trace-id": TRACE_ID, "expect": "20"})
    assert command[:2] == ["otelbridge", "gate"]
    parsed = cli.build_parser().parse_args(command[1:])  # every flag exists, as written
    assert parsed.trace_id == TRACE_ID and parsed.expect == 20
    processors = [gate_inputs.processor_base(p) for v in parsed.processor for p in v.split(",")]
    assert len(processors) == 2
    # Kubernetes must not kill the gate before it reports
    assert job["activeDeadlineSeconds"] > parsed.timeout


def test_the_job_template_explains_exit_2() -> None:
    text = (ARGO / "analysis-template-job.yaml").read_text(encoding="utf-8")
    assert "ANY other exit is" in text and "Failed" in text
    assert "2 insufficient  -> Failed as well" in text
    assert "--timeout" in text


def test_the_canary_calls_the_flagger_webhook() -> None:
    canary = only(FLAGGER / "canary.yaml")
    analysis = canary["spec"]["analysis"]
    hooks = [h for h in analysis["webhooks"] if h["url"].endswith("/v1/flagger")]
    assert len(hooks) == 1
    (hook,) = hooks
    assert hook["type"] in ("pre-rollout", "rollout", "confirm-promotion")
    metadata = hook["metadata"]
    assert all(isinstance(v, str) for v in metadata.values())  # Flagger: a map of strings
    assert gate_inputs.trace_id_from_traceparent(metadata["traceparent"]) == TRACE_ID
    assert int(metadata["expect"]) >= 1
    assert analysis["threshold"] >= 1 and analysis["interval"]


def test_the_canary_metrics_use_the_metric_templates() -> None:
    canary = only(FLAGGER / "canary.yaml")
    templates = {d["metadata"]["name"]: d for d in documents(FLAGGER / "metric-template.yaml")}
    for metric in canary["spec"]["analysis"]["metrics"]:
        template = templates[metric["templateRef"]["name"]]
        assert metric["templateRef"]["namespace"] == template["metadata"]["namespace"]
        wanted = set(re.findall(r"\{\{\s*variables\.(\w+)\s*\}\}", template["spec"]["query"]))
        assert wanted <= set(metric.get("templateVariables") or {}), wanted
        assert metric["templateVariables"]["trace_id"] == TRACE_ID
        assert "thresholdRange" in metric


def test_the_metric_templates_query_what_the_processor_renders() -> None:
    """The queries' metric and label names are those of the processor's /metrics (its
    own renderer over one point of each gauge), and each query has a fallback so a
    missing series is not a failed check."""
    labels = {semconv.OB_ROLLOUT_TRACE_ID: TRACE_ID, semconv.OB_ROLLOUT_NAME: "web"}
    rendered = render_metrics(
        {},
        [
            (semconv.ROLLOUT_VERDICT, labels, 1.0),
            (semconv.ROLLOUT_P99, {**labels, semconv.OB_SLA_BUDGET: sla.STARTUP_DURATION}, 1.2),
        ],
    ).decode()
    series = {
        line.split("{", 1)[0]: set(re.findall(r"(\w+)=\"", line))
        for line in rendered.splitlines()
        if line and not line.startswith("#")
    }
    templates = documents(FLAGGER / "metric-template.yaml")
    assert {t["metadata"]["name"] for t in templates} == {
        "otelbridge-rollout-halted",
        "otelbridge-rollout-p99",
    }
    for template in templates:
        assert template["spec"]["provider"]["type"] == "prometheus"
        query = template["spec"]["query"]
        used = set(re.findall(r"\b(otelbridge_\w+)\s*\{", query))
        assert used, query
        for name in used:
            assert name in series, f"{name} is not rendered: {sorted(series)}"
            selector = query[query.index(name) :].split("}", 1)[0]
            assert set(re.findall(r"(\w+)\s*=", selector)) <= series[name]
        assert "or on() vector(" in query


def _query(name: str, **variables: str) -> str:
    (template,) = [
        t for t in documents(FLAGGER / "metric-template.yaml") if t["metadata"]["name"] == name
    ]
    query: str = template["spec"]["query"]
    return re.sub(r"\{\{\s*variables\.(\w+)\s*\}\}", lambda m: variables[m.group(1)], query)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian prometheus)")
def test_the_metric_template_queries_evaluate(tmp_path: Path) -> None:
    """Prometheus's own evaluator (`promtool test rules`) runs the queries over series
    shaped as the processor renders them: the halted query is 1 for a halt only, 0 for
    pass, insufficient and a rollout without a series; the p99 query reads one budget."""
    other = "0af7651916cd43dd8448eb211c80319c"
    verdict = "otelbridge_rollout_verdict"
    p99 = "otelbridge_rollout_p99_seconds"
    values = semconv.ROLLOUT_VERDICT_VALUES
    series = [
        # the rollout: insufficient at first, then halt
        (
            f'{verdict}{{otelbridge_rollout_trace_id="{TRACE_ID}",otelbridge_rollout_name="w"}}',
            f"{values['insufficient']} {values['halt']}",
        ),
        (
            f'{verdict}{{otelbridge_rollout_trace_id="{other}",otelbridge_rollout_name="v"}}',
            f"{values['pass']} {values['pass']}",
        ),
        (
            f'{p99}{{otelbridge_rollout_trace_id="{TRACE_ID}",otelbridge_sla_budget="startup_duration"}}',
            "1.25 1.25",
        ),
        (
            f'{p99}{{otelbridge_rollout_trace_id="{TRACE_ID}",otelbridge_sla_budget="shim_launch_time"}}',
            "0.05 0.05",
        ),
    ]
    halted = "otelbridge-rollout-halted"
    cases = [
        (_query(halted, trace_id=TRACE_ID), "0m", 0.0),  # insufficient
        (_query(halted, trace_id=TRACE_ID), "1m", 1.0),  # halt
        (_query(halted, trace_id=other), "1m", 0.0),  # pass
        (_query(halted, trace_id="f" * 32), "1m", 0.0),  # no series yet
        (
            _query("otelbridge-rollout-p99", trace_id=TRACE_ID, budget="startup_duration"),
            "1m",
            1.25,
        ),
        (_query("otelbridge-rollout-p99", trace_id=other, budget="startup_duration"), "1m", 0.0),
    ]
    tests = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": name, "values": v} for name, v in series],
                "promql_expr_test": [
                    {"expr": q, "eval_time": t, "exp_samples": [{"labels": "{}", "value": v}]}
                    for q, t, v in cases
                ],
            }
        ],
    }
    path = tmp_path / "queries.test.yaml"
    path.write_text(yaml.safe_dump(tests), encoding="utf-8")
    done = subprocess.run(
        ["promtool", "test", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


# -- the Argo web template, evaluated -------------------------------------------------------


@pytest.fixture
def processor() -> Iterator[StandInProcessor]:
    with StandInProcessor() as p:
        yield p


def analysis(url: str, expect: int = 20) -> argo.AnalysisResult:
    return argo.run_web_analysis(
        web_template(), {"trace-id": TRACE_ID, "expect": str(expect), "processor": url}
    )


def test_argo_successful_for_the_passing_rollout(processor: StandInProcessor) -> None:
    processor.hold(TRACE_ID, fast(20))
    result = analysis(processor.url)
    assert result.phase == argo.SUCCESSFUL
    assert [m.value for m in result.measurements] == ['"pass"']  # consecutiveSuccessLimit 1
    path, query, _ = processor.requests[0]
    assert path == f"/v1/rollouts/{TRACE_ID}" and query == {"expect": ["20"]}


def test_argo_failed_for_the_halting_rollout(processor: StandInProcessor) -> None:
    processor.hold(TRACE_ID, fast(15) + slow_readiness(5))
    result = analysis(processor.url)
    assert result.phase == argo.FAILED
    assert [m.phase for m in result.measurements] == [argo.FAILED]


def test_argo_waits_while_the_startups_arrive(processor: StandInProcessor) -> None:
    """insufficient is Inconclusive; tolerated up to inconclusiveLimit, so the analysis
    measures again until the startups are in."""
    processor.hold(TRACE_ID, fast(3), fast(9), fast(14), fast(20))
    result = analysis(processor.url)
    assert [m.phase for m in result.measurements] == [argo.INCONCLUSIVE] * 3 + [argo.SUCCESSFUL]
    assert result.phase == argo.SUCCESSFUL
    processor.hold(TRACE_ID, fast(3), fast(15) + slow_readiness(5))
    assert analysis(processor.url).phase == argo.FAILED


def test_argo_inconclusive_when_it_stays_insufficient(processor: StandInProcessor) -> None:
    processor.hold(TRACE_ID, fast(3))
    result = analysis(processor.url)
    assert result.phase == argo.INCONCLUSIVE  # the rollout pauses for a person
    (metric,) = web_template()["spec"]["metrics"]
    assert len(result.measurements) == metric["count"]


def test_argo_error_when_the_processor_is_down() -> None:
    result = analysis(dead_url())
    assert result.phase == argo.ERROR
    (metric,) = web_template()["spec"]["metrics"]
    assert len(result.measurements) == metric["consecutiveErrorLimit"] + 1


def test_argo_a_token_header_reaches_the_processor(processor: StandInProcessor) -> None:
    """The template's commented header, uncommented, with the token arg."""
    template = web_template()
    template["spec"]["args"].append({"name": "token"})
    (metric,) = template["spec"]["metrics"]
    metric["provider"]["web"]["headers"] = [
        {"key": "Authorization", "value": "Bearer {{args.token}}"}
    ]
    processor.token = "s3cret"
    processor.hold(TRACE_ID, fast(20))
    args = {"trace-id": TRACE_ID, "expect": "20", "processor": processor.url}
    assert argo.run_web_analysis(template, {**args, "token": "s3cret"}).phase == argo.SUCCESSFUL
    assert argo.run_web_analysis(template, {**args, "token": "wrong"}).phase == argo.ERROR
    text = (ARGO / "analysis-template.yaml").read_text(encoding="utf-8")
    assert '#     value: "Bearer {{args.token}}"' in text


# -- the evaluator itself -------------------------------------------------------------------


def test_evaluator_conditions_and_json_paths() -> None:
    assert argo.evaluate_condition('result == "pass"', "pass")
    assert not argo.evaluate_condition('result == "pass"', "halt")
    assert argo.evaluate_condition("result < 4 && result >= 1", 1.5)
    assert argo.evaluate_condition('result == "a" || result == "b"', "b")
    assert argo.evaluate_condition("result.startups >= 20", {"startups": 20})
    assert not argo.evaluate_condition('result == "1"', 1)  # expr-lang: no coercion
    with pytest.raises(ValueError, match="unsupported"):
        argo.evaluate_condition("len(result) > 0", [1])
    doc = {"verdict": "pass", "budgets": {"a-b": [{"p99_s": 1.0}]}}
    assert argo.json_path(doc, "{$.verdict}") == "pass"
    assert argo.json_path(doc, "{.budgets['a-b'][0].p99_s}") == 1.0
    assert argo.json_path(doc, "{$}") == doc
    with pytest.raises(LookupError):
        argo.json_path(doc, "{$.verdicts}")


def test_evaluator_phases_follow_argo() -> None:
    both = {"successCondition": 'result == "pass"', "failureCondition": 'result == "halt"'}
    assert argo.evaluate_result(both, "pass") == argo.SUCCESSFUL
    assert argo.evaluate_result(both, "halt") == argo.FAILED
    assert argo.evaluate_result(both, "insufficient") == argo.INCONCLUSIVE
    assert argo.evaluate_result({"successCondition": 'result == "pass"'}, "x") == argo.FAILED
    assert argo.evaluate_result({"failureCondition": 'result == "x"'}, "y") == argo.SUCCESSFUL
    m = argo.Measurement
    s, f, i, e = (m(argo.SUCCESSFUL), m(argo.FAILED), m(argo.INCONCLUSIVE), m(argo.ERROR))
    metric = {"count": 3, "interval": "1s"}
    assert argo.assess(metric, [s, s]) == argo.RUNNING
    assert argo.assess(metric, [s, e, s, s]) == argo.SUCCESSFUL  # errors are not counted
    assert argo.assess(metric, [s, f]) == argo.FAILED
    assert argo.assess({**metric, "failureLimit": 1}, [f, s, s]) == argo.SUCCESSFUL
    assert argo.assess(metric, [i]) == argo.INCONCLUSIVE
    assert argo.assess(metric, [e] * 5) == argo.ERROR
    assert argo.assess({**metric, "consecutiveSuccessLimit": 2}, [s, s]) == argo.SUCCESSFUL
    assert argo.assess({**metric, "consecutiveSuccessLimit": 2}, [s, e, s]) == argo.RUNNING
    assert argo.assess({}, [s]) == argo.SUCCESSFUL  # no count, no interval: one
    assert argo.assess({"interval": "1s"}, [s] * 50) == argo.RUNNING  # runs forever
    with pytest.raises(ValueError, match=r"args\.trace-id has no value"):
        argo.resolve_args(web_template(), {"expect": "1"})
    with pytest.raises(ValueError, match="not declared"):
        argo.resolve_args(web_template(), {"trace-id": "x", "expect": "1", "typo": "y"})


# -- the plain CI script --------------------------------------------------------------------


def test_the_ci_script_is_valid_shell() -> None:
    assert os.access(CI_SCRIPT, os.X_OK)
    assert CI_SCRIPT.read_text(encoding="utf-8").startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in CI_SCRIPT.read_text(encoding="utf-8")
    for shell in ("sh", "bash"):
        subprocess.run([shell, "-n", str(CI_SCRIPT)], check=True)
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", str(CI_SCRIPT)], check=True)


def run_ci_script(
    tmp_path: Path, url: str, *deploy: str, expect: str = "20"
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        # the real otelbridge of this checkout first on PATH
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "OTELBRIDGE_PROCESSORS": url,
        "OTELBRIDGE_EXPECT": expect,
        "OTELBRIDGE_TIMEOUT": "2s",
        "OTEL_TRACES_EXPORTER": "none",  # the rollout span goes nowhere here
        "ROLLOUT_NAME": "ci-test",
        "TMPDIR": str(tmp_path),
    }
    return subprocess.run(
        [str(CI_SCRIPT), *deploy],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def deploy(tmp_path: Path) -> Path:
    """A deploy command that records the TRACEPARENT it was given."""
    script = tmp_path / "deploy.sh"
    script.write_text('#!/bin/sh\necho "$TRACEPARENT" > deployed-with\n', encoding="utf-8")
    script.chmod(0o755)
    return script


def test_the_ci_script_passes_a_passing_rollout(
    processor: StandInProcessor, tmp_path: Path, deploy: Path
) -> None:
    processor.default = lambda _n: fast(20)
    done = run_ci_script(tmp_path, processor.url, str(deploy))
    assert done.returncode == 0, done.stderr
    traceparent = (tmp_path / "deployed-with").read_text(encoding="utf-8").strip()
    trace_id = gate_inputs.trace_id_from_traceparent(traceparent)
    assert processor.requests[0][0] == f"/v1/rollouts/{trace_id}"  # the deploy's trace
    assert ": PASS (exit 0)" in done.stdout
    assert "runtime gate: pass" in done.stderr
    assert list(tmp_path.glob("otelbridge-rollout.*")) == []  # cleaned up


def test_the_ci_script_halts_a_halting_rollout(
    processor: StandInProcessor, tmp_path: Path, deploy: Path
) -> None:
    processor.default = lambda _n: fast(15) + slow_readiness(5)
    done = run_ci_script(tmp_path, processor.url, str(deploy))
    assert done.returncode == 1, done.stderr
    assert "runtime gate: HALT" in done.stderr


def test_the_ci_script_is_insufficient_without_the_startups(
    processor: StandInProcessor, tmp_path: Path, deploy: Path
) -> None:
    processor.default = lambda _n: fast(3)
    done = run_ci_script(tmp_path, processor.url, str(deploy))
    assert done.returncode == 2, done.stderr
    assert "runtime gate: insufficient data" in done.stderr
    assert "3 of 20 expected startups seen" in done.stdout


def test_the_ci_script_stops_when_the_deploy_fails(
    processor: StandInProcessor, tmp_path: Path
) -> None:
    done = run_ci_script(tmp_path, processor.url, "sh", "-c", "exit 7")
    assert done.returncode == 7
    assert processor.requests == []  # no gate after a failed deploy


def test_the_ci_script_says_what_it_needs(tmp_path: Path) -> None:
    done = run_ci_script(tmp_path, "http://127.0.0.1:1")
    assert done.returncode == 2 and "usage:" in done.stderr
    env_less = run_ci_script(tmp_path, "", "true")
    assert env_less.returncode != 0 and "OTELBRIDGE_PROCESSORS" in env_less.stderr


def test_the_traceparent_of_the_flagger_example_is_the_tests() -> None:
    assert TRACEPARENT in (FLAGGER / "canary.yaml").read_text(encoding="utf-8")
