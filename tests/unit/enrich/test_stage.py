"""Enrich: StartupRecord (+ ContainerInfo) -> attributes and trace context."""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping
from typing import Any

import pytest

from otelbridge.core import semconv
from otelbridge.core.config import READINESS_LABEL, EnrichConfig
from otelbridge.core.counters import Counters
from otelbridge.core.model import (
    AttrValue,
    ContainerInfo,
    ContainerKey,
    CriInfo,
    Enrichment,
    Outcome,
    StartupRecord,
)
from otelbridge.enrich.stage import Enricher, split_image_reference

T0 = 1_700_000_000_000_000_000
KEY = ContainerKey("default", "web")
TID = "5d3c9e0b7a1f4e2d8c6b0a9f1e2d3c4b"
TP_LABEL = f"00-{TID}-1111111111111111-01"
TP_ANNOTATION = f"00-{TID}-2222222222222222-01"
TP_ENV = f"00-{TID}-3333333333333333-00"


def record(**changes: Any) -> StartupRecord:
    rec = StartupRecord(
        key=KEY,
        incarnation_ns=T0,
        container_create_ns=T0,
        task_create_ns=T0 + 1,
        task_start_ns=T0 + 2,
        ready_ns=T0 + 2,
        end_ns=T0 + 2,
        outcome=Outcome.READY,
        pid=4242,
        image="docker.io/library/busybox:1.36",
        runtime="io.containerd.runc.v2",
    )
    return dataclasses.replace(rec, **changes)


def container(
    *,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    **changes: Any,
) -> ContainerInfo:
    info = ContainerInfo(
        namespace=KEY.namespace,
        id=KEY.id,
        image="registry.example:5000/team/app:v1.2@sha256:" + "c" * 64,
        runtime="io.containerd.runsc.v1",
        snapshotter="overlayfs",
        snapshot_key="web",
        created_at_ns=T0 - 1,
        labels=dict(labels or {}),
        annotations=dict(annotations or {}),
        env=dict(env or {}),
    )
    return dataclasses.replace(info, **changes)


def enrich(
    rec: StartupRecord, config: EnrichConfig | None = None, counters: Counters | None = None
) -> Enrichment:
    """As the pipeline does it: the container record is admitted, then enriched."""
    enricher = Enricher(config or EnrichConfig(), counters or Counters())
    if rec.info is not None:
        rec.info = enricher.admit(rec.info)
    return enricher.enrich(rec)


def attrs(enrichment: Enrichment) -> dict[str, AttrValue]:
    keys = [k for k, _ in enrichment.attributes]
    assert len(set(keys)) == len(keys), keys
    return dict(enrichment.attributes)


# -- attributes --------------------------------------------------------------------------------


def test_record_without_container_info_gets_attributes_from_the_record() -> None:
    assert attrs(enrich(record())) == {
        semconv.CONTAINER_ID: "web",
        semconv.CONTAINER_NAME: "web",
        semconv.CONTAINER_RUNTIME_NAME: "containerd",
        semconv.CONTAINERD_NAMESPACE: "default",
        semconv.OB_STARTUP_OUTCOME: "ready",
        semconv.OB_STARTUP_ATTEMPT: 1,
        semconv.OB_PARTIAL: False,
        semconv.OB_READINESS_SOURCE: "started",
        semconv.CONTAINER_IMAGE_NAME: "docker.io/library/busybox",
        semconv.CONTAINER_IMAGE_TAGS: ["1.36"],
        semconv.CONTAINERD_RUNTIME_NAME: "io.containerd.runc.v2",
        semconv.PROCESS_PID: 4242,
    }


def test_container_info_overrides_image_runtime_and_adds_snapshotter() -> None:
    a = attrs(enrich(record(info=container())))
    assert a[semconv.CONTAINER_IMAGE_NAME] == "registry.example:5000/team/app"
    assert a[semconv.CONTAINER_IMAGE_TAGS] == ["v1.2"]
    assert a[semconv.CONTAINERD_RUNTIME_NAME] == "io.containerd.runsc.v1"
    assert a[semconv.CONTAINERD_SNAPSHOTTER] == "overlayfs"


def test_empty_container_info_fields_fall_back_to_the_record() -> None:
    a = attrs(enrich(record(info=container(image="", runtime="", snapshotter=""))))
    assert a[semconv.CONTAINER_IMAGE_NAME] == "docker.io/library/busybox"
    assert a[semconv.CONTAINERD_RUNTIME_NAME] == "io.containerd.runc.v2"
    assert semconv.CONTAINERD_SNAPSHOTTER not in a


def test_record_without_image_pid_or_runtime_has_no_such_attributes() -> None:
    a = attrs(enrich(record(image="", runtime="", pid=0)))
    for key in (
        semconv.CONTAINER_IMAGE_NAME,
        semconv.CONTAINER_IMAGE_TAGS,
        semconv.CONTAINERD_RUNTIME_NAME,
        semconv.PROCESS_PID,
    ):
        assert key not in a


def test_exited_record_carries_exit_code_and_outcome() -> None:
    rec = record(task_start_ns=None, ready_ns=None, outcome=Outcome.EXITED, exit_status=3)
    a = attrs(enrich(rec))
    assert (a[semconv.OB_STARTUP_OUTCOME], a[semconv.PROCESS_EXIT_CODE]) == ("exited", 3)


def test_partial_restart_record_carries_partial_and_attempt() -> None:
    a = attrs(enrich(record(partial=True, attempt=3)))
    assert (a[semconv.OB_PARTIAL], a[semconv.OB_STARTUP_ATTEMPT]) == (True, 3)


def test_phase_attributes_name_the_container() -> None:
    assert enrich(record()).phase_attributes == [
        (semconv.CONTAINER_ID, "web"),
        (semconv.CONTAINERD_NAMESPACE, "default"),
    ]


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("busybox", ("busybox", [])),
        ("busybox:latest", ("busybox", ["latest"])),
        ("docker.io/library/nginx:1.27", ("docker.io/library/nginx", ["1.27"])),
        ("localhost:5000/app", ("localhost:5000/app", [])),
        ("localhost:5000/app:v2", ("localhost:5000/app", ["v2"])),
        ("registry:5000/team/app@sha256:" + "a" * 64, ("registry:5000/team/app", [])),
        ("ghcr.io/o/app:v3@sha256:" + "b" * 64, ("ghcr.io/o/app", ["v3"])),
        ("[::1]:5000/app:v4", ("[::1]:5000/app", ["v4"])),
    ],
)
def test_split_image_reference(ref: str, expected: tuple[str, list[str]]) -> None:
    assert split_image_reference(ref) == expected


def test_long_image_reference_is_truncated_and_counted() -> None:
    counters = Counters()
    image = "registry.example/" + "x" * 100 + ":v1"
    a = attrs(enrich(record(image=image), EnrichConfig(max_attribute_length=32), counters))
    name = a[semconv.CONTAINER_IMAGE_NAME]
    assert isinstance(name, str) and len(name) <= 32
    assert counters.get(semconv.ATTRIBUTES_DROPPED) == 1


# -- trace context -----------------------------------------------------------------------------


def test_no_container_info_means_no_trace_context() -> None:
    enrichment = enrich(record())
    assert (enrichment.parent, enrichment.link) == (None, None)
    assert semconv.OB_TRACE_CONTEXT_SOURCE not in attrs(enrichment)


def test_trace_context_from_a_label() -> None:
    info = container(labels={"traceparent": TP_LABEL, "tracestate": "vendor=x"})
    enrichment = enrich(record(info=info))
    assert enrichment.parent is not None
    assert enrichment.parent.span_id.hex() == "1111111111111111"
    assert enrichment.parent.trace_state == "vendor=x"
    assert enrichment.link is None
    a = attrs(enrichment)
    assert a[semconv.OB_TRACE_CONTEXT_SOURCE] == "label:traceparent"
    assert a[semconv.OB_LINK_POLICY] == "parent"


def test_trace_context_from_an_oci_annotation() -> None:
    info = container(annotations={"tracing.k8s.io/traceparent": TP_ANNOTATION})
    enrichment = enrich(record(info=info))
    assert enrichment.parent is not None
    assert enrichment.parent.span_id.hex() == "2222222222222222"
    assert attrs(enrichment)[semconv.OB_TRACE_CONTEXT_SOURCE] == (
        "annotation:tracing.k8s.io/traceparent"
    )


def test_trace_context_from_env_traceparent() -> None:
    info = container(env={"TRACEPARENT": TP_ENV, "TRACESTATE": "a=1"})
    enrichment = enrich(record(info=info))
    assert enrichment.parent is not None
    assert enrichment.parent.span_id.hex() == "3333333333333333"
    assert enrichment.parent.trace_flags == 0x00
    assert enrichment.parent.trace_state == "a=1"
    assert attrs(enrichment)[semconv.OB_TRACE_CONTEXT_SOURCE] == "env:TRACEPARENT"


def test_label_wins_over_annotation_and_env() -> None:
    info = container(
        labels={"traceparent": TP_LABEL},
        annotations={"traceparent": TP_ANNOTATION},
        env={"TRACEPARENT": TP_ENV},
    )
    parent = enrich(record(info=info)).parent
    assert parent is not None and parent.span_id.hex() == "1111111111111111"


def test_annotation_wins_over_env() -> None:
    info = container(annotations={"traceparent": TP_ANNOTATION}, env={"TRACEPARENT": TP_ENV})
    parent = enrich(record(info=info)).parent
    assert parent is not None and parent.span_id.hex() == "2222222222222222"


def test_env_lookup_can_be_disabled() -> None:
    info = container(env={"TRACEPARENT": TP_ENV})
    enrichment = enrich(record(info=info), EnrichConfig(env_traceparent=""))
    assert enrichment.parent is None


def test_configured_traceparent_key_is_used_with_its_tracestate_key() -> None:
    info = container(labels={"acme/traceparent": TP_LABEL, "acme/tracestate": "k=v"})
    config = EnrichConfig(traceparent_keys=("acme/traceparent",))
    parent = enrich(record(info=info), config).parent
    assert parent is not None and parent.trace_state == "k=v"


def test_invalid_traceparent_gives_no_parent_an_attribute_and_a_count() -> None:
    counters = Counters()
    info = container(
        labels={"traceparent": "00-" + "0" * 32 + "-1111111111111111-01"},
        annotations={"traceparent": TP_ANNOTATION},
    )
    enrichment = enrich(record(info=info), counters=counters)
    assert (enrichment.parent, enrichment.link) == (None, None)
    a = attrs(enrichment)
    assert a[semconv.OB_TRACEPARENT_INVALID] == "trace_id_zero"
    assert a[semconv.OB_TRACE_CONTEXT_SOURCE] == "label:traceparent"
    assert counters.get(semconv.TRACEPARENT_INVALID) == 1


def test_invalid_tracestate_keeps_the_parent_and_is_counted() -> None:
    counters = Counters()
    info = container(labels={"traceparent": TP_LABEL, "tracestate": "UPPER=1"})
    enrichment = enrich(record(info=info), counters=counters)
    assert enrichment.parent is not None and enrichment.parent.trace_state == ""
    assert attrs(enrichment)[semconv.OB_TRACESTATE_INVALID] == "key_format"
    assert counters.get(semconv.TRACESTATE_INVALID) == 1


# -- link policy -------------------------------------------------------------------------------


def test_link_policy_of_the_namespace_gives_a_link_not_a_parent() -> None:
    config = EnrichConfig(namespace_link_policy={"default": "link"})
    enrichment = enrich(record(info=container(labels={"traceparent": TP_LABEL})), config)
    assert enrichment.parent is None
    assert enrichment.link is not None
    assert enrichment.link.span_id.hex() == "1111111111111111"
    assert attrs(enrichment)[semconv.OB_LINK_POLICY] == "link"


def test_namespace_policy_applies_only_to_its_namespace() -> None:
    config = EnrichConfig(namespace_link_policy={"k8s.io": "link"})
    enrichment = enrich(record(info=container(labels={"traceparent": TP_LABEL})), config)
    assert enrichment.parent is not None and enrichment.link is None


def test_ignore_policy_looks_nothing_up() -> None:
    class Spy(Enricher):
        def trace_context(self, info: ContainerInfo | None):  # type: ignore[no-untyped-def]
            raise AssertionError("trace context looked up despite policy ignore")

    counters = Counters()
    config = EnrichConfig(link_policy="ignore")
    info = container(labels={"traceparent": "garbage"})
    enrichment = Spy(config, counters).enrich(record(info=info))
    assert (enrichment.parent, enrichment.link) == (None, None)
    a = attrs(enrichment)
    assert semconv.OB_TRACE_CONTEXT_SOURCE not in a
    assert semconv.OB_TRACEPARENT_INVALID not in a
    assert counters.get(semconv.TRACEPARENT_INVALID) == 0


# -- label attributes --------------------------------------------------------------------------


def label_attrs(enrichment: Enrichment) -> dict[str, AttrValue]:
    return {k: v for k, v in enrichment.attributes if k.startswith("container.label.")}


def test_no_label_attributes_by_default() -> None:
    assert label_attrs(enrich(record(info=container(labels={"team": "rt"})))) == {}


def test_label_attributes_follow_the_globs() -> None:
    info = container(labels={"team": "rt", "app.kubernetes.io/name": "web", "secret": "x"})
    config = EnrichConfig(label_attributes=("team", "app.kubernetes.io/*"))
    assert label_attrs(enrich(record(info=info), config)) == {
        "container.label.app.kubernetes.io/name": "web",
        "container.label.team": "rt",
    }


def test_label_attributes_glob_is_case_sensitive() -> None:
    info = container(labels={"Team": "rt"})
    assert label_attrs(enrich(record(info=info), EnrichConfig(label_attributes=("team",)))) == {}


def test_label_attributes_over_the_count_limit_are_dropped_and_counted() -> None:
    counters = Counters()
    info = container(labels={f"l{i}": str(i) for i in range(5)})
    config = EnrichConfig(label_attributes=("l*",), max_label_attributes=2)
    enrichment = enrich(record(info=info), config, counters)
    assert label_attrs(enrichment) == {"container.label.l0": "0", "container.label.l1": "1"}
    assert attrs(enrichment)[semconv.OB_ATTRIBUTES_DROPPED] == 3
    assert counters.get(semconv.ATTRIBUTES_DROPPED) == 3


def test_long_label_value_is_truncated_and_counted() -> None:
    counters = Counters()
    info = container(labels={"note": "y" * 100}, image="app:1", runtime="runc")
    config = EnrichConfig(label_attributes=("*",), max_attribute_length=20)
    assert label_attrs(enrich(record(info=info), config, counters)) == {
        "container.label.note": "y" * 20
    }
    assert counters.get(semconv.ATTRIBUTES_DROPPED) == 1


@pytest.mark.parametrize("key", ["bad\x00key", "new\nline", "caf\u00e9", "\u200bzero", "k" * 129])
def test_label_key_not_printable_ascii_or_too_long_is_dropped_and_counted(key: str) -> None:
    counters = Counters()
    info = container(labels={key: "v", "ok": "v"})
    enrichment = enrich(record(info=info), EnrichConfig(label_attributes=("*",)), counters)
    assert label_attrs(enrichment) == {"container.label.ok": "v"}
    assert attrs(enrichment)[semconv.OB_ATTRIBUTES_DROPPED] == 1
    assert counters.get(semconv.ATTRIBUTES_DROPPED) == 1


def test_nothing_dropped_means_no_count_and_no_dropped_attribute() -> None:
    counters = Counters()
    info = container(labels={"traceparent": TP_LABEL, "team": "rt"})
    enrichment = enrich(record(info=info), EnrichConfig(label_attributes=("*",)), counters)
    assert semconv.OB_ATTRIBUTES_DROPPED not in attrs(enrichment)
    assert counters.nonzero() == {}


# -- what an in-flight startup keeps of its container record ------------------------------------


def test_admit_keeps_the_parsed_context_and_only_the_selected_labels() -> None:
    info = container(
        labels={"traceparent": TP_LABEL, "tracestate": "a=1", "team": "rt", "big": "x" * 999},
        annotations={
            "tracing.k8s.io/traceparent": TP_ANNOTATION,
            "io.kubernetes.cri.container-name": "web",
        },
        env={"TRACEPARENT": TP_ENV},
    )
    config = EnrichConfig(label_attributes=("team",))
    kept = Enricher(config, Counters()).admit(info)
    assert dict(kept.labels) == {"team": "rt"}
    assert not kept.annotations and not kept.env  # the raw values are not held
    assert kept.trace is not None and kept.trace.source == "label:traceparent"
    assert kept.trace.context is not None and kept.trace.context.trace_state == "a=1"
    assert (kept.id, kept.image, kept.created_at_ns) == (info.id, info.image, info.created_at_ns)


def test_admit_builds_every_field_of_the_record() -> None:
    # admit() calls ContainerInfo(...) with each field rather than dataclasses.replace (a
    # third of its cost): a field added to ContainerInfo must be added there too, or it
    # would silently fall back to its default in every admitted record
    assert [f.name for f in dataclasses.fields(ContainerInfo)] == [
        "namespace", "id", "image", "runtime", "snapshotter", "snapshot_key",
        "created_at_ns", "labels", "annotations", "env", "dropped", "trace", "readiness",
        "cri", "pod",
    ]  # fmt: skip
    info = container(labels={"team": "rt"})
    kept = Enricher(EnrichConfig(label_attributes=("team",)), Counters()).admit(
        dataclasses.replace(info, dropped=2, readiness="tcp://127.0.0.1:80")
    )
    assert (kept.namespace, kept.id, kept.image, kept.runtime, kept.snapshotter) == (
        info.namespace, info.id, info.image, info.runtime, info.snapshotter,
    )  # fmt: skip
    assert (kept.created_at_ns, kept.dropped, kept.readiness) == (
        info.created_at_ns, 2, "tcp://127.0.0.1:80",
    )  # fmt: skip
    assert dict(kept.labels) == {"team": "rt"} and kept.trace is not None


def test_admit_bounds_what_a_hostile_record_leaves_behind() -> None:
    huge = "k=" + "v" * 200_000
    info = container(
        labels={f"l{i}": "x" * 5000 for i in range(500)} | {"tracestate": huge},
        annotations={"traceparent": "y" * 200_000, "other": "z" * 200_000},
        env={"TRACEPARENT": "w" * 200_000},
    )
    config = EnrichConfig(label_attributes=("l*",), max_label_attributes=4)
    kept = Enricher(config, Counters()).admit(info)
    assert sum(len(k) + len(v) for k, v in kept.labels.items()) <= 4 * (3 + 256)
    assert kept.trace is not None and kept.trace.invalid_reason == "too_long"


def test_admitting_twice_changes_nothing() -> None:
    counters = Counters()
    enricher = Enricher(EnrichConfig(label_attributes=("*",), max_attribute_length=60), counters)
    once = enricher.admit(container(labels={"traceparent": TP_LABEL, "note": "y" * 100}))
    assert enricher.admit(once) == once
    assert counters.get(semconv.ATTRIBUTES_DROPPED) == 1


def test_link_policy_ignore_resolves_nothing_at_admission() -> None:
    info = container(labels={"traceparent": TP_LABEL})
    config = EnrichConfig(namespace_link_policy={info.namespace: "ignore"})
    kept = Enricher(config, Counters()).admit(info)
    assert kept.trace is not None and not kept.trace.found


def test_admitted_record_enriches_like_the_full_one() -> None:
    info = container(
        labels={"traceparent": TP_LABEL, "team": "rt", "other": "x"},
        annotations={"noise": "y"},
    )
    config = EnrichConfig(label_attributes=("team",))
    enricher = Enricher(config, Counters())
    full = enricher.enrich(record(info=info))
    slim = enricher.enrich(record(info=enricher.admit(info)))
    assert full == slim


# -- control characters in tenant values (PRODUCT.md section 8) ----------------------------------

CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def no_control_characters(a: Mapping[str, AttrValue]) -> None:
    for key, value in a.items():
        for item in value if isinstance(value, list) else [value]:
            assert not (isinstance(item, str) and CONTROL.search(item)), (key, item)


def test_label_value_with_a_newline_is_escaped_and_counted() -> None:
    counters = Counters()
    info = container(labels={"note": "a\nb", "esc": "\x1b[2Jx", "ok": "v"})
    enrichment = enrich(record(info=info), EnrichConfig(label_attributes=("*",)), counters)
    assert label_attrs(enrichment) == {
        "container.label.esc": "\\x1b[2Jx",
        "container.label.note": "a\\nb",
        "container.label.ok": "v",
    }
    assert counters.get(semconv.ATTRIBUTES_SANITIZED) == 2
    assert counters.get(semconv.ATTRIBUTES_DROPPED) == 0
    assert semconv.OB_ATTRIBUTES_DROPPED not in attrs(enrichment)


@pytest.mark.parametrize("where", ["event", "container record"])
def test_image_with_a_newline_cannot_forge_a_tag(where: str) -> None:
    counters = Counters()
    image = "busybox:1.36\nlatest"
    rec = record(image=image) if where == "event" else record(info=container(image=image))
    a = attrs(enrich(rec, counters=counters))
    assert a[semconv.CONTAINER_IMAGE_NAME] == "busybox"
    assert a[semconv.CONTAINER_IMAGE_TAGS] == ["1.36\\nlatest"]  # one tag, visibly escaped
    assert counters.get(semconv.ATTRIBUTES_SANITIZED) == 1
    no_control_characters(a)


def test_image_escaped_then_cut_keeps_its_escapes_whole() -> None:
    counters = Counters()
    image = "abcdefghijklm\x1bxyz:v1"  # escaped: abcdefghijklm\x1bxyz:v1 (24 characters)
    config = EnrichConfig(max_attribute_length=16)
    a = attrs(enrich(record(image=image, runtime="runc"), config, counters))
    assert a[semconv.CONTAINER_IMAGE_NAME] == "abcdefghijklm"  # not ...m\x1
    assert semconv.CONTAINER_IMAGE_TAGS not in a
    assert counters.get(semconv.ATTRIBUTES_SANITIZED) == 1
    assert counters.get(semconv.ATTRIBUTES_DROPPED) == 1


def test_runtime_and_snapshotter_with_control_characters_are_escaped() -> None:
    counters = Counters()
    info = container(runtime="io.containerd.runc.v2\r", snapshotter="overlay\x00fs")
    a = attrs(enrich(record(info=info), counters=counters))
    assert a[semconv.CONTAINERD_RUNTIME_NAME] == "io.containerd.runc.v2\\r"
    assert a[semconv.CONTAINERD_SNAPSHOTTER] == "overlay\\x00fs"
    assert counters.get(semconv.ATTRIBUTES_SANITIZED) == 2
    a = attrs(enrich(record(runtime="runc\x7f"), counters=counters))  # from the event
    assert a[semconv.CONTAINERD_RUNTIME_NAME] == "runc\\x7f"
    assert counters.get(semconv.ATTRIBUTES_SANITIZED) == 3


HOSTILE_CRI: dict[str, Any] = {
    "pod_name": "web\x00\x1b[2J",
    "pod_namespace": "team\nprod",
    "pod_uid": "uid\x85",
    "container_name": "app\x1b]0;owned\x07",
}


def test_nul_and_esc_in_a_pod_without_its_sandbox_record_are_escaped() -> None:
    counters = Counters()
    cri = CriInfo(kind="container", sandbox_id="sb", attempt=1, **HOSTILE_CRI)
    a = attrs(enrich(record(info=container(cri=cri)), counters=counters))
    assert a[semconv.K8S_POD_NAME] == "web\\x00\\x1b[2J"
    assert a[semconv.K8S_NAMESPACE_NAME] == "team\\nprod"
    assert a[semconv.K8S_POD_UID] == "uid\\x85"
    assert a[semconv.K8S_CONTAINER_NAME] == "app\\x1b]0;owned\\x07"
    assert a[semconv.CONTAINER_NAME] == "app\\x1b]0;owned\\x07"
    assert counters.get(semconv.ATTRIBUTES_SANITIZED) == 4
    no_control_characters(a)


def test_nul_and_esc_in_a_pod_are_escaped_on_its_pod_and_container_spans() -> None:
    counters = Counters()
    enricher = Enricher(EnrichConfig(), counters)
    sandbox = enricher.admit(
        container(id="sb", cri=CriInfo(kind="sandbox", sandbox_id="sb", **HOSTILE_CRI))
    )
    assert sandbox.pod is not None
    assert (sandbox.pod.name, sandbox.pod.k8s_namespace) == ("web\\x00\\x1b[2J", "team\\nprod")
    app = enricher.admit(
        container(cri=CriInfo(kind="container", sandbox_id="sb", attempt=0, **HOSTILE_CRI)),
        sandbox.pod,
    )
    a = attrs(enricher.enrich(record(info=app)))
    no_control_characters(a)
    assert a[semconv.K8S_POD_NAME] == "web\\x00\\x1b[2J"
    assert a[semconv.K8S_CONTAINER_NAME] == "app\\x1b]0;owned\\x07"
    pod_span = dict(
        enricher.pod_attributes(sandbox.pod, outcome="ready", containers=1, partial=False)
    )
    no_control_characters(pod_span)
    assert pod_span[semconv.K8S_POD_NAME] == "web\\x00\\x1b[2J"
    # each value once per record admitted: the sandbox's 4, the app container's 4
    assert counters.get(semconv.ATTRIBUTES_SANITIZED) == 8


def test_sanitized_values_are_counted_once_however_often_admitted() -> None:
    counters = Counters()
    enricher = Enricher(EnrichConfig(label_attributes=("*",)), counters)
    once = enricher.admit(container(labels={"note": "a\nb"}, image="app:1\n2"))
    assert enricher.admit(once) == once
    enricher.enrich(record(info=once))
    assert counters.get(semconv.ATTRIBUTES_SANITIZED) == 2


# -- readiness target over the length limit ------------------------------------------------------

LONG_TARGET = "http://127.0.0.1:8080/" + "p" * 578  # 600 characters


def test_readiness_target_over_the_limit_is_rejected_counted_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert len(LONG_TARGET) == 600
    counters = Counters()
    info = container(labels={READINESS_LABEL: LONG_TARGET})
    with caplog.at_level(logging.WARNING, "otelbridge.enrich.stage"):
        kept = Enricher(EnrichConfig(), counters).admit(info)
    assert kept.readiness == ""  # no target: the next readiness source decides
    assert counters.get(semconv.READINESS_INVALID_TARGET) == 1
    (line,) = [r.getMessage() for r in caplog.records]
    assert str(info.key) in line and "600" in line
    assert LONG_TARGET[:100] not in line  # the tenant's text is not logged


def test_readiness_target_at_the_limit_is_kept() -> None:
    target = "http://127.0.0.1:8080/" + "p" * 490
    assert len(target) == 512
    counters = Counters()
    kept = Enricher(EnrichConfig(), counters).admit(
        container(annotations={READINESS_LABEL: target})
    )
    assert kept.readiness == target
    assert counters.get(semconv.READINESS_INVALID_TARGET) == 0


def test_rejected_readiness_target_stays_rejected_when_admitted_again() -> None:
    # the label is also a selected label attribute, kept (cut) in the admitted record:
    # admitting again must not take that cut value as the target
    counters = Counters()
    enricher = Enricher(EnrichConfig(label_attributes=("*",)), counters)
    once = enricher.admit(container(labels={READINESS_LABEL: LONG_TARGET}))
    twice = enricher.admit(once)
    assert (once.readiness, twice.readiness) == ("", "")
    assert counters.get(semconv.READINESS_INVALID_TARGET) == 1


def test_long_cri_names_are_cut_in_attributes_but_kept_whole_for_matching() -> None:
    counters = Counters()
    enricher = Enricher(EnrichConfig(max_attribute_length=16), counters)
    name = "c" * 40
    cri = CriInfo(kind="container", sandbox_id="sb", pod_name="p", container_name=name)
    kept = enricher.admit(container(cri=cri, image="app:1", runtime="runc", snapshotter="o"))
    assert kept.cri is not None and kept.cri.container_name == name  # the kubernetes source
    a = attrs(enricher.enrich(record(info=kept)))
    assert a[semconv.K8S_CONTAINER_NAME] == a[semconv.CONTAINER_NAME] == "c" * 16
    assert counters.get(semconv.ATTRIBUTES_DROPPED) == 1
