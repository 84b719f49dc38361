"""containerd records -> model values: OCI spec fields, timestamps, container and task info."""

from __future__ import annotations

import json

import pytest
from google.protobuf.any_pb2 import Any as AnyMsg

from otelbridge.app import containerd_client
from otelbridge.containerd._gen import otelbridge_api_pb2 as api
from otelbridge.containerd.records import container_info, spec_fields, task_info, timestamp_ns
from otelbridge.core.config import Config, EnrichConfig
from otelbridge.core.model import TaskState

TP = "00-5d3c9e0b7a1f4e2d8c6b0a9f1e2d3c4b-a1b2c3d4e5f60718-01"
GO_ZERO_SECONDS = -62_135_596_800  # 0001-01-01T00:00:00Z

OCI_SPEC = {
    "ociVersion": "1.1.0",
    "process": {
        "terminal": False,
        "user": {"uid": 0, "gid": 0},
        "args": ["/bin/sh", "-c", "sleep 1"],
        "env": [
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOSTNAME=web-7d9f",
            "DB_PASSWORD=hunter2",
            f"TRACEPARENT={TP}",
            "TRACESTATE=vendor=a=b,other=c",
        ],
        "cwd": "/",
    },
    "root": {"path": "rootfs"},
    "hostname": "web-7d9f",
    "annotations": {
        "io.kubernetes.cri.container-type": "container",
        "io.kubernetes.cri.container-name": "web",
        "io.kubernetes.cri.sandbox-name": "web-7d9f",
        "io.kubernetes.cri.sandbox-namespace": "shop",
        "tracing.k8s.io/traceparent": TP,
    },
    "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]},
}


def spec(obj: object) -> bytes:
    return json.dumps(obj).encode()


# -- spec_fields -------------------------------------------------------------------------------


def test_spec_annotations_are_kept_whole() -> None:
    annotations, _ = spec_fields(spec(OCI_SPEC))
    assert dict(annotations) == OCI_SPEC["annotations"]


def test_only_carrier_env_vars_are_kept() -> None:
    _, env = spec_fields(spec(OCI_SPEC))
    assert dict(env) == {"TRACEPARENT": TP, "TRACESTATE": "vendor=a=b,other=c"}


def test_other_env_keys_can_be_asked_for() -> None:
    _, env = spec_fields(spec(OCI_SPEC), env_keys=("HOSTNAME",))
    assert dict(env) == {"HOSTNAME": "web-7d9f"}


def test_first_definition_of_an_env_var_wins() -> None:
    raw = spec({"process": {"env": ["TRACEPARENT=first", "TRACEPARENT=second"]}})
    assert dict(spec_fields(raw)[1]) == {"TRACEPARENT": "first"}


def test_env_entry_without_equals_sign_or_with_other_case_is_not_kept() -> None:
    raw = spec({"process": {"env": ["TRACEPARENT", "traceparent=x", "TRACEPARENT_X=y"]}})
    assert dict(spec_fields(raw)[1]) == {}


def test_empty_env_value_is_kept() -> None:
    raw = spec({"process": {"env": ["TRACEPARENT="]}})
    assert dict(spec_fields(raw)[1]) == {"TRACEPARENT": ""}


def test_spec_without_annotations_or_process_gives_empty_maps() -> None:
    annotations, env = spec_fields(spec({"ociVersion": "1.1.0"}))
    assert (dict(annotations), dict(env)) == ({}, {})


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b"not json",
        b"\xff\xfe\x00garbage",
        b"null",
        b"[]",
        b'"a string"',
        b"42",
    ],
)
def test_unusable_spec_gives_empty_maps(raw: bytes) -> None:
    annotations, env = spec_fields(raw)
    assert (dict(annotations), dict(env)) == ({}, {})


@pytest.mark.parametrize(
    "obj",
    [
        {"annotations": ["a=b"], "process": []},
        {"annotations": "a=b", "process": {"env": "TRACEPARENT=x"}},
        {"annotations": None, "process": {"env": {"TRACEPARENT": "x"}}},
        {"annotations": 7, "process": {"env": [1, None, ["TRACEPARENT=x"], {"a": 1}]}},
        {"annotations": True, "process": "TRACEPARENT=x"},
    ],
)
def test_weird_types_give_empty_maps(obj: object) -> None:
    annotations, env = spec_fields(spec(obj))
    assert (dict(annotations), dict(env)) == ({}, {})


def test_non_string_entries_are_skipped_and_string_ones_kept() -> None:
    raw = spec({"process": {"env": [1, f"TRACEPARENT={TP}", None]}})
    assert dict(spec_fields(raw)[1]) == {"TRACEPARENT": TP}


def test_spec_fields_are_strings() -> None:
    annotations, _ = spec_fields(spec({"annotations": {"a": "1", "b": "x"}}))
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in annotations.items())


def test_deeply_nested_spec_gives_empty_maps() -> None:
    annotations, env = spec_fields(b'{"annotations":' + b"[" * 100_000)
    assert (dict(annotations), dict(env)) == ({}, {})


# -- timestamps --------------------------------------------------------------------------------


def ts(seconds: int, nanos: int = 0) -> object:
    c = api.Container()
    c.created_at.seconds, c.created_at.nanos = seconds, nanos
    return c.created_at


def test_timestamp_is_exact_to_the_nanosecond() -> None:
    assert timestamp_ns(ts(1_764_330_123, 171_353_122)) == 1_764_330_123_171_353_122


def test_go_zero_timestamp_is_zero() -> None:
    assert timestamp_ns(ts(GO_ZERO_SECONDS)) == 0


def test_unset_timestamp_is_zero() -> None:
    assert timestamp_ns(api.Container().created_at) == 0


# -- container and task records ----------------------------------------------------------------


def test_container_info_from_a_container_message() -> None:
    c = api.Container(
        id="web",
        labels={"io.cri-containerd.kind": "container"},
        image="docker.io/library/nginx:1.27",
        snapshotter="overlayfs",
        snapshot_key="web",
        spec=AnyMsg(
            type_url="types.containerd.io/opencontainers/runtime-spec/1/Spec",
            value=spec(OCI_SPEC),
        ),
    )
    c.runtime.name = "io.containerd.runc.v2"
    c.created_at.seconds, c.created_at.nanos = 1_764_330_123, 5
    info = container_info("k8s.io", c)
    assert (info.namespace, info.id, info.image, info.runtime) == (
        "k8s.io",
        "web",
        "docker.io/library/nginx:1.27",
        "io.containerd.runc.v2",
    )
    assert (info.snapshotter, info.snapshot_key) == ("overlayfs", "web")
    assert info.created_at_ns == 1_764_330_123_000_000_005
    assert dict(info.labels) == {"io.cri-containerd.kind": "container"}
    assert dict(info.annotations)["io.kubernetes.cri.container-name"] == "web"
    assert dict(info.env) == {"TRACEPARENT": TP, "TRACESTATE": "vendor=a=b,other=c"}


def test_container_info_without_spec_and_with_go_zero_creation_time() -> None:
    c = api.Container(id="web")
    c.created_at.seconds = GO_ZERO_SECONDS
    info = container_info("default", c)
    assert info.created_at_ns == 0
    assert (dict(info.labels), dict(info.annotations), dict(info.env)) == ({}, {}, {})


@pytest.mark.parametrize(
    ("status", "state"),
    [
        (0, TaskState.UNKNOWN),
        (1, TaskState.CREATED),
        (2, TaskState.RUNNING),
        (3, TaskState.STOPPED),
        (4, TaskState.PAUSED),
        (5, TaskState.PAUSED),
        (99, TaskState.UNKNOWN),
    ],
)
def test_task_info_maps_the_status(status: int, state: TaskState) -> None:
    p = api.Process(id="web", pid=10)
    p.status = status  # type: ignore[assignment]
    assert task_info("default", p).state is state


def test_task_info_takes_the_id_when_container_id_is_empty() -> None:
    p = api.Process(id="web", pid=10, exit_status=3)
    p.exited_at.seconds = GO_ZERO_SECONDS
    info = task_info("default", p)
    assert (info.container_id, info.pid, info.exit_status, info.exited_at_ns) == ("web", 10, 3, 0)


def test_task_info_prefers_container_id() -> None:
    p = api.Process(container_id="web", id="exec-1", pid=10)
    assert task_info("default", p).container_id == "web"


def test_the_configured_env_variable_is_kept_from_the_container_record() -> None:
    spec = b'{"process": {"env": ["OTEL_TRACEPARENT=tp", "OTEL_TRACESTATE=ts", "TRACEPARENT=x"]}}'
    record = api.Container(
        id="c",
        spec={"type_url": "types.containerd.io/opencontainers/runtime-spec/1/Spec", "value": spec},
    )
    config = Config(enrich=EnrichConfig(env_traceparent="OTEL_TRACEPARENT"))
    client = containerd_client(config)
    try:
        info = container_info("ns", record, client._env_keys)
    finally:
        client.close()
    assert dict(info.env) == {"OTEL_TRACEPARENT": "tp", "OTEL_TRACESTATE": "ts"}
