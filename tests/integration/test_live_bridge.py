"""The bridge attached to a real containerd, exporting to a real OTLP/gRPC receiver.

Span times are checked against an independent record of the envelopes: ``ctr events``
subscribed to the same containerd.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from otelbridge.app import Bridge, build_live_bridge
from otelbridge.core import semconv
from otelbridge.core.config import Config, CorrelateConfig, SourceConfig, StateConfig
from otelbridge.core.model import LifecycleEvent
from otelbridge.decode import decode
from otelbridge.source.recording import parse_ctr_line
from otelbridge.testing.otlp import OtlpReceiver, ReceivedSpan
from tests.conftest import CtrEvents, Namespace
from tests.integration.processes import final_counters, start, stop, wait_for_line

pytestmark = pytest.mark.containerd

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
PHASES = {
    semconv.SPAN_CONTAINER_CREATE,
    semconv.SPAN_SHIM_LAUNCH,
    semconv.SPAN_TASK_START,
    semconv.SPAN_READINESS_WAIT,
}


def start_bridge(
    namespace: Namespace, receiver: OtlpReceiver, state_dir: Path, **source: object
) -> Bridge:
    config = Config(
        state=StateConfig(dir=str(state_dir)),
        source=SourceConfig(address=namespace.cd.address, namespaces=(namespace.name,), **source),  # type: ignore[arg-type]
        correlate=CorrelateConfig(reconcile_grace_s=0.5),
    )
    environ = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    bridge = build_live_bridge(config, environ=environ)
    bridge.start()
    assert bridge.pipeline.connected.wait(10), "bridge did not subscribe"
    return bridge


@pytest.fixture
def bridge(namespace: Namespace, receiver: OtlpReceiver, tmp_path: Path) -> Iterator[Bridge]:
    b = start_bridge(namespace, receiver, tmp_path / "state")
    yield b
    b.shutdown()


def by_container(spans: list[ReceivedSpan]) -> dict[str, list[ReceivedSpan]]:
    out: dict[str, list[ReceivedSpan]] = defaultdict(list)
    for s in spans:
        out[s.attributes[semconv.CONTAINER_ID]].append(s)
    return out


def envelope_times(lines: list[str], ns: str) -> dict[tuple[str, str], int]:
    """(container id, topic) -> envelope timestamp, from `ctr events` output."""
    out = {}
    for line in lines:
        env = parse_ctr_line(line)
        if env.namespace != ns:
            continue
        event = decode(env)
        if isinstance(event, LifecycleEvent):
            out[(event.subject, env.topic)] = env.timestamp_ns
    return out


def test_twenty_containers_give_twenty_linked_startup_traces(
    namespace: Namespace, receiver: OtlpReceiver, ctr_events: CtrEvents, tmp_path: Path
) -> None:
    """`otelbridge run` attached while 20 containers start through `ctr run`."""
    daemon = start(
        [
            "run",
            "-v",
            "--address",
            namespace.cd.address,
            "--namespace",
            namespace.name,
            "--state-dir",
            str(tmp_path / "state"),
            "--http-addr",
            "127.0.0.1:0",
        ],
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"},
    )
    try:
        wait_for_line(daemon, "subscribed to containerd")
        spans, plan = run_twenty(namespace, receiver)
    finally:
        code, _, err = stop(daemon)
    assert code == 0, err
    counters = final_counters(err)
    assert counters["otelbridge.traceparent.invalid"] == 4
    assert "otelbridge.events.malformed" not in counters
    assert "otelbridge.spans.dropped" not in counters
    check_twenty(spans, plan, ctr_events, namespace)


def run_twenty(
    namespace: Namespace, receiver: OtlpReceiver
) -> tuple[list[ReceivedSpan], dict[str, dict[str, object]]]:
    plan: dict[str, dict[str, object]] = {}
    for i in range(8):
        plan[f"label-{i}-{uuid.uuid4().hex[:6]}"] = {"labels": {"traceparent": TRACEPARENT}}
    for i in range(5):
        plan[f"env-{i}-{uuid.uuid4().hex[:6]}"] = {"env": {"TRACEPARENT": TRACEPARENT}}
    for i in range(4):
        bad = f"00-{TRACE_ID.upper()}-{PARENT_ID}-01"  # uppercase hex is invalid
        plan[f"bad-{i}-{uuid.uuid4().hex[:6]}"] = {"labels": {"traceparent": bad}}
    for i in range(3):
        plan[f"plain-{i}-{uuid.uuid4().hex[:6]}"] = {}

    with ThreadPoolExecutor(4) as pool:
        for f in [pool.submit(namespace.run, cid, "/bin/true", **kw) for cid, kw in plan.items()]:
            f.result()

    spans = receiver.wait_for_spans(
        lambda s: (
            s.name != semconv.SPAN_SNAPSHOT_RECLAIM
            and s.attributes.get(semconv.CONTAINER_ID) in plan
        ),
        count=100,
        timeout_s=30,
    )
    return spans, plan


def check_twenty(
    spans: list[ReceivedSpan],
    plan: dict[str, dict[str, object]],
    ctr_events: CtrEvents,
    namespace: Namespace,
) -> None:
    containers = by_container(spans)
    assert set(containers) == set(plan)
    times = envelope_times(ctr_events.lines, namespace.name)

    for cid, cspans in containers.items():
        roots = [s for s in cspans if s.name == semconv.SPAN_CONTAINER_STARTUP]
        assert len(roots) == 1, cid
        root = roots[0]
        children = [s for s in cspans if s is not root]
        assert {c.name for c in children} == PHASES
        assert all(c.span.parent_span_id == root.span.span_id for c in children)
        assert all(c.span.trace_id == root.span.trace_id for c in children)
        assert root.resource_attributes[semconv.SERVICE_NAME] == "containerd"
        assert root.attributes[semconv.OB_PARTIAL] is False
        assert root.attributes[semconv.OB_STARTUP_OUTCOME] == "ready"
        assert root.attributes[semconv.CONTAINER_IMAGE_NAME] == "localhost/otelbridge-busybox"
        assert root.attributes[semconv.PROCESS_PID] > 0

        # every boundary is the envelope time, to the nanosecond
        phase = {c.name: c.span for c in children}
        assert root.span.start_time_unix_nano == times[(cid, "/snapshot/prepare")]
        assert root.span.end_time_unix_nano == times[(cid, "/tasks/start")]
        assert phase["container.create"].end_time_unix_nano == times[(cid, "/containers/create")]
        assert phase["shim.launch"].start_time_unix_nano == times[(cid, "/containers/create")]
        assert phase["shim.launch"].end_time_unix_nano == times[(cid, "/tasks/create")]
        assert phase["task.start"].end_time_unix_nano == times[(cid, "/tasks/start")]

        if cid.startswith(("label-", "env-")):
            assert root.span.trace_id.hex() == TRACE_ID
            assert root.span.parent_span_id.hex() == PARENT_ID
            source = "label:traceparent" if cid.startswith("label-") else "env:TRACEPARENT"
            assert root.attributes[semconv.OB_TRACE_CONTEXT_SOURCE] == source
        else:
            assert root.span.trace_id.hex() != TRACE_ID
            assert root.span.parent_span_id == b""
        if cid.startswith("bad-"):
            assert root.attributes[semconv.OB_TRACEPARENT_INVALID] == "trace_id_format"
    assert len(spans) == 100


def test_containers_started_while_disconnected_are_reported_as_partial(
    namespace: Namespace, receiver: OtlpReceiver, tmp_path: Path
) -> None:
    # a slow reconnect leaves a window in which containerd runs but nobody listens
    bridge = start_bridge(
        namespace, receiver, tmp_path / "state", reconnect_initial_s=3.0, reconnect_max_s=3.0
    )
    try:
        before = f"before-{uuid.uuid4().hex[:6]}"
        namespace.run(before, "/bin/true")
        receiver.wait_for_spans(lambda s: s.attributes.get(semconv.CONTAINER_ID) == before)

        namespace.cd.kill()
        namespace.cd.restart()
        gap = [f"gap-{i}-{uuid.uuid4().hex[:6]}" for i in range(3)]
        for cid in gap:
            namespace.run(cid, "/bin/sleep", "30", detach=True)

        partial = receiver.wait_for_spans(
            lambda s: s.attributes.get(semconv.CONTAINER_ID) in gap, count=3, timeout_s=30
        )
        for s in partial:
            assert s.name == semconv.SPAN_CONTAINER_STARTUP
            assert s.attributes[semconv.OB_PARTIAL] is True
            assert s.attributes[semconv.OB_STARTUP_OUTCOME] == "reconciled"
        assert bridge.counters.get(semconv.SOURCE_RECONNECTS) >= 1
        assert bridge.counters.get(semconv.STARTUPS_RECONCILED) == 3

        after = f"after-{uuid.uuid4().hex[:6]}"
        namespace.run(after, "/bin/true")
        spans = receiver.wait_for_spans(
            lambda s: s.attributes.get(semconv.CONTAINER_ID) == after, count=5, timeout_s=15
        )
        root = next(s for s in spans if s.name == semconv.SPAN_CONTAINER_STARTUP)
        assert root.attributes[semconv.OB_PARTIAL] is False
    finally:
        bridge.shutdown()
        for cid in gap:
            namespace.cd.ctr(
                "tasks", "kill", "-s", "SIGKILL", cid, namespace=namespace.name, check=False
            )


def test_a_container_that_exits_at_once_is_traced_even_if_its_record_is_gone(
    bridge: Bridge, namespace: Namespace, receiver: OtlpReceiver
) -> None:
    cid = f"short-{uuid.uuid4().hex[:6]}"
    namespace.run(cid, "/bin/sh", "-c", "exit 3", check=False)
    spans = receiver.wait_for_spans(
        lambda s: (
            s.name != semconv.SPAN_SNAPSHOT_RECLAIM
            and s.attributes.get(semconv.CONTAINER_ID) == cid
        ),
        count=5,
        timeout_s=15,
    )
    root = next(s for s in spans if s.name == semconv.SPAN_CONTAINER_STARTUP)
    assert root.attributes[semconv.OB_STARTUP_OUTCOME] == "ready"
    # the record lookup may have raced the delete: either way exactly one startup
    assert len([s for s in spans if s.name == semconv.SPAN_CONTAINER_STARTUP]) == 1
