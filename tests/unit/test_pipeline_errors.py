"""A bug in a stage costs the item it was processing, never the pipeline."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otelbridge.core import semconv
from otelbridge.core.config import Config
from otelbridge.core.counters import Counters
from otelbridge.core.model import LifecycleEvent, StartupRecord
from otelbridge.pipeline import Pipeline
from otelbridge.testing.events import Timeline


class Sink:
    def __init__(self) -> None:
        self.spans: list[Span] = []

    def submit(self, spans: list[Span]) -> None:
        # startups only: a removed container's snapshot.reclaim is covered elsewhere
        self.spans.extend(s for s in spans if s.name != semconv.SPAN_SNAPSHOT_RECLAIM)


def test_a_raising_stage_is_counted_and_the_other_containers_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink, counters = Sink(), Counters()
    pipeline = Pipeline(Config(), sink, counters)
    process = pipeline.correlator.process

    def buggy(event: LifecycleEvent) -> Sequence[StartupRecord]:
        if event.subject == "bad":
            raise RuntimeError("a bug")
        return process(event)

    pipeline.correlator.process = buggy  # type: ignore[method-assign]
    timeline = Timeline()
    for envelope in timeline.run_container("bad") + timeline.run_container("good"):
        pipeline.feed(envelope)
    pipeline.finish()

    assert counters.get(semconv.PIPELINE_ERRORS) == 8
    assert len(sink.spans) == 5
    assert "could not process" in caplog.text
