"""Emit: a completed StartupRecord + Enrichment -> OTLP spans."""

from __future__ import annotations

import dataclasses
from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from otelbridge.core import ids, semconv
from otelbridge.core.model import ContainerKey, Enrichment, Outcome, StartupRecord
from otelbridge.core.tracecontext import TraceContext
from otelbridge.emit.spans import build_startup_spans, kv

MS = 1_000_000
T0 = 1_700_000_000_000_000_123
KEY = ContainerKey("default", "web")
PHASE_NAMES = [
    semconv.SPAN_CONTAINER_CREATE,
    semconv.SPAN_SHIM_LAUNCH,
    semconv.SPAN_TASK_START,
    semconv.SPAN_READINESS_WAIT,
]
ERROR = Status.StatusCode.STATUS_CODE_ERROR
UNSET = Status.StatusCode.STATUS_CODE_UNSET

PARENT = TraceContext(
    trace_id=bytes.fromhex("5d3c9e0b7a1f4e2d8c6b0a9f1e2d3c4b"),
    span_id=bytes.fromhex("a1b2c3d4e5f60718"),
    trace_flags=0x01,
    trace_state="vendor=abc",
)


def full_record(**changes: Any) -> StartupRecord:
    rec = StartupRecord(
        key=KEY,
        incarnation_ns=T0 + 4 * MS,
        snapshot_prepare_ns=T0,
        container_create_ns=T0 + 4 * MS,
        task_create_ns=T0 + 48 * MS,
        task_start_ns=T0 + 57 * MS,
        ready_ns=T0 + 57 * MS,
        end_ns=T0 + 57 * MS,
        outcome=Outcome.READY,
        pid=4242,
    )
    return dataclasses.replace(rec, **changes)


def spans_of(rec: StartupRecord, enrichment: Enrichment | None = None) -> list[Span]:
    return build_startup_spans(rec, enrichment or Enrichment())


def by_name(spans: list[Span]) -> dict[str, Span]:
    names = [s.name for s in spans]
    assert len(set(names)) == len(names), names
    return {s.name: s for s in spans}


def attrs(span: Span) -> dict[str, KeyValue]:
    return {a.key: a for a in span.attributes}


def string_list(kv_: KeyValue) -> list[str]:
    return [v.string_value for v in kv_.value.array_value.values]


# -- tree and times ----------------------------------------------------------------------------


def test_full_record_gives_root_and_four_phase_spans() -> None:
    spans = spans_of(full_record())
    assert [s.name for s in spans] == [semconv.SPAN_CONTAINER_STARTUP, *PHASE_NAMES]


def test_phase_spans_are_children_of_the_root_in_its_trace() -> None:
    root, *children = spans_of(full_record())
    assert root.parent_span_id == b""
    assert len(root.trace_id) == 16 and len(root.span_id) == 8
    for child in children:
        assert child.trace_id == root.trace_id
        assert child.parent_span_id == root.span_id
    assert len({s.span_id for s in [root, *children]}) == 5


def test_span_times_are_exactly_the_record_times() -> None:
    rec = full_record()
    spans = by_name(spans_of(rec))
    expected = {
        semconv.SPAN_CONTAINER_STARTUP: (rec.snapshot_prepare_ns, rec.ready_ns),
        semconv.SPAN_CONTAINER_CREATE: (rec.snapshot_prepare_ns, rec.container_create_ns),
        semconv.SPAN_SHIM_LAUNCH: (rec.container_create_ns, rec.task_create_ns),
        semconv.SPAN_TASK_START: (rec.task_create_ns, rec.task_start_ns),
        semconv.SPAN_READINESS_WAIT: (rec.task_start_ns, rec.ready_ns),
    }
    actual = {n: (s.start_time_unix_nano, s.end_time_unix_nano) for n, s in spans.items()}
    assert actual == expected


def test_ready_startup_has_no_error_status() -> None:
    for span in spans_of(full_record()):
        assert span.status.code == UNSET


def test_all_spans_are_internal() -> None:
    assert {s.kind for s in spans_of(full_record())} == {Span.SpanKind.SPAN_KIND_INTERNAL}


def test_enrichment_attributes_go_on_root_and_phase_attributes_on_phases() -> None:
    enrichment = Enrichment(
        attributes=[("container.id", "web"), ("otelbridge.partial", False)],
        phase_attributes=[("containerd.namespace", "default")],
    )
    root, *children = spans_of(full_record(), enrichment)
    assert list(attrs(root)) == ["container.id", "otelbridge.partial"]
    for child in children:
        assert list(attrs(child)) == ["containerd.namespace"]


# -- deterministic ids -------------------------------------------------------------------------


def test_same_record_gives_the_same_spans_ids_included() -> None:
    assert spans_of(full_record()) == spans_of(full_record())


def test_ids_derive_from_identity_and_role() -> None:
    rec = full_record()
    root, *children = spans_of(rec)
    identity = ids.startup_identity(rec.key, rec.incarnation_ns, rec.attempt)
    assert root.trace_id == ids.trace_id(identity)
    assert root.span_id == ids.span_id(identity, semconv.SPAN_CONTAINER_STARTUP)
    assert [c.span_id for c in children] == [ids.span_id(identity, n) for n in PHASE_NAMES]


def test_ids_do_not_depend_on_phase_times() -> None:
    one = spans_of(full_record())
    two = spans_of(full_record(ready_ns=T0 + 99 * MS, end_ns=T0 + 99 * MS))
    assert [(s.trace_id, s.span_id) for s in one] == [(s.trace_id, s.span_id) for s in two]


def test_other_incarnation_gives_other_ids() -> None:
    one = spans_of(full_record())
    two = spans_of(full_record(incarnation_ns=T0 + 5 * MS))
    assert one[0].trace_id != two[0].trace_id
    assert not {s.span_id for s in one} & {s.span_id for s in two}


def test_other_attempt_gives_other_ids() -> None:
    one = spans_of(full_record())
    two = spans_of(full_record(attempt=2))
    assert one[0].trace_id != two[0].trace_id
    assert not {s.span_id for s in one} & {s.span_id for s in two}


def test_other_namespace_gives_other_ids() -> None:
    one = spans_of(full_record())
    two = spans_of(full_record(key=ContainerKey("k8s.io", "web")))
    assert one[0].span_id != two[0].span_id


def test_ids_are_never_all_zero() -> None:
    identity = ids.startup_identity(KEY, 0, 1)
    assert ids.span_id(identity, "x") != bytes(8)
    assert ids.trace_id(identity) != bytes(16)


# -- trace context -----------------------------------------------------------------------------


def test_parent_context_gives_trace_id_parent_span_and_trace_state() -> None:
    root, *children = spans_of(full_record(), Enrichment(parent=PARENT))
    assert root.trace_id == PARENT.trace_id
    assert root.parent_span_id == PARENT.span_id
    for span in [root, *children]:
        assert span.trace_id == PARENT.trace_id
        assert span.trace_state == "vendor=abc"
    assert {c.parent_span_id for c in children} == {root.span_id}


def test_parent_context_does_not_change_our_span_ids() -> None:
    own = spans_of(full_record())
    child = spans_of(full_record(), Enrichment(parent=PARENT))
    assert [s.span_id for s in own] == [s.span_id for s in child]


def test_root_with_remote_parent_has_remote_bits_and_sampled_flag() -> None:
    root, *children = spans_of(full_record(), Enrichment(parent=PARENT))
    assert root.flags == 0x301
    assert {c.flags for c in children} == {0x101}


def test_unsampled_parent_flag_is_passed_on_unchanged() -> None:
    parent = dataclasses.replace(PARENT, trace_flags=0x00)
    root, *children = spans_of(full_record(), Enrichment(parent=parent))
    assert root.flags == 0x300
    assert {c.flags for c in children} == {0x100}
    assert len(children) == 4  # recorded anyway: coverage is part of the contract


def test_other_parent_flag_bits_are_passed_on_unchanged() -> None:
    parent = dataclasses.replace(PARENT, trace_flags=0x03)
    root, *_ = spans_of(full_record(), Enrichment(parent=parent))
    assert root.flags & 0xFF == 0x03


def test_own_trace_is_sampled_and_its_root_has_a_local_parent_flag() -> None:
    root, *children = spans_of(full_record())
    assert root.flags == 0x101
    assert {c.flags for c in children} == {0x101}
    assert root.trace_state == ""


def test_link_context_gives_own_trace_with_a_link() -> None:
    root, *children = spans_of(full_record(), Enrichment(link=PARENT))
    assert root.trace_id != PARENT.trace_id
    assert root.parent_span_id == b""
    assert {c.trace_id for c in children} == {root.trace_id}
    (link,) = root.links
    assert (link.trace_id, link.span_id, link.trace_state) == (
        PARENT.trace_id,
        PARENT.span_id,
        "vendor=abc",
    )
    assert link.flags == 0x301
    assert all(not c.links for c in children)


# -- outcomes other than ready -----------------------------------------------------------------


def exited_record() -> StartupRecord:
    return full_record(
        task_start_ns=None,
        ready_ns=None,
        end_ns=T0 + 60 * MS,
        outcome=Outcome.EXITED,
        exit_status=137,
    )


def test_exited_record_root_is_error_with_exit_status_in_message() -> None:
    root = spans_of(exited_record())[0]
    assert root.status.code == ERROR
    assert "137" in root.status.message
    assert "exited" in root.status.message
    assert root.end_time_unix_nano == T0 + 60 * MS


def test_exited_record_unfinished_phase_is_error_and_ends_at_the_record_end() -> None:
    spans = by_name(spans_of(exited_record()))
    stuck = spans[semconv.SPAN_TASK_START]
    assert stuck.status.code == ERROR
    assert (stuck.start_time_unix_nano, stuck.end_time_unix_nano) == (T0 + 48 * MS, T0 + 60 * MS)
    assert spans[semconv.SPAN_SHIM_LAUNCH].status.code == UNSET


def test_exited_record_has_no_span_for_phases_that_never_began() -> None:
    assert semconv.SPAN_READINESS_WAIT not in by_name(spans_of(exited_record()))


def test_deleted_record_root_is_error_and_shim_launch_is_stuck() -> None:
    rec = full_record(
        task_create_ns=None,
        task_start_ns=None,
        ready_ns=None,
        end_ns=T0 + 9 * MS,
        outcome=Outcome.DELETED,
    )
    spans = by_name(spans_of(rec))
    assert spans[semconv.SPAN_CONTAINER_STARTUP].status.code == ERROR
    assert spans[semconv.SPAN_SHIM_LAUNCH].status.code == ERROR
    assert spans[semconv.SPAN_SHIM_LAUNCH].end_time_unix_nano == T0 + 9 * MS
    assert list(spans) == [
        semconv.SPAN_CONTAINER_STARTUP,
        semconv.SPAN_CONTAINER_CREATE,
        semconv.SPAN_SHIM_LAUNCH,
    ]


def test_timeout_record_root_is_error() -> None:
    rec = full_record(
        task_start_ns=None, ready_ns=None, end_ns=T0 + 300_000 * MS, outcome=Outcome.TIMEOUT
    )
    root = spans_of(rec)[0]
    assert root.status.code == ERROR
    assert "timeout" in root.status.message


# -- missing phases ----------------------------------------------------------------------------


def test_missing_phases_are_left_out_and_listed_on_the_root() -> None:
    rec = full_record(
        snapshot_prepare_ns=None, container_create_ns=None, partial=True, incarnation_ns=T0
    )
    spans = spans_of(rec)
    assert [s.name for s in spans] == [
        semconv.SPAN_CONTAINER_STARTUP,
        semconv.SPAN_TASK_START,
        semconv.SPAN_READINESS_WAIT,
    ]
    missing = attrs(spans[0])[semconv.OB_MISSING_PHASES]
    assert string_list(missing) == [semconv.SPAN_CONTAINER_CREATE, semconv.SPAN_SHIM_LAUNCH]
    assert spans[0].start_time_unix_nano == rec.task_create_ns


def test_startup_without_snapshot_prepare_lists_container_create_missing() -> None:
    spans = spans_of(full_record(snapshot_prepare_ns=None))
    assert [s.name for s in spans][1:] == PHASE_NAMES[1:]
    assert string_list(attrs(spans[0])[semconv.OB_MISSING_PHASES]) == [
        semconv.SPAN_CONTAINER_CREATE
    ]
    assert spans[0].start_time_unix_nano == T0 + 4 * MS


def test_full_record_has_no_missing_phases_attribute() -> None:
    assert semconv.OB_MISSING_PHASES not in attrs(spans_of(full_record())[0])


def test_reconciled_record_has_only_a_root_with_all_phases_missing() -> None:
    rec = StartupRecord(
        key=KEY, incarnation_ns=T0, end_ns=T0, outcome=Outcome.RECONCILED, partial=True
    )
    (root,) = spans_of(rec)
    assert (root.start_time_unix_nano, root.end_time_unix_nano) == (T0, T0)
    assert string_list(attrs(root)[semconv.OB_MISSING_PHASES]) == PHASE_NAMES


def test_out_of_order_times_never_give_a_span_that_ends_before_it_starts() -> None:
    rec = full_record(task_start_ns=T0 + 40 * MS)  # earlier than task create
    for span in spans_of(rec):
        assert span.end_time_unix_nano >= span.start_time_unix_nano


# -- events and attribute encoding -------------------------------------------------------------


def test_oom_becomes_a_span_event_on_the_root() -> None:
    root, *children = spans_of(full_record(oom_ns=[T0 + 50 * MS, T0 + 51 * MS]))
    assert [(e.name, e.time_unix_nano) for e in root.events] == [
        (semconv.EVENT_OOM, T0 + 50 * MS),
        (semconv.EVENT_OOM, T0 + 51 * MS),
    ]
    assert all(not c.events for c in children)


def test_kv_encodes_str() -> None:
    value = kv("k", "v").value
    assert (value.WhichOneof("value"), value.string_value) == ("string_value", "v")


def test_kv_encodes_bool_as_bool_not_int() -> None:
    value = kv("k", True).value
    assert (value.WhichOneof("value"), value.bool_value) == ("bool_value", True)
    assert kv("k", False).value.WhichOneof("value") == "bool_value"


def test_kv_encodes_int() -> None:
    value = kv("k", 2**40).value
    assert (value.WhichOneof("value"), value.int_value) == ("int_value", 2**40)


def test_kv_encodes_float_as_double() -> None:
    value = kv("k", 0.25).value
    assert (value.WhichOneof("value"), value.double_value) == ("double_value", 0.25)


def test_kv_encodes_list_of_str_as_array_of_strings() -> None:
    encoded = kv("k", ["a", "b"])
    assert encoded.value.WhichOneof("value") == "array_value"
    assert string_list(encoded) == ["a", "b"]


def test_kv_encodes_empty_list_as_empty_array() -> None:
    encoded = kv("k", [])
    assert encoded.value.WhichOneof("value") == "array_value"
    assert string_list(encoded) == []


def test_enrichment_attribute_types_survive_into_the_root() -> None:
    enrichment = Enrichment(
        attributes=[("s", "x"), ("b", True), ("i", 7), ("l", ["v1", "v2"])],
    )
    root = spans_of(full_record(), enrichment)[0]
    kinds = {a.key: a.value.WhichOneof("value") for a in root.attributes}
    assert kinds == {
        "s": "string_value",
        "b": "bool_value",
        "i": "int_value",
        "l": "array_value",
    }


def test_bool_and_int_attributes_with_equal_values_keep_their_types_across_spans() -> None:
    # True == 1 and hash(True) == hash(1): encoding must not mix them up between startups
    first = spans_of(full_record(), Enrichment(attributes=[("x", 1), ("y", True)]))[0]
    second = spans_of(full_record(), Enrichment(attributes=[("x", True), ("y", 1)]))[0]
    third = spans_of(full_record(), Enrichment(attributes=[("x", 1.0), ("y", "1")]))[0]
    kinds = [
        {a.key: a.value.WhichOneof("value") for a in s.attributes} for s in (first, second, third)
    ]
    assert kinds == [
        {"x": "int_value", "y": "bool_value"},
        {"x": "bool_value", "y": "int_value"},
        {"x": "double_value", "y": "string_value"},
    ]


def test_repeated_attribute_values_are_encoded_equally_every_time() -> None:
    enrichment = Enrichment(attributes=[("otelbridge.startup.outcome", "ready"), ("n", 5)])
    spans = [spans_of(full_record(), enrichment)[0] for _ in range(3)]
    assert spans[0].attributes == spans[1].attributes == spans[2].attributes
