"""Runtime phases: a startup's spool moments -> child spans of shim.launch and task.start."""

from __future__ import annotations

from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from otelbridge.core import semconv
from otelbridge.core.counters import Counters
from otelbridge.core.model import ContainerKey, Enrichment, Outcome, StartupRecord
from otelbridge.emit.spans import build_startup_spans
from otelbridge.runtime.phases import SLACK_NS, RuntimePhases, build_runtime_spans
from otelbridge.runtime.spool import (
    CREATE_BEGIN,
    CREATE_END,
    START_BEGIN,
    START_END,
    Moment,
    Spool,
)

MS = 1_000_000
T0 = 1_700_000_000_000_000_000
KEY = ContainerKey("default", "web")
ERROR = Status.StatusCode.STATUS_CODE_ERROR


def record(**changes: int | None) -> StartupRecord:
    times = {
        "snapshot_prepare_ns": T0,
        "container_create_ns": T0 + 4 * MS,
        "task_create_ns": T0 + 48 * MS,
        "task_start_ns": T0 + 57 * MS,
        "ready_ns": T0 + 57 * MS,
        "end_ns": T0 + 57 * MS,
        **changes,
    }
    return StartupRecord(
        key=KEY, incarnation_ns=T0 + 4 * MS, outcome=Outcome.READY, pid=42, **times
    )


def normal_moments(shim: str = "new") -> list[Moment]:
    return [
        Moment(CREATE_BEGIN, T0 + 18 * MS, shim=shim, shim_pid=777),
        Moment(CREATE_END, T0 + 45 * MS, status=0),
        Moment(START_BEGIN, T0 + 50 * MS),
        Moment(START_END, T0 + 55 * MS, status=0),
    ]


def tree(rec: StartupRecord) -> list[Span]:
    return build_startup_spans(rec, Enrichment())


def named(spans: list[Span]) -> dict[str, Span]:
    return {s.name: s for s in spans}


def attr(span: Span, key: str) -> object:
    for kv in span.attributes:
        if kv.key == key:
            return getattr(kv.value, kv.value.WhichOneof("value") or "string_value")
    return None


def inside(child: Span, parent: Span) -> bool:
    return (
        parent.start_time_unix_nano
        <= child.start_time_unix_nano
        <= child.end_time_unix_nano
        <= parent.end_time_unix_nano
    )


def test_moments_become_ordered_children_inside_their_parents() -> None:
    rec = record()
    spans = tree(rec)
    built = build_runtime_spans(rec, spans, normal_moments())
    assert [s.name for s in built.spans] == [
        semconv.SPAN_SHIM_PREPARE,
        semconv.SPAN_RUNC_CREATE,
        semconv.SPAN_RUNC_START,
    ]
    assert (built.unmatched, built.clamped) == (0, 0)
    phase = named(spans)
    new = named(built.spans)
    launch, start = phase[semconv.SPAN_SHIM_LAUNCH], phase[semconv.SPAN_TASK_START]
    for name, parent in (
        (semconv.SPAN_SHIM_PREPARE, launch),
        (semconv.SPAN_RUNC_CREATE, launch),
        (semconv.SPAN_RUNC_START, start),
    ):
        span = new[name]
        assert span.parent_span_id == parent.span_id
        assert span.trace_id == parent.trace_id
        assert inside(span, parent)
        assert span.status.code != ERROR
    prepare, create = new[semconv.SPAN_SHIM_PREPARE], new[semconv.SPAN_RUNC_CREATE]
    assert prepare.start_time_unix_nano == launch.start_time_unix_nano
    assert prepare.end_time_unix_nano == create.start_time_unix_nano == T0 + 18 * MS
    assert create.end_time_unix_nano == T0 + 45 * MS
    assert new[semconv.SPAN_RUNC_START].start_time_unix_nano == T0 + 50 * MS
    assert attr(launch, semconv.OB_SHIM_REUSED) is False
    assert attr(launch, semconv.CONTAINERD_SHIM_PID) == 777


def test_ids_are_deterministic_and_distinct() -> None:
    rec = record()
    first = build_runtime_spans(rec, tree(rec), normal_moments()).spans
    again = build_runtime_spans(rec, tree(rec), normal_moments()).spans
    assert [s.span_id for s in first] == [s.span_id for s in again]
    ids = {s.span_id for s in first} | {s.span_id for s in tree(rec)}
    assert len(ids) == len(first) + len(tree(rec))


def test_a_reused_shim_is_said_and_no_launch_is_invented() -> None:
    rec = record()
    spans = tree(rec)
    built = build_runtime_spans(rec, spans, normal_moments(shim="reused"))
    launch = named(spans)[semconv.SPAN_SHIM_LAUNCH]
    assert attr(launch, semconv.OB_SHIM_REUSED) is True
    names = [s.name for s in built.spans]
    assert names.count(semconv.SPAN_SHIM_PREPARE) == 1  # the way to the running shim


def test_moments_slightly_outside_are_clamped_and_counted() -> None:
    rec = record()
    spans = tree(rec)
    moments = [
        Moment(CREATE_BEGIN, T0 + 2 * MS, shim="new"),  # before /containers/create
        Moment(CREATE_END, T0 + 60 * MS, status=0),  # after /tasks/create
    ]
    built = build_runtime_spans(rec, spans, moments)
    launch = named(spans)[semconv.SPAN_SHIM_LAUNCH]
    assert built.unmatched == 0
    assert built.clamped == 2  # shim.prepare (empty) and runc.create
    for span in built.spans:
        assert inside(span, launch)


def test_moments_far_outside_or_without_a_phase_are_unmatched() -> None:
    rec = record()
    far = T0 + 48 * MS + SLACK_NS + 1
    moments = [
        Moment(CREATE_BEGIN, far, shim="new"),  # far after the launch: another task's
        Moment(START_END, T0 + 56 * MS, status=0),  # an end without its begin
        Moment(START_BEGIN, T0 + 50 * MS),
        Moment(START_BEGIN, T0 + 49 * MS),  # a duplicate begin: the latest is taken
    ]
    built = build_runtime_spans(rec, tree(rec), moments)
    assert [s.name for s in built.spans] == [semconv.SPAN_RUNC_START]
    assert built.spans[0].start_time_unix_nano == T0 + 50 * MS
    assert built.unmatched == 2


def test_a_restart_without_shim_launch_leaves_create_moments_unmatched() -> None:
    # a later task of the container: no /snapshot/prepare, no /containers/create
    rec = record(snapshot_prepare_ns=None, container_create_ns=None)
    spans = tree(rec)
    assert semconv.SPAN_SHIM_LAUNCH not in named(spans)
    built = build_runtime_spans(rec, spans, normal_moments())
    assert [s.name for s in built.spans] == [semconv.SPAN_RUNC_START]
    assert built.unmatched == 2


def test_failed_and_unfinished_runc_give_error_spans() -> None:
    rec = record()
    spans = tree(rec)
    moments = [
        Moment(CREATE_BEGIN, T0 + 18 * MS, shim="new"),
        Moment(CREATE_END, T0 + 45 * MS, status=1),
        Moment(START_BEGIN, T0 + 50 * MS),  # its exit never written (killed)
    ]
    built = named(build_runtime_spans(rec, spans, moments).spans)
    create, start = built[semconv.SPAN_RUNC_CREATE], built[semconv.SPAN_RUNC_START]
    assert create.status.code == ERROR
    assert "status 1" in create.status.message
    assert start.status.code == ERROR
    assert start.end_time_unix_nano == named(spans)[semconv.SPAN_TASK_START].end_time_unix_nano


def test_the_hook_adds_spans_and_counts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    counters = Counters()
    spool = Spool(tmp_path, counters, max_age_s=60)
    (tmp_path / "default").mkdir()
    lines = [
        f"ob1 {T0 + 18 * MS} create.begin default web shim=new shim_pid=9",
        f"ob1 {T0 + 45 * MS} create.end default web status=0",
        f"ob1 {T0 + 1000 * SLACK_NS} start.begin default web",  # far away: unmatched
        f"ob1 {T0 + 60 * MS} create.end default web status=0",  # clamped
    ]
    (tmp_path / "default" / "web").write_text("\n".join(lines) + "\n")
    rec = record()
    spans = tree(rec)
    before = len(spans)
    RuntimePhases(spool, counters).attach(rec, spans)
    assert len(spans) == before + 2
    assert spans[0].name == semconv.SPAN_CONTAINER_STARTUP
    snap = counters.snapshot()
    assert snap[semconv.RUNTIME_UNMATCHED.name] == 2
    assert not (tmp_path / "default" / "web").exists()


def test_the_hook_without_a_spool_file_changes_nothing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    counters = Counters()
    rec = record()
    spans = tree(rec)
    expected = [s.SerializeToString() for s in spans]
    RuntimePhases(Spool(tmp_path / "absent", counters, max_age_s=60), counters).attach(rec, spans)
    assert [s.SerializeToString() for s in spans] == expected
    assert not any(counters.snapshot().values())
