"""The aggregator: startup spans (as the bridge builds them) in, per rollout and per
namespace documents out; order, duplicates, splits across replicas, bounds.

Spans come from :func:`otelbridge.emit.spans.build_startup_spans` over startup records, so
they are shaped exactly as the bridge emits them; time ("now") is a FakeClock.
"""

from __future__ import annotations

import random
import threading
import tracemalloc
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from otelbridge import sla
from otelbridge.core import semconv
from otelbridge.core.clock import FakeClock
from otelbridge.core.config import Config, GateConfig, ProcessorConfig
from otelbridge.core.counters import Counters
from otelbridge.core.model import AttrValue, ContainerKey, Enrichment, Outcome, StartupRecord
from otelbridge.core.tracecontext import TraceContext
from otelbridge.emit.spans import build_startup_spans, provisioning_span
from otelbridge.processor.aggregate import Aggregator
from otelbridge.processor.sketch import RELATIVE_ACCURACY
from otelbridge.processor.store import RolloutStore
from otelbridge.processor.verdict import merge_documents

S = 1_000_000_000
MS = 1_000_000
T0 = 1_700_000_000 * S
CONFIG = Config()
COUNTERS = semconv.PROCESSOR_COUNTERS


# -- builders (test_store.py uses them too) ------------------------------------------------------
def trace_of(n: int) -> bytes:
    return (0x4BF92F3577B34DA6A3CE929D0E0E0000 + n).to_bytes(16, "big")


def context(n: int) -> TraceContext:
    return TraceContext(trace_of(n), (0xA1 << 56 | n + 1).to_bytes(8, "big"), 1)


def startup(
    rollout: int,
    i: int,
    *,
    ns: str = "default",
    create_ms: float = 4,
    shim_ms: float = 50,
    task_ms: float = 10,
    wait_ms: float = 100,
    outcome: Outcome = Outcome.READY,
    partial: bool = False,
    k8s: str | None = None,
    pod: str | None = None,
    parent: bool = True,
    shim_done: bool = True,
) -> list[Span]:
    """The spans of one startup of rollout ``rollout`` (its trace), container ``c{i}``:
    container.startup first, then its phases, as the bridge emits them."""
    t = T0 + i * 10 * MS
    key = ContainerKey(ns, f"c{i}")
    rec = StartupRecord(key, t, outcome=outcome, partial=partial)
    if not partial:
        rec.snapshot_prepare_ns = t
    rec.container_create_ns = t + int(create_ms * MS)
    rec.task_create_ns = rec.container_create_ns + int(shim_ms * MS)
    rec.task_start_ns = rec.task_create_ns + int(task_ms * MS)
    if not shim_done:  # deleted while the shim launched: shim.launch ends in ERROR
        rec.end_ns, rec.task_create_ns, rec.task_start_ns = rec.task_create_ns, None, None
    elif outcome is Outcome.READY:
        rec.ready_ns = rec.task_start_ns + int(wait_ms * MS)
        rec.end_ns = rec.ready_ns
    else:
        rec.end_ns = rec.task_start_ns + int(wait_ms * MS)
    attrs: list[tuple[str, AttrValue]] = [
        (semconv.CONTAINER_ID, key.id),
        (semconv.CONTAINER_NAME, key.id),
        (semconv.CONTAINER_RUNTIME_NAME, semconv.CONTAINER_RUNTIME_VALUE),
        (semconv.CONTAINERD_NAMESPACE, ns),
        (semconv.OB_STARTUP_OUTCOME, outcome.value),
        (semconv.OB_STARTUP_ATTEMPT, 1),
        (semconv.OB_PARTIAL, partial),
        (semconv.OB_READINESS_SOURCE, "probe"),
        (semconv.CONTAINER_IMAGE_NAME, "localhost/otelbridge-busybox"),
        (semconv.CONTAINERD_RUNTIME_NAME, "io.containerd.runc.v2"),
        (semconv.CONTAINERD_SNAPSHOTTER, "overlayfs"),
        (semconv.PROCESS_PID, 4242 + i),
    ]
    if k8s is not None:
        attrs.append((semconv.K8S_NAMESPACE_NAME, k8s))
    if pod is not None:
        attrs.append((semconv.K8S_POD_NAME, pod))
    enrichment = Enrichment(
        attributes=attrs,
        phase_attributes=[(semconv.CONTAINER_ID, key.id), (semconv.CONTAINERD_NAMESPACE, ns)],
        parent=context(rollout) if parent else None,
    )
    return build_startup_spans(rec, enrichment)


def rollout_span(n: int, name: str) -> Span:
    return provisioning_span(
        context(n),
        name=semconv.SPAN_ROLLOUT,
        start_ns=T0 - S,
        end_ns=T0 + 60 * S,
        attributes=[(semconv.OB_ROLLOUT_NAME, name)],
    )


def request(spans: Iterable[Span], per_scope: int = 512) -> ExportTraceServiceRequest:
    spans = list(spans)
    scopes = [ScopeSpans(spans=spans[i : i + per_scope]) for i in range(0, len(spans), per_scope)]
    return ExportTraceServiceRequest(resource_spans=[ResourceSpans(scope_spans=scopes)])


def aggregator(
    config: Config = CONFIG, *, clock: FakeClock | None = None, store: RolloutStore | None = None
) -> tuple[Aggregator, Counters, FakeClock]:
    clock = clock or FakeClock(T0)
    counters = Counters(COUNTERS)
    return Aggregator(config, counters, clock=clock, store=store), counters, clock


def fed(spans: Sequence[Span], config: Config = CONFIG, batch: int = 512) -> Aggregator:
    agg, _, _ = aggregator(config)
    for i in range(0, len(spans), batch):
        agg.ingest(request(spans[i : i + batch]))
    return agg


def fast_rollout(n: int = 20, rollout: int = 1, **kw: Any) -> list[Span]:
    return [span for i in range(n) for span in startup(rollout, i, **kw)]


def p99s(doc: dict[str, Any]) -> dict[str, float | None]:
    return {d: doc["budgets"][d]["p99_s"] for d in sla.DURATIONS}


def held_rollouts(agg: Aggregator) -> set[str]:
    """The trace IDs the gauges report a rollout for."""
    key = semconv.OB_ROLLOUT_TRACE_ID
    return {labels[key] for _, labels, _ in agg.gauges() if key in labels}


def with_config(**sections: Any) -> Config:
    return replace(CONFIG, **sections)


# -- order and duplicates -----------------------------------------------------------------------
def test_a_fast_rollout_passes_with_every_count_and_budget() -> None:
    agg = fed([rollout_span(1, "web-v2"), *fast_rollout(20)])
    doc = agg.rollout(trace_of(1), expect=20)
    assert doc["verdict"] == "pass", doc["reasons"]
    assert (doc["trace_id"], doc["name"], doc["namespace"]) == (trace_of(1).hex(), "web-v2", None)
    assert (doc["startups"], doc["failed"], doc["partial"], doc["expect"]) == (20, 0, 0, 20)
    assert doc["coverage"] == 1.0 and doc["reasons"] == []
    budgets = doc["budgets"]
    assert {d: b["samples"] for d, b in budgets.items()} == dict.fromkeys(sla.DURATIONS, 20)
    assert budgets["startup_duration"]["p99_s"] == pytest.approx(0.164, rel=RELATIVE_ACCURACY)
    assert budgets["shim_launch_time"]["p99_s"] == pytest.approx(0.050, rel=RELATIVE_ACCURACY)
    assert budgets["task_create_to_ready"]["p99_s"] == pytest.approx(0.110, rel=RELATIVE_ACCURACY)
    assert [b["verdict"] for b in budgets.values()] == ["pass"] * 3
    assert [b["budget_s"] for b in budgets.values()] == [4.0, 2.0, 1.0]
    assert "sketches" not in doc
    (first, *_) = doc["slowest"]
    assert len(doc["slowest"]) == CONFIG.gate.slowest
    assert first["dominant_phase"] == "readiness.wait"
    assert first["phases"] == {
        "container.create": 0.004,
        "shim.launch": 0.05,
        "task.start": 0.01,
        "readiness.wait": 0.1,
    }
    assert first["namespace"] == "default" and first["trace_id"] == trace_of(1).hex()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32), copies=st.integers(1, 3), batch=st.integers(1, 40))
def test_out_of_order_and_duplicated_spans_give_the_document_of_in_order_once(
    seed: int, copies: int, batch: int
) -> None:
    rnd = random.Random(seed)
    spans = [rollout_span(1, "web")]
    for i in range(12):
        slow = rnd.random() < 0.3
        outcome = rnd.choice([Outcome.READY] * 5 + [Outcome.EXITED, Outcome.NOT_READY])
        spans += startup(1, i, wait_ms=1400 if slow else 100, outcome=outcome, k8s="shop")
    once = fed(spans)
    shuffled = [s for s in spans for _ in range(copies)]
    rnd.shuffle(shuffled)
    agg, counters, _ = aggregator()
    for i in range(0, len(shuffled), batch):
        agg.ingest(request(shuffled[i : i + batch]))
    for expect in (None, 12, 30):
        got = agg.rollout(trace_of(1), expect=expect, sketches=True)
        assert got == once.rollout(trace_of(1), expect=expect, sketches=True)
    assert agg.namespace("default", sketches=True) == once.namespace("default", sketches=True)
    assert agg.namespace("shop", sketches=True) == once.namespace("shop", sketches=True)
    assert counters.get(semconv.PROCESSOR_SPANS_DUPLICATE) == (copies - 1) * len(spans)
    assert counters.get(semconv.PROCESSOR_STARTUPS) == 12
    assert counters.get(semconv.PROCESSOR_SPANS_RECEIVED) == copies * len(spans)


def test_a_phase_that_arrives_after_its_startup_completes_its_durations() -> None:
    root, *phases = startup(1, 0)
    agg, _, _ = aggregator()
    agg.ingest(request([root]))
    before = agg.rollout(trace_of(1))["budgets"]
    assert [before[d]["samples"] for d in sla.DURATIONS] == [1, 0, 0]
    agg.ingest(request(phases[2:]))  # task.start, readiness.wait
    agg.ingest(request(phases[:2]))
    after = agg.rollout(trace_of(1))["budgets"]
    assert [after[d]["samples"] for d in sla.DURATIONS] == [1, 1, 1]


# -- accuracy -----------------------------------------------------------------------------------
durations_ms = st.lists(st.floats(0.5, 30_000, allow_nan=False), min_size=1, max_size=150)


@settings(max_examples=60, deadline=None)
@given(shim=durations_ms, wait=durations_ms)
def test_p99_of_each_duration_is_within_the_sketch_accuracy_of_the_exact_nearest_rank_p99(
    shim: list[float], wait: list[float]
) -> None:
    n = min(len(shim), len(wait))
    spans = [
        s
        for i in range(n)
        for s in startup(1, i, shim_ms=shim[i], wait_ms=wait[i], task_ms=2, create_ms=1)
    ]
    doc = fed(spans).rollout(trace_of(1))
    exact: dict[str, list[float]] = {d: [] for d in sla.DURATIONS}
    for i in range(n):  # what otelbridge.sla.durations computes of the same record
        create, sh, task, wt = MS, int(shim[i] * MS), 2 * MS, int(wait[i] * MS)
        exact["startup_duration"].append((create + sh + task + wt) / S)
        exact["shim_launch_time"].append(sh / S)
        exact["task_create_to_ready"].append((task + wt) / S)
    for duration, values in exact.items():
        got = doc["budgets"][duration]["p99_s"]
        assert got == pytest.approx(sla.p99(values), rel=RELATIVE_ACCURACY + 1e-9, abs=1e-6)


# -- merging the documents of replicas ------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    replicas=st.integers(1, 4),
    n=st.integers(0, 30),
    expect=st.sampled_from([None, 10, 25]),
)
def test_merging_the_documents_of_any_split_gives_the_document_of_the_whole(
    seed: int, replicas: int, n: int, expect: int | None
) -> None:
    """Each startup (its spans together, the way the Collector's loadbalancing exporter
    keeps a trace together) goes to one of 1-4 replicas, chosen at random; so does the
    rollout span. A split of one startup's spans could not be merged: its durations need
    pieces of several spans."""
    rnd = random.Random(seed)
    groups = [[rollout_span(1, "web")]]
    for i in range(n):
        groups.append(
            startup(
                1,
                i,
                ns=rnd.choice(["default", "k8s.io"]),
                shim_ms=rnd.uniform(1, 3000),
                wait_ms=rnd.choice([rnd.uniform(1, 500), rnd.uniform(900, 2500)]),
                outcome=rnd.choice([Outcome.READY] * 8 + [Outcome.EXITED, Outcome.TIMEOUT]),
                partial=rnd.random() < 0.1,
            )
        )
    config = with_config(gate=GateConfig(max_failed_ratio=0.15, min_startups=5, slowest=4))
    parts: list[list[Span]] = [[] for _ in range(replicas)]
    for group in groups:
        parts[rnd.randrange(replicas)].extend(group)
    whole = fed([s for g in groups for s in g], config)
    shards = [fed(part, config) for part in parts]

    merged = merge_documents(
        [a.rollout(trace_of(1), expect=expect, sketches=True) for a in shards],
        config,
        expect=expect,
        sketches=True,
    )
    assert merged == whole.rollout(trace_of(1), expect=expect, sketches=True)
    for ns in ("default", "k8s.io"):
        merged_ns = merge_documents(
            [a.namespace(ns, sketches=True) for a in shards], config, expect=None, sketches=True
        )
        want = whole.namespace(ns, sketches=True)
        del want["namespace_attribute"]
        assert merged_ns == want


# -- the rules ------------------------------------------------------------------------------------
def test_a_rollout_whose_task_create_to_ready_p99_is_over_one_second_halts_with_the_reason() -> (
    None
):
    spans = fast_rollout(19) + startup(1, 19, wait_ms=1400)
    doc = fed(spans).rollout(trace_of(1), expect=20)
    assert doc["verdict"] == "halt"
    t2r = doc["budgets"]["task_create_to_ready"]
    assert (t2r["verdict"], t2r["breaches"]) == ("halt", 1)
    (reason,) = doc["reasons"]
    assert reason.startswith("task_create_to_ready p99 1.4")
    assert reason.endswith("s over its budget of 1 s (1 of 20 startups over)")
    assert doc["slowest"][0]["container_id"] == "c19"
    assert doc["slowest"][0]["dominant_phase"] == "readiness.wait"


def test_a_failed_startup_halts() -> None:
    spans = fast_rollout(19) + startup(1, 19, outcome=Outcome.EXITED)
    doc = fed(spans).rollout(trace_of(1))
    assert (doc["verdict"], doc["failed"]) == ("halt", 1)
    assert doc["reasons"] == [
        "1 of 20 startups failed before ready (exited, timed out or not ready): 5%, over the "
        "0% allowed (gate.max_failed_ratio)"
    ]
    # the failed one has no startup_duration; its shim launch completed and counts
    assert doc["budgets"]["startup_duration"]["samples"] == 19
    assert doc["budgets"]["shim_launch_time"]["samples"] == 20


def test_a_shim_launch_that_did_not_complete_measures_no_shim_launch_time() -> None:
    spans = fast_rollout(5) + startup(1, 5, outcome=Outcome.DELETED, shim_done=False)
    assert [s.name for s in spans[-2:]] == ["container.create", "shim.launch"]
    doc = fed(spans).rollout(trace_of(1))
    assert doc["budgets"]["shim_launch_time"]["samples"] == 5
    assert (doc["startups"], doc["failed"]) == (6, 0)  # deleted is not a failure
    assert doc["slowest"][-1]["phases"]["shim.launch"] == 0.05  # shown as it was


def test_a_rollout_of_failed_startups_only_halts_though_no_duration_has_samples() -> None:
    spans = fast_rollout(6, outcome=Outcome.TIMEOUT, create_ms=0.5)
    doc = fed(spans).rollout(trace_of(1))
    assert doc["verdict"] == "halt"
    assert doc["budgets"]["startup_duration"]["verdict"] == "insufficient"
    assert "6 of 6 startups failed" in doc["reasons"][0]


def test_three_of_twenty_expected_is_insufficient() -> None:
    doc = fed(fast_rollout(3)).rollout(trace_of(1), expect=20)
    assert (doc["verdict"], doc["startups"]) == ("insufficient", 3)
    assert doc["reasons"] == ["3 of 20 expected startups seen"]
    assert doc["coverage"] == 0.15


def test_coverage_under_the_minimum_halts_when_expect_is_given() -> None:
    spans = fast_rollout(17) + [s for i in range(17, 20) for s in startup(1, i, partial=True)]
    agg = fed(spans)
    doc = agg.rollout(trace_of(1), expect=20)
    assert (doc["verdict"], doc["partial"], doc["coverage"]) == ("halt", 3, 0.85)
    assert doc["reasons"] == [
        "coverage 85% under its minimum of 90%: 17 of 20 expected startups fully traced (3 partial)"
    ]
    assert agg.rollout(trace_of(1))["verdict"] == "pass"  # coverage is judged against expect


def test_an_unknown_trace_is_insufficient_with_no_startup() -> None:
    doc = fed(fast_rollout(20)).rollout(trace_of(7), expect=5)
    assert (doc["verdict"], doc["startups"], doc["name"]) == ("insufficient", 0, None)
    assert [b["samples"] for b in doc["budgets"].values()] == [0, 0, 0]
    assert doc["reasons"] == ["0 of 5 expected startups seen"]


def test_pods_are_counted_and_a_kubernetes_namespace_is_a_namespace_of_its_own() -> None:
    pod = Span(
        trace_id=trace_of(1),
        span_id=bytes.fromhex("00000000000000f1"),
        name=semconv.SPAN_POD_STARTUP,
        start_time_unix_nano=T0,
        end_time_unix_nano=T0 + S,
    )
    pod.attributes.add(key=semconv.CONTAINERD_NAMESPACE).value.string_value = "k8s.io"
    pod.attributes.add(key=semconv.K8S_NAMESPACE_NAME).value.string_value = "shop"
    spans = [pod, *fast_rollout(6, ns="k8s.io", k8s="shop", pod="web-1")]
    agg = fed(spans)
    assert agg.rollout(trace_of(1))["pods"] == 1
    shop = agg.namespace("shop")
    assert (shop["namespace"], shop["namespace_attribute"]) == ("shop", "k8s.namespace.name")
    assert (shop["startups"], shop["pods"], shop["verdict"]) == (6, 1, "pass")
    assert shop["slowest"][0]["pod"] == "web-1"
    assert agg.namespace("k8s.io")["namespace_attribute"] == "containerd.namespace"
    assert agg.namespace("shop", attribute=semconv.CONTAINERD_NAMESPACE)["startups"] == 0


def test_spans_that_are_not_startup_spans_or_are_malformed_are_ignored() -> None:
    good = startup(1, 0)
    other = Span(trace_id=trace_of(1), span_id=b"\x01" * 8, name="GET /", start_time_unix_nano=1)
    zero_trace = Span()
    zero_trace.CopyFrom(good[0])
    zero_trace.trace_id = bytes(16)
    short_span = Span()
    short_span.CopyFrom(good[0])
    short_span.span_id = b"\x01"
    no_times = Span()
    no_times.CopyFrom(good[0])
    no_times.start_time_unix_nano = 0
    orphan = Span()
    orphan.CopyFrom(good[1])
    orphan.parent_span_id = b""
    agg, counters, _ = aggregator()
    agg.ingest(request([other, zero_trace, short_span, no_times, orphan]))
    assert counters.get(semconv.PROCESSOR_SPANS_IGNORED) == 5
    assert agg.gauges() == []
    assert agg.rollout(trace_of(1))["startups"] == 0


# -- bounds ---------------------------------------------------------------------------------------
def test_rollouts_idle_past_their_ttl_are_forgotten_and_counted() -> None:
    config = with_config(processor=ProcessorConfig(rollout_ttl_s=60))
    agg, counters, clock = aggregator(config)
    agg.ingest(request(fast_rollout(5, rollout=1)))
    clock.advance(30)
    agg.ingest(request(fast_rollout(5, rollout=2)))
    clock.advance(30)
    agg.expire()
    assert counters.get(semconv.PROCESSOR_ROLLOUTS_EVICTED) == 1
    assert agg.rollout(trace_of(1))["startups"] == 0
    assert agg.rollout(trace_of(2))["startups"] == 5
    assert agg.namespace("default")["startups"] == 5  # the namespace forgot it too


def test_beyond_max_rollouts_the_idlest_is_evicted_and_the_namespace_forgets_it() -> None:
    config = with_config(processor=ProcessorConfig(max_rollouts=2))
    agg, counters, clock = aggregator(config)
    agg.ingest(request(fast_rollout(5, rollout=1, wait_ms=2000)))
    clock.advance(1)
    agg.ingest(request(fast_rollout(5, rollout=2)))
    clock.advance(1)
    agg.ingest(request(startup(1, 9)))  # rollout 1 is busy again: 2 is now the idlest
    clock.advance(1)
    agg.ingest(request(fast_rollout(5, rollout=3)))
    assert counters.get(semconv.PROCESSOR_ROLLOUTS_EVICTED) == 1
    assert agg.rollout(trace_of(2))["startups"] == 0
    assert agg.rollout(trace_of(1))["startups"] == 6
    expected = fed(fast_rollout(5, rollout=1, wait_ms=2000) + startup(1, 9) + fast_rollout(5, 3))
    assert agg.namespace("default", sketches=True) == expected.namespace("default", sketches=True)


def test_an_evicted_rollout_leaves_the_slowest_of_its_namespace() -> None:
    config = with_config(processor=ProcessorConfig(max_rollouts=2))
    agg, _, clock = aggregator(config)
    agg.ingest(request(fast_rollout(3, rollout=1, wait_ms=3000)))  # the slowest
    clock.advance(1)
    agg.ingest(request(fast_rollout(3, rollout=2, wait_ms=50)))
    assert {s["trace_id"] for s in agg.namespace("default")["slowest"][:3]} == {trace_of(1).hex()}
    clock.advance(1)
    agg.ingest(request(fast_rollout(3, rollout=3, wait_ms=10)))  # evicts 1
    got = agg.namespace("default")
    assert {s["trace_id"] for s in got["slowest"]} == {trace_of(2).hex(), trace_of(3).hex()}
    assert got == fed(
        fast_rollout(3, 2, wait_ms=50) + fast_rollout(3, 3, wait_ms=10), config
    ).namespace("default")


def test_startups_beyond_the_per_rollout_bound_are_dropped_and_counted() -> None:
    config = with_config(processor=ProcessorConfig(max_startups_per_rollout=4))
    agg, counters, _ = aggregator(config)
    agg.ingest(request(fast_rollout(6)))
    assert agg.rollout(trace_of(1))["startups"] == 4
    assert counters.get(semconv.PROCESSOR_STARTUPS_DROPPED) == 2
    assert counters.get(semconv.PROCESSOR_PENDING_EXPIRED) == 8  # their phases, at once


def test_phase_spans_whose_startup_never_arrives_expire_and_are_counted() -> None:
    config = with_config(processor=ProcessorConfig(pending_ttl_s=60))
    agg, counters, clock = aggregator(config)
    orphans = startup(2, 0)[1:]
    agg.ingest(request([*startup(1, 0)[1:], *orphans]))
    clock.advance(30)
    agg.ingest(request(startup(1, 0)[:1]))  # rollout 1's startup arrives in time
    clock.advance(30)
    agg.expire()
    assert counters.get(semconv.PROCESSOR_PENDING_EXPIRED) == 4
    assert agg.rollout(trace_of(1))["budgets"]["task_create_to_ready"]["samples"] == 1
    assert [labels for _, labels, _ in agg.gauges() if trace_of(2).hex() in labels.values()] == []
    agg.ingest(request(orphans))  # forgotten, so accepted again rather than duplicates
    assert counters.get(semconv.PROCESSOR_SPANS_DUPLICATE) == 0


def test_100000_one_span_traces_of_other_names_keep_memory_flat_and_create_no_rollout() -> None:
    agg, counters, _ = aggregator()
    agg.ingest(request(fast_rollout(5)))

    def flood(start: int) -> None:
        for base in range(start, start + 50_000, 500):
            agg.ingest(
                request(
                    Span(
                        trace_id=trace_of(1_000_000 + n),
                        span_id=(n + 1).to_bytes(8, "big"),
                        name="HTTP GET",
                        start_time_unix_nano=T0,
                        end_time_unix_nano=T0 + 1,
                    )
                    for n in range(base, base + 500)
                )
            )

    flood(0)  # warm up caches and allocator pools
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        flood(50_000)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 256 * 1024
    assert counters.get(semconv.PROCESSOR_SPANS_IGNORED) == 100_000
    assert held_rollouts(agg) == {trace_of(1).hex()}


def test_100000_traces_of_one_startup_each_stay_within_max_rollouts() -> None:
    config = with_config(processor=ProcessorConfig(max_rollouts=100))
    agg, counters, _ = aggregator(config)
    roots = [startup(n, 0, parent=True)[0] for n in range(2_000)]
    for i in range(0, len(roots), 500):
        agg.ingest(request(roots[i : i + 500]))
    assert counters.get(semconv.PROCESSOR_ROLLOUTS_EVICTED) == 1_900
    assert agg.namespace("default")["startups"] == 100
    held = held_rollouts(agg)
    assert len(held) == 100
    assert trace_of(1_999).hex() in held and trace_of(0).hex() not in held


# -- metrics and threads --------------------------------------------------------------------------
def test_gauges_give_verdict_startups_and_p99_per_rollout_and_the_namespace_verdict() -> None:
    agg = fed([rollout_span(1, "web"), *fast_rollout(19), *startup(1, 19, wait_ms=1400)])
    points = {(d.name, tuple(sorted(labels.items()))): v for d, labels, v in agg.gauges()}
    rollout = ((semconv.OB_ROLLOUT_NAME, "web"), (semconv.OB_ROLLOUT_TRACE_ID, trace_of(1).hex()))
    assert points[(semconv.ROLLOUT_VERDICT.name, rollout)] == 1.0
    assert points[(semconv.ROLLOUT_STARTUPS.name, rollout)] == 20.0
    t2r = tuple(sorted((*rollout, (semconv.OB_SLA_BUDGET, "task_create_to_ready"))))
    assert points[(semconv.ROLLOUT_P99.name, t2r)] == pytest.approx(1.41, rel=0.01)
    ns = ((semconv.CONTAINERD_NAMESPACE, "default"),)
    assert points[(semconv.NAMESPACE_VERDICT.name, ns)] == 1.0
    assert len(points) == 1 + 1 + 3 + 1


def test_concurrent_ingest_from_several_threads_counts_every_startup_once() -> None:
    spans = [s for r in range(8) for s in fast_rollout(25, rollout=r)]
    agg, counters, _ = aggregator()

    def send(part: list[Span]) -> None:
        for i in range(0, len(part), 7):
            agg.ingest(request(part[i : i + 7]))

    threads = [threading.Thread(target=send, args=(spans[k::4],)) for k in range(4)]
    threads += [threading.Thread(target=send, args=(spans,))]  # everything once more
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counters.get(semconv.PROCESSOR_STARTUPS) == 200
    assert counters.get(semconv.PROCESSOR_SPANS_DUPLICATE) == len(spans)
    assert agg.namespace("default") == fed(spans).namespace("default")
