"""The loop closed, end to end on a real containerd: rollout -> containers -> bridge ->
processor -> gate (and Argo's template).

Every part is the real program: `otelbridge rollout start` makes the provisioning span's
context; containers started by `ctr run` carry its traceparent; `otelbridge run` follows
the private containerd and exports to `otelbridge processor` over OTLP/gRPC; `otelbridge
gate` asks the processor and exits 0, 1 or 2; the Argo AnalysisTemplate of deploy/argo is
evaluated against the live processor by otelbridge.testing.argo (Argo itself cannot run
here: no Kubernetes API server).

* a fast rollout (6 containers ready at once) passes: exit 0, Argo Successful;
* one whose containers open their readiness port 1.4 s after start halts
  (task_create_to_ready p99 over its 1 s budget): exit 1, Argo Failed;
* 3 startups of 20 expected is insufficient: exit 2.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from otelbridge.testing import argo
from tests.conftest import Namespace
from tests.integration.processes import OTELBRIDGE, Daemon
from tests.integration.test_reliability import kill_all

pytestmark = pytest.mark.containerd

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Processor:
    """`otelbridge processor` as a process, on free loopback ports."""

    def __init__(self, tmp_path: Path) -> None:
        self.grpc_port, self.http_port = free_port(), free_port()
        self.log = tmp_path / "processor.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    *OTELBRIDGE,
                    "processor",
                    "--otlp-grpc-addr",
                    f"127.0.0.1:{self.grpc_port}",
                    "--http-addr",
                    f"127.0.0.1:{self.http_port}",
                    "--state-dir",
                    str(tmp_path / "processor-state"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline_text = "OTLP/gRPC on"
        for _ in range(200):
            if deadline_text in self.log.read_text(errors="replace"):
                break
            if self.proc.poll() is not None:
                break
            subprocess.run(["sleep", "0.05"], check=False)
        assert deadline_text in self.log.read_text(), self.log.read_text()[-2000:]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def processor(tmp_path: Path) -> Iterator[Processor]:
    p = Processor(tmp_path)
    yield p
    p.close()


@pytest.fixture
def bridge(namespace: Namespace, processor: Processor, tmp_path: Path) -> Iterator[Daemon]:
    config = tmp_path / "otelbridge.toml"
    config.write_text("[readiness]\nprobe_deadline_s = 20\n", encoding="utf-8")
    daemon = Daemon(
        namespace.cd.address,
        namespace.name,
        tmp_path / "bridge-state",
        f"http://127.0.0.1:{processor.grpc_port}",
        config=config,
        extra_env={"OTEL_METRICS_EXPORTER": "none"},
    )
    daemon.start()
    yield daemon
    daemon.close()
    kill_all(namespace)


def rollout_start(name: str, tmp_path: Path) -> str:
    out = subprocess.run(
        [*OTELBRIDGE, "rollout", "start", "--name", name, "--carrier", str(tmp_path / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "OTEL_TRACES_EXPORTER": "none"},
    ).stdout
    (line,) = [x for x in out.splitlines() if x.startswith("TRACEPARENT=")]
    return line.split("=", 1)[1].strip("'\"")


def gate(processor: Processor, traceparent: str, expect: int, timeout: str) -> dict[str, object]:
    done = subprocess.run(
        [
            *OTELBRIDGE,
            "gate",
            "--processor",
            processor.url,
            "--traceparent",
            traceparent,
            "--expect",
            str(expect),
            "--timeout",
            timeout,
            "--interval",
            "1s",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    document: dict[str, object] = json.loads(done.stdout)
    document["exit_code"] = done.returncode
    return document


def start_all(namespace: Namespace, traceparent: str, count: int, *cmd: str, **labels: str) -> None:
    ids = [f"gate-{uuid.uuid4().hex[:8]}" for _ in range(count)]
    with ThreadPoolExecutor(count) as pool:
        for f in [
            pool.submit(namespace.run, cid, *cmd, labels={"traceparent": traceparent, **labels})
            for cid in ids
        ]:
            f.result()


def argo_phase(processor: Processor, traceparent: str, expect: int) -> str:
    template = yaml.safe_load((REPO / "deploy/argo/analysis-template.yaml").read_text())
    trace_id = traceparent.split("-")[1]
    result = argo.run_web_analysis(
        template,
        {"trace-id": trace_id, "expect": str(expect), "processor": processor.url},
    )
    return result.phase


@pytest.mark.slow
def test_a_rollout_passes_halts_or_is_insufficient_as_its_containers_start(
    namespace: Namespace, processor: Processor, bridge: Daemon, tmp_path: Path
) -> None:
    fast = rollout_start("fast", tmp_path)
    start_all(namespace, fast, 6, "/bin/true")
    verdict = gate(processor, fast, 6, "60s")
    assert (verdict["exit_code"], verdict["verdict"]) == (0, "pass"), verdict
    assert verdict["startups"] == 6
    assert argo_phase(processor, fast, 6) == argo.SUCCESSFUL

    slow = rollout_start("slow", tmp_path)
    start_all(
        namespace,
        slow,
        6,
        "sh",
        "-c",
        "sleep 1.4; httpd -p 127.0.0.1:8080; sleep 1",
        **{"otelbridge.io/readiness": "tcp://127.0.0.1:8080"},
    )
    verdict = gate(processor, slow, 6, "60s")
    assert (verdict["exit_code"], verdict["verdict"]) == (1, "halt"), verdict
    budgets = verdict["budgets"]
    assert isinstance(budgets, dict)
    assert budgets["task_create_to_ready"]["verdict"] == "halt"
    assert budgets["task_create_to_ready"]["p99_s"] > 1.0
    assert any("task_create_to_ready" in r for r in verdict["reasons"])  # type: ignore[attr-defined]
    assert argo_phase(processor, slow, 6) == argo.FAILED

    few = rollout_start("few", tmp_path)
    start_all(namespace, few, 3, "/bin/true")
    verdict = gate(processor, few, 20, "8s")
    assert (verdict["exit_code"], verdict["verdict"]) == (2, "insufficient"), verdict
    assert verdict["startups"] == 3
