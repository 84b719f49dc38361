"""What users read and look at: every file the user docs reference exists, the README
links them, the cookbook's TraceQL and Jaeger searches use only names otelbridge emits,
and the Grafana dashboard (deploy/grafana) uses only declared metric names, PromQL that
Prometheus' own parser accepts, and provisioned data sources.

Not run here: Grafana (its provisioning is checked statically) and Grafana Tempo (not
allowed on these machines: AGPL), so the cookbook's TraceQL is checked for its names
only, never executed; its Jaeger searches are run against a real Jaeger v2 by
tests/integration/test_backends.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from otelbridge.core import semconv
from otelbridge.emit.prometheus import prometheus_name

ROOT = Path(__file__).resolve().parents[2]
REQUIRE = "OTELBRIDGE_REQUIRE_BACKENDS"
USER_DOCS = (
    "README.md",
    "docs/quickstart.md",
    "docs/cookbook.md",
    "docs/operations.md",
    "docs/troubleshooting.md",
    "docs/kubernetes.md",
)


def _skip_or_fail(reason: str) -> None:
    if os.environ.get(REQUIRE) == "1":
        pytest.fail(f"required ({REQUIRE}=1) but cannot run: {reason}")
    pytest.skip(reason)


# -- docs ----------------------------------------------------------------------------------------
_PATH = re.compile(
    r"(?<![\w/.-])((?:deploy|docs|collector-config|scripts|examples|benchmarks|tests|otelbridge|\.ci)/"
    r"[\w./-]*[\w-]|Dockerfile|docker-compose\.yml|Makefile|pyproject\.toml)"
)


def test_every_file_the_user_docs_reference_exists() -> None:
    for doc in USER_DOCS:
        text = (ROOT / doc).read_text()
        for link in re.findall(r"\]\(([^)#\s]+)", text):
            if "://" not in link and not link.startswith("mailto:"):
                assert ((ROOT / doc).parent / link).exists(), f"{doc}: link {link} missing"
        for path in _PATH.findall(text):
            if "*" in path or "<" in path:
                continue
            assert (ROOT / path).exists() or (ROOT / path.rstrip(".")).exists(), (
                f"{doc}: {path} missing"
            )


def test_readme_links_the_user_docs() -> None:
    readme = (ROOT / "README.md").read_text()
    for doc in USER_DOCS[1:5]:
        assert f"({doc})" in readme, f"README.md does not link {doc}"


def test_cookbook_has_traceql_and_matching_jaeger_searches() -> None:
    text = (ROOT / "docs/cookbook.md").read_text()
    traceql = re.findall(r"```traceql\n(.*?)```", text, re.S)
    jaeger = re.findall(r"```jaeger\n(.*?)```", text, re.S)
    assert len(traceql) >= 8 and len(jaeger) >= 8
    allowed = {"service", "operation", "tags", "minDuration", "maxDuration", "limit", "lookback"}
    spans = set(semconv.SPAN_NAMES)
    attrs = set(semconv.SPAN_ATTRIBUTES) | {semconv.OB_SLA_BREACHED, semconv.OB_GC_OVERLAP}
    for block in jaeger:
        query = json.loads(block)
        assert set(query) <= allowed and query["service"] == semconv.DEFAULT_SERVICE_NAME, block
        assert query.get("operation", "container.startup") in spans
        assert set(query.get("tags", {})) <= attrs | {"error"}, block
        assert all(isinstance(v, str) for v in query.get("tags", {}).values())
    for query in traceql:
        for name in re.findall(r'(?<![.\w])name = "([^"]+)"', query):
            assert name in spans, f"{query}: span {name}"
        for attr in re.findall(r"\bspan\.([a-z0-9_.]+[a-z0-9_])", query):
            assert attr in attrs, f"{query}: attribute {attr}"


# -- deploy/grafana ------------------------------------------------------------------------------
GRAFANA = ROOT / "deploy" / "grafana"
PROMQL_FUNCTIONS = {
    "sum", "min", "max", "avg", "count", "rate", "increase", "irate", "by", "without",
    "histogram_quantile", "label_values", "le", "on", "ignoring", "and", "or", "unless",
}  # fmt: skip


def _declared_series() -> set[str]:
    """Every Prometheus series name otelbridge (bridge and processor) exposes."""
    names = {
        prometheus_name(c.name, c.unit, "counter")
        for c in (*semconv.COUNTERS, *semconv.PROCESSOR_COUNTERS)
    }
    names |= {
        prometheus_name(g.name, g.unit, "gauge")
        for g in (*semconv.GAUGES, *semconv.PROCESSOR_GAUGES)
    }
    for h in semconv.HISTOGRAMS:
        base = prometheus_name(h.name, h.unit, "histogram")
        names |= {base + s for s in ("_bucket", "_sum", "_count")}
    return names


# the Collector's span_metrics connector with namespace traces.span.metrics
# (collector-config/gateway.yaml): calls and a duration histogram in seconds
SPANMETRICS = {
    "traces_span_metrics_calls_total",
    "traces_span_metrics_duration_seconds_bucket",
    "traces_span_metrics_duration_seconds_sum",
    "traces_span_metrics_duration_seconds_count",
}


def _dashboard_exprs() -> list[str]:
    dash = json.loads((GRAFANA / "dashboards/startup-sla.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    # label_values(METRIC, LABEL): the metric only
    exprs += [v["definition"].split(",")[0] + ")" for v in dash["templating"]["list"]]
    return exprs


def test_dashboard_uses_only_declared_metrics() -> None:
    assert "namespace: traces.span.metrics" in (ROOT / "collector-config/gateway.yaml").read_text()
    known = _declared_series() | SPANMETRICS
    for expr in _dashboard_exprs():
        stripped = re.sub(r'"[^"]*"|\{[^}]*\}|\[[^\]]*\]|\$\w+|\bby \([^)]*\)', " ", expr)
        words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", stripped)) - PROMQL_FUNCTIONS
        assert words, expr
        assert words <= known, f"{expr}: not declared: {sorted(words - known)}"


def test_dashboard_data_sources_are_provisioned() -> None:
    ds = yaml.safe_load((GRAFANA / "provisioning/datasources/otelbridge.yaml").read_text())
    uids = {d["uid"]: d["type"] for d in ds["datasources"]}
    assert set(uids.values()) == {"prometheus", "jaeger"}
    dash = json.loads((GRAFANA / "dashboards/startup-sla.json").read_text())
    assert dash["title"] == "Container startup SLA"
    used = {p["datasource"]["uid"] for p in dash["panels"]}
    used |= {t["datasource"]["uid"] for p in dash["panels"] for t in p["targets"]}
    assert used <= set(uids)
    prov = yaml.safe_load((GRAFANA / "provisioning/dashboards/otelbridge.yaml").read_text())
    assert prov["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_dashboard_promql_parses(tmp_path: Path) -> None:
    """Every PromQL expression of the dashboard, with Grafana's variables filled in, is
    accepted by Prometheus' own parser (``promtool check rules`` on a rule file of them;
    Debian's prometheus package)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        _skip_or_fail("promtool not installed (Debian's prometheus)")
    fill = {"$__rate_interval": "1m", "$__range": "1h", "$namespace": ".*"}
    rules = []
    for i, expr in enumerate(_dashboard_exprs()[:-1]):  # the last: label_values(), Grafana's
        query = expr
        for var, value in fill.items():
            query = query.replace(var, value)
        assert "$" not in query, expr
        rules.append({"record": f"otelbridge:dashboard_{i}", "expr": query})
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run(
        [str(promtool), "check", "rules", str(path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
