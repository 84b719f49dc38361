"""Processor ingest in spans per CPU-second, side by side with raw OTLP decoding, in one run.

Bar (issue 9, PRODUCT.md section 8): the processor ingests >= 50,000 spans per second per
core, reported against decoding the same requests with the OTLP protobufs.

The input is what bridges send: the spans of real startups (the bridge's own pipeline
replaying a Timeline: container.startup, its four phases, snapshot.reclaim), spread over
rollouts (a traceparent label per 100 containers), serialized into
``ExportTraceServiceRequest`` messages of 512 spans. Measured, as CPU time per span:

* ``raw decode``: ``ExportTraceServiceRequest.FromString`` of every request (the floor);
* ``ingest, memory``: decode + ``Aggregator.ingest`` in this process, no store;
* ``ingest, SQLite``: the same with the processor's state store (committed per request);
* ``processor process``: `otelbridge processor` as a real process with a state
  directory, the requests sent over OTLP/gRPC; its CPU (user + system, from /proc) per
  span: what a node running it pays, gRPC included.

Run: ``.venv/bin/python benchmarks/processor.py [--startups N] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from otelbridge.core import semconv
from otelbridge.core.clock import EventTimeClock
from otelbridge.core.config import Config
from otelbridge.core.counters import Counters
from otelbridge.core.model import ContainerInfo, RawEnvelope
from otelbridge.emit.spans import kv
from otelbridge.export.otlp import GRPC_EXPORT_METHOD
from otelbridge.pipeline import Pipeline
from otelbridge.processor.aggregate import Aggregator
from otelbridge.processor.store import RolloutStore
from otelbridge.source.recording import Recording
from otelbridge.testing.events import Timeline

BATCH = 512
PER_ROLLOUT = 100
RESOURCE = Resource(attributes=[kv(semconv.SERVICE_NAME, "containerd"), kv("host.name", "bench")])
SCOPE = InstrumentationScope(name="otelbridge")


class Collect:
    def __init__(self) -> None:
        self.spans: list[Span] = []

    def submit(self, spans: Sequence[Span]) -> None:
        self.spans.extend(spans)


def make_requests(startups: int) -> list[bytes]:
    """The serialized requests a bridge would send for ``startups`` container startups."""
    timeline = Timeline()
    recording = Recording()
    envelopes: list[RawEnvelope] = []
    for i in range(startups):
        cid = f"bench-{i:06d}"
        envelopes.extend(timeline.run_container(cid))
        trace = f"{i // PER_ROLLOUT + 1:032x}"
        recording.containers[("default", cid)] = ContainerInfo(
            namespace="default",
            id=cid,
            image="registry.example:5000/team/web:1.4.2",
            runtime="io.containerd.runc.v2",
            created_at_ns=timeline.now_ns,
            labels={"traceparent": f"00-{trace}-00f067aa0ba902b7-01", "app": "web"},
        )
    sink = Collect()
    pipeline = Pipeline(
        Config(),
        sink,
        Counters(),
        clock=EventTimeClock(),
        lookup=recording.lookup,
        lookup_async=False,
    )
    for env in envelopes:
        pipeline.feed(env)
    pipeline.finish()
    out = []
    for at in range(0, len(sink.spans), BATCH):
        request = ExportTraceServiceRequest(
            resource_spans=[
                ResourceSpans(
                    resource=RESOURCE,
                    scope_spans=[ScopeSpans(scope=SCOPE, spans=sink.spans[at : at + BATCH])],
                )
            ]
        )
        out.append(request.SerializeToString())
    return out


def cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def raw_decode(requests: list[bytes]) -> float:
    start = time.process_time()
    for data in requests:
        ExportTraceServiceRequest.FromString(data)
    return time.process_time() - start


def ingest(requests: list[bytes], store_dir: Path | None) -> float:
    counters = Counters(semconv.PROCESSOR_COUNTERS)
    store = RolloutStore(store_dir, counters) if store_dir is not None else None
    aggregator = Aggregator(Config(), counters, store=store)
    start = time.process_time()
    for data in requests:
        aggregator.ingest(ExportTraceServiceRequest.FromString(data))
    spent = time.process_time() - start
    aggregator.close()
    return spent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def processor_process(requests: list[bytes], state_dir: Path) -> float:
    """CPU seconds of a real `otelbridge processor` receiving ``requests`` over gRPC."""
    grpc_port, http_port = free_port(), free_port()
    log = state_dir.parent / "processor.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "otelbridge",
                "processor",
                "--otlp-grpc-addr",
                f"127.0.0.1:{grpc_port}",
                "--http-addr",
                f"127.0.0.1:{http_port}",
                "--state-dir",
                str(state_dir),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while "OTLP/gRPC on" not in log.read_text(errors="replace"):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"the processor did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        export = channel.unary_unary(
            GRPC_EXPORT_METHOD,
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        export(requests[0], timeout=10)  # warm: connection, first rollout
        time.sleep(1.0)
        before = cpu_of(proc.pid)
        for data in requests[1:]:
            export(data, timeout=30)
        spent = cpu_of(proc.pid) - before
        channel.close()
        return spent
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--startups", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    requests = make_requests(args.startups)
    spans = sum(
        len(ExportTraceServiceRequest.FromString(r).resource_spans[0].scope_spans[0].spans)
        for r in requests
    )
    sent = spans - len(
        ExportTraceServiceRequest.FromString(requests[0]).resource_spans[0].scope_spans[0].spans
    )
    raw, memory, sqlite, process = [], [], [], []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            raw.append(raw_decode(requests) / spans)
            memory.append(ingest(requests, None) / spans)
            sqlite.append(ingest(requests, Path(tmp) / "store") / spans)
            process.append(processor_process(requests, Path(tmp) / "proc") / sent)

    def line(label: str, values: list[float]) -> None:
        per = statistics.median(values)
        print(
            f"  {label:<22}{per * 1e6:8.2f} us/span  {1 / per:>10,.0f} spans/s per core"
            f"  ({per / statistics.median(raw):6.1f}x raw decode)"
        )

    print(
        f"processor ingest of {spans} spans ({args.startups} startups, {len(requests)} "
        f"requests of {BATCH}), median of {args.rounds} rounds, CPU time per span:"
    )
    line("raw decode", raw)
    line("ingest, memory", memory)
    line("ingest, SQLite", sqlite)
    line("processor process", process)
    rate = 1 / statistics.median(process)
    print(
        f"  bar: >= 50,000 spans/s per core (the processor process): "
        f"{'meets' if rate >= 50_000 else 'misses'}"
    )


if __name__ == "__main__":
    main()
