"""Property: no sequence of events, however scrambled or corrupt, trips the pipeline.

Events of a few containers are generated in any order, duplicated, with garbage payloads
and odd timestamps; the pipeline must never hit its bug counter, and every span it emits
must be well formed (non-zero ids, end not before start).
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otelbridge.core import semconv
from otelbridge.core.config import Config
from otelbridge.core.counters import Counters
from otelbridge.core.model import RawEnvelope
from otelbridge.decode import TYPE_URL_FOR_TOPIC
from otelbridge.pipeline import Pipeline
from otelbridge.testing.events import Timeline

IDS = ("a", "b", "c")
BUILDERS = (
    "snapshot_prepare",
    "container_create",
    "task_create",
    "task_start",
    "task_exit",
    "task_delete",
    "task_oom",
    "snapshot_remove",
    "container_delete",
)

valid = st.tuples(st.sampled_from(BUILDERS), st.sampled_from(IDS), st.integers(0, 3_000_000_000))
garbage = st.tuples(
    st.sampled_from([*sorted(TYPE_URL_FOR_TOPIC), "/tasks/paused", "/bogus"]),
    st.binary(max_size=40),
    st.integers(-5, 2**63),
)
steps = st.lists(st.one_of(valid, garbage), max_size=60)


class Sink:
    def __init__(self) -> None:
        self.spans: list[Span] = []

    def submit(self, spans: list[Span]) -> None:
        self.spans.extend(spans)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps)
def test_any_event_sequence_is_handled_without_a_bug(plan: list[tuple[object, ...]]) -> None:
    sink, counters = Sink(), Counters()
    pipeline = Pipeline(Config(), sink, counters)
    timeline = Timeline()
    for step in plan:
        if step[0] in BUILDERS:
            builder, cid, gap = step
            envelope = getattr(timeline, str(builder))(cid, after_ns=int(gap))  # type: ignore[arg-type]
        else:
            topic, payload, ts = step
            envelope = RawEnvelope(
                int(ts),
                "default",
                str(topic),
                TYPE_URL_FOR_TOPIC.get(str(topic), ""),
                bytes(payload),  # type: ignore[arg-type]
            )
        pipeline.feed(envelope)
    pipeline.finish()
    assert counters.get(semconv.PIPELINE_ERRORS) == 0
    for span in sink.spans:
        assert len(span.trace_id) == 16 and any(span.trace_id)
        assert len(span.span_id) == 8 and any(span.span_id)
        assert span.end_time_unix_nano >= span.start_time_unix_nano
