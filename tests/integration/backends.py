"""The real backends in tests: the OpenTelemetry Collector and Jaeger v2 built by
``scripts/backends``, and Debian's Prometheus, each a process on free loopback ports.

``scripts/backends`` builds the binaries once (minutes when cold) and reuses them from its
cache afterwards; :func:`backends_dir` runs it and returns the directory. Where Go is
absent the tests skip, unless ``OTELBRIDGE_REQUIRE_BACKENDS=1`` (set by ``.ci/run``)
turns the skip into a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "backends"
COLLECTOR_CONFIGS = REPO / "collector-config"
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
REQUIRE = "OTELBRIDGE_REQUIRE_BACKENDS"
EXIT_NO_GO = 3  # scripts/backends: no Go toolchain
BUILD_TIMEOUT_S = 75 * 60  # a cold build on 2 cores takes a fraction of this

T = TypeVar("T")


def _skip_or_fail(reason: str) -> None:
    if os.environ.get(REQUIRE) == "1":
        pytest.fail(f"backend tests required ({REQUIRE}=1) but cannot run: {reason}")
    pytest.skip(reason)


def _go() -> str | None:
    return shutil.which("go") or (
        "/usr/local/go/bin/go" if os.access("/usr/local/go/bin/go", os.X_OK) else None
    )


def backends_dir() -> Path:
    """Runs ``scripts/backends`` (building or reusing) and returns the directory holding
    ``otelcol`` and ``jaeger``: its last line of output. Skips without Go; a failed
    build fails."""
    if _go() is None:
        _skip_or_fail("no Go toolchain: scripts/backends cannot build the Collector and Jaeger")
    done = subprocess.run(
        [str(SCRIPT)], capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False
    )
    if done.returncode == EXIT_NO_GO:
        _skip_or_fail(done.stderr.strip() or "scripts/backends found no Go toolchain")
    assert done.returncode == 0, f"scripts/backends failed:\n{done.stderr[-6000:]}"
    lines = done.stdout.strip().splitlines()
    assert lines, f"scripts/backends printed no directory:\n{done.stderr[-2000:]}"
    directory = Path(lines[-1])
    for name in ("otelcol", "jaeger"):
        assert os.access(directory / name, os.X_OK), f"{directory / name} missing"
    return directory


def require_tool(name: str, why: str) -> str:
    """The path of a host tool, else skip (or fail under OTELBRIDGE_REQUIRE_BACKENDS=1)."""
    path = shutil.which(name)
    if path is None:
        _skip_or_fail(f"{name} not installed ({why})")
        raise AssertionError("unreachable")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    what: str, probe: Callable[[], T | None], timeout_s: float = 90, interval_s: float = 0.5
) -> T:
    """Calls ``probe`` until it returns something other than None (or False)."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while True:
        try:
            value = probe()
        except (OSError, ValueError, urllib.error.URLError) as exc:
            value, last = None, exc
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what} ({last})")
        time.sleep(interval_s)


def http_get(url: str, timeout_s: float = 10) -> tuple[int, bytes]:
    """(status, body) of a GET; HTTP errors are answers, not exceptions."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Service:
    """A backend program as a process, its output in a log file (a pipe nobody reads
    would fill up and stall it)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_dir: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{name}.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_healthy(self, url: str, timeout_s: float = 90) -> None:
        """Until GET ``url`` answers 200; fails at once when the process has exited."""

        def probe() -> bool:
            if not self.alive():
                raise AssertionError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.log()[-4000:]}"
                )
            status, _ = http_get(url, timeout_s=5)
            return status == 200

        try:
            wait_until(f"{self.name} healthy at {url}", probe, timeout_s)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.name} log:\n{self.log()[-4000:]}") from None

    def stop(self, timeout_s: float = 30) -> int:
        """SIGTERM, then SIGKILL after ``timeout_s``; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def collector_env(prefix: str = "OTELCOL") -> dict[str, str]:
    """Free loopback ports for every listening address a config of collector-config/
    takes from the environment (their header comments list them)."""
    if prefix == "JAEGER":
        return {
            "JAEGER_OTLP_GRPC_ENDPOINT": f"127.0.0.1:{free_port()}",
            "JAEGER_OTLP_HTTP_ENDPOINT": f"127.0.0.1:{free_port()}",
            "JAEGER_QUERY_HTTP_ENDPOINT": f"127.0.0.1:{free_port()}",
            "JAEGER_QUERY_GRPC_ENDPOINT": f"127.0.0.1:{free_port()}",
            "JAEGER_HEALTH_ENDPOINT": f"127.0.0.1:{free_port()}",
            "JAEGER_METRICS_HOST": "127.0.0.1",
            "JAEGER_METRICS_PORT": str(free_port()),
        }
    return {
        "OTELCOL_OTLP_GRPC_ENDPOINT": f"127.0.0.1:{free_port()}",
        "OTELCOL_OTLP_HTTP_ENDPOINT": f"127.0.0.1:{free_port()}",
        "OTELCOL_HEALTH_ENDPOINT": f"127.0.0.1:{free_port()}",
        "OTELCOL_PROMETHEUS_ENDPOINT": f"127.0.0.1:{free_port()}",
        "OTELCOL_METRICS_HOST": "127.0.0.1",
        "OTELCOL_METRICS_PORT": str(free_port()),
        # nothing listens there: exporters connect lazily and retry
        "JAEGER_ENDPOINT": f"127.0.0.1:{free_port()}",
        "OTELBRIDGE_PROCESSOR_1": f"127.0.0.1:{free_port()}",
        "OTELBRIDGE_PROCESSOR_2": f"127.0.0.1:{free_port()}",
    }


class Collector(Service):
    """``otelcol --config FILE`` (or ``jaeger --config FILE``: Jaeger v2 is a Collector)."""

    def __init__(
        self, binary: Path, config: Path, log_dir: Path, env: Mapping[str, str], name: str
    ) -> None:
        self.env = dict(env)
        super().__init__(name, [str(binary), "--config", str(config)], log_dir, self.env)


class Jaeger(Collector):
    """Jaeger v2 with collector-config/jaeger.yaml: OTLP in, the query API out."""

    def __init__(self, binary: Path, log_dir: Path) -> None:
        super().__init__(
            binary, COLLECTOR_CONFIGS / "jaeger.yaml", log_dir, collector_env("JAEGER"), "jaeger"
        )

    @property
    def otlp_grpc(self) -> str:
        return self.env["JAEGER_OTLP_GRPC_ENDPOINT"]

    @property
    def query_url(self) -> str:
        return f"http://{self.env['JAEGER_QUERY_HTTP_ENDPOINT']}"

    def wait_ready(self) -> None:
        self.wait_healthy(f"{self.query_url}/api/services")

    def trace(self, trace_id: str) -> dict[str, Any] | None:
        """The trace of GET /api/traces/{trace_id} (Jaeger's JSON model), or None (404)."""
        status, body = http_get(f"{self.query_url}/api/traces/{trace_id}")
        if status == 404:
            return None
        assert status == 200, (status, body[:500])
        data = json.loads(body)["data"]
        return data[0] if data else None

    def find_traces(self, service: str, tags: Mapping[str, str]) -> list[dict[str, Any]]:
        """GET /api/traces?service=...&tags=... over the last hour."""
        query = urllib.parse.urlencode(
            {"service": service, "tags": json.dumps(dict(tags)), "lookback": "1h", "limit": 100}
        )
        status, body = http_get(f"{self.query_url}/api/traces?{query}")
        assert status == 200, (status, body[:500])
        traces: list[dict[str, Any]] = json.loads(body).get("data") or []
        return traces


class Prometheus(Service):
    """Debian's ``prometheus`` with a generated config: ``jobs`` maps a job name to its
    targets (HOST:PORT, /metrics), scraped every second; ``rule_files`` loaded."""

    def __init__(
        self,
        jobs: Mapping[str, Sequence[str]],
        tmp: Path,
        rule_files: Sequence[Path] = (),
    ) -> None:
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": list(targets)}]}
                for job, targets in jobs.items()
            ],
        }
        tmp.mkdir(parents=True, exist_ok=True)
        path = tmp / "prometheus.yml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        super().__init__(
            "prometheus",
            [
                require_tool("prometheus", "Debian's prometheus package"),
                f"--config.file={path}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
            ],
            tmp,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self) -> None:
        self.wait_healthy(f"{self.url}/-/ready")

    def api(self, path: str, **params: str) -> Any:
        status, body = http_get(f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}")
        document = json.loads(body)
        assert status == 200 and document["status"] == "success", (status, document)
        return document["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector of ``expr`` now: [{"metric": {...}, "value": [t, "v"]}]."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def wait_for_series(self, expr: str, timeout_s: float = 120) -> list[dict[str, Any]]:
        """Until ``expr`` returns at least one series."""
        return wait_until(f"series of {expr}", lambda: self.query(expr) or None, timeout_s)
