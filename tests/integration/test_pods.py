"""Kubernetes pods through containerd's CRI plugin: one trace per pod, under its rollout.

There is no kubelet here: pods are run by otelbridge.testing.cri, speaking the CRI API
to the private containerd as a kubelet would (host network, the kubelet's labels).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from otelbridge.app import Bridge, build_live_bridge
from otelbridge.core import semconv
from otelbridge.core.config import Config, CorrelateConfig, SourceConfig, StateConfig
from otelbridge.testing.containerd import PrivateContainerd
from otelbridge.testing.cri import CRI_NAMESPACE, ContainerSpec, CriClient, import_cri_images
from otelbridge.testing.otlp import OtlpReceiver, ReceivedSpan

pytestmark = pytest.mark.containerd

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
PHASES = {
    semconv.SPAN_CONTAINER_CREATE,
    semconv.SPAN_SHIM_LAUNCH,
    semconv.SPAN_TASK_START,
    semconv.SPAN_READINESS_WAIT,
}


@pytest.fixture(scope="module")
def busybox(containerd: PrivateContainerd, image_tar: Path) -> str:
    return import_cri_images(containerd, image_tar.parent)


@pytest.fixture
def bridge(
    containerd: PrivateContainerd, receiver: OtlpReceiver, tmp_path: Path
) -> Iterator[Bridge]:
    config = Config(
        source=SourceConfig(address=containerd.address, namespaces=(CRI_NAMESPACE,)),
        correlate=CorrelateConfig(pod_settle_s=1.0),
        state=StateConfig(dir=str(tmp_path / "state")),
    )
    b = build_live_bridge(
        config,
        environ={
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        },
    )
    b.start()
    assert b.pipeline.connected.wait(10)
    yield b
    b.shutdown()


def of_pod(spans: list[ReceivedSpan], uid: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.attributes.get(semconv.K8S_POD_UID) == uid]


def test_a_pod_is_one_trace_under_the_rollout_named_by_its_annotation(
    bridge: Bridge, containerd: PrivateContainerd, receiver: OtlpReceiver, busybox: str
) -> None:
    uid = str(uuid.uuid4())
    name = f"web-{uid[:6]}"
    with CriClient(containerd.address) as cri:
        pod = cri.run_pod(
            name,
            "shop",
            uid,
            annotations={"tracing.k8s.io/traceparent": TRACEPARENT},
            containers=[
                ContainerSpec("app", busybox, command=("/bin/sh", "-c", "sleep 30")),
                ContainerSpec("sidecar", busybox, command=("/bin/sh", "-c", "sleep 30")),
            ],
        )
        try:
            # 1 pod.startup + 3 container.startup (sandbox, app, sidecar) + 12 phases
            spans = receiver.wait_for_spans(
                lambda s: s.attributes.get(semconv.K8S_POD_UID) == uid, count=4, timeout_s=30
            )
            spans = receiver.wait_for_spans(
                lambda s: (
                    s.attributes.get(semconv.K8S_POD_UID) == uid
                    or s.attributes.get(semconv.CONTAINER_ID)
                    in (pod.sandbox_id, *pod.container_ids)
                ),
                count=16,
                timeout_s=30,
            )
        finally:
            cri.remove_pod(pod.sandbox_id)

    assert {s.span.trace_id.hex() for s in spans} == {TRACE_ID}
    [pod_span] = [s for s in spans if s.name == semconv.SPAN_POD_STARTUP]
    assert pod_span.span.parent_span_id.hex() == PARENT_ID
    assert pod_span.attributes[semconv.K8S_POD_NAME] == name
    assert pod_span.attributes[semconv.K8S_NAMESPACE_NAME] == "shop"
    assert pod_span.attributes[semconv.OB_POD_CONTAINERS] == 2
    assert pod_span.attributes[semconv.OB_STARTUP_OUTCOME] == "ready"
    assert pod_span.attributes[semconv.OB_TRACE_CONTEXT_SOURCE] == (
        "pod_annotation:tracing.k8s.io/traceparent"
    )

    startups = [s for s in of_pod(spans, uid) if s.name == semconv.SPAN_CONTAINER_STARTUP]
    assert len(startups) == 3
    assert {s.span.parent_span_id for s in startups} == {pod_span.span.span_id}
    kinds = sorted(s.attributes[semconv.OB_CONTAINER_KIND] for s in startups)
    assert kinds == ["container", "container", "sandbox"]
    apps = {
        s.attributes[semconv.K8S_CONTAINER_NAME]: s
        for s in startups
        if semconv.K8S_CONTAINER_NAME in s.attributes
    }
    assert set(apps) == {"app", "sidecar"}
    for s in startups:
        assert s.attributes[semconv.K8S_POD_NAME] == name
        assert s.attributes[semconv.CONTAINERD_NAMESPACE] == CRI_NAMESPACE
        children = [c for c in spans if c.span.parent_span_id == s.span.span_id]
        assert {c.name for c in children} == PHASES
    sandbox = next(s for s in startups if s.attributes[semconv.OB_CONTAINER_KIND] == "sandbox")
    # the pod's startup: the sandbox's first event to its last container ready
    assert pod_span.span.start_time_unix_nano == sandbox.span.start_time_unix_nano
    assert pod_span.span.end_time_unix_nano == max(a.span.end_time_unix_nano for a in apps.values())


def test_a_restarted_container_is_a_new_startup_in_its_pods_trace(
    bridge: Bridge, containerd: PrivateContainerd, receiver: OtlpReceiver, busybox: str
) -> None:
    uid = str(uuid.uuid4())
    app = ContainerSpec("app", busybox, command=("/bin/sh", "-c", "sleep 30"))
    with CriClient(containerd.address) as cri:
        pod = cri.run_pod(f"rs-{uid[:6]}", "shop", uid, containers=[app])
        try:
            receiver.wait_for_spans(
                lambda s: (
                    s.name == semconv.SPAN_POD_STARTUP
                    and s.attributes.get(semconv.K8S_POD_UID) == uid
                ),
                timeout_s=30,
            )
            # the kubelet restarts a crashed container as the next attempt, a new container
            cri.stop_container(pod.container_ids[0])
            again = cri.add_container(pod, ContainerSpec(app.name, busybox, app.command, attempt=1))
            [restarted] = receiver.wait_for_spans(
                lambda s: (
                    s.name == semconv.SPAN_CONTAINER_STARTUP
                    and s.attributes.get(semconv.CONTAINER_ID) == again
                ),
                timeout_s=30,
            )
        finally:
            cri.remove_pod(pod.sandbox_id)
    [pod_span] = [
        s
        for s in receiver.spans()
        if s.name == semconv.SPAN_POD_STARTUP and s.attributes.get(semconv.K8S_POD_UID) == uid
    ]
    assert restarted.attributes[semconv.K8S_CONTAINER_RESTART_COUNT] == 1
    assert restarted.attributes[semconv.K8S_CONTAINER_NAME] == "app"
    assert restarted.span.parent_span_id == pod_span.span.span_id
    assert restarted.span.trace_id == pod_span.span.trace_id
    # a pod without a provisioning context is a trace of its own
    assert pod_span.span.parent_span_id == b""
    assert semconv.OB_TRACE_CONTEXT_SOURCE not in pod_span.attributes


def test_a_bridge_started_after_the_sandbox_still_links_the_pod(
    containerd: PrivateContainerd, receiver: OtlpReceiver, busybox: str, tmp_path: Path
) -> None:
    uid = str(uuid.uuid4())
    with CriClient(containerd.address) as cri:
        pod = cri.run_pod(
            f"late-{uid[:6]}", "shop", uid, annotations={"tracing.k8s.io/traceparent": TRACEPARENT}
        )
        config = Config(
            source=SourceConfig(
                address=containerd.address, namespaces=(CRI_NAMESPACE,), initial_lookback_s=0
            ),
            correlate=CorrelateConfig(pod_settle_s=1.0),
            state=StateConfig(dir=str(tmp_path / "state")),
        )
        bridge = build_live_bridge(
            config,
            environ={
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                "OTEL_BSP_SCHEDULE_DELAY": "100",
            },
        )
        bridge.start()
        try:
            assert bridge.pipeline.connected.wait(10)
            app = cri.add_container(
                pod, ContainerSpec("app", busybox, command=("/bin/sh", "-c", "sleep 30"))
            )
            spans = receiver.wait_for_spans(
                lambda s: s.attributes.get(semconv.K8S_POD_UID) == uid, count=2, timeout_s=30
            )
        finally:
            bridge.shutdown()
            cri.remove_pod(pod.sandbox_id)
    [pod_span] = [s for s in spans if s.name == semconv.SPAN_POD_STARTUP]
    [startup] = [s for s in spans if s.attributes.get(semconv.CONTAINER_ID) == app]
    assert pod_span.span.trace_id.hex() == TRACE_ID  # read from the sandbox's record
    assert pod_span.attributes[semconv.OB_PARTIAL] is True  # its sandbox's events were missed
    assert startup.span.parent_span_id == pod_span.span.span_id
    assert startup.attributes[semconv.OB_PARTIAL] is False
