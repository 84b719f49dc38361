"""otelbridge against the real backends users look at (docs/backends.md).

The OpenTelemetry Collector (our builder manifest) and Jaeger v2 come from
``scripts/backends`` (built once, then reused from its cache), Prometheus from Debian;
the bridge, the processors, the rollouts and the gate are the real ``otelbridge``
processes on a real private containerd, as in test_rollout_gate.py.

* every config of collector-config/ passes ``validate`` of the program it is for, and
  that program starts with it and stays healthy;
* bridge -> collector-config/gateway.yaml -> Jaeger v2, and two ``otelbridge processor``
  replicas behind the loadbalancing exporter: Jaeger's query API returns each rollout's
  trace, its ``container.startup`` spans CHILD_OF the provisioning (``rollout``) span,
  each with its four phases; tail sampling keeps the traces with an SLA breach or an
  error and drops a healthy one; ``otelbridge gate`` given both replicas reads pass for
  the fast rollout and halt for the slow one, each rollout held by one replica;
* Prometheus scrapes the gateway's span metrics, the bridge's and the processors'
  /metrics: the queries a dashboard uses return series; the alert rules of
  deploy/prometheus pass ``promtool test rules`` (a breach, a coverage drop).

Tempo is not built or tested: the workplace's license policy does not allow it
(docs/backends.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from otelbridge.testing.containerd import PrivateContainerd
from otelbridge.testing.image import BUSYBOX_BASE_NAME, import_image
from tests.conftest import Namespace
from tests.integration import backends
from tests.integration.backends import (
    COLLECTOR_CONFIGS,
    PROMETHEUS_DIR,
    Collector,
    Jaeger,
    Prometheus,
    collector_env,
    http_get,
    require_tool,
    wait_until,
)
from tests.integration.processes import OTELBRIDGE, Daemon
from tests.integration.test_reliability import kill_all
from tests.integration.test_rollout_gate import Processor

# The first test to ask for the binaries may wait for a cold build (scripts/backends).
pytestmark = pytest.mark.timeout(backends.BUILD_TIMEOUT_S + 900)

PHASES = ("container.create", "shim.launch", "task.start", "readiness.wait")
SLOW_READY = "sleep 1.4; httpd -p 127.0.0.1:8080; sleep 1"  # task_create_to_ready > 1 s
PROBE = {"otelbridge.io/readiness": "tcp://127.0.0.1:8080"}


@pytest.fixture(scope="session")
def backend_bin() -> Path:
    return backends.backends_dir()


# -- Prometheus rules: promtool only --------------------------------------------------------


def test_the_alert_rules_pass_promtool_for_a_breach_and_a_coverage_drop() -> None:
    promtool = require_tool("promtool", "Debian's prometheus package")
    tests = PROMETHEUS_DIR / "alerts.test.yml"
    text = tests.read_text(encoding="utf-8")
    assert "OtelbridgeStartupBudgetBreached" in text and "OtelbridgeStartupCoverageLow" in text
    for argv in (
        [promtool, "check", "rules", str(PROMETHEUS_DIR / "alerts.yml")],
        [promtool, "check", "config", str(PROMETHEUS_DIR / "prometheus.yml")],
        [promtool, "test", "rules", str(tests)],
    ):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, f"{' '.join(argv)}:\n{done.stdout}{done.stderr}"


# -- every Collector config: validate, then run ---------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "config", sorted(p.name for p in COLLECTOR_CONFIGS.glob("*.yaml")), ids=lambda n: n
)
def test_every_collector_config_validates_and_runs(
    config: str, backend_bin: Path, tmp_path: Path
) -> None:
    """Jaeger v2 is a Collector distribution of its own: jaeger.yaml is its config."""
    is_jaeger = config == "jaeger.yaml"
    binary = backend_bin / ("jaeger" if is_jaeger else "otelcol")
    env = collector_env("JAEGER" if is_jaeger else "OTELCOL")
    path = COLLECTOR_CONFIGS / config
    done = subprocess.run(
        [str(binary), "validate", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, **env},
    )
    assert done.returncode == 0, f"{binary.name} validate {config}:\n{done.stdout}{done.stderr}"

    service = Collector(binary, path, tmp_path, env, binary.name)
    try:
        if is_jaeger:
            health = f"http://{env['JAEGER_HEALTH_ENDPOINT']}/status"
        else:
            health = f"http://{env['OTELCOL_HEALTH_ENDPOINT']}/"
        service.wait_healthy(health)
        time.sleep(3)  # runs a few seconds: no component fails after start
        assert service.alive(), service.log()[-4000:]
        status, body = http_get(health)
        assert status == 200, body
        metrics_port = env["JAEGER_METRICS_PORT" if is_jaeger else "OTELCOL_METRICS_PORT"]
        status, body = http_get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert status == 200 and b"otelcol_process_uptime" in body, body[:500]
    finally:
        code = service.stop()
    assert code == 0, service.log()[-4000:]
    assert "Everything is ready" in service.log(), service.log()[-4000:]


# -- the whole path: bridge -> gateway -> Jaeger v2, processors; Prometheus ------------------


@dataclass
class Rollout:
    name: str
    traceparent: str
    containers: list[str]

    @property
    def trace_id(self) -> str:
        return self.traceparent.split("-")[1]


@dataclass
class Stack:
    namespace: Namespace
    jaeger: Jaeger
    processors: list[Processor]
    gateway: Collector
    bridge: Daemon
    prometheus: Prometheus
    tmp: Path
    rollouts: dict[str, Rollout] = field(default_factory=dict)
    alone: dict[str, str] = field(default_factory=dict)  # what -> container id, no rollout

    @property
    def otlp_endpoint(self) -> str:
        return f"http://{self.gateway.env['OTELCOL_OTLP_GRPC_ENDPOINT']}"

    def otelbridge(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*OTELBRIDGE, *args],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            env={**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": self.otlp_endpoint},
        )

    def rollout(self, name: str, count: int, *cmd: str, **labels: str) -> Rollout:
        """``rollout start``, ``count`` containers carrying its traceparent, ``rollout end``."""
        carrier = self.tmp / f"{name}.carrier.json"
        started = self.otelbridge("rollout", "start", "--name", name, "--carrier", str(carrier))
        assert started.returncode == 0, started.stderr
        (line,) = [x for x in started.stdout.splitlines() if x.startswith("TRACEPARENT=")]
        traceparent = line.split("=", 1)[1].strip("'\"")
        ids = [f"{name}-{uuid.uuid4().hex[:6]}" for _ in range(count)]
        with ThreadPoolExecutor(count) as pool:
            runs = [
                pool.submit(
                    self.namespace.run, cid, *cmd, labels={"traceparent": traceparent, **labels}
                )
                for cid in ids
            ]
            for run in runs:
                run.result()
        ended = self.otelbridge("rollout", "end", "--carrier", str(carrier), "--timeout", "60")
        assert ended.returncode == 0, ended.stderr
        self.rollouts[name] = Rollout(name, traceparent, ids)
        return self.rollouts[name]

    def gate(self, rollout: Rollout) -> dict[str, Any]:
        """``otelbridge gate`` asking both replicas."""
        args = ["gate", "--traceparent", rollout.traceparent]
        for p in self.processors:
            args += ["--processor", p.url]
        args += ["--expect", str(len(rollout.containers)), "--timeout", "120s"]
        done = self.otelbridge(*args, "--interval", "1s", "--json", timeout_s=240)
        document: dict[str, Any] = json.loads(done.stdout)
        document["exit_code"] = done.returncode
        return document


def _namespace(containerd: PrivateContainerd, image_tar: Path) -> Namespace:
    name = f"b-{uuid.uuid4().hex[:8]}"
    return Namespace(containerd, name, import_image(containerd, image_tar, BUSYBOX_BASE_NAME, name))


@pytest.fixture(scope="module")
def stack(
    backend_bin: Path,
    containerd: PrivateContainerd,
    image_tar: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """The backends and otelbridge wired as docs/backends.md draws them, two rollouts
    (fast: passes; slow: over the task_create_to_ready budget) and three containers of
    no rollout (healthy, over budget, exited before ready) run through them once."""
    tmp = tmp_path_factory.mktemp("backends")
    namespace = _namespace(containerd, image_tar)
    started: list[Any] = []
    try:
        jaeger = Jaeger(backend_bin / "jaeger", tmp / "logs")
        started.append(jaeger)
        processors = []
        for i in (1, 2):
            (tmp / f"processor-{i}").mkdir()
            processors.append(Processor(tmp / f"processor-{i}"))
            started.append(processors[-1])
        env = collector_env()
        env.update(
            JAEGER_ENDPOINT=jaeger.otlp_grpc,
            OTELBRIDGE_PROCESSOR_1=f"127.0.0.1:{processors[0].grpc_port}",
            OTELBRIDGE_PROCESSOR_2=f"127.0.0.1:{processors[1].grpc_port}",
            OTELCOL_TAIL_DECISION_WAIT="3s",
            OTELCOL_TAIL_SAMPLE_PERCENT="0",  # only the policies that matter keep a trace
            OTELCOL_SPANMETRICS_FLUSH_INTERVAL="1s",
        )
        gateway = Collector(
            backend_bin / "otelcol",
            COLLECTOR_CONFIGS / "gateway.yaml",
            tmp / "logs",
            env,
            "gateway",
        )
        started.append(gateway)
        jaeger.wait_ready()
        gateway.wait_healthy(f"http://{env['OTELCOL_HEALTH_ENDPOINT']}/")

        config = tmp / "otelbridge.toml"
        # 15 startups run through the stack: the bridge judges a namespace from 5 on
        config.write_text(
            "[readiness]\nprobe_deadline_s = 20\n[sla]\nmin_samples = 5\n", encoding="utf-8"
        )
        bridge = Daemon(
            namespace.cd.address,
            namespace.name,
            tmp / "bridge-state",
            f"http://{env['OTELCOL_OTLP_GRPC_ENDPOINT']}",
            config=config,
            log_dir=tmp / "logs",
            extra_env={"OTEL_METRICS_EXPORTER": "prometheus"},
        )
        bridge.start()
        started.append(bridge)
        bridge_target = bridge.status_url().removeprefix("http://").rstrip("/")
        prometheus = Prometheus(
            {
                "otelbridge": [bridge_target],
                "otelbridge-processor": [f"127.0.0.1:{p.http_port}" for p in processors],
                "otelcol-spanmetrics": [env["OTELCOL_PROMETHEUS_ENDPOINT"]],
            },
            tmp / "prometheus",
            rule_files=[PROMETHEUS_DIR / "alerts.yml"],
        )
        started.append(prometheus)
        prometheus.wait_ready()

        s = Stack(namespace, jaeger, processors, gateway, bridge, prometheus, tmp)
        s.rollout("fast", 6, "/bin/true")
        s.rollout("slow", 6, "sh", "-c", SLOW_READY, **PROBE)
        for what, cmd, labels in (
            ("healthy", ["/bin/true"], {}),
            ("breached", ["sh", "-c", SLOW_READY], PROBE),
            ("exited", ["sh", "-c", "exit 3"], PROBE),
        ):
            cid = f"alone-{what}-{uuid.uuid4().hex[:6]}"
            namespace.run(cid, *cmd, labels=labels, check=False)
            s.alone[what] = cid
        yield s
    finally:
        for service in reversed(started):
            if isinstance(service, Daemon | Processor):
                service.close()
            else:
                service.stop()
        kill_all(namespace)


def _tags(span: dict[str, Any]) -> dict[str, Any]:
    return {t["key"]: t["value"] for t in span.get("tags", [])}


def _complete_trace(stack: Stack, rollout: Rollout) -> dict[str, Any]:
    """The rollout's trace from Jaeger once it holds the rollout span and every startup
    with its phases (spans arrive in several batches)."""
    want = 1 + len(rollout.containers) * (1 + len(PHASES))

    def probe() -> dict[str, Any] | None:
        trace = stack.jaeger.trace(rollout.trace_id)
        return trace if trace is not None and len(trace["spans"]) >= want else None

    return wait_until(f"trace {rollout.trace_id} complete in Jaeger", probe, timeout_s=120)


@pytest.mark.slow
@pytest.mark.containerd
def test_jaeger_returns_each_rollout_as_one_trace_with_every_startup_and_its_phases(
    stack: Stack,
) -> None:
    for rollout in stack.rollouts.values():
        trace = _complete_trace(stack, rollout)
        assert trace["traceID"] == rollout.trace_id
        spans = trace["spans"]
        by_id = {s["spanID"]: s for s in spans}
        (root,) = [s for s in spans if s["operationName"] == "rollout"]
        assert root["spanID"] == rollout.traceparent.split("-")[2]
        assert _tags(root)["otelbridge.rollout.name"] == rollout.name
        startups = [s for s in spans if s["operationName"] == "container.startup"]
        assert sorted(_tags(s)["container.id"] for s in startups) == sorted(rollout.containers)
        for startup in startups:
            assert [(r["refType"], r["spanID"]) for r in startup["references"]] == [
                ("CHILD_OF", root["spanID"])
            ], startup["references"]
            children = [
                s
                for s in spans
                if any(r["spanID"] == startup["spanID"] for r in s.get("references", []))
            ]
            assert sorted(c["operationName"] for c in children) == sorted(PHASES)
            for child in children:
                assert child["references"][0]["refType"] == "CHILD_OF"
                assert by_id[child["spanID"]]["traceID"] == rollout.trace_id
        breached = [s for s in startups if "otelbridge.sla.breached" in _tags(s)]
        assert (len(breached) > 0) == (rollout.name == "slow"), [_tags(s) for s in breached]


@pytest.mark.slow
@pytest.mark.containerd
def test_tail_sampling_keeps_breaches_and_errors_and_drops_a_healthy_trace(stack: Stack) -> None:
    def found(what: str) -> list[dict[str, Any]]:
        return stack.jaeger.find_traces("containerd", {"container.id": stack.alone[what]})

    breached = wait_until("the breached startup in Jaeger", lambda: found("breached") or None)
    exited = wait_until("the exited startup in Jaeger", lambda: found("exited") or None)
    (breached_startup,) = [
        s for s in breached[0]["spans"] if s["operationName"] == "container.startup"
    ]
    assert "task_create_to_ready" in json.dumps(_tags(breached_startup)["otelbridge.sla.breached"])
    (exited_startup,) = [s for s in exited[0]["spans"] if s["operationName"] == "container.startup"]
    tags = _tags(exited_startup)
    assert tags["otel.status_code"] == "ERROR" and tags["otelbridge.startup.outcome"] == "exited"
    # the healthy startup ended before the breached one: its decision is long made
    time.sleep(5)  # past decision_wait (3 s) and the batch timeouts
    assert found("healthy") == [], "a healthy trace of no rollout was kept at 0 %"
    # ... though the processors, which need every startup, saw it
    counts = [p_startups(p) for p in stack.processors]
    assert sum(counts) >= 6 + 6 + 3, counts


def p_startups(processor: Processor) -> int:
    status, body = http_get(f"{processor.url}/v1/counters")
    assert status == 200, body
    return int(json.loads(body).get("otelbridge.processor.startups", 0))


@pytest.mark.slow
@pytest.mark.containerd
def test_the_gate_reads_the_verdict_from_both_replicas(stack: Stack) -> None:
    expected = {"fast": (0, "pass"), "slow": (1, "halt")}
    for name, (code, verdict) in expected.items():
        rollout = stack.rollouts[name]
        document = stack.gate(rollout)
        assert (document["exit_code"], document["verdict"]) == (code, verdict), document
        assert document["startups"] == len(rollout.containers)
        # routed by trace ID: the whole rollout on one replica, none on the other
        per_replica = sorted(p["startups"] for p in document["gate"]["processors"])
        assert per_replica == [0, len(rollout.containers)], document["gate"]
    slow = stack.gate(stack.rollouts["slow"])
    assert slow["budgets"]["task_create_to_ready"]["verdict"] == "halt", slow


@pytest.mark.slow
@pytest.mark.containerd
def test_prometheus_answers_the_dashboard_queries(stack: Stack) -> None:
    prom = stack.prometheus
    ns = stack.namespace.name
    # the startup duration histogram from the bridge's /metrics
    buckets = prom.wait_for_series(
        f'sum by (le) (otelbridge_startup_duration_seconds_bucket{{containerd_namespace="{ns}"}})'
    )
    assert {b["metric"]["le"] for b in buckets} >= {"1.0", "4.0", "+Inf"}, buckets
    p99 = prom.wait_for_series(
        "histogram_quantile(0.99, sum by (le, containerd_namespace) "
        f'(rate(otelbridge_task_create_to_ready_duration_seconds_bucket{{containerd_namespace="{ns}"}}[5m])))'
    )
    assert float(p99[0]["value"][1]) > 1.0, p99  # the slow startups
    tcr = "otelbridge_task_create_to_ready_duration_seconds"
    within = prom.wait_for_series(
        f'sum({tcr}_bucket{{containerd_namespace="{ns}",le="1.0"}})'
        f' / sum({tcr}_count{{containerd_namespace="{ns}"}})'
    )
    assert 0 < float(within[0]["value"][1]) < 1, within
    # the bridge's SLA verdicts and coverage; the alert rule's expression sees the breach
    verdicts = prom.wait_for_series(f'otelbridge_sla_verdict{{containerd_namespace="{ns}"}}')
    by_budget = {v["metric"]["otelbridge_sla_budget"]: float(v["value"][1]) for v in verdicts}
    assert by_budget.get("task_create_to_ready") == 1.0, by_budget
    breach = prom.wait_for_series(
        "max by (containerd_namespace, otelbridge_sla_budget) "
        '(otelbridge_sla_verdict{otelbridge_sla_budget!="coverage",'
        f'containerd_namespace="{ns}"}}) == 1'
    )
    assert {b["metric"]["otelbridge_sla_budget"] for b in breach} >= {"task_create_to_ready"}
    coverage = prom.wait_for_series(f'otelbridge_sla_coverage_ratio{{containerd_namespace="{ns}"}}')
    assert float(coverage[0]["value"][1]) == 1.0, coverage
    # the processors' rollout verdicts, max over the replicas
    rollout_verdicts = prom.wait_for_series(
        "max by (otelbridge_rollout_trace_id, otelbridge_rollout_name) (otelbridge_rollout_verdict)"
    )
    got = {
        v["metric"].get("otelbridge_rollout_name"): float(v["value"][1]) for v in rollout_verdicts
    }
    assert got.get("fast") == 0.0 and got.get("slow") == 1.0, got
    # the gateway's span metrics (before sampling: the healthy startup is counted)
    calls_expr = (
        'sum by (span_name) (traces_span_metrics_calls_total{service_name="containerd",'
        'span_name=~"container.startup|readiness.wait"})'
    )
    calls = wait_until(  # every startup of the stack counted, the last ones a flush later
        "span metrics of all 15 startups",
        lambda: [c for c in prom.query(calls_expr) if float(c["value"][1]) >= 15] or None,
    )
    assert len(calls) == 2, calls
    span_p99 = prom.wait_for_series(
        "histogram_quantile(0.99, sum by (le, span_name) "
        '(rate(traces_span_metrics_duration_seconds_bucket{span_name="container.startup"}[5m])))'
    )
    assert float(span_p99[0]["value"][1]) > 1.0, span_p99
    # the alert rules loaded in the real Prometheus too
    groups = prom.api("rules")["groups"]
    rules = {r["name"]: r["health"] for g in groups for r in g["rules"]}
    assert rules.get("OtelbridgeStartupBudgetBreached") == "ok", rules
    assert rules.get("OtelbridgeStartupCoverageLow") == "ok", rules


# -- what the docs tell users to type: the dashboard's PromQL, the cookbook's searches ------

REPO = COLLECTOR_CONFIGS.parent
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "startup-sla.json"
COOKBOOK = REPO / "docs" / "cookbook.md"


def _grafana_expr(expr: str) -> str:
    """A panel's query as Grafana sends it: every namespace, 1-minute rates."""
    return (
        expr.replace("$namespace", ".*").replace("$__rate_interval", "1m").replace("$__range", "5m")
    )


@pytest.mark.slow
@pytest.mark.containerd
def test_every_dashboard_query_runs_in_prometheus_and_the_sla_panels_have_series(
    stack: Stack,
) -> None:
    """The "Container startup SLA" dashboard of deploy/grafana against the real Prometheus
    that scraped the stack: each query is accepted, and every panel but the error
    counters (nothing was dropped here) shows series."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [
        (panel.get("title", "?"), target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if target.get("expr")
    ]
    assert len(exprs) >= 8, exprs
    for title, expr in exprs:
        query = _grafana_expr(expr)
        if "dropped" in title.lower() or "errors" in title.lower():
            stack.prometheus.query(query)  # accepted: may be empty when nothing went wrong
            continue
        assert stack.prometheus.wait_for_series(query, timeout_s=90), (title, query)


def _cookbook_searches() -> list[dict[str, Any]]:
    text = COOKBOOK.read_text(encoding="utf-8")
    blocks = text.split("```jaeger\n")[1:]
    return [json.loads(block.split("```", 1)[0]) for block in blocks]


@pytest.mark.slow
@pytest.mark.containerd
def test_the_cookbook_jaeger_searches_run_against_the_real_jaeger(stack: Stack) -> None:
    """Each ```jaeger block of docs/cookbook.md, its placeholders replaced by this stack's
    namespace and rollout, asked of Jaeger's query API: every one is accepted, and those
    this stack's startups answer find them (the containers are ``ctr`` ones, so the
    Kubernetes namespace of a search is their containerd namespace here)."""
    searches = _cookbook_searches()
    assert len(searches) >= 8, searches
    wait_until(  # the last startup run: its decision waits out the tail sampler's
        "the exited startup in Jaeger",
        lambda: (
            stack.jaeger.find_traces("containerd", {"container.id": stack.alone["exited"]}) or None
        ),
    )
    found: dict[str, int] = {}
    for search in searches:
        tags = {
            ("containerd.namespace" if k == "k8s.namespace.name" else k): (
                stack.namespace.name if v == "shop" else "slow" if v == "checkout-v42" else v
            )
            for k, v in search.get("tags", {}).items()
        }
        params = {k: str(v) for k, v in search.items() if k != "tags"}
        params.setdefault("lookback", "1h")
        query = urllib.parse.urlencode({**params, "tags": json.dumps(tags)})
        status, body = http_get(f"{stack.jaeger.query_url}/api/traces?{query}")
        document = json.loads(body)
        assert status == 200 and not document.get("errors"), (search, status, body[:500])
        found[json.dumps(search)] = len(document.get("data") or [])
    rollout = next(k for k in found if "otelbridge.rollout.name" in k)
    assert found[rollout] == 1, found  # the slow rollout's trace
    exited = next(k for k in found if '"otelbridge.startup.outcome": "exited"' in k)
    assert found[exited] >= 1, found  # the container that exited before it was ready
