"""`otelbridge processor` as a real process (``python -m otelbridge processor``).

No containerd needed: spans are sent by OTLP clients (gRPC stubs, plain HTTP). Shown here:

* a SIGKILL after spans were accepted, then a restart on the same ``--state-dir``, gives
  the same verdict documents (what was acknowledged was on disk);
* 100,000 one-span traces of other names, in batches of 1,000 over gRPC, leave the RSS
  flat and are counted ``ignored``; 100,000 one-startup traces are bounded by
  ``processor.max_rollouts`` and the evictions counted;
* hostile input over both receivers (gzip bombs, oversize, garbage, no token) is answered
  413 / RESOURCE_EXHAUSTED, 400 / INVALID_ARGUMENT, 401 / UNAUTHENTICATED, the RSS stays
  flat, and the processor keeps serving.
"""

from __future__ import annotations

import gzip
import json
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from otelbridge.core import semconv

METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
TOKEN = "integration-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
LIMIT = 1024 * 1024  # processor.max_request_bytes in these tests
MiB = 1024 * 1024


class Processor:
    """The processor as a process, its log in a file, restartable on its state dir."""

    def __init__(self, tmp: Path, *, config: str = "", token: bool = True) -> None:
        self.tmp = tmp
        self.state_dir = tmp / "state"
        (tmp / "processor.toml").write_text(config)
        self.args = [
            "processor",
            "-v",
            "--state-dir",
            str(self.state_dir),
            "--otlp-grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--config",
            str(tmp / "processor.toml"),
        ]
        if token:
            (tmp / "token").write_text(TOKEN + "\n")
            self.args += ["--token-file", str(tmp / "token")]
        self.runs = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.grpc_port = 0
        self.url = ""

    def start(self) -> None:
        self.runs += 1
        self.log_path = self.tmp / f"processor-{self.runs}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "otelbridge", *self.args], stdout=log, stderr=log
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            m = re.search(r"OTLP/gRPC on [^:]+:(\d+); OTLP/HTTP and the API on (\S+)/;", self.log())
            if m:
                self.grpc_port, self.url = int(m.group(1)), m.group(2)
                return
            assert self.proc.poll() is None, self.log()
            time.sleep(0.05)
        raise AssertionError(f"the processor did not start: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_bytes(self, field: str = "VmRSS") -> int:
        """The process's resident memory now (``VmHWM``: its peak so far)."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no {field}")

    def http(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        *,
        token: bool = True,
    ) -> tuple[int, bytes]:
        all_headers = {"Authorization": f"Bearer {TOKEN}"} if token else {}
        all_headers.update(headers or {})
        request = urllib.request.Request(
            self.url + path, data=body, method=method, headers=all_headers
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def json(self, path: str) -> dict[str, Any]:
        status, body = self.http("GET", path)
        assert status == 200, body
        doc: dict[str, Any] = json.loads(body)
        return doc

    def export(
        self,
        request: ExportTraceServiceRequest | bytes,
        *,
        metadata: tuple[tuple[str, str], ...] = AUTH,
        compression: grpc.Compression = grpc.Compression.NoCompression,
    ) -> grpc.StatusCode:
        with grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}") as channel:
            call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
            data = request if isinstance(request, bytes) else request.SerializeToString()
            try:
                call(data, metadata=metadata, compression=compression, timeout=60)
            except grpc.RpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def processor(tmp_path: Path) -> Iterator[Processor]:
    p = Processor(tmp_path, config=f"[processor]\nmax_request_bytes = {LIMIT}\n")
    p.start()
    try:
        yield p
    finally:
        p.close()


# -- spans ------------------------------------------------------------------------------------
def _attr(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def _span(
    name: str,
    trace: bytes,
    span_id: int,
    parent: int | None,
    *,
    at: tuple[int, int],
    attrs: dict[str, str],
) -> Span:
    start, end = at
    return Span(
        trace_id=trace,
        span_id=span_id.to_bytes(8, "big"),
        parent_span_id=parent.to_bytes(8, "big") if parent else b"",
        name=name,
        start_time_unix_nano=start,
        end_time_unix_nano=end,
        attributes=[_attr(k, v) for k, v in attrs.items()],
    )


def rollout_request(trace: bytes, startups: int, *, failed: int = 0) -> ExportTraceServiceRequest:
    """A rollout of ``startups`` container startups (``failed`` of them exited), each a
    container.startup and its phases, children listed before their parents."""
    t0 = 1_700_000_000_000_000_000
    children, parents = [], []
    for i in range(startups):
        base, sid = t0 + i * 1_000_000, 1000 + i * 10
        common = {semconv.CONTAINER_ID: f"c{i}", semconv.CONTAINERD_NAMESPACE: "web"}
        ms = 1_000_000
        edges = [base, base + 5 * ms, base + (40 + i) * ms, base + (50 + i) * ms]
        edges.append(edges[-1] + (100 + 3 * i) * ms)
        names = ("container.create", "shim.launch", "task.start", "readiness.wait")
        for j, name in enumerate(names[: 3 if i < failed else 4]):
            children.append(
                _span(name, trace, sid + j + 1, sid, at=(edges[j], edges[j + 1]), attrs=common)
            )
        outcome = "exited" if i < failed else "ready"
        parents.append(
            _span(
                "container.startup",
                trace,
                sid,
                1,
                at=(edges[0], edges[3 if i < failed else 4]),
                attrs={**common, semconv.OB_STARTUP_OUTCOME: outcome},
            )
        )
    named = {semconv.OB_ROLLOUT_NAME: "web-v2"}
    rollout = _span("rollout", trace, 1, None, at=(t0, t0 + 10**10), attrs=named)
    spans = [*children, *parents, rollout]
    return ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=spans)])]
    )


def one_span_traces(first: int, count: int, name: str) -> ExportTraceServiceRequest:
    spans = [
        _span(name, (first + i).to_bytes(16, "big"), 1, None, at=(10, 20), attrs={"k": "v"})
        if name != "container.startup"
        else _span(
            name,
            (first + i).to_bytes(16, "big"),
            1,
            None,
            at=(10, 20 + i),
            attrs={
                semconv.CONTAINER_ID: f"c{first + i}",
                semconv.CONTAINERD_NAMESPACE: "load",
                semconv.OB_STARTUP_OUTCOME: "ready",
            },
        )
        for i in range(count)
    ]
    return ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=spans)])]
    )


# -- durability -------------------------------------------------------------------------------
def test_a_sigkill_and_a_restart_on_the_same_state_dir_keep_the_documents(
    processor: Processor,
) -> None:
    passing, halting = bytes.fromhex("11" * 16), bytes.fromhex("22" * 16)
    assert processor.export(rollout_request(passing, 20)) == grpc.StatusCode.OK
    body = rollout_request(halting, 12, failed=2).SerializeToString()
    status, _ = processor.http(
        "POST", "/v1/traces", body, {"Content-Type": "application/x-protobuf"}
    )
    assert status == 200
    paths = [
        f"/v1/rollouts/{passing.hex()}?expect=20",
        f"/v1/rollouts/{halting.hex()}?sketches=1",
        "/v1/namespaces/web?sketches=1",
    ]
    before = [processor.json(p) for p in paths]
    assert before[0]["verdict"] == "pass" and before[0]["startups"] == 20
    assert before[1]["verdict"] == "halt" and before[1]["failed"] == 2
    assert before[2]["startups"] == 32

    processor.kill()  # no shutdown: only what is on disk survives
    processor.start()
    after = [processor.json(p) for p in paths]
    assert after == before
    assert processor.stop() == 0
    assert "stopped; counters:" in processor.log()


# -- memory -----------------------------------------------------------------------------------
def _send_traces(processor: Processor, name: str, total: int, first: int = 1) -> None:
    for batch in range(total // 1000):
        request = one_span_traces(first + batch * 1000, 1000, name)
        assert processor.export(request) == grpc.StatusCode.OK


@pytest.mark.slow
def test_100000_one_span_traces_leave_the_memory_flat_and_are_counted_ignored(
    processor: Processor,
) -> None:
    _send_traces(processor, "GET /api", 5000, first=10**9)  # warm up: imports, arenas
    before = processor.rss_bytes()
    _send_traces(processor, "GET /api", 100_000)
    after = processor.rss_bytes()
    counters = processor.json("/v1/counters")
    print(f"RSS before {before / MiB:.1f} MiB, after 100,000 traces {after / MiB:.1f} MiB")
    assert counters["otelbridge.processor.spans.ignored"] == 105_000
    assert counters["otelbridge.processor.startups"] == 0
    assert after - before < 20 * MiB, f"RSS grew by {(after - before) / MiB:.1f} MiB"
    assert processor.json(f"/v1/rollouts/{(5).to_bytes(16, 'big').hex()}")["startups"] == 0


@pytest.mark.slow
def test_100000_one_startup_traces_are_bounded_by_max_rollouts(tmp_path: Path) -> None:
    processor = Processor(
        tmp_path, config=f"[processor]\nmax_request_bytes = {LIMIT}\nmax_rollouts = 2000\n"
    )
    processor.start()
    try:
        _send_traces(processor, "container.startup", 5000, first=10**9)
        before = processor.rss_bytes()
        _send_traces(processor, "container.startup", 100_000)
        after = processor.rss_bytes()
        counters = processor.json("/v1/counters")
        print(f"RSS before {before / MiB:.1f} MiB, after 100,000 startups {after / MiB:.1f} MiB")
        assert counters["otelbridge.processor.startups"] == 105_000
        assert counters["otelbridge.processor.rollouts.evicted"] == 105_000 - 2000
        assert after - before < 40 * MiB, f"RSS grew by {(after - before) / MiB:.1f} MiB"
        last = (100_000).to_bytes(16, "big").hex()
        assert processor.json(f"/v1/rollouts/{last}")["startups"] == 1
        assert processor.stop() == 0
    finally:
        processor.close()


# -- hostile input ----------------------------------------------------------------------------
PB = {"Content-Type": "application/x-protobuf"}


def test_hostile_input_over_both_receivers_is_refused_and_the_processor_keeps_serving(
    processor: Processor,
) -> None:
    good = rollout_request(bytes.fromhex("33" * 16), 3)
    # the first requests of each kind allocate what later ones reuse
    assert processor.export(good) == grpc.StatusCode.OK
    assert processor.http("POST", "/v1/traces", good.SerializeToString(), PB)[0] == 200
    before, peak_before = processor.rss_bytes(), processor.rss_bytes("VmHWM")

    # 100 MiB of zeros, a few hundred KB compressed: refused, never allocated
    zeros = b"\x00" * (100 * MiB)
    http_bomb = gzip.compress(zeros, compresslevel=9)
    bomb_span = Span(name="x", trace_state=zeros.decode())
    grpc_bomb = ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[bomb_span])])]
    )
    del zeros
    for _ in range(3):
        status, _ = processor.http(
            "POST", "/v1/traces", http_bomb, {**PB, "Content-Encoding": "gzip"}
        )
        assert status == 413
        assert (
            processor.export(grpc_bomb, compression=grpc.Compression.Gzip)
            == grpc.StatusCode.RESOURCE_EXHAUSTED
        )
    after_bombs, peak = processor.rss_bytes(), processor.rss_bytes("VmHWM")
    del grpc_bomb, bomb_span

    oversize = b"\x0a" + b"\xff" * (LIMIT + 100)
    assert processor.http("POST", "/v1/traces", oversize, PB)[0] == 413
    assert processor.export(oversize) == grpc.StatusCode.RESOURCE_EXHAUSTED
    garbage = b"\xff\xfe\xfd garbage \x00\x01"
    assert processor.http("POST", "/v1/traces", garbage, PB)[0] == 400
    assert (
        processor.http("POST", "/v1/traces", b"{]", {"Content-Type": "application/json"})[0] == 400
    )
    assert processor.export(garbage) == grpc.StatusCode.INVALID_ARGUMENT
    body = good.SerializeToString()
    assert processor.http("POST", "/v1/traces", body, PB, token=False)[0] == 401
    assert processor.http("GET", "/metrics", token=False)[0] == 401
    assert processor.export(good, metadata=()) == grpc.StatusCode.UNAUTHENTICATED
    assert processor.export(good, metadata=(("authorization", "Bearer no"),)) == (
        grpc.StatusCode.UNAUTHENTICATED
    )

    # still serving, and nothing of the above was taken in
    assert processor.http("GET", "/healthz", token=False)[0] == 200
    assert processor.http("GET", "/readyz", token=False)[0] == 200
    assert processor.export(rollout_request(bytes.fromhex("44" * 16), 2)) == grpc.StatusCode.OK
    assert processor.json(f"/v1/rollouts/{'44' * 16}")["startups"] == 2
    assert processor.json(f"/v1/rollouts/{'33' * 16}")["startups"] == 3
    counters = processor.json("/v1/counters")
    # refused over HTTP: 3 bombs, oversize, 2 garbage, 2 without a token; over gRPC:
    # garbage and 2 without a token (gRPC refuses oversize itself, before the processor)
    assert counters["otelbridge.processor.requests.refused"] == 11
    metrics = processor.http("GET", "/metrics")[1].decode()
    assert "otelbridge_processor_requests_refused_total 11" in metrics
    print(
        f"RSS before the bombs {before / MiB:.1f} MiB (peak {peak_before / MiB:.1f}), after "
        f"3+3 bombs of 100 MiB {after_bombs / MiB:.1f} MiB (peak {peak / MiB:.1f})"
    )
    # the peak too: a bomb decompressed whole and freed again would show there
    assert peak - peak_before < 30 * MiB, f"peak RSS grew by {(peak - peak_before) / MiB:.1f} MiB"
    assert after_bombs - before < 30 * MiB, f"RSS grew by {(after_bombs - before) / MiB:.1f} MiB"
    assert processor.stop() == 0
