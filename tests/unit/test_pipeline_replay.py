"""The pipeline in replay mode: feed()/finish() on the caller's thread, event-time clock."""

from __future__ import annotations

from collections import Counter, defaultdict

from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otelbridge.core import semconv
from otelbridge.core.clock import EventTimeClock
from otelbridge.core.config import Config
from otelbridge.core.counters import Counters
from otelbridge.core.errors import NotFound
from otelbridge.core.model import ContainerInfo, RawEnvelope, StartupRecord
from otelbridge.pipeline import Pipeline
from otelbridge.testing.events import Timeline

MS = 1_000_000
T0 = 1_700_000_000_000_000_000
PHASES = [
    semconv.SPAN_CONTAINER_CREATE,
    semconv.SPAN_SHIM_LAUNCH,
    semconv.SPAN_TASK_START,
    semconv.SPAN_READINESS_WAIT,
]
TID = "5d3c9e0b7a1f4e2d8c6b0a9f1e2d3c4b"
PARENT_SPAN = "a1b2c3d4e5f60718"


class ListSink:
    """A SpanSink that keeps every startup's batch it was handed (the snapshot.reclaim
    spans of removed containers are kept apart: tests/unit/test_gc.py covers them)."""

    def __init__(self) -> None:
        self.batches: list[list[Span]] = []
        self.reclaims: list[Span] = []

    def submit(self, spans: list[Span]) -> None:
        if spans and spans[0].name == semconv.SPAN_SNAPSHOT_RECLAIM:
            self.reclaims.extend(spans)
            return
        self.batches.append(spans)

    @property
    def spans(self) -> list[Span]:
        return [s for batch in self.batches for s in batch]


def replay_pipeline(
    lookup: dict[tuple[str, str], ContainerInfo] | None = None,
) -> tuple[Pipeline, ListSink, list[StartupRecord]]:
    sink = ListSink()
    records: list[StartupRecord] = []

    def find(namespace: str, container_id: str) -> ContainerInfo:
        assert lookup is not None
        try:
            return lookup[(namespace, container_id)]
        except KeyError:
            raise NotFound(f"{namespace}/{container_id}") from None

    pipeline = Pipeline(
        Config(),
        sink,
        Counters(),
        clock=EventTimeClock(),
        lookup=find if lookup is not None else None,
        lookup_async=False,
        on_record=lambda rec, _spans: records.append(rec),
    )
    return pipeline, sink, records


def attr(span: Span, key: str) -> object:
    for a in span.attributes:
        if a.key == key:
            kind = a.value.WhichOneof("value")
            assert kind is not None
            return getattr(a.value, kind)
    raise KeyError(key)


def twenty_containers() -> list[RawEnvelope]:
    tl = Timeline(start_ns=T0)
    envs: list[RawEnvelope] = []
    for i in range(20):
        envs += tl.run_container(f"c{i:02d}")
    return envs


def test_replay_of_twenty_containers_gives_one_hundred_spans() -> None:
    pipeline, sink, _ = replay_pipeline()
    for env in twenty_containers():
        pipeline.feed(env)
    pipeline.finish()
    assert len(sink.spans) == 100
    assert len(sink.batches) == 20
    # each container was removed too: one snapshot.reclaim span each
    assert len(sink.reclaims) == 20
    assert pipeline.counters.get(semconv.SPANS_EMITTED) == 120


def test_replay_gives_one_trace_per_container_with_the_expected_tree() -> None:
    pipeline, sink, _ = replay_pipeline()
    for env in twenty_containers():
        pipeline.feed(env)
    pipeline.finish()
    traces: dict[bytes, list[Span]] = defaultdict(list)
    for span in sink.spans:
        traces[span.trace_id].append(span)
    assert len(traces) == 20
    container_ids = set()
    for spans in traces.values():
        (root,) = [s for s in spans if s.name == semconv.SPAN_CONTAINER_STARTUP]
        children = [s for s in spans if s is not root]
        assert root.parent_span_id == b""
        assert [c.name for c in children] == PHASES
        assert {c.parent_span_id for c in children} == {root.span_id}
        assert root.start_time_unix_nano == children[0].start_time_unix_nano
        assert root.end_time_unix_nano == children[-1].end_time_unix_nano
        assert attr(root, semconv.OB_STARTUP_OUTCOME) == "ready"
        assert attr(root, semconv.OB_PARTIAL) is False
        container_ids.add(attr(root, semconv.CONTAINER_ID))
    assert container_ids == {f"c{i:02d}" for i in range(20)}


def test_replay_phase_times_are_the_envelope_times() -> None:
    envs = Timeline(start_ns=T0).run_container("web")
    pipeline, sink, _ = replay_pipeline()
    for env in envs:
        pipeline.feed(env)
    root, *children = sink.spans
    prepare, create, task_create, task_start = (e.timestamp_ns for e in envs[:4])
    assert (root.start_time_unix_nano, root.end_time_unix_nano) == (prepare, task_start)
    assert [(c.start_time_unix_nano, c.end_time_unix_nano) for c in children] == [
        (prepare, create),
        (create, task_create),
        (task_create, task_start),
        (task_start, task_start),
    ]


def test_replaying_the_same_events_twice_gives_the_same_spans() -> None:
    runs = []
    for _ in range(2):
        pipeline, sink, _ = replay_pipeline()
        for env in twenty_containers():
            pipeline.feed(env)
        pipeline.finish()
        runs.append(sink.spans)
    assert runs[0] == runs[1]


def test_recorded_traceparent_label_gives_the_startup_its_trace_and_parent() -> None:
    info = ContainerInfo(
        namespace="default",
        id="web",
        image="docker.io/library/nginx:1.27",
        labels={"traceparent": f"00-{TID}-{PARENT_SPAN}-01"},
    )
    pipeline, sink, _ = replay_pipeline({("default", "web"): info})
    for env in Timeline(start_ns=T0).run_container("web"):
        pipeline.feed(env)
    pipeline.finish()
    root, *children = sink.spans
    assert root.trace_id.hex() == TID
    assert root.parent_span_id.hex() == PARENT_SPAN
    assert {c.trace_id.hex() for c in children} == {TID}
    assert attr(root, semconv.OB_TRACE_CONTEXT_SOURCE) == "label:traceparent"
    assert attr(root, semconv.CONTAINER_IMAGE_NAME) == "docker.io/library/nginx"
    assert pipeline.counters.get(semconv.METADATA_LOOKUPS) == 1
    assert pipeline.counters.get(semconv.METADATA_FAILED) == 0


def test_recorded_tracestate_label_reaches_every_span() -> None:
    info = ContainerInfo(
        namespace="default",
        id="web",
        labels={"traceparent": f"00-{TID}-{PARENT_SPAN}-00", "tracestate": "rollout=r1"},
    )
    pipeline, sink, _ = replay_pipeline({("default", "web"): info})
    for env in Timeline(start_ns=T0).run_container("web"):
        pipeline.feed(env)
    pipeline.finish()
    assert {s.trace_state for s in sink.spans} == {"rollout=r1"}
    assert sink.spans[0].flags & 0xFF == 0x00


def test_container_missing_from_the_lookup_is_emitted_without_its_record() -> None:
    pipeline, sink, _ = replay_pipeline({})
    for env in Timeline(start_ns=T0).run_container("web"):
        pipeline.feed(env)
    pipeline.finish()
    assert len(sink.spans) == 5
    assert sink.spans[0].parent_span_id == b""
    assert pipeline.counters.get(semconv.METADATA_FAILED) == 1


def test_malformed_envelope_in_the_middle_does_not_stop_the_rest() -> None:
    envs = twenty_containers()
    middle = len(envs) // 2
    bad = RawEnvelope(
        envs[middle].timestamp_ns, "default", "/tasks/start", "containerd.events.TaskStart", b"\xff"
    )
    pipeline, sink, records = replay_pipeline()
    for env in [*envs[:middle], bad, *envs[middle:]]:
        pipeline.feed(env)
    pipeline.finish()
    assert len(sink.spans) == 100
    assert Counter(r.outcome.value for r in records if r.outcome) == {"ready": 20}
    assert pipeline.counters.get(semconv.EVENTS_MALFORMED) == 1
    assert pipeline.counters.get(semconv.EVENTS_RECEIVED) == len(envs) + 1


def test_finish_completes_in_flight_startups_as_incomplete() -> None:
    tl = Timeline(start_ns=T0)
    envs = tl.run_container("done")
    envs += [tl.snapshot_prepare("slow", after_ns=MS), tl.container_create("slow", after_ns=MS)]
    envs += [tl.task_create("slow", after_ns=MS)]
    pipeline, sink, records = replay_pipeline()
    for env in envs:
        pipeline.feed(env)
    assert len(sink.batches) == 1
    pipeline.finish()
    assert len(sink.batches) == 2
    root, *children = sink.batches[1]
    assert attr(root, semconv.CONTAINER_ID) == "slow"
    assert attr(root, semconv.OB_STARTUP_OUTCOME) == "incomplete"
    assert [c.name for c in children] == PHASES[:3]
    assert root.end_time_unix_nano == envs[-1].timestamp_ns
    assert [r.outcome.value for r in records if r.outcome] == ["ready", "incomplete"]


def test_finish_twice_emits_nothing_more() -> None:
    tl = Timeline(start_ns=T0)
    pipeline, sink, _ = replay_pipeline()
    pipeline.feed(tl.container_create("slow"))
    pipeline.finish()
    pipeline.finish()
    assert len(sink.batches) == 1


def test_startup_timeout_follows_event_time_in_replay() -> None:
    tl = Timeline(start_ns=T0)
    pipeline, sink, records = replay_pipeline()
    create = tl.container_create("stuck")
    pipeline.feed(create)
    timeout_ns = int(pipeline.config.correlate.startup_timeout_s * 1_000_000_000)
    pipeline.feed(tl.snapshot_prepare("other", after_ns=timeout_ns // 2))
    assert sink.batches == []
    # well past the timeout in event time (deadlines may be checked at a coarse cadence)
    pipeline.feed(tl.snapshot_prepare("later", after_ns=timeout_ns))
    assert [r.outcome.value for r in records if r.outcome] == ["timeout"]
    assert records[0].end_ns == create.timestamp_ns + timeout_ns


def test_partial_startup_takes_its_incarnation_from_the_container_record() -> None:
    created_at = T0 - 5 * MS
    info = ContainerInfo("default", "web", created_at_ns=created_at)
    tl = Timeline(start_ns=T0)
    pipeline, _, records = replay_pipeline({("default", "web"): info})
    pipeline.feed(tl.task_create("web", after_ns=MS))
    pipeline.feed(tl.task_start("web", after_ns=MS))
    pipeline.finish()
    (rec,) = records
    assert rec.partial
    assert rec.info is not None and rec.info.created_at_ns == created_at
    assert rec.incarnation_ns == created_at
