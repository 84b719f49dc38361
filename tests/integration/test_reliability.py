"""Nothing lost, nothing twice: the bridge under collector, bridge and containerd failures.

Every scenario runs real processes: `otelbridge run` (restarted, killed), a private
containerd (killed and restarted), and an OTLP/gRPC receiver on loopback (stopped,
slowed). A startup "arrives once" when its container has exactly one distinct
`container.startup` span ID at the receiver; raw re-deliveries of the same span (export
is at least once, and IDs are deterministic, so a backend keeps one) are reported in the
test's output and in docs/reliability.md.

The outage length is 120 s as the issue asks; OTELBRIDGE_OUTAGE_S shortens it for local
runs (CI runs the full length).
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from otelbridge.core import semconv
from otelbridge.core.counters import Counters
from otelbridge.export.spool import StateStore
from otelbridge.testing.otlp import OtlpReceiver, ReceivedSpan
from tests.conftest import Namespace
from tests.integration.processes import Daemon

pytestmark = pytest.mark.containerd

OUTAGE_S = float(os.environ.get("OTELBRIDGE_OUTAGE_S", "120"))


@pytest.fixture
def daemon(namespace: Namespace, receiver: OtlpReceiver, tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(namespace.cd.address, namespace.name, tmp_path / "state", receiver.endpoint)
    d.start()
    yield d
    d.close()
    kill_all(namespace)


def kill_all(namespace: Namespace) -> None:
    """Ends every task left in the test's namespace (detached containers)."""
    tasks = namespace.cd.ctr("tasks", "ls", "-q", namespace=namespace.name, check=False)
    for task in tasks.stdout.split():
        namespace.cd.ctr(
            "tasks", "kill", "-s", "SIGKILL", task, namespace=namespace.name, check=False
        )


def startups(receiver: OtlpReceiver, ids: set[str]) -> dict[str, list[ReceivedSpan]]:
    """The container.startup spans received per container of ``ids``."""
    out: dict[str, list[ReceivedSpan]] = defaultdict(list)
    for s in receiver.spans():
        if (
            s.name == semconv.SPAN_CONTAINER_STARTUP
            and s.attributes.get(semconv.CONTAINER_ID) in ids
        ):
            out[s.attributes[semconv.CONTAINER_ID]].append(s)
    return out


def wait_for_startups(
    receiver: OtlpReceiver, ids: set[str], timeout_s: float
) -> dict[str, list[ReceivedSpan]]:
    deadline = time.monotonic() + timeout_s
    while True:
        got = startups(receiver, ids)
        if len(got) == len(ids) or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


def assert_each_once(got: dict[str, list[ReceivedSpan]], ids: set[str]) -> int:
    """Every container has exactly one distinct startup span ID; returns re-deliveries."""
    missing = ids - set(got)
    assert not missing, f"{len(missing)} startups never arrived: {sorted(missing)[:5]}"
    redelivered = 0
    for cid, spans in got.items():
        distinct = {s.span.span_id for s in spans}
        assert len(distinct) == 1, f"{cid}: {len(distinct)} different startups"
        redelivered += len(spans) - 1
    return redelivered


def run_burst(namespace: Namespace, ids: list[str], *cmd: str, workers: int, detach: bool) -> None:
    with ThreadPoolExecutor(workers) as pool:
        for f in [pool.submit(namespace.run, cid, *cmd, detach=detach) for cid in ids]:
            f.result()


@pytest.mark.slow
def test_a_collector_outage_loses_and_duplicates_nothing(
    daemon: Daemon, namespace: Namespace, receiver: OtlpReceiver
) -> None:
    receiver.stop()
    down_at = time.monotonic()
    ids = [f"out-{i}-{uuid.uuid4().hex[:6]}" for i in range(200)]
    run_burst(namespace, ids, "/bin/true", workers=8, detach=False)
    burst_s = time.monotonic() - down_at
    # the bridge is also restarted during the outage: the spool survives it
    time.sleep(max(0.0, OUTAGE_S / 2 - (time.monotonic() - down_at)))
    counters = daemon.stop()
    assert counters["otelbridge.startups.completed"] >= 200
    assert "otelbridge.spans.dropped" not in counters
    daemon.start()
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
    receiver.start()

    got = wait_for_startups(receiver, set(ids), timeout_s=120)
    redelivered = assert_each_once(got, set(ids))
    back_s = time.monotonic() - down_at - OUTAGE_S
    phases = [
        s
        for s in receiver.spans()
        if s.name != semconv.SPAN_SNAPSHOT_RECLAIM
        and s.attributes.get(semconv.CONTAINER_ID) in set(ids)
    ]
    assert len({s.span.span_id for s in phases}) == 200 * 5
    print(
        f"\noutage {OUTAGE_S:.0f}s, burst of 200 in {burst_s:.1f}s, bridge restarted once: "
        f"200/200 startups, {redelivered} re-delivered, all in {back_s:.1f}s after the "
        f"collector came back"
    )
    daemon.stop()


def test_the_status_api_says_alive_and_ready(daemon: Daemon) -> None:
    base = daemon.status_url()
    assert base.startswith("http://127.0.0.1:")
    for path in ("healthz", "readyz"):
        with urllib.request.urlopen(base + path, timeout=5) as response:
            assert response.status == 200
    with urllib.request.urlopen(base + "v1/counters", timeout=5) as response:
        assert "otelbridge.events.received" in json.load(response)


def test_a_bridge_killed_mid_burst_loses_and_duplicates_nothing(
    daemon: Daemon, namespace: Namespace, receiver: OtlpReceiver
) -> None:
    ids = [f"kill-{i}-{uuid.uuid4().hex[:6]}" for i in range(80)]
    burst = threading.Thread(
        target=run_burst,
        args=(namespace, ids, "/bin/sleep", "120"),
        kwargs={"workers": 4, "detach": True},
    )
    burst.start()
    while len(startups(receiver, set(ids))) < 15:
        time.sleep(0.05)
    daemon.kill()
    killed_with = len(startups(receiver, set(ids)))
    time.sleep(1.0)
    daemon.start()
    burst.join()

    got = wait_for_startups(receiver, set(ids), timeout_s=60)
    redelivered = assert_each_once(got, set(ids))
    partial = sum(1 for spans in got.values() if spans[0].attributes[semconv.OB_PARTIAL])
    counters = daemon.stop()
    print(
        f"\nSIGKILL after {killed_with}/80 startups arrived: 80/80 arrived once, {partial} "
        f"partial (started while no bridge ran), {redelivered} re-delivered; counters after "
        f"restart: {counters}"
    )


def test_a_containerd_restart_mid_burst_accounts_for_every_container(
    daemon: Daemon, namespace: Namespace, receiver: OtlpReceiver
) -> None:
    started: list[str] = []
    failed = 0

    def burst() -> None:
        nonlocal failed
        for i in range(60):
            for _ in range(20):  # containerd may be down: retry under a new id
                cid = f"cdr-{i}-{uuid.uuid4().hex[:6]}"
                result = namespace.run(cid, "/bin/sleep", "120", detach=True, check=False)
                if result.returncode == 0:
                    started.append(cid)
                    break
                failed += 1
                time.sleep(0.3)

    thread = threading.Thread(target=burst)
    thread.start()
    while len(started) < 20:
        time.sleep(0.05)
    namespace.cd.kill()
    time.sleep(3.0)  # down long enough for runs to fail and the bridge to lose its stream
    namespace.cd.restart()
    thread.join()

    ids = set(started)
    got = wait_for_startups(receiver, ids, timeout_s=60)
    redelivered = assert_each_once(got, ids)
    partial = sum(1 for spans in got.values() if spans[0].attributes[semconv.OB_PARTIAL])
    counters = daemon.stop()
    coverage = (
        1
        - counters.get("otelbridge.startups.partial", 0) / counters["otelbridge.startups.completed"]
    )
    print(
        f"\ncontainerd killed for 3 s after 20/60: {len(ids)}/{len(ids)} accounted "
        f"for ({partial} partial), {failed} runs failed during the restart and were retried, "
        f"{redelivered} re-delivered; coverage {coverage:.1%}; counters: {counters}"
    )
    assert counters["otelbridge.source.reconnects"] >= 1
    assert counters.get("otelbridge.startups.partial", 0) == partial


def test_a_slow_receiver_keeps_memory_bounded_and_counts_what_it_drops(
    namespace: Namespace, receiver: OtlpReceiver, tmp_path: Path
) -> None:
    config = tmp_path / "otelbridge.toml"
    config.write_text("[state]\nmax_spool_mb = 0.05\nshutdown_grace_s = 2.0\n")
    d = Daemon(
        namespace.cd.address, namespace.name, tmp_path / "state", receiver.endpoint, config=config
    )
    receiver.set_delay(3.0)
    d.start()
    try:
        rss_before = d.rss_bytes()
        ids = [f"slow-{i}-{uuid.uuid4().hex[:6]}" for i in range(150)]
        run_burst(namespace, ids, "/bin/true", workers=6, detach=False)
        time.sleep(3)
        rss_after = d.rss_bytes()
        counters = d.stop()
    finally:
        d.close()
    emitted = counters["otelbridge.spans.emitted"]
    dropped = counters.get("otelbridge.spans.dropped", 0)
    exported = counters.get("otelbridge.spans.exported", 0)
    left, _ = StateStore(tmp_path / "state", Counters(), max_spool_bytes=2**30).spooled
    print(
        f"\nreceiver answering in 3 s, spool budget 50 KiB: {emitted} spans emitted = "
        f"{exported} exported + {dropped} dropped (counted) + {left} left spooled; "
        f"RSS {rss_before / 2**20:.1f} -> {rss_after / 2**20:.1f} MiB"
    )
    assert emitted == 150 * 6  # 5 spans per startup, and its snapshot.reclaim (--rm)
    assert dropped > 0
    assert emitted == exported + dropped + left  # every span accounted for exactly once
    assert rss_after - rss_before < 40 * 2**20
