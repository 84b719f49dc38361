"""The live pipeline's threads: shutdown, lookups, a failing source.

The source here is a scripted stand-in that offers prepared envelopes (the real one, on a
real containerd, is covered by tests/integration); lookups are plain functions.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otelbridge.core import semconv
from otelbridge.core.clock import SystemClock
from otelbridge.core.config import Config, CorrelateConfig, EnrichConfig
from otelbridge.core.counters import Counters
from otelbridge.core.model import ContainerInfo, Outcome, RawEnvelope, StartupRecord
from otelbridge.pipeline import Pipeline, SourceItem
from otelbridge.testing.events import Timeline


class Sink:
    def __init__(self) -> None:
        self.spans: list[Span] = []

    def submit(self, spans: list[Span]) -> None:
        self.spans.extend(spans)


class ScriptedSource:
    """Offers ``before``, waits for stop, then offers ``after`` (as a gRPC read in flight
    when the stop came would)."""

    def __init__(self, before: list[RawEnvelope], after: list[RawEnvelope] = ()) -> None:  # type: ignore[assignment]
        self.before = before
        self.after = list(after)
        self.offered = threading.Event()

    def run(self, sink: Callable[[SourceItem], None], stop: threading.Event) -> None:
        for env in self.before:
            sink(env)
        self.offered.set()
        stop.wait()
        time.sleep(0.1)
        for env in self.after:
            sink(env)


def records_of(
    sink: list[tuple[StartupRecord, list[Span]]],
) -> Callable[[StartupRecord, list[Span]], None]:
    return lambda record, spans: sink.append((record, spans))


def test_what_the_source_queued_while_stopping_is_still_processed() -> None:
    tl = Timeline()
    envs = tl.run_container("c1", remove=False)[:4]  # prepare, create, task create, start
    source = ScriptedSource(envs[:3], after=envs[3:])
    done: list[tuple[StartupRecord, list[Span]]] = []
    pipeline = Pipeline(
        Config(), Sink(), Counters(), clock=SystemClock(), on_record=records_of(done)
    )
    pipeline.start(source)
    assert source.offered.wait(5)
    pipeline.shutdown()
    [(record, _)] = done
    assert record.outcome is Outcome.READY  # not "incomplete": the late /tasks/start counted


def test_shutdown_waits_once_for_hanging_lookups_not_once_per_startup() -> None:
    release = threading.Event()

    def hanging_lookup(namespace: str, container_id: str) -> ContainerInfo:
        release.wait(30)
        return ContainerInfo(namespace=namespace, id=container_id)

    tl = Timeline()
    envs = [e for i in range(20) for e in tl.run_container(f"c{i}", remove=False)[:3]]
    counters = Counters()
    config = Config(enrich=EnrichConfig(metadata_timeout_s=0.2, lookup_workers=2))
    pipeline = Pipeline(config, Sink(), counters, clock=SystemClock(), lookup=hanging_lookup)
    source = ScriptedSource(envs)
    pipeline.start(source)
    assert source.offered.wait(5)
    started = time.monotonic()
    pipeline.shutdown()
    elapsed = time.monotonic() - started
    release.set()
    # one bounded wait in all (20 waits of 0.2 s each would be 4 s)
    assert elapsed < 2.0
    assert counters.get(semconv.STARTUPS_COMPLETED) == 20
    assert counters.get(semconv.METADATA_LATE) == 20


def test_a_source_that_dies_stops_the_pipeline_and_says_so() -> None:
    class Dying:
        def run(self, sink: Callable[[SourceItem], None], stop: threading.Event) -> None:
            raise RuntimeError("unexpected")

    pipeline = Pipeline(Config(), Sink(), Counters(), clock=SystemClock())
    pipeline.start(Dying())
    assert pipeline.stopped.wait(5)
    assert pipeline.failed
    pipeline.shutdown()


def test_container_records_arrive_from_the_lookup_threads() -> None:
    info = ContainerInfo(
        namespace="default",
        id="c1",
        created_at_ns=1_600_000_000_000_000_000,
        labels={"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
    )
    tl = Timeline()
    done: list[tuple[StartupRecord, list[Span]]] = []
    pipeline = Pipeline(
        Config(),
        Sink(),
        Counters(),
        clock=SystemClock(),
        lookup=lambda ns, cid: info,
        on_record=records_of(done),
    )
    source = ScriptedSource(tl.run_container("c1", remove=False)[:4])
    pipeline.start(source)
    assert source.offered.wait(5)
    deadline = time.monotonic() + 5
    while not done and time.monotonic() < deadline:
        time.sleep(0.01)
    pipeline.shutdown()
    [(record, spans)] = done
    assert record.info is not None and record.info.trace is not None  # admitted
    assert spans[0].trace_id.hex() == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert record.incarnation_ns == info.created_at_ns  # the record's identity wins


def test_an_envelope_dated_far_in_the_future_is_malformed_and_moves_no_clock() -> None:
    tl = Timeline(start_ns=time.time_ns())
    counters = Counters()
    done: list[tuple[StartupRecord, list[Span]]] = []
    pipeline = Pipeline(
        Config(correlate=CorrelateConfig(startup_timeout_s=60)),
        Sink(),
        counters,
        on_record=records_of(done),
    )
    envs = tl.run_container("ok", remove=False)[:4]
    future = Timeline(start_ns=time.time_ns() + 70 * 365 * 86400 * 10**9).task_oom("x")
    for env in [*envs[:2], future, *envs[2:]]:
        pipeline.feed(env)
    pipeline.finish()
    [(record, _)] = done
    assert record.outcome is Outcome.READY
    assert counters.get(semconv.EVENTS_MALFORMED) == 1
