"""Kubernetes pods through the whole pipeline, in replay mode (event time, no I/O).

A pod as containerd's CRI plugin runs it: the sandbox's prepare, create, task create and
start, then each app container's. Container records are the realistic ones of
tests/unit/containerd/test_cri_records.py, read by ``container_info``.
"""

from __future__ import annotations

import dataclasses
import io
from collections import Counter
from collections.abc import Callable

from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from otelbridge.containerd.records import container_info
from otelbridge.core import ids, semconv
from otelbridge.core.clock import EventTimeClock
from otelbridge.core.config import Config, CorrelateConfig
from otelbridge.core.counters import Counters
from otelbridge.core.errors import NotFound
from otelbridge.core.model import ContainerInfo, ContainerKey, RawEnvelope
from otelbridge.pipeline import Pipeline
from otelbridge.source.recording import (
    Recorder,
    Recording,
    container_line,
    envelope_line,
    header_line,
    read_events,
)
from otelbridge.testing.events import Timeline
from tests.unit.containerd.test_cri_records import (
    APP_ID,
    APP_IMAGE,
    NS,
    PARENT_ID,
    PAUSE_IMAGE,
    POD_NAME,
    POD_NAMESPACE,
    POD_UID,
    SANDBOX_ID,
    SIDECAR_ID,
    TRACE_ID,
    app_record,
    sandbox_metadata,
    sandbox_record,
)

MS = 1_000_000
S = 1_000_000_000
T0 = 1_764_330_123_171_353_122
SETTLE_NS = int(CorrelateConfig().pod_settle_s * S)
RESTARTED_ID = "c3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4"
HAS_IS_REMOTE, IS_REMOTE = 0x100, 0x200
K8S_KEYS = (
    semconv.K8S_POD_NAME,
    semconv.K8S_POD_UID,
    semconv.K8S_NAMESPACE_NAME,
    semconv.K8S_CONTAINER_NAME,
    semconv.K8S_CONTAINER_RESTART_COUNT,
)
PHASES = [
    semconv.SPAN_CONTAINER_CREATE,
    semconv.SPAN_SHIM_LAUNCH,
    semconv.SPAN_TASK_START,
    semconv.SPAN_READINESS_WAIT,
]


class ListSink:
    def __init__(self) -> None:
        self.batches: list[list[Span]] = []

    def submit(self, spans: list[Span]) -> None:
        self.batches.append(spans)

    @property
    def spans(self) -> list[Span]:
        return [s for batch in self.batches for s in batch]

    def named(self, name: str) -> list[Span]:
        return [s for s in self.spans if s.name == name]


def attrs(span: Span) -> dict[str, object]:
    out: dict[str, object] = {}
    for a in span.attributes:
        kind = a.value.WhichOneof("value")
        assert kind is not None
        value = getattr(a.value, kind)
        out[a.key] = list(value.values) if kind == "array_value" else value
    return out


@dataclasses.dataclass
class PodRun:
    """The events of one pod, and the container records containerd holds for it."""

    envelopes: list[RawEnvelope]
    records: dict[tuple[str, str], ContainerInfo]
    sandbox_first_ns: int
    last_ready_ns: int


def _start(tl: Timeline, cid: str, image: str, *, after_ns: int) -> list[RawEnvelope]:
    # as the CRI plugin does it: the snapshot is named after the container
    return [
        tl.snapshot_prepare(cid, after_ns=after_ns),
        tl.container_create(cid, image=image, after_ns=4 * MS),
        tl.task_create(cid, after_ns=44 * MS),
        tl.task_start(cid, after_ns=9 * MS),
    ]


def pod_run(
    *, apps: tuple[tuple[str, str], ...] = ((APP_ID, "app"), (SIDECAR_ID, "sidecar"))
) -> PodRun:
    """RunPodSandbox, then CreateContainer/StartContainer for each app container, tens of
    milliseconds apart; each record was created just before its /containers/create."""
    tl = Timeline(start_ns=T0, ns=NS)
    envs = _start(tl, SANDBOX_ID, PAUSE_IMAGE, after_ns=0)
    records = {
        (NS, SANDBOX_ID): container_info(
            NS, sandbox_record(created_at_ns=envs[1].timestamp_ns - 50_000)
        )
    }
    for cid, name in apps:
        started = _start(tl, cid, APP_IMAGE, after_ns=30 * MS)
        records[(NS, cid)] = container_info(
            NS, app_record(cid, name, created_at_ns=started[1].timestamp_ns - 50_000)
        )
        envs += started
    return PodRun(envs, records, envs[0].timestamp_ns, envs[-1].timestamp_ns)


def replay_pipeline(
    lookup: Callable[[str, str], ContainerInfo],
) -> tuple[Pipeline, ListSink]:
    sink = ListSink()
    pipeline = Pipeline(
        Config(), sink, Counters(), clock=EventTimeClock(), lookup=lookup, lookup_async=False
    )
    return pipeline, sink


class Lookup:
    """Recorded container records by (namespace, id); counts the reads of each."""

    def __init__(self, records: dict[tuple[str, str], ContainerInfo]) -> None:
        self.records = records
        self.reads: Counter[str] = Counter()

    def __call__(self, namespace: str, container_id: str) -> ContainerInfo:
        self.reads[container_id] += 1
        try:
            return self.records[(namespace, container_id)]
        except KeyError:
            raise NotFound(f"{namespace}/{container_id}") from None


def replay(
    run: PodRun, records: dict[tuple[str, str], ContainerInfo] | None = None
) -> tuple[Pipeline, ListSink, Lookup]:
    lookup = Lookup(run.records if records is None else records)
    pipeline, sink = replay_pipeline(lookup)
    for env in run.envelopes:
        pipeline.feed(env)
    pipeline.finish()
    return pipeline, sink, lookup


def startup_of(sink: ListSink, container_id: str) -> Span:
    (span,) = [
        s
        for s in sink.named(semconv.SPAN_CONTAINER_STARTUP)
        if attrs(s)[semconv.CONTAINER_ID] == container_id
    ]
    return span


# -- a whole pod -------------------------------------------------------------------------------


def test_a_pod_is_one_pod_startup_over_three_container_startups_and_their_phases() -> None:
    pipeline, sink, _ = replay(pod_run())
    assert Counter(s.name for s in sink.spans) == {
        semconv.SPAN_POD_STARTUP: 1,
        semconv.SPAN_CONTAINER_STARTUP: 3,
        **{name: 3 for name in PHASES},
    }
    assert pipeline.counters.get(semconv.PODS_COMPLETED) == 1
    assert pipeline.counters.get(semconv.SPANS_EMITTED) == 16
    assert pipeline.counters.get(semconv.PIPELINE_ERRORS) == 0


def test_every_span_of_the_pod_is_in_the_trace_its_annotation_names() -> None:
    _, sink, _ = replay(pod_run())
    assert {s.trace_id.hex() for s in sink.spans} == {TRACE_ID}
    (pod,) = sink.named(semconv.SPAN_POD_STARTUP)
    assert pod.parent_span_id.hex() == PARENT_ID
    assert pod.flags == 0x01 | HAS_IS_REMOTE | IS_REMOTE
    roots = sink.named(semconv.SPAN_CONTAINER_STARTUP)
    assert {r.parent_span_id for r in roots} == {pod.span_id}
    assert all(r.flags == 0x01 | HAS_IS_REMOTE for r in roots)  # parent is ours, not remote
    root_ids = {r.span_id for r in roots}
    phases = [s for s in sink.spans if s.name in PHASES]
    assert len(phases) == 12 and all(s.parent_span_id in root_ids for s in phases)


def test_pod_startup_runs_from_the_sandbox_first_event_to_the_last_app_ready() -> None:
    run = pod_run()
    _, sink, _ = replay(run)
    (pod,) = sink.named(semconv.SPAN_POD_STARTUP)
    assert (pod.start_time_unix_nano, pod.end_time_unix_nano) == (
        run.sandbox_first_ns,
        run.last_ready_ns,
    )
    assert startup_of(sink, SANDBOX_ID).start_time_unix_nano == run.sandbox_first_ns
    assert startup_of(sink, SIDECAR_ID).end_time_unix_nano == run.last_ready_ns
    assert pod.status.code == Status.StatusCode.STATUS_CODE_UNSET
    assert attrs(pod) == {
        semconv.K8S_POD_NAME: POD_NAME,
        semconv.K8S_POD_UID: POD_UID,
        semconv.K8S_NAMESPACE_NAME: POD_NAMESPACE,
        semconv.CONTAINERD_NAMESPACE: NS,
        semconv.OB_POD_CONTAINERS: 2,
        semconv.OB_STARTUP_OUTCOME: "ready",
        semconv.OB_PARTIAL: False,
        semconv.OB_TRACE_CONTEXT_SOURCE: "pod_annotation:tracing.k8s.io/traceparent",
        semconv.OB_LINK_POLICY: "parent",
    }


def test_pod_span_ids_derive_from_the_sandbox_record() -> None:
    run = pod_run()
    _, sink, _ = replay(run)
    (pod,) = sink.named(semconv.SPAN_POD_STARTUP)
    created = run.records[(NS, SANDBOX_ID)].created_at_ns
    identity = ids.pod_identity(ContainerKey(NS, SANDBOX_ID), created)
    assert pod.span_id == ids.span_id(identity, semconv.SPAN_POD_STARTUP)


def test_container_startups_carry_the_k8s_attributes() -> None:
    _, sink, _ = replay(pod_run())
    sidecar = attrs(startup_of(sink, SIDECAR_ID))
    assert sidecar[semconv.CONTAINER_NAME] == sidecar[semconv.K8S_CONTAINER_NAME] == "sidecar"
    assert sidecar[semconv.K8S_CONTAINER_RESTART_COUNT] == 0
    assert sidecar[semconv.OB_CONTAINER_KIND] == "container"
    assert (sidecar[semconv.K8S_POD_NAME], sidecar[semconv.K8S_POD_UID]) == (POD_NAME, POD_UID)
    sandbox = attrs(startup_of(sink, SANDBOX_ID))
    assert sandbox[semconv.OB_CONTAINER_KIND] == "sandbox"
    assert sandbox[semconv.K8S_NAMESPACE_NAME] == POD_NAMESPACE


def test_the_sandbox_record_is_read_once_per_pod() -> None:
    _, _, lookup = replay(pod_run())
    assert lookup.reads == {SANDBOX_ID: 1, APP_ID: 1, SIDECAR_ID: 1}


def test_replaying_a_pod_twice_gives_the_same_spans() -> None:
    assert replay(pod_run())[1].spans == replay(pod_run())[1].spans


# -- when the pod is emitted -------------------------------------------------------------------


def test_pod_is_emitted_once_settle_time_of_event_time_passed() -> None:
    run = pod_run()
    lookup = Lookup(run.records)
    pipeline, sink = replay_pipeline(lookup)
    for env in run.envelopes:
        pipeline.feed(env)
    assert len(sink.named(semconv.SPAN_CONTAINER_STARTUP)) == 3
    assert sink.named(semconv.SPAN_POD_STARTUP) == []
    tl = Timeline(start_ns=run.last_ready_ns, ns=NS)
    pipeline.feed(tl.snapshot_prepare("unpack-1", after_ns=SETTLE_NS - MS))
    assert sink.named(semconv.SPAN_POD_STARTUP) == []
    # deadlines are checked every 100 ms of event time
    pipeline.feed(tl.snapshot_prepare("unpack-2", after_ns=200 * MS))
    assert len(sink.named(semconv.SPAN_POD_STARTUP)) == 1
    pipeline.finish()
    assert len(sink.named(semconv.SPAN_POD_STARTUP)) == 1


def test_finish_emits_a_pod_whose_settle_time_has_not_passed() -> None:
    run = pod_run()
    pipeline, sink = replay_pipeline(Lookup(run.records))
    for env in run.envelopes:
        pipeline.feed(env)
    assert sink.named(semconv.SPAN_POD_STARTUP) == []
    pipeline.finish()
    (pod,) = sink.named(semconv.SPAN_POD_STARTUP)
    assert pod.end_time_unix_nano == run.last_ready_ns
    assert attrs(pod)[semconv.OB_STARTUP_OUTCOME] == "ready"


def test_a_container_of_the_pod_created_after_it_was_reported_is_in_its_trace() -> None:
    # CRI restarts a container as a new container with the next attempt number
    run = pod_run()
    lookup = Lookup(run.records)
    pipeline, sink = replay_pipeline(lookup)
    for env in run.envelopes:
        pipeline.feed(env)
    tl = Timeline(start_ns=run.last_ready_ns, ns=NS)
    restarted = _start(tl, RESTARTED_ID, APP_IMAGE, after_ns=SETTLE_NS + 500 * MS)
    run.records[(NS, RESTARTED_ID)] = container_info(
        NS, app_record(RESTARTED_ID, "app", attempt=1, created_at_ns=restarted[1].timestamp_ns)
    )
    for env in restarted:
        pipeline.feed(env)
    pipeline.finish()
    (pod,) = sink.named(semconv.SPAN_POD_STARTUP)
    assert pod.end_time_unix_nano == run.last_ready_ns  # not moved by the restart
    assert attrs(pod)[semconv.OB_POD_CONTAINERS] == 2
    root = startup_of(sink, RESTARTED_ID)
    assert (root.trace_id, root.parent_span_id) == (pod.trace_id, pod.span_id)
    assert attrs(root)[semconv.K8S_CONTAINER_RESTART_COUNT] == 1


# -- pods the bridge saw only in part ----------------------------------------------------------


def test_app_containers_whose_sandbox_cannot_be_read_are_podless() -> None:
    run = pod_run()
    records = {k: v for k, v in run.records.items() if k != (NS, SANDBOX_ID)}
    pipeline, sink, lookup = replay(run, records)
    assert sink.named(semconv.SPAN_POD_STARTUP) == []
    assert pipeline.counters.get(semconv.PODS_COMPLETED) == 0
    assert pipeline.counters.get(semconv.PIPELINE_ERRORS) == 0
    roots = sink.named(semconv.SPAN_CONTAINER_STARTUP)
    assert len(roots) == 3
    assert all(r.parent_span_id == b"" for r in roots)
    assert len({r.trace_id for r in roots}) == 3  # each its own trace
    assert TRACE_ID not in {r.trace_id.hex() for r in roots}
    assert len(sink.spans) == 15
    assert lookup.reads[SANDBOX_ID] >= 1


def test_podless_app_container_keeps_its_container_name() -> None:
    run = pod_run()
    records = {k: v for k, v in run.records.items() if k != (NS, SANDBOX_ID)}
    _, sink, _ = replay(run, records)
    assert attrs(startup_of(sink, APP_ID))[semconv.CONTAINER_NAME] == "app"


def test_podless_app_container_still_has_the_k8s_facts_of_its_own_record() -> None:
    # docs/telemetry.md: k8s.pod.name, k8s.pod.uid, k8s.namespace.name, k8s.container.name
    # for pods; the app container's own record holds all of them (OCI annotations)
    run = pod_run()
    records = {k: v for k, v in run.records.items() if k != (NS, SANDBOX_ID)}
    _, sink, _ = replay(run, records)
    a = attrs(startup_of(sink, APP_ID))
    assert {k: a.get(k) for k in K8S_KEYS} == {
        semconv.K8S_POD_NAME: POD_NAME,
        semconv.K8S_POD_UID: POD_UID,
        semconv.K8S_NAMESPACE_NAME: POD_NAMESPACE,
        semconv.K8S_CONTAINER_NAME: "app",
        semconv.K8S_CONTAINER_RESTART_COUNT: 0,
    }


def test_a_pod_whose_sandbox_events_were_missed_is_reported_partial() -> None:
    run = pod_run()
    envs = [e for e in run.envelopes if not e.payload.count(SANDBOX_ID.encode())]
    assert len(envs) == len(run.envelopes) - 4
    missed = dataclasses.replace(run, envelopes=envs)
    pipeline, sink, lookup = replay(missed)
    (pod,) = sink.named(semconv.SPAN_POD_STARTUP)
    created = run.records[(NS, SANDBOX_ID)].created_at_ns
    assert (pod.start_time_unix_nano, pod.end_time_unix_nano) == (created, run.last_ready_ns)
    a = attrs(pod)
    assert (a[semconv.OB_PARTIAL], a[semconv.OB_POD_CONTAINERS]) == (True, 2)
    assert a[semconv.OB_STARTUP_OUTCOME] == "ready"
    assert pod.trace_id.hex() == TRACE_ID
    roots = sink.named(semconv.SPAN_CONTAINER_STARTUP)
    assert len(roots) == 2
    assert {r.parent_span_id for r in roots} == {pod.span_id}
    assert lookup.reads[SANDBOX_ID] == 1  # read for the first app container, then cached
    assert pipeline.counters.get(semconv.PIPELINE_ERRORS) == 0


# -- recordings --------------------------------------------------------------------------------


def recording_lines(run: PodRun) -> list[str]:
    """As the Recorder writes them: a container's record just before its create."""
    lines = [header_line()]
    for env in run.envelopes:
        if env.topic == "/containers/create":
            cid = next(cid for (_, cid) in run.records if env.payload.count(cid.encode()))
            lines.append(container_line(run.records[(NS, cid)]))
        lines.append(envelope_line(env))
    return lines


def test_a_recording_keeps_the_cri_facts() -> None:
    run = pod_run()
    recording = Recording()
    counters = Counters()
    envs = list(read_events(recording_lines(run), counters, recording))
    assert envs == run.envelopes
    assert counters.get(semconv.EVENTS_MALFORMED) == 0
    assert recording.containers.keys() == run.records.keys()
    for key, info in run.records.items():
        assert recording.containers[key].cri == info.cri
        assert recording.containers[key] == info


def test_replaying_a_recording_gives_the_spans_of_direct_lookups() -> None:
    run = pod_run()
    _, direct, _ = replay(run)
    # as `otelbridge replay` does it: records are admitted as they are read
    recording = Recording()
    pipeline, sink = replay_pipeline(recording.lookup)
    recording.admit = pipeline.enricher.admit
    for env in read_events(recording_lines(run), pipeline.counters, recording):
        pipeline.feed(env)
    pipeline.finish()
    assert len(sink.named(semconv.SPAN_POD_STARTUP)) == 1
    assert sink.spans == direct.spans


def test_two_pods_started_together_are_two_traces() -> None:
    other_sandbox = "d" * 64
    other_app = "e" * 64
    other_tp = "00-11112222333344445555666677778888-9999aaaabbbbcccc-01"
    run = pod_run(apps=((APP_ID, "app"),))
    tl = Timeline(start_ns=T0 + 7 * MS, ns=NS)
    other = _start(tl, other_sandbox, PAUSE_IMAGE, after_ns=0)
    other += _start(tl, other_app, APP_IMAGE, after_ns=30 * MS)
    records = dict(run.records)
    records[(NS, other_sandbox)] = container_info(
        NS,
        sandbox_record(
            other_sandbox,
            created_at_ns=other[1].timestamp_ns,
            metadata=sandbox_metadata(
                other_sandbox, annotations={"tracing.k8s.io/traceparent": other_tp}
            ),
        ),
    )
    records[(NS, other_app)] = container_info(
        NS, app_record(other_app, "app", sandbox_id=other_sandbox)
    )
    merged = sorted([*run.envelopes, *other], key=lambda e: e.timestamp_ns)
    _, sink, _ = replay(dataclasses.replace(run, envelopes=merged), records)
    pods = {s.trace_id.hex(): s for s in sink.named(semconv.SPAN_POD_STARTUP)}
    assert pods.keys() == {TRACE_ID, "11112222333344445555666677778888"}
    for cid, trace in [
        (SANDBOX_ID, TRACE_ID),
        (APP_ID, TRACE_ID),
        (other_sandbox, other_tp[3:35]),
        (other_app, other_tp[3:35]),
    ]:
        root = startup_of(sink, cid)
        assert (root.trace_id.hex(), root.parent_span_id) == (trace, pods[trace].span_id)


def sandbox_only(tl: Timeline, *, fail: bool = False) -> list[RawEnvelope]:
    envs = [
        tl.snapshot_prepare(SANDBOX_ID),
        tl.container_create(SANDBOX_ID, image=PAUSE_IMAGE, after_ns=4 * MS),
        tl.task_create(SANDBOX_ID, after_ns=44 * MS),
    ]
    if fail:
        envs.append(tl.task_exit(SANDBOX_ID, 128, after_ns=5 * MS))
    else:
        envs.append(tl.task_start(SANDBOX_ID, after_ns=9 * MS))
    return envs


def sandbox_records(envs: list[RawEnvelope]) -> dict[tuple[str, str], ContainerInfo]:
    created = envs[1].timestamp_ns - 50_000
    return {(NS, SANDBOX_ID): container_info(NS, sandbox_record(created_at_ns=created))}


def test_a_pod_without_app_containers_times_out_with_an_error() -> None:
    tl = Timeline(start_ns=T0, ns=NS)
    envs = sandbox_only(tl)
    pipeline, sink = replay_pipeline(Lookup(sandbox_records(envs)))
    for env in envs:
        pipeline.feed(env)
    timeout_ns = int(pipeline.config.correlate.startup_timeout_s * S)
    pipeline.feed(tl.snapshot_prepare("unpack-1", after_ns=timeout_ns - S))
    assert sink.named(semconv.SPAN_POD_STARTUP) == []
    pipeline.feed(tl.snapshot_prepare("unpack-2", after_ns=2 * S))
    (pod,) = sink.named(semconv.SPAN_POD_STARTUP)
    assert attrs(pod)[semconv.OB_STARTUP_OUTCOME] == "timeout"
    assert attrs(pod)[semconv.OB_POD_CONTAINERS] == 0
    assert pod.status.code == Status.StatusCode.STATUS_CODE_ERROR
    assert pod.start_time_unix_nano == envs[0].timestamp_ns


def test_a_timed_out_pod_encloses_its_sandbox_startup() -> None:
    tl = Timeline(start_ns=T0, ns=NS)
    envs = sandbox_only(tl)
    pipeline, sink = replay_pipeline(Lookup(sandbox_records(envs)))
    for env in envs:
        pipeline.feed(env)
    pipeline.finish()
    (pod,) = sink.named(semconv.SPAN_POD_STARTUP)
    sandbox = startup_of(sink, SANDBOX_ID)
    assert pod.start_time_unix_nano <= sandbox.start_time_unix_nano
    assert pod.end_time_unix_nano >= sandbox.end_time_unix_nano


def test_a_failed_sandbox_ends_its_pod_as_failed() -> None:
    tl = Timeline(start_ns=T0, ns=NS)
    envs = sandbox_only(tl, fail=True)
    pipeline, sink = replay_pipeline(Lookup(sandbox_records(envs)))
    for env in envs:
        pipeline.feed(env)
    assert attrs(startup_of(sink, SANDBOX_ID))[semconv.OB_STARTUP_OUTCOME] == "exited"
    pipeline.feed(tl.snapshot_prepare("unpack-1", after_ns=S))
    (pod,) = sink.named(semconv.SPAN_POD_STARTUP)  # not after the 300 s startup timeout
    assert attrs(pod)[semconv.OB_STARTUP_OUTCOME] == "failed"
    assert pod.status.code == Status.StatusCode.STATUS_CODE_ERROR


def test_a_pod_whose_sandbox_was_seen_in_part_starts_at_its_creation_time() -> None:
    run = pod_run()
    envs = run.envelopes[2:]  # the bridge started after the sandbox's create
    assert envs[0].topic == "/tasks/create"
    _, sink, _ = replay(dataclasses.replace(run, envelopes=envs))
    (pod,) = sink.named(semconv.SPAN_POD_STARTUP)
    assert attrs(pod)[semconv.OB_PARTIAL] is True
    assert pod.start_time_unix_nano == run.records[(NS, SANDBOX_ID)].created_at_ns


def test_a_recording_started_after_the_sandbox_replays_the_pod_as_live_does() -> None:
    run = pod_run()
    envs = run.envelopes[4:]  # the sandbox was running before the recording began
    lookup = Lookup(run.records)
    # the recorder taps a pipeline reading records as a live one does
    out = io.StringIO()
    recorder = Recorder(out, Counters())
    recorder.header()
    live, live_sink = replay_pipeline(lookup)
    live.tap = recorder.item
    live.records.on_read = recorder.record
    for env in envs:
        live.feed(env)
    live.finish()
    assert len(live_sink.named(semconv.SPAN_POD_STARTUP)) == 1
    recording = Recording()
    pipeline, sink = replay_pipeline(recording.lookup)
    recording.admit = pipeline.enricher.admit
    for env in read_events(out.getvalue().splitlines(), pipeline.counters, recording):
        pipeline.feed(env)
    pipeline.finish()
    assert len(sink.named(semconv.SPAN_POD_STARTUP)) == 1
    assert sink.spans == live_sink.spans
