"""The command: what a PATH is, the output formats, the exit codes."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from otelbridge.cli import build_parser
from otelbridge.validate.command import main
from otelbridge.validate.report import Problem, TargetResult, render_json, render_text
from tests.unit.validate.helpers import CONTAINERD_CONFIG, TRACEPARENT

POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: web
  annotations: {otelbridge.io/readiness: "ftp://web:21"}
spec:
  containers:
  - {name: web, image: busybox, readinessProbe: {tcpSocket: {port: 80}}}
"""


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    args = build_parser().parse_args(["validate", *argv])
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_a_bundle_a_config_json_and_manifests(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = tmp_path / "bundle"
    (bundle / "rootfs").mkdir(parents=True)
    (bundle / "config.json").write_text(json.dumps(CONTAINERD_CONFIG), encoding="utf-8")
    assert run(capsys, str(bundle))[0] == 0
    assert run(capsys, str(bundle / "config.json"))[0] == 0
    manifests = tmp_path / "k8s"
    manifests.mkdir()
    (manifests / "pod.yaml").write_text(POD, encoding="utf-8")
    pod_json = json.dumps({"kind": "Pod", "metadata": {"name": "j"}, "spec": {"containers": []}})
    (manifests / "pod.json").write_text(pod_json, encoding="utf-8")
    (manifests / "notes.txt").write_text("not looked at", encoding="utf-8")
    code, out, _ = run(capsys, "--json", str(manifests))
    assert code == 1
    report = json.loads(out)
    assert [t["target"] for t in report["targets"]] == [
        str(manifests / "pod.json"),
        str(manifests / "pod.yaml"),
    ]
    assert [p["code"] for t in report["targets"] for p in t["problems"]] == [
        "k8s.containers_missing",
        "readiness.target_invalid",
    ]
    assert set(report) == {"targets"}
    assert all(set(t) == {"target", "problems"} for t in report["targets"])
    assert all(
        set(p) == {"path", "severity", "code", "message"}
        for t in report["targets"]
        for p in t["problems"]
    )


def test_standard_input(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stdin = io.TextIOWrapper(io.BytesIO(POD.encode()))
    monkeypatch.setattr(sys, "stdin", stdin)
    code, out, _ = run(capsys, "-")
    assert code == 1
    assert out.startswith("-: 1 error, 0 warnings\n")
    assert out.rstrip().endswith("FAIL")


def test_unreadable_inputs_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"kind: Pod\nname: caf\xe9\n")
    broken = tmp_path / "x.json"
    broken.write_text("{", encoding="utf-8")
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, err = run(capsys, str(latin), str(broken), str(empty), str(tmp_path / "none"))
    assert code == 2
    assert out.count("CANNOT READ") == 4
    assert out.rstrip().endswith("INCOMPLETE")
    assert "not UTF-8" in err
    assert "not valid JSON" in err


def test_usage(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert run(capsys)[0] == 2
    assert run(capsys, "--address", "/nowhere.sock")[0] == 2
    assert run(capsys, "-n", "a", "-n", "b", str(tmp_path))[0] == 2


def test_config_rules_apply(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "config.json"
    spec.write_text(json.dumps(CONTAINERD_CONFIG), encoding="utf-8")
    config = tmp_path / "otelbridge.toml"
    config.write_text('[validate]\nrequire_trace_context = ["prod*"]\n', encoding="utf-8")
    assert run(capsys, "-c", str(config), str(spec))[0] == 0  # namespace default
    code, out, _ = run(capsys, "-c", str(config), "-n", "prod-eu", "--json", str(spec))
    assert code == 1
    assert json.loads(out)["targets"][0]["problems"][0]["code"] == "trace.missing"
    with_trace = dict(CONTAINERD_CONFIG, annotations={"traceparent": TRACEPARENT})
    spec.write_text(json.dumps(with_trace), encoding="utf-8")
    assert run(capsys, "-c", str(config), "-n", "prod-eu", str(spec))[0] == 0


def test_output_never_carries_a_tenants_control_characters() -> None:
    bad = Problem("annotations.a\x1b[2J", "warning", "limits.control_characters", "x\ny")
    results = [TargetResult("t\n", [bad]), TargetResult("u", error="e\r")]
    text = render_text(results)
    assert "\x1b" not in text
    assert "\r" not in text
    assert text.count("\n") == 5  # 2 lines per problem, 1 per target, the summary
    doc = json.loads(render_json(results))
    assert doc["targets"][1]["problems"] == [
        {"path": "", "severity": "error", "code": "input.unreadable", "message": "e\r"}
    ]
