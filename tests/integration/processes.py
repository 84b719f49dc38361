"""Running the otelbridge command line as a real process in tests."""

from __future__ import annotations

import ast
import os
import re
import signal
import subprocess
import sys
import time

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
