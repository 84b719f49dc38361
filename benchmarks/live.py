"""What the live bridge takes from a node, on a real containerd, side by side in one run.

Issue 12's bars, each printed as a figure or a ratio measured in this one run:

* **overhead (A/B)**: blocks of ``--per-block`` sequential ``ctr run --rm /bin/true``,
  alternately without and with ``otelbridge run`` attached (``--blocks`` of each,
  interleaved, the first arm alternating); the median ``ctr run`` wall time with / without
  (bar <= 1.02), and the bridge's CPU per startup (bar <= 1 ms) from the first ``ctr run``
  of a block to the last startup span at the collector, idle included, per thread;
* **idle**: the bridge's CPU over ``--idle-s`` seconds with no container activity (bar
  <= 0.2% of a core), its threads (named, with what each is for) and its RSS;
* **burst and freshness**: ``--burst`` containers started ``--parallel`` at a time: how
  many were traced exactly once, and the delay from ``/tasks/start`` (the end of the
  ``task.start`` span, containerd's own timestamp) to the export request holding the
  startup arriving at the collector, p50 and p99, with the default export settings.

The bridge runs as a separate process with its defaults: OTLP traces over gRPC to an
in-process receiver (:class:`otelbridge.testing.otlp.OtlpReceiver`), Prometheus metrics on
its status API (``OTEL_METRICS_EXPORTER=prometheus``), a state directory (the spool).
CPU per thread comes from ``/proc/PID/task/TID/schedstat`` (nanoseconds on a CPU: gRPC's
C threads included); thread names from ``py-spy dump`` when py-spy is installed (the
kernel's ``comm`` otherwise).

Needs root, containerd and runc (``make host-tools``). Run:
``.venv/bin/python benchmarks/live.py [--blocks 6] [--per-block 30] [--burst 200]``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from otelbridge.core import semconv
from otelbridge.testing.containerd import PrivateContainerd, new_container_id
from otelbridge.testing.image import BUSYBOX_BASE_NAME, busybox_image_tar, import_image
from otelbridge.testing.otlp import OtlpReceiver

NAMESPACE = "bench"
CID = semconv.CONTAINER_ID
PY_SPY = shutil.which("py-spy", path=os.path.dirname(sys.executable)) or shutil.which("py-spy")

#: What each of the bridge's threads is for (by the name it runs under).
PURPOSE = {
    "MainThread": "waits for a signal, then shuts down",
    "otelbridge-source": "connects, lists containerd, hands the stream over; waits",
    "otelbridge-source-stop": "cancels the stream on shutdown",
    "otelbridge-relist": "relists containers every relist interval",
    "otelbridge-events": "reads the event connection; decode, correlate, enrich, emit",
    "otelbridge-lookup": "containerd record lookups (GetContainer; TCP addresses only)",
    "otelbridge-export": "delivers spans to the collector (one per exporter)",
    "otelbridge-netns": "enters network namespaces for readiness probes",
    "otelbridge-probes": "runs readiness probes (asyncio)",
    "otelbridge-status": "serves the status API",
    "otelbridge-status-reaper": "closes idle status API connections",
    "grpc_global_tim": "gRPC C core: timers",
    "event_engine": "gRPC C core: OTLP export, containerd listings",
    "lifeguard": "gRPC C core: thread pool supervisor",
    "Thread-": "gRPC Python: completion queue of a streaming call",
}


def _purpose(name: str) -> str:
    for prefix, text in sorted(PURPOSE.items(), key=lambda kv: -len(kv[0])):
        if name.startswith(prefix):
            return text
    return "?"


# -- the bridge process ------------------------------------------------------------------------
class Bridge:
    """``otelbridge run`` in its own process, with per-thread CPU read from /proc."""

    def __init__(self, cd: PrivateContainerd, rx: OtlpReceiver, log: Path) -> None:
        self._state = tempfile.mkdtemp(prefix="ob-bench-state-")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        env = {
            **os.environ,
            "OTEL_EXPORTER_OTLP_ENDPOINT": rx.endpoint,
            "OTEL_METRICS_EXPORTER": "prometheus",
        }
        cmd = [sys.executable, "-m", "otelbridge", "run", "--address", cd.address]
        cmd += ["-n", NAMESPACE, "--state-dir", self._state]
        cmd += ["--http-addr", f"127.0.0.1:{self.port}"]
        self._log = open(log, "a")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, env=env, stderr=self._log, stdout=self._log)
        self._wait_ready()

    def _wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                url = f"http://127.0.0.1:{self.port}/readyz"
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        time.sleep(1.0)  # past the startup relist and its lookups
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"the bridge did not become ready in {timeout_s}s")

    def cpu(self) -> dict[int, int]:
        """CPU nanoseconds per thread id, so far."""
        out: dict[int, int] = {}
        root = f"/proc/{self.proc.pid}/task"
        for tid in os.listdir(root):
            try:
                with open(f"{root}/{tid}/schedstat") as f:
                    out[int(tid)] = int(f.read().split()[0])
            except (OSError, ValueError):
                continue
        return out

    def names(self) -> dict[int, str]:
        """Thread names: Python's (py-spy) where known, else the kernel's ``comm``."""
        names: dict[int, str] = {}
        for tid in os.listdir(f"/proc/{self.proc.pid}/task"):
            try:
                names[int(tid)] = Path(f"/proc/{self.proc.pid}/task/{tid}/comm").read_text().strip()
            except OSError:
                continue
        if PY_SPY:
            dump = subprocess.run(
                [PY_SPY, "dump", "-p", str(self.proc.pid)],
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            for m in re.finditer(
                r"Thread (?:0x[0-9A-Fa-f]+ )?\(?(\d+)\)?[^\"\n]*\"([^\"]+)\"", dump
            ):
                names[int(m.group(1))] = m.group(2)
        return names

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(status.split("VmRSS:")[1].split()[0])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()
        shutil.rmtree(self._state, ignore_errors=True)


def _diff(before: dict[int, int], after: dict[int, int]) -> dict[int, int]:
    return {tid: ns - before.get(tid, 0) for tid, ns in after.items()}


def _by_name(cpu: dict[int, int], names: dict[int, str]) -> dict[str, int]:
    """Sums per thread name, numbered threads of a pool folded into one row."""
    out: Counter[str] = Counter()
    for tid, ns in cpu.items():
        name = re.sub(r"-\d+$", "-N", names.get(tid, "?"))
        name = re.sub(r"^Thread-\d+.*", "Thread-N (gRPC stream)", name)
        name = re.sub(r"^(otelbridge-export-\S+).*", r"\1", name)
        out[name] += ns
    return dict(out)


def _startups(rx: OtlpReceiver) -> int:
    return sum(1 for s in rx.spans() if s.name == semconv.SPAN_CONTAINER_STARTUP)


def _wait_spans(rx: OtlpReceiver, count: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while _startups(rx) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{_startups(rx)} of {count} startups reached the collector")
        time.sleep(0.02)


# -- the measurements --------------------------------------------------------------------------
def idle(bridge: Bridge, seconds: float) -> None:
    names = bridge.names()
    before = bridge.cpu()
    time.sleep(seconds)
    used = _diff(before, bridge.cpu())
    total = sum(used.values())
    print(f"\nidle, {seconds:.0f} s with no container activity:")
    print(f"  CPU {total / seconds / 1e7:.3f}% of a core (bar <= 0.2%)")
    print(f"  {len(used)} threads, RSS {bridge.rss_kib() / 1024:.1f} MiB")
    print(f"  {'thread':<34} {'% core':>7}  what it is for")
    for name, ns in sorted(_by_name(used, names).items(), key=lambda kv: -kv[1]):
        print(f"  {name:<34} {ns / seconds / 1e7:7.3f}  {_purpose(name)}")


def _block(cd: PrivateContainerd, image: str, n: int) -> list[float]:
    walls = []
    for _ in range(n):
        t0 = time.perf_counter()
        cd.run(image, new_container_id("b"), "/bin/true", namespace=NAMESPACE)
        walls.append(time.perf_counter() - t0)
    return walls


def overhead(
    cd: PrivateContainerd, image: str, rx: OtlpReceiver, *, blocks: int, per_block: int, log: Path
) -> Bridge:
    """The A/B blocks; returns a bridge left running (for the idle and burst parts)."""
    walls: dict[bool, list[float]] = {False: [], True: []}
    cpu_total: Counter[str] = Counter()
    startups = 0
    block_ms: list[float] = []
    bridge: Bridge | None = None
    for b in range(blocks):
        for on in (b % 2 == 0, b % 2 != 0):
            if not on:
                walls[False] += _block(cd, image, per_block)
                continue
            rx.clear()
            bridge = Bridge(cd, rx, log)
            names = bridge.names()
            before = bridge.cpu()
            walls[True] += _block(cd, image, per_block)
            _wait_spans(rx, per_block)
            used = _diff(before, bridge.cpu())
            names.update(bridge.names())
            cpu_total.update(_by_name(used, names))
            startups += per_block
            block_ms.append(sum(used.values()) / per_block / 1e6)
            if b < blocks - 1:
                bridge.stop()
    assert bridge is not None
    off, on_ = statistics.median(walls[False]), statistics.median(walls[True])
    print(f"\noverhead, {blocks} x {per_block} startups per arm, interleaved:")
    print(f"  ctr run --rm median: without {off * 1000:.1f} ms, with {on_ * 1000:.1f} ms")
    print(f"  latency ratio with/without: {on_ / off:.3f} (bar <= 1.02)")
    per = sum(cpu_total.values()) / startups / 1e6
    print(f"  bridge CPU per startup, idle included: {per:.2f} ms (bar <= 1 ms)")
    print(f"  per block: {', '.join(f'{ms:.2f}' for ms in block_ms)} ms")
    print(f"  {'thread':<34} {'ms/startup':>10}")
    for name, ns in sorted(cpu_total.items(), key=lambda kv: -kv[1]):
        if ns / startups >= 5_000:
            print(f"  {name:<34} {ns / startups / 1e6:10.3f}")
    return bridge


def burst(cd: PrivateContainerd, image: str, rx: OtlpReceiver, n: int, parallel: int) -> None:
    rx.clear()
    ids = [new_container_id("u") for _ in range(n)]
    cd.run_parallel(image, ids, "/bin/true", namespace=NAMESPACE, max_workers=parallel)
    try:
        _wait_spans(rx, n, timeout_s=120)
    except RuntimeError as exc:
        print(f"  {exc}")
    time.sleep(1.0)  # any duplicate would arrive by now
    traced: Counter[str] = Counter()
    task_start: dict[str, int] = {}
    arrived: dict[str, int] = {}
    for received in rx.requests():
        for rs in received.request.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    cid = next(
                        (
                            a.value.string_value
                            for a in span.attributes
                            if a.key == semconv.CONTAINER_ID
                        ),
                        "",
                    )
                    if span.name == semconv.SPAN_CONTAINER_STARTUP:
                        traced[cid] += 1
                        arrived.setdefault(cid, received.received_ns)
                    elif span.name == semconv.SPAN_TASK_START:
                        task_start[cid] = span.end_time_unix_nano
    once = sum(1 for cid in ids if traced.get(cid) == 1)
    delays = sorted(
        (arrived[c] - task_start[c]) / 1e6 for c in ids if c in arrived and c in task_start
    )
    print(f"\nburst, {n} containers {parallel} at a time:")
    print(f"  traced exactly once: {once}/{n}")
    if delays:
        p50 = delays[len(delays) // 2]
        p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
        print(
            f"  /tasks/start -> collector: p50 {p50:.0f} ms, p99 {p99:.0f} ms, "
            f"max {delays[-1]:.0f} ms"
        )


@contextmanager
def _containerd() -> Iterator[tuple[PrivateContainerd, str]]:
    with PrivateContainerd() as cd:
        tar = busybox_image_tar(Path(tempfile.gettempdir()) / "ob-image-cache")
        yield cd, import_image(cd, tar, BUSYBOX_BASE_NAME, NAMESPACE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--per-block", type=int, default=30)
    parser.add_argument("--idle-s", type=float, default=20.0)
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--parallel", type=int, default=24)
    args = parser.parse_args()
    log = Path(tempfile.gettempdir()) / "otelbridge-bench-live.log"
    log.write_text("")
    print(f"live bridge on a private containerd ({os.cpu_count()} cores); bridge log: {log}")
    with _containerd() as (cd, image), OtlpReceiver() as rx:
        bridge = overhead(cd, image, rx, blocks=args.blocks, per_block=args.per_block, log=log)
        try:
            idle(bridge, args.idle_s)
            if args.burst:
                burst(cd, image, rx, args.burst, args.parallel)
        finally:
            bridge.stop()


if __name__ == "__main__":
    main()
