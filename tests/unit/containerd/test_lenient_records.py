"""A container record protobuf refuses (invalid UTF-8) is read leniently, not lost."""

from __future__ import annotations

import json

from otelbridge.containerd._gen import otelbridge_api_pb2 as api
from otelbridge.containerd.records import EXT_SANDBOX, container_info, parse_container

SPEC = json.dumps(
    {
        "annotations": {
            "io.kubernetes.cri.container-type": "sandbox",
            "io.kubernetes.cri.sandbox-name": "web",
        },
        "process": {"env": ["TRACEPARENT=00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"]},
    }
).encode()
SANDBOX_EXT = json.dumps({"Metadata": {"Config": {"annotations": {"team": "shop"}}}}).encode()


def lenient_record(
    *,
    labels: dict[bytes, bytes],
    image: bytes = b"docker.io/library/nginx:1.27",
    id_: bytes = b"c1",
) -> bytes:
    """A serialized Container whose strings are whatever bytes we say (as containerd
    stores them): built with the lenient mirror, which is wire-compatible."""
    c = api.LenientContainer(id=id_, image=image, snapshotter=b"overlayfs", snapshot_key=id_)
    c.runtime.name = b"io.containerd.runc.v2"
    c.spec.type_url = b"types.containerd.io/opencontainers/runtime-spec/1/Spec"
    c.spec.value = SPEC
    c.created_at.seconds = 1_700_000_000
    for key, value in labels.items():
        c.labels.add(key=key, value=value)
    ext = c.extensions.add(key=EXT_SANDBOX.encode())
    ext.value.type_url = b"github.com/containerd/cri/pkg/store/sandbox/Metadata"
    ext.value.value = SANDBOX_EXT
    return c.SerializeToString()


def test_a_clean_record_is_parsed_as_it_is() -> None:
    raw = lenient_record(labels={b"app": b"web"})
    parsed = parse_container(raw)
    assert parsed.problem == ""
    assert parsed.container == api.Container.FromString(raw)
    assert parsed.id == "c1"


def test_an_invalid_utf8_label_is_escaped_and_the_rest_of_the_record_kept() -> None:
    parsed = parse_container(lenient_record(labels={b"bad": b"\xff\xfe", b"app": b"web"}))
    assert parsed.container is not None
    assert parsed.id == "c1"
    assert "invalid UTF-8" in parsed.problem and "'bad'" in parsed.problem
    info = container_info("tenant", parsed.container)
    assert dict(info.labels) == {"bad": "\\xff\\xfe", "app": "web"}
    assert info.image == "docker.io/library/nginx:1.27"
    assert info.runtime == "io.containerd.runc.v2"
    assert info.snapshot_key == "c1"
    assert info.created_at_ns == 1_700_000_000 * 1_000_000_000
    # the spec and the CRI extension survive: the container is still traced as a pod's
    assert info.annotations["io.kubernetes.cri.sandbox-name"] == "web"
    assert info.env["TRACEPARENT"].startswith("00-0af7")
    assert info.cri is not None and dict(info.cri.pod_annotations) == {"team": "shop"}


def test_an_invalid_key_and_other_fields_are_named() -> None:
    parsed = parse_container(
        lenient_record(labels={b"k\xc3": b"v"}, image=b"img\x80", id_=b"c\xff")
    )
    assert parsed.container is not None
    assert parsed.id == "c\\xff"
    assert parsed.container.image == "img\\x80"
    assert dict(parsed.container.labels) == {"k\\xc3": "v"}
    for field in ("id", "image", "label 'k\\\\xc3'"):
        assert field in parsed.problem


def test_many_bad_labels_are_named_by_the_first_few() -> None:
    labels = {f"l{i}".encode(): b"\xff" for i in range(10)}
    parsed = parse_container(lenient_record(labels=labels))
    assert parsed.container is not None and len(parsed.container.labels) == 10
    assert "'l0', 'l1', 'l2' and 7 more" in parsed.problem


def test_a_record_that_cannot_be_parsed_at_all_gives_none() -> None:
    raw = lenient_record(labels={b"a": b"b"})
    parsed = parse_container(raw[:-3])  # truncated inside a field
    assert parsed.container is None
    assert parsed.id == ""
    assert "cannot be decoded" in parsed.problem
