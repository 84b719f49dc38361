"""Memory per tracked container, measured with tracemalloc in one run.

Bar (PRODUCT.md section 8): <= 1 KiB per tracked in-flight container. Measured for
containers part-way through their startup (snapshot prepared, created, task created: the
longest-lived in-flight state) and for started containers (the tombstone kept until
delete), through the real decode and correlate stages; and through the whole live
pipeline, with each container's record read on the lookup threads and held (admitted)
until its startup completes. Last, the process's RSS after 10,000, 50,000 and 100,000
complete startups fed through one replay pipeline (after the measurements above, in the
same process): whether what a long run keeps stays bounded.

Run: ``.venv/bin/python benchmarks/memory.py [--containers N]``.
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
from collections.abc import Sequence

from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otelbridge.core.clock import EventTimeClock, SystemClock
from otelbridge.core.config import Config, CorrelateConfig
from otelbridge.core.counters import Counters
from otelbridge.core.model import ContainerInfo, RawEnvelope
from otelbridge.correlate.startups import Correlator
from otelbridge.decode import Decoder
from otelbridge.pipeline import Pipeline
from otelbridge.testing.events import Timeline


def measure(envelopes: list[RawEnvelope], n: int) -> tuple[float, int]:
    counters = Counters()
    clock = EventTimeClock()
    correlator = Correlator(CorrelateConfig(max_tracked=10 * n), clock, counters)
    decoder = Decoder(counters)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for env in envelopes:
        clock.observe(env.timestamp_ns)
        event = decoder(env)
        if event is not None:
            correlator.process(event)
    del env, event
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename"))
    # the envelopes themselves were allocated before the first snapshot
    return grown / n, correlator.tracked


def measure_live(envelopes: list[RawEnvelope], n: int) -> float:
    """The live pipeline's growth per in-flight container, its record looked up."""
    labels = {"app": "web", "team": "runtime", "io.kubernetes.pod.name": "web-7d9f8-abcde"}
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

    def lookup(namespace: str, container_id: str) -> ContainerInfo:
        return ContainerInfo(
            namespace=namespace,
            id=container_id,
            image="registry.example:5000/team/web:1.4.2",
            runtime="io.containerd.runc.v2",
            snapshotter="overlayfs",
            created_at_ns=1,
            labels={**labels, "traceparent": traceparent},
            annotations={"traceparent": traceparent},
        )

    class Sink:
        def submit(self, spans: Sequence[Span]) -> None:
            pass

    config = Config(correlate=CorrelateConfig(max_tracked=10 * n))
    pipeline = Pipeline(config, Sink(), Counters(), clock=SystemClock(), lookup=lookup)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for env in envelopes:
        pipeline.feed(env)
    # let every lookup land before measuring what the in-flight startups hold
    time.sleep(0.5)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    pipeline.shutdown()
    return sum(s.size_diff for s in after.compare_to(before, "filename")) / n


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0])


def rss_over(total: int, marks: Sequence[int]) -> list[tuple[int, int]]:
    """The process's RSS after ``marks`` of ``total`` complete startups through a
    pipeline (each container removed, as ``ctr run --rm`` does), fed as they are made:
    what stays after a long run (tombstones expire with event time)."""

    class Sink:
        def submit(self, spans: Sequence[Span]) -> None:
            pass

    timeline = Timeline()
    pipeline = Pipeline(Config(), Sink(), Counters(), clock=EventTimeClock())
    out = []
    for i in range(1, total + 1):
        for env in timeline.run_container(f"rss-{i:07d}"):
            pipeline.feed(env)
        if i in marks:
            gc.collect()
            out.append((i, rss_kib()))
    pipeline.finish()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--containers", type=int, default=20000)
    n = parser.parse_args().containers

    timeline = Timeline()
    in_flight: list[RawEnvelope] = []
    started: list[RawEnvelope] = []
    for i in range(n):
        cid = f"pod-{i:06d}-app-container"  # a realistic 64-char-ish id would cost a bit more
        in_flight += [
            timeline.snapshot_prepare(cid),
            timeline.container_create(cid, after_ns=4_000_000),
            timeline.task_create(cid, after_ns=40_000_000),
        ]
        started += timeline.run_container(cid + "-s", remove=False)[:4]

    per_in_flight, tracked = measure(in_flight, n)
    per_started, _ = measure(started, n)
    per_live = measure_live(in_flight, n)
    print(f"{n} containers, tracemalloc growth per container:")
    print(f"  decode+correlate, in flight          {per_in_flight:7.0f} bytes  ({tracked} tracked)")
    print(f"  decode+correlate, started (tombstone) {per_started:6.0f} bytes")
    print(f"  live pipeline, in flight, record held {per_live:6.0f} bytes")
    verdict = "meets" if per_live <= 1024 else "MISSES"
    print(f"  bar: <= 1024 bytes per in-flight container (live pipeline): {verdict}")
    print("RSS after N complete startups (one process, fed as they come):")
    for done, kib in rss_over(100_000, (10_000, 50_000, 100_000)):
        print(f"  {done:7d} startups  {kib / 1024:6.1f} MiB")


if __name__ == "__main__":
    main()
