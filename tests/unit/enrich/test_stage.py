"""Enrich: StartupRecord (+ ContainerInfo) -> attributes and trace context."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import pytest

from otelbridge.core import semconv
from otelbridge.core.config import EnrichConfig
from otelbridge.core.counters import Counters
from otelbridge.core.model import (
    AttrValue,
    ContainerInfo,
    ContainerKey,
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
