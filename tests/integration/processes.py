"""Running the otelbridge command line as a real process in tests."""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

OTELBRIDGE = [sys.executable, "-m", "otelbridge"]


def start(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*OTELBRIDGE, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def wait_for_line(proc: subprocess.Popen[str], text: str, timeout_s: float = 15) -> None:
    """Reads the process's stderr until a line contains ``text``."""
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout_s
    seen = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if text in line:
            return
    raise AssertionError(f"never saw {text!r}; stderr: {''.join(seen)[-2000:]}")


def stop(proc: subprocess.Popen[str], timeout_s: float = 20) -> tuple[int, str, str]:
    """SIGTERM, then (exit code, rest of stdout, rest of stderr)."""
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=timeout_s)
    return proc.returncode, out, err


def final_counters(stderr: str) -> dict[str, int]:
    """The counters `otelbridge run` logs when it stops."""
    m = re.search(r"stopped; counters: (\{.*\})", stderr)
    assert m, f"no counters in: {stderr[-1000:]}"
    counters: dict[str, int] = ast.literal_eval(m.group(1))
    return counters


class Daemon:
    """`otelbridge run` as a process, its log in a file (a pipe nobody reads would fill up
    and stall it), restartable on the same state directory."""

    def __init__(
        self,
        address: str,
        namespace: str,
        state_dir: Path,
        endpoint: str,
        *,
        config: Path | None = None,
        log_dir: Path | None = None,
        extra_args: tuple[str, ...] = (),
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.args = ["run", "-v", "--address", address, "--namespace", namespace]
        self.args += ["--state-dir", str(state_dir), "--http-addr", "127.0.0.1:0"]
        if config is not None:
            self.args += ["--config", str(config)]
        self.args += list(extra_args)
        self.env = {
            **os.environ,
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            **(extra_env or {}),
        }
        self.log_dir = log_dir or state_dir.parent
        self.runs = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.log_dir / "daemon-0.log"

    def start(self, timeout_s: float = 20) -> None:
        self.runs += 1
        self.log_path = self.log_dir / f"daemon-{self.runs}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [*OTELBRIDGE, *self.args], stdout=log, stderr=subprocess.STDOUT, env=self.env
            )
        self.wait_for("subscribed to containerd", timeout_s)

    def status_url(self) -> str:
        """The status API's base URL, as the daemon logged it."""
        m = re.search(r"status API on (http://\S+/)", self.log())
        assert m, self.log()[-2000:]
        return m.group(1)

    def get(self, path: str) -> tuple[int, str]:
        """(status, body) of a GET of the status API."""
        try:
            with urllib.request.urlopen(self.status_url() + path.lstrip("/"), timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def counters(self) -> dict[str, int]:
        """The running daemon's counters (/v1/counters)."""
        _, body = self.get("/v1/counters")
        counters: dict[str, int] = json.loads(body)
        return counters

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, text: str, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text in self.log():
                return
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"never saw {text!r}; log: {self.log()[-3000:]}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self, timeout_s: float = 30) -> dict[str, int]:
        """SIGTERM; returns the counters it logs when it stops."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout_s)
        assert code == 0, self.log()[-3000:]
        return final_counters(self.log())

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
