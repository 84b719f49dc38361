"""``otelbridge demo``: the main job, end to end, on a machine with nothing configured.

1. checks containerd, runc, umoci and busybox-static, and installs the missing ones with
   apt (unless ``--no-install``);
2. starts a private containerd (own root, state and sockets, nothing shared with the
   machine's instance) and imports a busybox image built offline;
3. attaches a bridge to it, exactly as ``otelbridge run`` would;
4. plays a small "rollout": a provisioning span, and containers started with its
   ``traceparent`` (as a label, and one as a ``TRACEPARENT`` environment variable), plus
   one container with a broken traceparent to show what happens to bad input;
5. prints the rollout's trace as a waterfall, every phase timed by containerd's events.

Spans also go to the exporters ``--exporter``/``OTEL_TRACES_EXPORTER`` name (none by
default), so the same rollout can be looked at in Jaeger or Tempo.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otelbridge.app import build_live_bridge
from otelbridge.core import semconv
from otelbridge.core.config import Config, CorrelateConfig, SourceConfig, StateConfig
from otelbridge.core.errors import EnvironmentProblem
from otelbridge.core.model import StartupRecord
from otelbridge.core.tracecontext import TraceContext
from otelbridge.demo.waterfall import render
from otelbridge.emit.spans import provisioning_span
from otelbridge.export.memory import MemoryExporter
from otelbridge.testing.containerd import (
    PrivateContainerd,
    ensure_host_tools,
    missing_host_tools,
    new_container_id,
)
from otelbridge.testing.image import BUSYBOX_BASE_NAME, busybox_image_tar, import_image

NAMESPACE = "otelbridge-demo"
BROKEN_TRACEPARENT = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01"  # uppercase


def _print(text: str = "") -> None:
    print(text, flush=True)


def run_demo(
    *,
    containers: int = 6,
    install: bool = False,
    color: bool = False,
    exporter: str | None = None,
    jsonl_path: str | None = None,
) -> int:
    """Runs the demo; returns the exit code. Raises EnvironmentProblem when it cannot run."""
    if os.geteuid() != 0:
        raise EnvironmentProblem(
            "the demo starts a private containerd, which needs root: run it with sudo"
        )
    missing = missing_host_tools()
    if missing and install:
        _print(f"otelbridge demo: installing {', '.join(missing)} with apt ...")
    ensure_host_tools(install=install)
    containers = max(2, containers)
    cache = Path(tempfile.gettempdir()) / "otelbridge-image-cache"
    _print("otelbridge demo: starting a private containerd ...")
    with PrivateContainerd() as cd:
        image = import_image(cd, busybox_image_tar(cache), BUSYBOX_BASE_NAME, NAMESPACE)
        collected = MemoryExporter()
        done = threading.Semaphore(0)

        def on_record(_record: StartupRecord, _spans: list[Span]) -> None:
            done.release()

        config = Config(
            source=SourceConfig(address=cd.address, namespaces=(NAMESPACE,)),
            correlate=CorrelateConfig(startup_timeout_s=60.0),
            state=StateConfig(dir=""),  # a showcase keeps nothing on disk
        )
        bridge = build_live_bridge(
            config,
            exporter=exporter or os.environ.get("OTEL_TRACES_EXPORTER") or "none",
            jsonl_path=jsonl_path,
            extra_exporters=[collected],
            on_record=on_record,
            metrics=False,  # a showcase of traces; nothing to scrape
        )
        bridge.start()
        try:
            if not bridge.pipeline.connected.wait(15):
                raise EnvironmentProblem("the bridge could not subscribe to the private containerd")
            _print(f"  containerd {cd.version()} at {cd.address}, bridge subscribed")
            rollout = TraceContext(os.urandom(16), os.urandom(8), 0x01)
            names, rollout_span = _play_rollout(cd, image, rollout, containers)
            for _ in range(len(names)):
                if not done.acquire(timeout=30):
                    break
            bridge.submit([rollout_span])
        finally:
            bridge.shutdown()
    spans = collected.spans
    _show(spans, rollout, names, color)
    untraced = len(names) - sum(1 for s in spans if s.name == semconv.SPAN_CONTAINER_STARTUP)
    return 0 if untraced == 0 else 1


def _play_rollout(
    cd: PrivateContainerd, image: str, rollout: TraceContext, count: int
) -> tuple[dict[str, str], Span]:
    """Starts the rollout's containers, 3 at a time. Returns container id -> how it is
    traced, and the rollout's provisioning span."""
    traceparent = rollout.to_traceparent()
    plan: list[tuple[str, dict[str, str], dict[str, str], str]] = []
    for i in range(count - 2):
        cid = new_container_id(f"web-{i + 1}")
        plan.append((cid, {"traceparent": traceparent}, {}, "label traceparent"))
    cid = new_container_id("worker")
    plan.append((cid, {}, {"TRACEPARENT": traceparent}, "env TRACEPARENT"))
    cid = new_container_id("broken")
    plan.append((cid, {"traceparent": BROKEN_TRACEPARENT}, {}, "invalid traceparent"))
    _print(f"  rollout {rollout.trace_id_hex}: starting {count} containers, 3 at a time")
    start_ns = time.time_ns()
    with ThreadPoolExecutor(3) as pool:
        futures = [
            pool.submit(
                cd.run,
                image,
                cid,
                "/bin/sh",
                "-c",
                "echo serving; sleep 0.2",
                namespace=NAMESPACE,
                labels=labels,
                env=env,
            )
            for cid, labels, env, _ in plan
        ]
        for future in futures:
            future.result()
    rollout_span = provisioning_span(
        rollout,
        name=semconv.SPAN_ROLLOUT,
        start_ns=start_ns,
        end_ns=time.time_ns(),
        attributes=[(semconv.OB_ROLLOUT_NAME, "demo")],
    )
    return {cid: how for cid, _, _, how in plan}, rollout_span


def _show(spans: list[Span], rollout: TraceContext, names: dict[str, str], color: bool) -> None:
    in_trace = [s for s in spans if s.trace_id == rollout.trace_id]
    _print()
    _print(f"trace {rollout.trace_id_hex}  (the rollout and every container linked to it)")
    _print(render(in_trace, color=color))
    others = [
        s
        for s in spans
        if s.trace_id != rollout.trace_id and s.name == semconv.SPAN_CONTAINER_STARTUP
    ]
    for span in others:
        attrs = {kv.key: kv.value.string_value for kv in span.attributes}
        reason = attrs.get(semconv.OB_TRACEPARENT_INVALID, "no trace context")
        _print()
        _print(
            f"trace {span.trace_id.hex()}  ({attrs.get(semconv.CONTAINER_ID)}: its own trace, "
            f"{semconv.OB_TRACEPARENT_INVALID}={reason})"
        )
        own = [s for s in spans if s.trace_id == span.trace_id]
        _print(render(own, color=color))
    startups = [s for s in spans if s.name == semconv.SPAN_CONTAINER_STARTUP]
    linked = sum(1 for s in startups if s.trace_id == rollout.trace_id)
    _print()
    _print(
        f"{len(startups)}/{len(names)} container startups traced: {linked} in the rollout's "
        f"trace, {len(startups) - linked} on their own; {len(spans)} spans in all."
    )
    _print(
        "Send them to Jaeger or Tempo: OTEL_EXPORTER_OTLP_ENDPOINT=http://HOST:4317 "
        "otelbridge demo --exporter otlp"
    )
    sys.stdout.flush()
