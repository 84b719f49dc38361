"""The readiness seam: a started container waits for its readiness source's verdict.

The source here is a scripted stand-in implementing the ReadinessSource protocol; the
real probe and kubernetes sources have their own tests.
"""

from __future__ import annotations

from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otelbridge.core import semconv
from otelbridge.core.clock import FakeClock
from otelbridge.core.config import Config, CorrelateConfig
from otelbridge.core.counters import Counters
from otelbridge.core.model import ContainerInfo, ContainerKey, Outcome, ReadySignal, StartupRecord
from otelbridge.pipeline import Pipeline
from otelbridge.readiness import ReadinessRequest, Report
from otelbridge.testing.events import Timeline

MS = 1_000_000


class Scripted:
    """Applies to containers with a readiness target; remembers what it was asked."""

    name = "scripted"

    def __init__(self) -> None:
        self.watched: list[ReadinessRequest] = []
        self.reports: list[Report] = []
        self.cancelled: list[ContainerKey] = []

    def applies(self, info: ContainerInfo) -> bool:
        return bool(info.readiness)

    def watch(self, request: ReadinessRequest, report: Report) -> None:
        self.watched.append(request)
        self.reports.append(report)

    def cancel(self, key: ContainerKey) -> None:
        self.cancelled.append(key)

    def start(self) -> None:
        pass

    def shutdown(self) -> None:
        pass


class Sink:
    def __init__(self) -> None:
        self.spans: list[Span] = []

    def submit(self, spans: list[Span]) -> None:
        self.spans.extend(spans)


def lookup(namespace: str, container_id: str) -> ContainerInfo:
    labels = {"otelbridge.io/readiness": "tcp://127.0.0.1:1"} if "probed" in container_id else {}
    return ContainerInfo(namespace=namespace, id=container_id, labels=labels)


def pipeline(source: Scripted) -> tuple[Pipeline, list[StartupRecord], Counters]:
    done: list[StartupRecord] = []
    counters = Counters()
    p = Pipeline(
        Config(correlate=CorrelateConfig(startup_timeout_s=60)),
        Sink(),
        counters,
        clock=FakeClock(),
        lookup=lookup,
        lookup_async=False,
        readiness_sources=[source],
        on_record=lambda record, _spans: done.append(record),
    )
    return p, done, counters


def test_a_container_with_a_target_waits_for_its_sources_verdict() -> None:
    source = Scripted()
    p, done, _ = pipeline(source)
    envs = Timeline().run_container("probed", remove=False)[:4]
    for env in envs:
        p.feed(env)
    assert done == []  # started, not ready yet
    [request] = source.watched
    assert request.key.id == "probed" and request.started_ns == envs[3].timestamp_ns
    ready_at = envs[3].timestamp_ns + 750 * MS
    p.feed(ReadySignal(request.key, request.attempt, ready_at, "scripted"))
    [record] = done
    assert record.outcome is Outcome.READY
    assert record.ready_ns == ready_at and record.readiness_source == "scripted"


def test_a_container_without_a_target_is_ready_when_started() -> None:
    p, done, _ = pipeline(Scripted())
    for env in Timeline().run_container("plain", remove=False)[:4]:
        p.feed(env)
    [record] = done
    assert record.outcome is Outcome.READY and record.readiness_source == "started"


def test_a_source_giving_up_ends_the_startup_not_ready_with_an_error() -> None:
    source = Scripted()
    p, done, _ = pipeline(source)
    envs = Timeline().run_container("probed", remove=False)[:4]
    for env in envs:
        p.feed(env)
    [request] = source.watched
    p.feed(ReadySignal(request.key, 1, envs[3].timestamp_ns + 2_000 * MS, "scripted", ok=False))
    [record] = done
    assert record.outcome is Outcome.NOT_READY and record.ready_ns is None
    root = next(s for s in p.emitter._sink.spans if s.name == semconv.SPAN_CONTAINER_STARTUP)  # type: ignore[attr-defined]
    assert root.status.code == root.status.STATUS_CODE_ERROR
    wait = next(s for s in p.emitter._sink.spans if s.name == semconv.SPAN_READINESS_WAIT)  # type: ignore[attr-defined]
    assert wait.status.code == wait.status.STATUS_CODE_ERROR  # it began and never ended


def test_an_exit_while_waiting_ends_it_exited_and_cancels_the_watch() -> None:
    source = Scripted()
    p, done, _ = pipeline(source)
    tl = Timeline()
    for env in tl.run_container("probed", remove=False)[:4]:
        p.feed(env)
    p.feed(tl.task_exit("probed", status=1, after_ns=10 * MS))
    [record] = done
    assert record.outcome is Outcome.EXITED
    assert source.cancelled == [ContainerKey("default", "probed")]


def test_a_late_or_foreign_verdict_is_ignored() -> None:
    source = Scripted()
    p, done, counters = pipeline(source)
    envs = Timeline().run_container("probed", remove=False)[:4]
    for env in envs:
        p.feed(env)
    [request] = source.watched
    p.feed(ReadySignal(request.key, 2, envs[3].timestamp_ns, "scripted"))  # other attempt
    p.feed(ReadySignal(ContainerKey("default", "nobody"), 1, 1, "scripted"))
    assert done == []
    p.feed(ReadySignal(request.key, 1, envs[3].timestamp_ns + MS, "scripted"))
    p.feed(ReadySignal(request.key, 1, envs[3].timestamp_ns + 2 * MS, "scripted"))  # twice
    assert len(done) == 1
    assert counters.get(semconv.PIPELINE_ERRORS) == 0


def test_a_recording_replays_the_live_readiness_verdicts() -> None:
    """Defect 8: a recording replayed every startup with readiness ``started`` although
    live it was decided by a source: now every verdict is recorded and replayed."""
    import io  # noqa: PLC0415

    from otelbridge.app import build_replay  # noqa: PLC0415
    from otelbridge.source.recording import Recorder, Recording, open_items  # noqa: PLC0415

    source = Scripted()
    live, live_done, _ = pipeline(source)
    out = io.StringIO()
    recorder = Recorder(out, Counters())
    recorder.header()
    live.tap = recorder.item
    live.records.on_read = recorder.record
    timeline = Timeline()
    probed = timeline.run_container("probed", remove=False)[:4]
    plain = timeline.run_container("plain", remove=False)[:4]
    for env in probed + plain:
        live.feed(env)
    [request] = source.watched
    live.feed(ReadySignal(request.key, 1, probed[3].timestamp_ns + 1_500 * MS, "scripted"))
    live.finish()
    assert sorted(r.readiness_source for r in live_done) == ["scripted", "started"]

    recording = Recording()
    items = open_items(out.getvalue().splitlines(), Counters(), recording)
    assert recording.verdicts
    replay = build_replay(
        Config(correlate=CorrelateConfig(startup_timeout_s=60)),
        recording.lookup,
        environ={"OTEL_TRACES_EXPORTER": "none"},
        recorded_verdicts=True,
    )
    replayed: list[StartupRecord] = []
    replay.pipeline.emitter._on_record = lambda record, _spans: replayed.append(record)
    recording.admit = replay.pipeline.enricher.admit
    replay.run(items)
    assert [(r.key, r.readiness_source, r.ready_ns, r.outcome) for r in replayed] == [
        (r.key, r.readiness_source, r.ready_ns, r.outcome) for r in live_done
    ]
