"""`otelbridge sla` on real containers: both sources, the HTML report, and a browser.

A real `otelbridge run` (jsonl exporter, status API on a free port) follows three
namespaces of a private containerd with ``[sla] min_samples = 5``:

* ``fast``: plain ``ctr run --rm`` containers, ready when started: passes;
* ``slow``: containers whose readiness probe target (busybox ``httpd`` on the host
  network) opens only after 1.2 s: ``task_create_to_ready`` breaches its 1 s budget;
* ``few``: two containers, fewer than ``min_samples``: insufficient.

While the bridge runs, ``otelbridge sla --from URL`` reads its ``/v1/sla``; after it
stopped, ``otelbridge sla --spans FILE --html OUT`` judges the span file it wrote. Both
must give the same verdicts. The HTML is checked structurally and, when Debian's chromium
is installed (CI does not install it), rendered to a PNG with headless chromium, whose
console must stay free of errors; the PNG is kept at ``/tmp/otelbridge-sla-report.png``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from otelbridge.export.files import read_jsonl
from otelbridge.report import collect
from otelbridge.testing.containerd import PrivateContainerd
from otelbridge.testing.image import BUSYBOX_BASE_NAME, import_image
from tests.integration.processes import OTELBRIDGE, Daemon
from tests.unit.report.htmlcheck import check_page

pytestmark = pytest.mark.containerd

FAST, SLOW, FEW = 12, 6, 2
RENDERED = Path("/tmp/otelbridge-sla-report.png")
CONFIG = """\
[sla]
min_samples = 5
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def sla_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*OTELBRIDGE, "sla", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "NO_COLOR": "1"},
        check=False,
    )


@dataclass
class Run:
    spans: Path
    config: Path
    url: str
    namespaces: dict[str, str]  # role -> containerd namespace
    api_json: dict[str, object]
    api_table: subprocess.CompletedProcess[str]
    api_html: Path
    tmp: Path
    curl_sla: dict[str, object]  # GET /v1/sla, as `curl` would get it
    metrics: str  # GET /metrics


def _startups_written(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open() as stream:
        try:
            return len(collect(read_jsonl(stream)).startups)
        except Exception:  # a line being written: try again
            return -1


def _wait_quiet(path: Path, quiet_s: float = 1.0, timeout_s: float = 20) -> None:
    """Until the span file has not grown for ``quiet_s``."""
    deadline = time.monotonic() + timeout_s
    size, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now = path.stat().st_size
        if now != size:
            size, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.1)


def _slow_container(cd: PrivateContainerd, namespace: str, image: str) -> str:
    cid = f"slow-{uuid.uuid4().hex[:6]}"
    port = free_port()
    script = f"sleep 1.2; mkdir -p /tmp/www; exec httpd -f -p {port} -h /tmp/www"
    cd.run(
        image,
        cid,
        "/bin/sh",
        "-c",
        script,
        namespace=namespace,
        labels={"otelbridge.io/readiness": f"tcp://127.0.0.1:{port}"},
        extra_args=("--net-host",),
        detach=True,
    )
    return cid


@pytest.fixture(scope="module")
def run(
    containerd: PrivateContainerd, image_tar: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("sla-report")
    suffix = uuid.uuid4().hex[:6]
    namespaces = {role: f"sla-{role}-{suffix}" for role in ("fast", "slow", "few")}
    images = {
        role: import_image(containerd, image_tar, BUSYBOX_BASE_NAME, ns)
        for role, ns in namespaces.items()
    }
    config = tmp / "otelbridge.toml"
    config.write_text(CONFIG)
    spans = tmp / "spans.jsonl"
    daemon = Daemon(
        containerd.address,
        namespaces["fast"],
        tmp / "state",
        "http://127.0.0.1:1",  # no collector: the spans go to the jsonl file
        config=config,
        log_dir=tmp,
    )
    daemon.args += ["--namespace", namespaces["slow"], "--namespace", namespaces["few"]]
    daemon.args += ["--exporter", "jsonl", "--jsonl-path", str(spans)]
    daemon.env["OTEL_METRICS_EXPORTER"] = "prometheus"  # no collector: /metrics only
    daemon.start()
    slow: list[str] = []
    try:
        cd = containerd
        cd.run_parallel(
            images["fast"],
            [f"fast-{i}-{suffix}" for i in range(FAST)],
            "/bin/true",
            namespace=namespaces["fast"],
            max_workers=4,
        )
        for _ in range(SLOW):
            slow.append(_slow_container(cd, namespaces["slow"], images["slow"]))
        for i in range(FEW):
            cd.run(images["few"], f"few-{i}-{suffix}", "/bin/true", namespace=namespaces["few"])
        deadline = time.monotonic() + 60
        while _startups_written(spans) < FAST + SLOW + FEW:
            assert time.monotonic() < deadline, daemon.log()[-3000:]
            time.sleep(0.2)
        # tear the slow ones down while the bridge watches: their snapshot reclaims too
        for cid in slow:
            cd.ctr("tasks", "delete", "--force", cid, namespace=namespaces["slow"], check=False)
            cd.ctr("containers", "delete", cid, namespace=namespaces["slow"], check=False)
        _wait_quiet(spans)  # the reclaims of the deletions above are in, too
        url = daemon.status_url() + "v1/sla"
        answer = sla_cli("--from", url, "--json")
        assert answer.returncode == 1, answer.stderr  # slow breaches
        api_html = tmp / "from-api.html"
        table = sla_cli("--from", url, "--html", str(api_html))
        api_json = json.loads(answer.stdout)
        (tmp / "v1_sla.json").write_text(answer.stdout)  # kept for a look after a failure
        with urllib.request.urlopen(url, timeout=10) as response:
            curl_sla = json.load(response)
        with urllib.request.urlopen(daemon.status_url() + "metrics", timeout=10) as response:
            metrics = response.read().decode()
    finally:
        for cid in slow:  # after a failure above: leave nothing running
            containerd.ctr(
                "tasks", "delete", "--force", cid, namespace=namespaces["slow"], check=False
            )
        daemon.stop()
    yield Run(spans, config, url, namespaces, api_json, table, api_html, tmp, curl_sla, metrics)


def test_the_status_api_gives_per_namespace_verdicts_coverage_gc_and_histograms(
    run: Run,
) -> None:
    """The issue's bar: `curl localhost:PORT/v1/sla` during a real run, and /metrics."""
    namespaces = run.curl_sla["namespaces"]
    assert isinstance(namespaces, dict)
    fast, slow, few = (namespaces[run.namespaces[r]] for r in ("fast", "slow", "few"))
    assert (fast["verdict"], fast["startups"], fast["coverage"]) == ("pass", FAST, 1.0)
    assert slow["verdict"] == "breach"
    assert slow["budgets"]["task_create_to_ready"]["verdict"] == "breach"
    assert slow["budgets"]["task_create_to_ready"]["p99_s"] > 1.0
    assert slow["budgets"]["shim_launch_time"]["verdict"] == "pass"
    assert (few["verdict"], few["startups"]) == ("insufficient", FEW)
    # GC: the --rm containers and the deleted slow ones had their snapshots reclaimed
    assert fast["gc"]["reclaims"] == FAST and fast["gc"]["leaked"] == 0
    assert slow["gc"]["reclaims"] == SLOW
    # /metrics: the histograms per namespace, and the verdict gauges
    slow_ns = run.namespaces["slow"]
    bucket = (
        f'otelbridge_task_create_to_ready_duration_seconds_bucket{{containerd_namespace="{slow_ns}"'
    )
    assert bucket in run.metrics
    fast_ns = run.namespaces["fast"]
    count = f'otelbridge_startup_duration_seconds_count{{containerd_namespace="{fast_ns}"}}'
    assert f"{count} {FAST}" in run.metrics
    verdicts = [
        line
        for line in run.metrics.splitlines()
        if line.startswith("otelbridge_sla_verdict")
        and slow_ns in line
        and "task_create_to_ready" in line
    ]
    assert verdicts and verdicts[0].endswith(" 1")  # 1 = breach


def test_both_sources_give_the_same_verdicts(run: Run) -> None:
    done = sla_cli("--spans", str(run.spans), "--config", str(run.config), "--json")
    assert done.returncode == 1, done.stderr
    from_file = json.loads(done.stdout)
    ns = run.namespaces
    expected = {ns["fast"]: "pass", ns["slow"]: "breach", ns["few"]: "insufficient"}
    for answer in (run.api_json, from_file):
        judged = answer["namespaces"]
        assert isinstance(judged, dict)
        assert {name: judged[name]["verdict"] for name in expected} == expected
        slow = judged[ns["slow"]]["budgets"]["task_create_to_ready"]
        assert slow["verdict"] == "breach" and slow["p99_s"] > 1.2, slow
        assert judged[ns["fast"]]["startups"] == FAST
    for name in expected:
        api, mine = run.api_json["namespaces"][name], from_file["namespaces"][name]  # type: ignore[index]
        assert api["startups"] == mine["startups"]
        assert api["coverage"] == mine["coverage"]
        for budget, judged in api["budgets"].items():
            assert judged == mine["budgets"][budget], (name, budget)
        # the GC figures of both: every container's snapshot was reclaimed while the
        # bridge ran (how many reclaims there are is the GC tracker's business, tested
        # with it; here both sources must agree)
        assert api["gc"]["reclaims"] == mine["gc"]["reclaims"], (api["gc"], mine["gc"])
        assert api["gc"]["degraded"] == mine["gc"]["degraded"]
    with run.spans.open() as stream:
        reclaim_spans = len(collect(read_jsonl(stream)).reclaims)
    assert sum(judged["gc"]["reclaims"] for judged in from_file["namespaces"].values()) == (
        reclaim_spans
    )


def test_the_terminal_table_from_the_bridge(run: Run) -> None:
    table = run.api_table
    assert table.returncode == 1, table.stderr
    assert "\x1b[" not in table.stdout
    assert f"source: {run.url} (the bridge's rolling window: 300 s)" in table.stdout
    assert f"{run.namespaces['slow']}  BREACH" in table.stdout
    assert f"{run.namespaces['few']}  INSUFFICIENT" in table.stdout


def test_the_html_from_the_bridge_has_the_charts_and_names_the_node(run: Run) -> None:
    """Issue 10: a report from a running bridge had no charts. It asks
    ``/v1/sla?samples=1`` and draws what the span file's report draws, for the same
    startups; the bridge's resource names the node."""
    ns = run.namespaces
    page = check_page(
        run.api_html.read_text(),
        namespaces=ns.values(),
        verdicts={ns["fast"]: "pass", ns["slow"]: "breach", ns["few"]: "insufficient"},
        budgets=(4.0, 2.0, 1.0),
        min_charts=4 * len(ns),  # each namespace: three histograms and a waterfall
    )
    assert "No histograms or waterfalls" not in page.text
    assert "The 6 slowest startups, by phase" in page.text
    assert f"1 node: {socket.gethostname()}" in " ".join(page.text.split())


def test_a_bridge_that_is_gone_is_one_line_and_exit_1(run: Run) -> None:
    done = sla_cli("--from", run.url)
    assert done.returncode == 1
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith(f"otelbridge sla: cannot reach the bridge at {run.url}")


@pytest.fixture(scope="module")
def html_report(run: Run) -> Path:
    out = run.tmp / "report.html"
    done = sla_cli("--spans", str(run.spans), "--config", str(run.config), "--html", str(out))
    assert done.returncode == 1, done.stderr
    assert f"wrote {out}" in done.stderr
    return out


def test_the_html_report_of_the_span_file(run: Run, html_report: Path) -> None:
    ns = run.namespaces
    page = check_page(
        html_report.read_text(),
        namespaces=ns.values(),
        verdicts={ns["fast"]: "pass", ns["slow"]: "breach", ns["few"]: "insufficient"},
        budgets=(4.0, 2.0, 1.0),
        # each namespace: three histograms and a waterfall
        min_charts=4 * len(ns),
    )
    assert page.title == "otelbridge SLA report: BREACH (3 namespaces)"
    assert "The 6 slowest startups, by phase" in page.text


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_the_html_report_renders_in_chromium_without_console_errors(
    html_report: Path, run: Run
) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    png = run.tmp / "report.png"
    profile = run.tmp / "chromium-profile"
    done = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            f"--screenshot={png}",
            "--window-size=1280,2600",
            html_report.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for marker in ("Uncaught", "ERROR:CONSOLE", "Failed to load resource"):
        assert marker not in done.stderr, done.stderr[-3000:]
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 50_000
    shutil.copyfile(png, RENDERED)
