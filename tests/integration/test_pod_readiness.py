"""A real CRI pod whose readiness comes from the Kubernetes API (kubernetes source).

containerd runs the pod for real (otelbridge.testing.cri, no kubelet); the Kubernetes
API is a stand-in (otelbridge.testing.kubeapi), because no API server can run on these
machines: the test plays the kubelet's part and marks the container ready in the pod's
status at a moment it measures.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from otelbridge.app import build_live_bridge
from otelbridge.core import semconv
from otelbridge.core.config import (
    Config,
    CorrelateConfig,
    EnrichConfig,
    ReadinessConfig,
    SourceConfig,
    StateConfig,
)
from otelbridge.readiness import SOURCE_KUBERNETES
from otelbridge.testing import kubeapi
from otelbridge.testing.containerd import PrivateContainerd
from otelbridge.testing.cri import CRI_NAMESPACE, ContainerSpec, CriClient, import_cri_images
from otelbridge.testing.otlp import OtlpReceiver

pytestmark = pytest.mark.containerd


@pytest.fixture(scope="module")
def busybox(containerd: PrivateContainerd, image_tar: Path) -> str:
    return import_cri_images(containerd, image_tar.parent)


def test_readiness_wait_ends_when_the_kubelet_marks_the_container_ready(
    containerd: PrivateContainerd, receiver: OtlpReceiver, busybox: str, tmp_path: Path
) -> None:
    with kubeapi.FakeKubeAPI() as api:
        config = Config(
            source=SourceConfig(address=containerd.address, namespaces=(CRI_NAMESPACE,)),
            correlate=CorrelateConfig(pod_settle_s=1.0),
            enrich=EnrichConfig(node_name="node-a"),
            readiness=ReadinessConfig(
                kubernetes=True,
                kubeconfig=str(api.write_kubeconfig(tmp_path / "kubeconfig")),
                probe=False,
            ),
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
        uid = str(uuid.uuid4())
        name = f"kr-{uid[:6]}"
        try:
            assert bridge.pipeline.connected.wait(10)
            assert api.wait_watching(timeout_s=10)
            with CriClient(containerd.address) as cri:
                pod = cri.run_pod(
                    name,
                    "shop",
                    uid,
                    containers=[ContainerSpec("app", busybox, command=("/bin/sleep", "30"))],
                )
                try:
                    [app_id] = pod.container_ids
                    obj = kubeapi.make_pod(
                        name,
                        namespace="shop",
                        uid=uid,
                        node_name="node-a",
                        containers=[kubeapi.ContainerSpec("app", container_id=app_id)],
                    )
                    api.put_pod(obj)  # running, not ready yet
                    time.sleep(0.8)  # the app "warms up"
                    marked_at = time.time_ns()
                    rv = api.put_pod(kubeapi.set_container(obj, "app", ready=True))
                    assert api.wait_delivered(rv)
                    [startup] = receiver.wait_for_spans(
                        lambda s: (
                            s.name == semconv.SPAN_CONTAINER_STARTUP
                            and s.attributes.get(semconv.CONTAINER_ID) == app_id
                        ),
                        timeout_s=30,
                    )
                    spans = receiver.wait_for_spans(
                        lambda s: s.span.trace_id == startup.span.trace_id, count=11, timeout_s=30
                    )
                finally:
                    cri.remove_pod(pod.sandbox_id)
        finally:
            bridge.shutdown()

    assert startup.attributes[semconv.OB_READINESS_SOURCE] == SOURCE_KUBERNETES
    assert startup.resource_attributes[semconv.K8S_NODE_NAME] == "node-a"
    [wait] = [
        s
        for s in spans
        if s.name == semconv.SPAN_READINESS_WAIT and s.span.parent_span_id == startup.span.span_id
    ]
    error_ms = (wait.span.end_time_unix_nano - marked_at) / 1e6
    print(f"\nreadiness.wait ends {error_ms:+.1f} ms from the kubelet's (stand-in's) verdict")
    assert 0 <= error_ms < 100
    assert (wait.span.end_time_unix_nano - wait.span.start_time_unix_nano) / 1e9 > 0.5
    [pod_span] = [s for s in spans if s.name == semconv.SPAN_POD_STARTUP]
    assert pod_span.span.end_time_unix_nano == startup.span.end_time_unix_nano
