"""After a bridge or containerd restart, re-sent events do not make new startups.

A shim retries forwarding an event up to 5 times over a containerd restart, with the
event's original timestamp (TESTBED.md): the bridge may see a /tasks/exit (or any event)
twice, the second time after its own restart from a checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otelbridge.core import semconv
from otelbridge.core.clock import FakeClock
from otelbridge.core.config import Config
from otelbridge.core.counters import Counters
from otelbridge.core.model import RawEnvelope
from otelbridge.export.spool import StateStore
from otelbridge.pipeline import Pipeline
from otelbridge.testing.events import Timeline


def durable_pipeline(state: Path, counters: Counters) -> tuple[Pipeline, StateStore]:
    store = StateStore(state, counters, max_spool_bytes=2**20)
    return Pipeline(Config(), store, counters, clock=FakeClock(), store=store), store


def spooled_startups(store: StateStore) -> list[Span]:
    spans = [Span.FromString(data) for _, data in store.peek(10_000)]
    return [s for s in spans if s.name == semconv.SPAN_CONTAINER_STARTUP]


def test_a_task_exit_sent_again_after_a_restart_makes_no_new_startup(tmp_path: Path) -> None:
    timeline = Timeline()
    life = timeline.run_container("web", remove=False)  # ... /tasks/start, /tasks/exit
    exit_event: RawEnvelope = life[-1]

    counters = Counters()
    first, store = durable_pipeline(tmp_path, counters)
    first.restore()
    for envelope in life:
        first.feed(envelope)
    first.checkpoint()
    assert len(spooled_startups(store)) == 1
    store.close()  # the bridge stops (or dies after the commit)

    counters = Counters()
    second, store = durable_pipeline(tmp_path, counters)
    second.restore()
    second.feed(exit_event)  # the shim forwards it again, original timestamp
    second.feed(exit_event)
    second.tick()
    second.checkpoint()

    assert len(spooled_startups(store)) == 1  # still the one startup
    assert counters.get(semconv.STARTUPS_COMPLETED) == 0
    assert counters.get(semconv.PIPELINE_ERRORS) == 0
