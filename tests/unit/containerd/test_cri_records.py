"""CRI (Kubernetes) facts of containerd records: OCI annotations and Go-JSON extensions.

The records below are shaped like those containerd 1.6's CRI plugin stores for a pod
``shop/web`` (docs/kubernetes.md): a sandbox ("pause") record whose extension
``io.cri-containerd.sandbox.metadata`` holds the pod's annotations, and app container
records whose extension ``io.cri-containerd.container.metadata`` holds the attempt. The
builders are used by tests/unit/test_pods.py and tests/unit/test_pipeline_pods.py too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
from google.protobuf.any_pb2 import Any as AnyMsg

from otelbridge.containerd._gen import otelbridge_api_pb2 as api
from otelbridge.containerd.records import (
    EXT_CONTAINER,
    EXT_SANDBOX,
    container_info,
    cri_info,
    spec_fields,
)
from otelbridge.core.model import CriInfo

NS = "k8s.io"
SANDBOX_ID = "3f1b9c5a7e2d4c8b9a0f1e2d3c4b5a6978695a4b3c2d1e0f9a8b7c6d5e4f3a2b"
APP_ID = "a1c2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2"
SIDECAR_ID = "b2d3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e3"
POD_NAME = "web"
POD_NAMESPACE = "shop"
POD_UID = "7c35e8a2-4d1f-4b6e-9a3c-2f8d7e6b5a41"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
PAUSE_IMAGE = "registry.k8s.io/pause:3.6"
APP_IMAGE = "docker.io/library/nginx:1.27"
T0 = 1_764_330_123_171_353_122
SANDBOX_TYPE_URL = "github.com/containerd/cri/pkg/store/sandbox/Metadata"
CONTAINER_TYPE_URL = "github.com/containerd/cri/pkg/store/container/Metadata"
SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
POD_ANNOTATIONS = {
    "other": "x",
    "kubernetes.io/config.seen": "2025-11-28T11:42:03.121070840Z",
    "kubernetes.io/config.source": "api",
    "tracing.k8s.io/traceparent": TRACEPARENT,
}


def go_json(obj: object) -> bytes:
    """Bytes as Go's encoding/json writes them (no spaces, no HTML escaping here)."""
    return json.dumps(obj, separators=(",", ":")).encode()


def _set_created(c: Any, created_at_ns: int) -> None:
    c.created_at.seconds, c.created_at.nanos = divmod(created_at_ns, 1_000_000_000)
    c.updated_at.seconds, c.updated_at.nanos = divmod(created_at_ns, 1_000_000_000)


def _spec(annotations: Mapping[str, Any], env: list[str], args: list[str]) -> AnyMsg:
    spec = {
        "ociVersion": "1.0.2-dev",
        "process": {
            "user": {"uid": 65535, "gid": 65535},
            "args": args,
            "env": env,
            "cwd": "/",
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "annotations": dict(annotations),
        "linux": {"cgroupsPath": f"/kubepods/besteffort/pod{POD_UID}/x"},
    }
    return AnyMsg(type_url=SPEC_TYPE_URL, value=go_json(spec))


def sandbox_metadata(
    sandbox_id: str = SANDBOX_ID,
    *,
    annotations: Mapping[str, Any] | None = None,
    labels: Mapping[str, str] | None = None,
) -> bytes:
    """The Go-JSON value of ``io.cri-containerd.sandbox.metadata``."""
    return go_json(
        {
            "Version": "v1",
            "Metadata": {
                "ID": sandbox_id,
                "Name": f"{POD_NAME}_{POD_NAMESPACE}_{POD_UID}_0",
                "Config": {
                    "metadata": {"name": POD_NAME, "uid": POD_UID, "namespace": POD_NAMESPACE},
                    "hostname": POD_NAME,
                    "log_directory": f"/var/log/pods/{POD_NAMESPACE}_{POD_NAME}_{POD_UID}",
                    "labels": dict(labels or {"app": "web"}),
                    "annotations": dict(POD_ANNOTATIONS if annotations is None else annotations),
                    "linux": {"security_context": {"namespace_options": {"network": 2}}},
                },
                "NetNSPath": "",
                "IP": "",
                "AdditionalIPs": None,
                "RuntimeHandler": "",
                "CNIResult": None,
            },
        }
    )


def container_metadata(
    container_id: str = APP_ID,
    name: str = "app",
    *,
    attempt: int | None = None,
    sandbox_id: str = SANDBOX_ID,
    annotations: Mapping[str, Any] | None = None,
) -> bytes:
    """The Go-JSON value of ``io.cri-containerd.container.metadata``; Go's omitempty
    leaves ``attempt`` out when it is 0 (``attempt=None`` here)."""
    meta: dict[str, Any] = {"name": name}
    if attempt is not None:
        meta["attempt"] = attempt
    own = {"ca": name, "io.kubernetes.container.restartCount": str(attempt or 0)}
    return go_json(
        {
            "Version": "v1",
            "Metadata": {
                "ID": container_id,
                "Name": f"{name}_{POD_NAME}_{POD_NAMESPACE}_{POD_UID}_{attempt or 0}",
                "SandboxID": sandbox_id,
                "Config": {
                    "metadata": meta,
                    "image": {"image": APP_IMAGE},
                    "labels": {"io.kubernetes.container.name": name},
                    "annotations": dict(own if annotations is None else annotations),
                    "log_path": f"{name}/{attempt or 0}.log",
                },
                "ImageRef": "sha256:" + "e" * 64,
                "LogPath": f"/var/log/pods/{POD_NAMESPACE}_{POD_NAME}_{POD_UID}/{name}/0.log",
                "StopSignal": "",
            },
        }
    )


def pod_labels(kind: str, container: str = "") -> dict[str, str]:
    labels = {
        "io.cri-containerd.kind": kind,
        "io.kubernetes.pod.name": POD_NAME,
        "io.kubernetes.pod.namespace": POD_NAMESPACE,
        "io.kubernetes.pod.uid": POD_UID,
    }
    if kind == "sandbox":
        labels["app"] = "web"
    else:
        labels["io.kubernetes.container.name"] = container
    return labels


def sandbox_record(
    sandbox_id: str = SANDBOX_ID,
    *,
    created_at_ns: int = T0,
    metadata: bytes | None = None,
    labels: Mapping[str, str] | None = None,
    oci_annotations: Mapping[str, Any] | None = None,
    env: tuple[str, ...] = (),
) -> api.Container:
    """A sandbox ("pause") container record as containerd's CRI plugin stores it.
    ``oci_annotations`` are added to the CRI ones; ``metadata`` replaces the extension."""
    annotations: dict[str, Any] = {
        "io.kubernetes.cri.container-type": "sandbox",
        "io.kubernetes.cri.sandbox-id": sandbox_id,
        "io.kubernetes.cri.sandbox-log-directory": f"/var/log/pods/{POD_NAMESPACE}_{POD_NAME}",
        "io.kubernetes.cri.sandbox-name": POD_NAME,
        "io.kubernetes.cri.sandbox-namespace": POD_NAMESPACE,
        "io.kubernetes.cri.sandbox-uid": POD_UID,
        **(oci_annotations or {}),
    }
    c = api.Container(
        id=sandbox_id,
        labels=pod_labels("sandbox") if labels is None else dict(labels),
        image=PAUSE_IMAGE,
        snapshotter="overlayfs",
        snapshot_key=sandbox_id,
        spec=_spec(annotations, ["PATH=/usr/local/sbin:/usr/bin:/bin", *env], ["/pause"]),
    )
    c.runtime.name = "io.containerd.runc.v2"
    _set_created(c, created_at_ns)
    c.extensions[EXT_SANDBOX].CopyFrom(
        AnyMsg(
            type_url=SANDBOX_TYPE_URL,
            value=sandbox_metadata(sandbox_id) if metadata is None else metadata,
        )
    )
    return c


def app_record(
    container_id: str = APP_ID,
    name: str = "app",
    *,
    attempt: int | None = None,
    sandbox_id: str = SANDBOX_ID,
    created_at_ns: int = T0 + 200_000_000,
    metadata: bytes | None = None,
    oci_annotations: Mapping[str, Any] | None = None,
    env: tuple[str, ...] = (),
) -> api.Container:
    """An app container record of the pod, as containerd's CRI plugin stores it."""
    annotations: dict[str, Any] = {
        "io.kubernetes.cri.container-type": "container",
        "io.kubernetes.cri.container-name": name,
        "io.kubernetes.cri.image-name": APP_IMAGE,
        "io.kubernetes.cri.sandbox-id": sandbox_id,
        "io.kubernetes.cri.sandbox-name": POD_NAME,
        "io.kubernetes.cri.sandbox-namespace": POD_NAMESPACE,
        "io.kubernetes.cri.sandbox-uid": POD_UID,
        **(oci_annotations or {}),
    }
    c = api.Container(
        id=container_id,
        labels=pod_labels("container", name),
        image=APP_IMAGE,
        snapshotter="overlayfs",
        snapshot_key=container_id,
        spec=_spec(
            annotations,
            ["PATH=/usr/local/sbin:/usr/bin:/bin", f"HOSTNAME={POD_NAME}", "SECRET=s3cr3t", *env],
            ["nginx", "-g", "daemon off;"],
        ),
    )
    c.runtime.name = "io.containerd.runc.v2"
    _set_created(c, created_at_ns)
    c.extensions[EXT_CONTAINER].CopyFrom(
        AnyMsg(
            type_url=CONTAINER_TYPE_URL,
            value=(
                container_metadata(container_id, name, attempt=attempt, sandbox_id=sandbox_id)
                if metadata is None
                else metadata
            ),
        )
    )
    return c


def cri_of(c: api.Container) -> CriInfo | None:
    """``cri_info`` as ``container_info`` calls it."""
    annotations, _ = spec_fields(c.spec.value)
    return cri_info(c, annotations)


# -- realistic records -------------------------------------------------------------------------


def test_sandbox_record_gives_every_cri_fact() -> None:
    info = container_info(NS, sandbox_record())
    assert info.cri == CriInfo(
        kind="sandbox",
        sandbox_id=SANDBOX_ID,
        pod_name=POD_NAME,
        pod_namespace=POD_NAMESPACE,
        pod_uid=POD_UID,
        container_name="",
        attempt=0,
        annotations={},
        pod_annotations=POD_ANNOTATIONS,
    )
    assert info.pod is None and info.trace is None  # not admitted yet


def test_sandbox_record_gives_every_container_fact() -> None:
    info = container_info(NS, sandbox_record())
    assert (info.namespace, info.id, info.image, info.runtime) == (
        NS,
        SANDBOX_ID,
        PAUSE_IMAGE,
        "io.containerd.runc.v2",
    )
    assert (info.snapshotter, info.snapshot_key, info.created_at_ns) == (
        "overlayfs",
        SANDBOX_ID,
        T0,
    )
    assert dict(info.labels) == pod_labels("sandbox")
    assert info.annotations["io.kubernetes.cri.container-type"] == "sandbox"
    assert info.annotations["io.kubernetes.cri.sandbox-uid"] == POD_UID
    assert dict(info.env) == {}


def test_app_record_gives_every_cri_fact_and_attempt_absent_is_zero() -> None:
    info = container_info(NS, app_record())
    assert info.cri == CriInfo(
        kind="container",
        sandbox_id=SANDBOX_ID,
        pod_name=POD_NAME,
        pod_namespace=POD_NAMESPACE,
        pod_uid=POD_UID,
        container_name="app",
        attempt=0,
        annotations={"ca": "app", "io.kubernetes.container.restartCount": "0"},
        pod_annotations={},
    )
    assert b'"attempt"' not in container_metadata()  # as Go's omitempty writes it


def test_app_record_with_an_attempt_gives_it() -> None:
    info = container_info(NS, app_record(attempt=1))
    assert info.cri is not None
    assert info.cri.attempt == 1
    assert dict(info.cri.annotations) == {
        "ca": "app",
        "io.kubernetes.container.restartCount": "1",
    }


def test_app_record_gives_every_container_fact_and_only_carrier_env() -> None:
    info = container_info(NS, app_record(env=(f"TRACEPARENT={TRACEPARENT}",)))
    assert (info.id, info.image, info.snapshot_key) == (APP_ID, APP_IMAGE, APP_ID)
    assert info.created_at_ns == T0 + 200_000_000
    assert dict(info.labels) == pod_labels("container", "app")
    assert info.annotations["io.kubernetes.cri.container-name"] == "app"
    assert dict(info.env) == {"TRACEPARENT": TRACEPARENT}  # never SECRET


def test_pod_annotations_are_read_from_a_sandbox_record_only() -> None:
    # an app record carrying a sandbox extension (never written by CRI) gives no pod
    # annotations: they belong to the sandbox
    c = app_record()
    c.extensions[EXT_SANDBOX].CopyFrom(AnyMsg(type_url=SANDBOX_TYPE_URL, value=sandbox_metadata()))
    cri = cri_of(c)
    assert cri is not None and dict(cri.pod_annotations) == {}


def test_sandbox_without_a_sandbox_id_annotation_is_its_own_sandbox() -> None:
    c = sandbox_record()
    spec = json.loads(c.spec.value)
    del spec["annotations"]["io.kubernetes.cri.sandbox-id"]
    c.spec.value = go_json(spec)
    cri = cri_of(c)
    assert cri is not None and cri.sandbox_id == SANDBOX_ID


def test_app_record_without_a_sandbox_id_annotation_has_an_empty_one() -> None:
    c = app_record()
    spec = json.loads(c.spec.value)
    del spec["annotations"]["io.kubernetes.cri.sandbox-id"]
    c.spec.value = go_json(spec)
    cri = cri_of(c)
    assert cri is not None and (cri.sandbox_id, cri.container_name) == ("", "app")


# -- containers CRI did not make ---------------------------------------------------------------


def test_plain_container_has_no_cri_facts() -> None:
    c = api.Container(
        id="web",
        image="docker.io/library/busybox:1.36",
        spec=AnyMsg(type_url=SPEC_TYPE_URL, value=go_json({"annotations": {"a": "b"}})),
    )
    assert container_info("default", c).cri is None


def test_container_without_a_spec_has_no_cri_facts() -> None:
    assert container_info("default", api.Container(id="web")).cri is None


@pytest.mark.parametrize("kind", ["", "Sandbox", "podsandbox", "container ", "init"])
def test_unknown_container_type_has_no_cri_facts(kind: str) -> None:
    c = sandbox_record(oci_annotations={"io.kubernetes.cri.container-type": kind})
    assert container_info(NS, c).cri is None


def test_container_type_that_is_not_a_string_has_no_cri_facts() -> None:
    c = sandbox_record(oci_annotations={"io.kubernetes.cri.container-type": ["sandbox"]})
    assert container_info(NS, c).cri is None


def test_cri_extensions_without_the_type_annotation_give_no_cri_facts() -> None:
    c = sandbox_record()
    c.spec.value = go_json({"annotations": {}})
    assert container_info(NS, c).cri is None


# -- malformed extensions: never raise, give what can be read ----------------------------------

MALFORMED = [
    b"",
    b"{",
    b"not json",
    b"\xff\xfe\x00garbage",
    b"null",
    b"[]",
    b'"Metadata"',
    b"42",
    b'{"Version":"v1"}',
    b'{"Metadata":null}',
    b'{"Metadata":[]}',
    b'{"Metadata":"x"}',
    b'{"Metadata":{"Config":null}}',
    b'{"Metadata":{"Config":["annotations"]}}',
    b'{"Metadata":{"Config":{"annotations":null,"metadata":null}}}',
    b'{"Metadata":{"Config":{"annotations":["a=b"],"metadata":["attempt",1]}}}',
    b'{"Metadata":{"Config":{"annotations":"a=b","metadata":"attempt=1"}}}',
    b'{"Metadata":{"Config":{"metadata":{"attempt":' + b"9" * 5000 + b"}}}}",
    b'{"Metadata":{"Config":{"annotations":' + b"[" * 100_000 + b"]" * 100_000 + b"}}}",
    b"[" * 100_000,
]


@pytest.mark.parametrize("raw", MALFORMED, ids=lambda raw: repr(raw[:40]))
def test_malformed_sandbox_extension_keeps_the_oci_facts(raw: bytes) -> None:
    info = container_info(NS, sandbox_record(metadata=raw))
    assert info.cri == CriInfo(
        kind="sandbox",
        sandbox_id=SANDBOX_ID,
        pod_name=POD_NAME,
        pod_namespace=POD_NAMESPACE,
        pod_uid=POD_UID,
    )


@pytest.mark.parametrize("raw", MALFORMED, ids=lambda raw: repr(raw[:40]))
def test_malformed_container_extension_keeps_the_oci_facts(raw: bytes) -> None:
    info = container_info(NS, app_record(metadata=raw))
    assert info.cri == CriInfo(
        kind="container",
        sandbox_id=SANDBOX_ID,
        pod_name=POD_NAME,
        pod_namespace=POD_NAMESPACE,
        pod_uid=POD_UID,
        container_name="app",
    )


def test_missing_extension_keeps_the_oci_facts() -> None:
    c = app_record(attempt=3)
    del c.extensions[EXT_CONTAINER]
    cri = cri_of(c)
    assert cri is not None
    assert (cri.container_name, cri.attempt, dict(cri.annotations)) == ("app", 0, {})


def test_non_string_pod_annotation_values_are_left_out_and_the_rest_kept() -> None:
    raw = sandbox_metadata(
        annotations={
            "count": 3,
            "flag": True,
            "none": None,
            "list": ["a"],
            "obj": {"tracing.k8s.io/traceparent": TRACEPARENT},
            "empty": "",
            "tracing.k8s.io/traceparent": TRACEPARENT,
        }
    )
    cri = cri_of(sandbox_record(metadata=raw))
    assert cri is not None
    assert dict(cri.pod_annotations) == {"empty": "", "tracing.k8s.io/traceparent": TRACEPARENT}


def test_non_string_container_annotation_values_are_left_out() -> None:
    raw = container_metadata(annotations={"ca": 1, "ok": "yes", "n": None})
    cri = cri_of(app_record(metadata=raw))
    assert cri is not None and dict(cri.annotations) == {"ok": "yes"}


def test_non_string_oci_annotation_values_are_left_out() -> None:
    c = sandbox_record(
        oci_annotations={"io.kubernetes.cri.sandbox-name": 7, "io.kubernetes.cri.sandbox-uid": None}
    )
    cri = cri_of(c)
    assert cri is not None
    assert (cri.kind, cri.pod_name, cri.pod_uid, cri.pod_namespace) == (
        "sandbox",
        "",
        "",
        POD_NAMESPACE,
    )


@pytest.mark.parametrize(
    "attempt",
    [True, False, "1", "", None, 1.0, 2.5, 1e400, [1], {"n": 1}],
    ids=repr,
)
def test_attempt_that_is_not_an_integer_is_zero(attempt: object) -> None:
    raw = go_json(
        {"Version": "v1", "Metadata": {"Config": {"metadata": {"name": "app"}, "annotations": {}}}}
    ).replace(b'{"name":"app"}', b'{"name":"app","attempt":' + json.dumps(attempt).encode() + b"}")
    cri = cri_of(app_record(metadata=raw))
    assert cri is not None and cri.attempt == 0 and cri.container_name == "app"


@pytest.mark.parametrize("attempt", [0, 1, 7, 4_294_967_295])
def test_integer_attempt_is_kept(attempt: int) -> None:
    cri = cri_of(app_record(attempt=attempt))
    assert cri is not None and cri.attempt == attempt


def test_moderately_nested_json_elsewhere_does_not_hide_the_annotations() -> None:
    deep: object = "leaf"
    for _ in range(200):
        deep = {"d": deep}
    doc = json.loads(sandbox_metadata())
    doc["Metadata"]["Config"]["linux"] = deep
    cri = cri_of(sandbox_record(metadata=go_json(doc)))
    assert cri is not None and dict(cri.pod_annotations) == POD_ANNOTATIONS


def test_extension_with_another_type_url_is_still_read_as_go_json() -> None:
    # the key names the extension; the type URL moved between CRI versions
    # (github.com/containerd/cri/... in 1.6, github.com/containerd/containerd/... later)
    c = sandbox_record()
    c.extensions[
        EXT_SANDBOX
    ].type_url = "github.com/containerd/containerd/pkg/cri/store/sandbox/Metadata"
    cri = cri_of(c)
    assert cri is not None and dict(cri.pod_annotations) == POD_ANNOTATIONS


def test_cri_facts_are_strings_and_ints() -> None:
    cri = cri_of(app_record(attempt=2))
    assert cri is not None
    for name in ("kind", "sandbox_id", "pod_name", "pod_namespace", "pod_uid", "container_name"):
        assert type(getattr(cri, name)) is str, name
    assert type(cri.attempt) is int
