"""examples/ci/validate-before-apply.sh: valid shell, and it gates `kubectl apply`.

There is no Kubernetes API server here: ``KUBECTL`` points at a stand-in that records the
arguments it was given (that is the script's interface to kubectl). The validator is the
real ``otelbridge validate`` of this checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[3] / "examples" / "ci" / "validate-before-apply.sh"

GOOD = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: web, image: busybox, readinessProbe: {tcpSocket: {port: 80}}}
"""


def test_the_script_is_valid_shell() -> None:
    assert os.access(SCRIPT, os.X_OK)
    text = SCRIPT.read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", str(SCRIPT)], check=True)


def gate(tmp_path: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    kubectl = tmp_path / "kubectl"
    kubectl.write_text('#!/bin/sh\necho "$*" >> kubectl-calls\n', encoding="utf-8")
    kubectl.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "KUBECTL": str(kubectl),
        "KUBECTL_ARGS": "--context prod",
        "TMPDIR": str(tmp_path),
    }
    return subprocess.run(
        [str(SCRIPT), *args],
        input=stdin,
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "kubectl-calls"
    return log.read_text(encoding="utf-8").splitlines() if log.exists() else []


def test_a_valid_manifest_is_applied(tmp_path: Path) -> None:
    (tmp_path / "web.yaml").write_text(GOOD, encoding="utf-8")
    done = gate(tmp_path, "web.yaml")
    assert done.returncode == 0, done.stderr
    assert calls(tmp_path) == ["--context prod apply -f web.yaml"]
    assert '"problems": []' in (tmp_path / "otelbridge-validate.json").read_text(encoding="utf-8")


def test_standard_input_is_validated_and_applied_once_read(tmp_path: Path) -> None:
    done = gate(tmp_path, "-", stdin=GOOD)
    assert done.returncode == 0, done.stderr
    [call] = calls(tmp_path)
    assert call.startswith("--context prod apply -f ")


@pytest.mark.parametrize(
    ("manifest", "code"),
    [(GOOD.replace("tcpSocket", "ftp"), 1), ("kind: [", 2)],
    ids=["contract error", "unreadable"],
)
def test_nothing_is_applied_unless_it_passes(tmp_path: Path, manifest: str, code: int) -> None:
    (tmp_path / "web.yaml").write_text(manifest, encoding="utf-8")
    done = gate(tmp_path, "web.yaml")
    assert done.returncode == code, done.stdout + done.stderr
    assert "not applied" in done.stderr
    assert calls(tmp_path) == []
