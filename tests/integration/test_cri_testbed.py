"""The CRI test client (``otelbridge.testing.cri``) against the session's private containerd.

Pods are run through containerd's CRI plugin as a kubelet would run a host-network pod
(there is no kubelet on these machines). The assertions pin what the pod feature relies
on: what CRI records on the containerd containers of namespace ``k8s.io``, and that a
pod leaves nothing behind once removed.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from otelbridge.testing.containerd import PrivateContainerd
from otelbridge.testing.cri import (
    ANNOTATION_RESTART_COUNT,
    CRI_NAMESPACE,
    LABEL_CONTAINER_NAME,
    LABEL_POD_NAME,
    LABEL_POD_NAMESPACE,
    LABEL_POD_UID,
    ContainerSpec,
    CriClient,
    CriError,
    Pod,
    import_cri_images,
)
from otelbridge.testing.image import PAUSE_IMAGE

pytestmark = pytest.mark.containerd

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
POD_ANNOTATIONS = {"tracing.k8s.io/traceparent": TRACEPARENT, "team": "checkout"}
SLEEP = ("/bin/sh", "-c", "sleep 30")

KIND_LABEL = "io.cri-containerd.kind"
SANDBOX_EXTENSION = "io.cri-containerd.sandbox.metadata"
CONTAINER_EXTENSION = "io.cri-containerd.container.metadata"


@pytest.fixture(scope="module")
def busybox(containerd: PrivateContainerd, image_tar: Path) -> str:
    """The busybox reference in ``k8s.io``, with the pause (sandbox) image next to it."""
    # the session's image cache already holds the busybox tar: only pause is built
    return import_cri_images(containerd, image_tar.parent)


@pytest.fixture(scope="module")
def cri_works(containerd: PrivateContainerd, busybox: str) -> None:
    """Fails every test with the cause when the testbed cannot run a sandbox at all."""
    with CriClient(containerd.address, timeout_s=20) as client:
        try:
            pod = client.run_pod("probe")
        except CriError as exc:
            if "Runtime.Name must be set" in exc.detail:
                pytest.fail(
                    "CRI's runtime 'runc' has no runtime_type in PrivateContainerd's config: "
                    "its [...cri.containerd.runtimes.runc.options] table replaces containerd's "
                    'default runc entry, so it needs runtime_type = "io.containerd.runc.v2" '
                    f"under [...cri.containerd.runtimes.runc] ({exc})"
                )
            raise
        client.remove_pod(pod.sandbox_id)


@pytest.fixture
def cri(containerd: PrivateContainerd, cri_works: None) -> Iterator[CriClient]:
    with CriClient(containerd.address, timeout_s=20) as client:
        yield client


def _run_web_pod(cri: CriClient, image: str, name: str = "web") -> Pod:
    return cri.run_pod(
        name,
        "shop",
        labels={"app": name},
        annotations=POD_ANNOTATIONS,
        containers=[
            ContainerSpec("app", image, command=SLEEP, env={"MODE": "app"}),
            ContainerSpec("sidecar", image, command=SLEEP, labels={"role": "proxy"}),
        ],
    )


def _extension_json(info: dict[str, object], key: str) -> dict[str, object]:
    """An extension of ``ctr containers info`` output: an Any with base64 JSON inside."""
    extensions = info["Extensions"]
    assert isinstance(extensions, dict)
    value: dict[str, object] = json.loads(base64.b64decode(extensions[key]["value"]))
    return value


def _k8s_ids(cd: PrivateContainerd) -> set[str]:
    """Ids of every containerd container and task in ``k8s.io``."""
    containers = cd.ctr("containers", "ls", "-q", namespace=CRI_NAMESPACE).stdout.split()
    return set(containers) | set(cd.tasks(CRI_NAMESPACE))


def _mounts_naming(ids: set[str]) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if any(i in line for i in ids)]


def _assert_pod_gone(cd: PrivateContainerd, cri: CriClient, pod: Pod) -> None:
    ids = {pod.sandbox_id, *pod.container_ids}
    assert not ids & _k8s_ids(cd)
    assert cri.list_pod_sandboxes({LABEL_POD_UID: pod.uid}) == []
    assert cri.list_containers(label_selector={LABEL_POD_UID: pod.uid}) == []
    assert _mounts_naming(ids) == []


def test_images_are_visible_to_cri(containerd: PrivateContainerd, busybox: str) -> None:
    with CriClient(containerd.address) as cri:
        tags = {tag for image in cri.list_images() for tag in image.repo_tags}
        assert {busybox, PAUSE_IMAGE} <= tags
        assert cri.version().runtime_api_version == "v1"


def test_pod_with_two_containers_as_containerd_records_it(
    containerd: PrivateContainerd, cri: CriClient, busybox: str
) -> None:
    pod = _run_web_pod(cri, busybox)
    try:
        assert len(pod.container_ids) == 2
        assert {c.id for c in cri.list_containers(sandbox_id=pod.sandbox_id)} == set(
            pod.container_ids
        )
        tasks = containerd.tasks(CRI_NAMESPACE)
        for container_id in (pod.sandbox_id, *pod.container_ids):
            assert tasks[container_id][1] == "RUNNING"

        pod_labels = {
            LABEL_POD_NAME: "web",
            LABEL_POD_NAMESPACE: "shop",
            LABEL_POD_UID: pod.uid,
        }
        sandbox = containerd.container_info(pod.sandbox_id, CRI_NAMESPACE)
        assert sandbox["Labels"] == {**pod_labels, "app": "web", KIND_LABEL: "sandbox"}
        assert sandbox["SnapshotKey"] == pod.sandbox_id
        spec = sandbox["Spec"]
        assert isinstance(spec, dict)
        assert spec["annotations"]["io.kubernetes.cri.container-type"] == "sandbox"
        assert spec["annotations"]["io.kubernetes.cri.sandbox-uid"] == pod.uid
        # pod annotations are not copied into OCI annotations by default (no
        # pod_annotations globs on the runtime handler): the extension has them all
        assert "tracing.k8s.io/traceparent" not in spec["annotations"]
        metadata = _extension_json(sandbox, SANDBOX_EXTENSION)["Metadata"]
        assert isinstance(metadata, dict)
        assert metadata["Config"]["annotations"] == POD_ANNOTATIONS

        for name, container_id in zip(pod.container_names, pod.container_ids, strict=True):
            info = containerd.container_info(container_id, CRI_NAMESPACE)
            labels = info["Labels"]
            assert isinstance(labels, dict)
            assert labels[KIND_LABEL] == "container"
            assert labels[LABEL_CONTAINER_NAME] == name
            assert pod_labels.items() <= labels.items()
            assert info["SnapshotKey"] == container_id
            spec = info["Spec"]
            assert isinstance(spec, dict)
            assert spec["annotations"]["io.kubernetes.cri.container-name"] == name
            assert spec["annotations"]["io.kubernetes.cri.sandbox-id"] == pod.sandbox_id
            assert spec["annotations"]["io.kubernetes.cri.image-name"] == busybox
            metadata = _extension_json(info, CONTAINER_EXTENSION)["Metadata"]
            assert isinstance(metadata, dict)
            assert metadata["SandboxID"] == pod.sandbox_id
            assert metadata["Config"]["annotations"][ANNOTATION_RESTART_COUNT] == "0"
        assert (
            containerd.container_info(pod.container_id("sidecar"), CRI_NAMESPACE)["Labels"]["role"]
            == "proxy"
        )
    finally:
        cri.remove_pod(pod.sandbox_id)
    _assert_pod_gone(containerd, cri, pod)
    cri.remove_pod(pod.sandbox_id)  # idempotent


def test_a_second_pod_right_after_runs_and_leaves_nothing(
    containerd: PrivateContainerd, cri: CriClient, busybox: str
) -> None:
    before = _k8s_ids(containerd)
    first = _run_web_pod(cri, busybox, "first")
    cri.remove_pod(first.sandbox_id)
    second = _run_web_pod(cri, busybox, "second")
    try:
        assert second.sandbox_id != first.sandbox_id
        running = {c.id for c in cri.list_containers(sandbox_id=second.sandbox_id)}
        assert running == set(second.container_ids)
    finally:
        cri.remove_pod(second.sandbox_id)
    _assert_pod_gone(containerd, cri, first)
    _assert_pod_gone(containerd, cri, second)
    assert _k8s_ids(containerd) == before


def test_a_restart_is_a_new_container_with_the_next_attempt(
    containerd: PrivateContainerd, cri: CriClient, busybox: str
) -> None:
    pod = cri.run_pod("restarts", containers=[ContainerSpec("app", busybox, command=SLEEP)])
    try:
        cri.stop_container(pod.container_id("app"))
        again = cri.add_container(pod, ContainerSpec("app", busybox, command=SLEEP, attempt=1))
        assert again not in pod.container_ids
        info = containerd.container_info(again, CRI_NAMESPACE)
        metadata = _extension_json(info, CONTAINER_EXTENSION)["Metadata"]
        assert isinstance(metadata, dict)
        assert metadata["Config"]["metadata"] == {"name": "app", "attempt": 1}
        states = {c.id: c.metadata.attempt for c in cri.list_containers(sandbox_id=pod.sandbox_id)}
        assert states == {pod.container_id("app"): 0, again: 1}
    finally:
        cri.remove_pod(pod.sandbox_id)
    _assert_pod_gone(containerd, cri, pod)


def test_a_failed_run_pod_removes_its_sandbox(
    containerd: PrivateContainerd, cri: CriClient, busybox: str
) -> None:
    before = _k8s_ids(containerd)
    with pytest.raises(CriError) as caught:
        cri.run_pod(
            "broken",
            uid="broken-uid",
            containers=[
                ContainerSpec("ok", busybox, command=SLEEP),
                ContainerSpec("missing", "localhost/otelbridge-no-such-image:latest"),
            ],
        )
    assert caught.value.code == "NOT_FOUND"
    assert caught.value.method == "/runtime.v1.RuntimeService/CreateContainer"
    assert cri.list_pod_sandboxes({LABEL_POD_UID: "broken-uid"}) == []
    assert _k8s_ids(containerd) == before
