"""The runtime-side recorder's added container start latency (``otelbridge hook``).

Bar (issue 11): under 5 ms added per container start. Two measurements on this machine:

1. **End to end**: ``ctr run --rm`` of ``/bin/true`` on a private containerd, with the
   recorder (``print-config --format ctr``'s words) and without, in interleaved blocks
   (ABBA: the order alternates, so a drift of the machine falls on both sides). Printed,
   as medians per container of each, the difference and the ratio: the **start latency**
   (``/containers/create`` -> ``/tasks/start``, the envelopes of ``ctr events``: what a
   startup trace measures, and what the bar is about), and the whole ``ctr run --rm``
   (which adds the exit and the removal: every ``runc`` call there goes through the
   recorder too, as an exec).
2. **The recorder alone**: the same failing ``runc start`` (an unknown container: runc
   parses, looks, exits 1) called directly and through the recorder, which then does all
   it does for a real start (open the spool, fork, wait, two lines). Far less noisy than 1.

Also printed: the medians of runc create and runc start as the recorder saw them (what the
new spans show). Needs root, containerd, runc and a C compiler.

Run: ``.venv/bin/python benchmarks/hook.py [--rounds N] [--block N]``.
"""

from __future__ import annotations

import argparse
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from otelbridge.core.counters import Counters
from otelbridge.core.model import ContainerKey
from otelbridge.runtime import install
from otelbridge.runtime.spool import Spool
from otelbridge.source.recording import parse_ctr_line
from otelbridge.testing.containerd import PrivateContainerd
from otelbridge.testing.image import BUSYBOX_BASE_NAME, busybox_image_tar, import_image

NS = "bench"
MS = 1e6
_ID = re.compile(r'"(?:id|container_id)":"([A-Za-z0-9._-]+)"')


def ctr_words(spool: Path, install_dir: Path) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-m", "otelbridge", "hook", "print-config", "--spool", str(spool),
         "--install-dir", str(install_dir), "--format", "ctr"],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    return shlex.split(done.stdout.splitlines()[-1])


class Events:
    """``ctr events`` of the instance: the first envelope time of (container, topic)."""

    def __init__(self, cd: PrivateContainerd) -> None:
        self._proc = subprocess.Popen(
            ["ctr", "--address", cd.address, "events"], stdout=subprocess.PIPE, text=True
        )
        self.times: dict[tuple[str, str], int] = {}
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            m = _ID.search(line)
            try:
                env = parse_ctr_line(line.rstrip("\n"))
            except ValueError:  # not an envelope line
                continue
            if m is not None:
                self.times.setdefault((m.group(1), env.topic), env.timestamp_ns)

    def start_latency_ms(self, cid: str) -> float | None:
        begin = self.times.get((cid, "/containers/create"))
        end = self.times.get((cid, "/tasks/start"))
        return None if begin is None or end is None else (end - begin) / MS

    def close(self) -> None:
        self._proc.terminate()
        self._proc.wait(5)


def timed_run(cd: PrivateContainerd, image: str, extra: list[str]) -> tuple[str, float]:
    cid = f"b-{uuid.uuid4().hex[:10]}"
    t0 = time.perf_counter_ns()
    cd.run(image, cid, "/bin/true", namespace=NS, extra_args=extra)
    return cid, (time.perf_counter_ns() - t0) / MS


def end_to_end(
    cd: PrivateContainerd, image: str, words: list[str], rounds: int, block: int
) -> list[dict[bool, dict[str, float]]]:
    """Per round: {with the recorder: {container id: ctr run ms}}."""
    for _ in range(2):  # warm-up: caches, the first shim binary load
        timed_run(cd, image, [])
        timed_run(cd, image, words)
    out = []
    for r in range(rounds):
        runs: dict[bool, dict[str, float]] = {False: {}, True: {}}
        for recorder in [False, True] if r % 2 == 0 else [True, False]:
            for _ in range(block):
                cid, ms = timed_run(cd, image, words if recorder else [])
                runs[recorder][cid] = ms
        out.append(runs)
    return out


def recorder_alone(binary: Path, runc: Path, root: Path, n: int) -> tuple[float, float]:
    """Median ms of a failing `runc start` called directly and through the recorder."""
    direct: list[float] = []
    wrapped: list[float] = []
    for i in range(n):
        for cmd, out in (([str(runc)], direct), ([str(binary)], wrapped)):
            args = [*cmd, "--root", str(root), "start", f"none{i}"]
            t0 = time.perf_counter_ns()
            subprocess.run(args, capture_output=True, check=False)
            out.append((time.perf_counter_ns() - t0) / MS)
    return statistics.median(direct), statistics.median(wrapped)


def runc_medians(spool: Path, hooked: list[str]) -> tuple[float, float]:
    s = Spool(spool, Counters())
    creates: list[float] = []
    starts: list[float] = []
    for cid in hooked:
        moments = {m.kind: m.time_ns for m in s.take(ContainerKey(NS, cid))}
        if {"create.begin", "create.end"} <= moments.keys():
            creates.append((moments["create.end"] - moments["create.begin"]) / MS)
        if {"start.begin", "start.end"} <= moments.keys():
            starts.append((moments["start.end"] - moments["start.begin"]) / MS)
    return statistics.median(creates or [0.0]), statistics.median(starts or [0.0])


def compare(what: str, rounds: list[dict[bool, list[float]]]) -> None:
    """Medians of each side, and the median of the rounds' paired differences (the two
    blocks of a round ran back to back: a slow minute of the machine falls on both)."""
    without = [ms for r in rounds for ms in r[False]]
    with_ = [ms for r in rounds for ms in r[True]]
    a, b = statistics.median(without), statistics.median(with_)
    paired = statistics.median(
        statistics.median(r[True]) - statistics.median(r[False])
        for r in rounds
        if r[True] and r[False]
    )
    print(f"  {what}:")
    print(f"    {a:6.1f} ms without, {b:6.1f} ms with the recorder (medians, ratio {b / a:.3f});"
          f" added per container: {b - a:+.2f} ms, paired by round {paired:+.2f} ms")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="ABBA rounds (default 10)")
    parser.add_argument("--block", type=int, default=6, help="containers per block (default 6)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="obhook-") as tmp:
        base = Path(tmp)
        spool = base / "spool"
        words = ctr_words(spool, base / "bin")
        binary = Path(words[-1])
        with PrivateContainerd() as cd:
            image = import_image(cd, busybox_image_tar(base / "img"), BUSYBOX_BASE_NAME, NS)
            events = Events(cd)
            time.sleep(0.5)  # `ctr events` subscribes asynchronously
            runs = end_to_end(cd, image, words, args.rounds, args.block)
            time.sleep(0.5)
            events.close()
            create_ms, start_ms = runc_medians(spool, [c for r in runs for c in r[True]])
        runc = install.find_runc()
        direct, wrapped = recorder_alone(binary, runc, base / "runc-root" / NS, 200)

    latency = [
        {
            mode: [ms for cid in ids if (ms := events.start_latency_ms(cid)) is not None]
            for mode, ids in r.items()
        }
        for r in runs
    ]
    wall = [{mode: list(ids.values()) for mode, ids in r.items()} for r in runs]
    n = sum(len(r[False]) for r in runs)
    print(f"ctr run --rm /bin/true, {n} containers each way, {args.rounds} ABBA rounds:")
    compare("start latency, /containers/create -> /tasks/start (bar: < 5 ms added)", latency)
    compare("the whole ctr run --rm", wall)
    print("the recorder alone (a failing `runc start`, 200 calls each, median):")
    print(f"  runc {direct:.2f} ms, through the recorder {wrapped:.2f} ms: {wrapped - direct:+.2f}"
          " ms per recorded runc call (two per container start: create and start)")  # fmt: skip
    print(f"runc as the recorder saw it (medians): create {create_ms:.1f} ms, "
          f"start {start_ms:.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
