"""The snapshot GC budget: reclaims, degraded reclaims, leaks, overlaps, figures.

Driven by ``Timeline`` envelopes (real protobuf payloads, decoded by the real decoder)
and a ``FakeClock``: leak deadlines pass by advancing the clock, never by sleeping.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Iterator

import pytest
from google.protobuf.message import Message
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from otelbridge.containerd._gen import otelbridge_events_pb2 as ev
from otelbridge.core import ids, semconv
from otelbridge.core.clock import EventTimeClock, FakeClock
from otelbridge.core.config import Config, SlaConfig
from otelbridge.core.counters import Counters
from otelbridge.core.ids import pod_parent
from otelbridge.core.logutil import ThrottledLogger
from otelbridge.core.model import (
    ContainerInfo,
    ContainerKey,
    CriInfo,
    Enrichment,
    EventKind,
    LifecycleEvent,
    PodContext,
    RawEnvelope,
    ReclaimRecord,
    StartupRecord,
)
from otelbridge.core.tracecontext import NOT_FOUND, Resolution, TraceContext
from otelbridge.correlate import gc, gcwindow
from otelbridge.correlate.gc import GcTracker
from otelbridge.decode import decode
from otelbridge.emit.reclaim import build_reclaim_span
from otelbridge.emit.spans import build_startup_spans
from otelbridge.pipeline import Pipeline
from otelbridge.testing.events import Timeline

MS = 1_000_000
S = 1_000_000_000
T0 = 1_700_000_000_000_000_000  # Timeline's and FakeClock's default start


@pytest.fixture(autouse=True)
def fresh_log_throttle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own throttle: lines one test logged must not silence the next."""
    monkeypatch.setattr(gc, "_tlog", ThrottledLogger(logging.getLogger(gc.__name__)))


class Rig:
    """A tracker with a fake clock, fed with Timeline envelopes through the decoder."""

    def __init__(self, config: SlaConfig | None = None, **limits: int) -> None:
        self.clock = FakeClock(T0)
        self.counters = Counters()
        self.tracker = GcTracker(config or SlaConfig(), self.clock, self.counters, **limits)
        self.tl = Timeline(start_ns=T0)

    def feed(self, envelopes: Iterable[RawEnvelope], *, sync: bool = True) -> list[ReclaimRecord]:
        """Feeds the envelopes; with ``sync`` the clock first moves up to each one's time,
        as when events arrive live."""
        out: list[ReclaimRecord] = []
        for env in envelopes:
            if sync and env.timestamp_ns > self.clock.now_ns():
                self.clock.set(env.timestamp_ns)
            event = decode(env)
            assert isinstance(event, LifecycleEvent), event
            out += self.tracker.process(event)
        return out

    def count(self, metric: semconv.MetricDecl) -> int:
        return self.counters.get(metric)

    def figures(self, namespace: str = "default") -> dict[str, object]:
        gc_figures = self.tracker.figures(namespace)["gc"]
        assert isinstance(gc_figures, dict)
        return gc_figures

    def start(self, cid: str, ns: str = "default") -> list[RawEnvelope]:
        """prepare, create, task create, task start (a running container)."""
        tl = self.tl
        return [
            tl.snapshot_prepare(cid, ns=ns),
            tl.container_create(cid, after_ns=4 * MS, ns=ns),
            tl.task_create(cid, after_ns=44 * MS, ns=ns),
            tl.task_start(cid, after_ns=9 * MS, ns=ns),
        ]


def startup(
    cid: str, begin_ns: int, task_create_ns: int | None, ns: str = "default"
) -> StartupRecord:
    """A completed startup whose creation window is begin_ns -> task_create_ns."""
    return StartupRecord(
        key=ContainerKey(ns, cid),
        incarnation_ns=begin_ns,
        snapshot_prepare_ns=begin_ns,
        container_create_ns=begin_ns + 4 * MS,
        task_create_ns=task_create_ns,
        end_ns=task_create_ns,
    )


# -- reclaims ---------------------------------------------------------------------------------
def test_a_removed_container_gives_one_reclaim_from_task_delete_to_snapshot_remove() -> None:
    rig = Rig()
    envs = rig.tl.run_container("web")
    topics = [e.topic for e in envs]
    delete = envs[topics.index("/tasks/delete")]
    remove = envs[topics.index("/snapshot/remove")]

    [reclaim] = rig.feed(envs)

    assert reclaim.key == ContainerKey("default", "web")
    assert reclaim.snapshot_key == "web"
    assert reclaim.snapshotter == "overlayfs"  # from the event
    assert (reclaim.start_ns, reclaim.end_ns) == (delete.timestamp_ns, remove.timestamp_ns)
    assert reclaim.duration_s == pytest.approx(0.010)
    assert not reclaim.degraded and not reclaim.leaked
    assert rig.count(semconv.GC_RECLAIMS) == 1
    assert rig.count(semconv.GC_DEGRADED) == 0
    assert rig.tracker.tracked == 0  # the container is gone, so is its state


def test_a_reclaim_over_the_budget_is_degraded_counted_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig = Rig()
    tl = rig.tl
    envs = [
        *rig.start("slow"),
        tl.task_exit("slow", after_ns=MS),
        tl.task_delete("slow", after_ns=MS),
        tl.snapshot_remove("slow", after_ns=2 * S + 1),  # 1 ns over 2 s
        tl.container_delete("slow", after_ns=MS),
    ]
    with caplog.at_level(logging.WARNING, logger=gc.__name__):
        [reclaim] = rig.feed(envs)
    assert reclaim.degraded
    assert reclaim.end_ns - reclaim.start_ns == 2 * S + 1
    assert rig.count(semconv.GC_DEGRADED) == 1
    assert "default/slow: snapshot 'slow' reclaimed in 2.000 s (budget 2 s): gc degraded" in (
        caplog.text
    )


def test_a_reclaim_of_exactly_the_budget_is_not_degraded() -> None:
    rig = Rig()
    tl = rig.tl
    [reclaim] = rig.feed(
        [
            tl.task_exit("edge"),
            tl.task_delete("edge", after_ns=MS),
            tl.snapshot_remove("edge", after_ns=2 * S),
        ]
    )
    assert not reclaim.degraded
    assert rig.count(semconv.GC_DEGRADED) == 0


def test_degraded_log_lines_are_throttled_but_every_one_is_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig = Rig()
    tl = rig.tl
    with caplog.at_level(logging.WARNING, logger=gc.__name__):
        for i in range(50):
            rig.feed(
                [
                    tl.task_delete(f"c{i}"),
                    tl.snapshot_remove(f"c{i}", after_ns=3 * S),
                    tl.container_delete(f"c{i}"),
                ]
            )
    assert rig.count(semconv.GC_DEGRADED) == 50
    lines = [r for r in caplog.records if "gc degraded" in r.getMessage()]
    assert 10 <= len(lines) <= 11  # the burst, then one line per interval


def test_the_deletion_is_the_container_delete_when_no_task_was_deleted() -> None:
    """A container deleted without a task delete (no task, or its delete missed); its
    snapshot removed afterwards (in containerd's order the remove comes first: that case
    is the next test)."""
    rig = Rig()
    tl = rig.tl
    delete = tl.container_delete("solo")
    remove = tl.snapshot_remove("solo", after_ns=30 * MS)
    [reclaim] = rig.feed([delete, remove])
    assert (reclaim.start_ns, reclaim.end_ns) == (delete.timestamp_ns, remove.timestamp_ns)
    assert rig.tracker.tracked == 0


def test_a_remove_without_a_known_deletion_is_not_measured_and_its_delete_starts_nothing() -> None:
    """`ctr containers delete` of a container never started: remove, then delete. Also
    image layers and snapshots made by hand: removes of keys no container stopped with."""
    rig = Rig()
    tl = rig.tl
    assert rig.feed([tl.snapshot_remove("never-run"), tl.container_delete("never-run")]) == []
    assert rig.feed([tl.snapshot_remove("sha256:" + "b" * 64)]) == []
    rig.clock.advance(601)
    rig.tracker.expire()
    assert rig.count(semconv.GC_LEAKED) == 0
    assert rig.count(semconv.GC_RECLAIMS) == 0
    assert rig.tracker.tracked == 0  # the remembered removes are forgotten after the TTL


def test_a_remove_after_a_missed_task_delete_is_measured_from_the_exit() -> None:
    rig = Rig()
    tl = rig.tl
    exit_ = tl.task_exit("lost-delete")
    remove = tl.snapshot_remove("lost-delete", after_ns=20 * MS)
    [reclaim] = rig.feed([exit_, remove])
    assert (reclaim.start_ns, reclaim.end_ns) == (exit_.timestamp_ns, remove.timestamp_ns)


def test_exec_processes_do_not_count_as_the_container_stopping() -> None:
    rig = Rig()
    tl = rig.tl
    rig.feed([*rig.start("web"), tl.task_exit("web", exec_id="exec-1", after_ns=MS)])
    assert rig.tracker.tracked == 0
    rig.clock.advance(3600)
    rig.tracker.expire()
    assert rig.count(semconv.GC_LEAKED) == 0


def test_reclaims_are_per_namespace() -> None:
    rig = Rig()
    tl = rig.tl
    rig.feed([tl.task_delete("same", ns="a"), tl.snapshot_remove("same", ns="b", after_ns=MS)])
    assert rig.count(semconv.GC_RECLAIMS) == 0  # b's remove is not a's reclaim
    [reclaim] = rig.feed([tl.snapshot_remove("same", ns="a", after_ns=MS)])
    assert reclaim.key == ContainerKey("a", "same")


# -- leaks ------------------------------------------------------------------------------------
def kept_snapshot(rig: Rig, cid: str) -> list[RawEnvelope]:
    """`ctr run` (no --rm), then `ctr containers delete --keep-snapshot`."""
    tl = rig.tl
    return [
        *rig.start(cid),
        tl.task_exit(cid, after_ns=2 * MS),
        tl.task_delete(cid, after_ns=10 * MS),
        tl.container_delete(cid, after_ns=20 * MS),
    ]


def test_a_deleted_container_whose_snapshot_is_kept_is_leaked_after_the_ttl(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rig = Rig()
    rig.feed(kept_snapshot(rig, "kept"))
    # the leak clock runs from the exit's envelope time
    exit_ns = rig.tl.now_ns - 30 * MS
    rig.clock.set(exit_ns + 600 * S - 1)
    rig.tracker.expire()
    assert rig.count(semconv.GC_LEAKED) == 0
    assert rig.figures()["leaked_now"] == []

    rig.clock.set(exit_ns + 600 * S)
    with caplog.at_level(logging.WARNING, logger=gc.__name__):
        rig.tracker.expire()
    assert rig.count(semconv.GC_LEAKED) == 1
    assert (
        "default/kept: snapshot 'kept' not removed 600 s after the container exited "
        "(container deleted, snapshot kept): leaked" in caplog.text
    )
    figures = rig.figures()
    assert figures["leaked"] == 1
    assert figures["leaked_now"] == ["kept"]
    assert figures["leaked_now_total"] == 1

    rig.clock.advance(3600)  # counted once, however long it stays
    rig.tracker.expire()
    assert rig.count(semconv.GC_LEAKED) == 1
    assert rig.figures()["leaked_now"] == ["kept"]


def test_a_late_remove_clears_the_leak_and_counts_nothing_more() -> None:
    rig = Rig()
    rig.feed(kept_snapshot(rig, "kept"))
    delete_ns = rig.tl.now_ns - 20 * MS  # the task delete
    rig.clock.advance(601)
    rig.tracker.expire()
    assert rig.count(semconv.GC_LEAKED) == 1

    rig.tl.now_ns = rig.clock.now_ns()
    remove = rig.tl.snapshot_remove("kept")
    [reclaim] = rig.feed([remove])
    assert reclaim.leaked and reclaim.degraded
    assert (reclaim.start_ns, reclaim.end_ns) == (delete_ns, remove.timestamp_ns)
    assert rig.figures()["leaked_now"] == []
    assert rig.count(semconv.GC_LEAKED) == 1
    assert rig.count(semconv.GC_DEGRADED) == 0  # counted once: as a leak
    assert rig.count(semconv.GC_RECLAIMS) == 1
    assert rig.tracker.tracked == 0
    rig.clock.advance(3600)
    rig.tracker.expire()
    assert rig.count(semconv.GC_LEAKED) == 1


def test_a_stopped_container_never_deleted_is_leaked_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The contract counts from the exit (PRODUCT.md section 2), deleted or not."""
    rig = Rig()
    tl = rig.tl
    rig.feed([*rig.start("stopped"), tl.task_exit("stopped"), tl.task_delete("stopped")])
    rig.clock.advance(601)
    with caplog.at_level(logging.WARNING, logger=gc.__name__):
        rig.tracker.expire()
    assert rig.figures()["leaked_now"] == ["stopped"]
    assert "(container stopped, not deleted)" in caplog.text


def test_a_container_deleted_without_an_exit_seen_is_leaked_from_its_deletion() -> None:
    rig = Rig()
    delete = rig.tl.container_delete("orphan")
    rig.feed([delete])
    rig.clock.set(delete.timestamp_ns + 600 * S)
    rig.tracker.expire()
    assert rig.figures()["leaked_now"] == ["orphan"]


def test_a_new_task_or_a_new_snapshot_under_the_key_ends_the_leak_silently() -> None:
    rig = Rig()
    tl = rig.tl
    rig.feed([tl.task_exit("restarted"), tl.task_delete("restarted")])
    rig.feed([tl.task_create("restarted", after_ns=S)])  # `ctr task start` again
    rig.feed(kept_snapshot(rig, "collected"))
    rig.clock.advance(601)
    rig.tracker.expire()
    assert rig.figures()["leaked_now"] == ["collected"]
    # containerd's GC removed it without an event; a new container got the same key
    rig.tl.now_ns = rig.clock.now_ns()
    assert rig.feed([rig.tl.snapshot_prepare("collected")]) == []
    assert rig.figures()["leaked_now"] == []
    assert rig.count(semconv.GC_LEAKED) == 1
    assert rig.tracker.tracked == 0


def test_a_tiny_ttl_from_the_config_applies() -> None:
    rig = Rig(SlaConfig(gc_leak_ttl_s=1))
    rig.feed(kept_snapshot(rig, "quick"))
    rig.clock.set(rig.tl.now_ns)
    rig.tracker.expire()
    assert rig.count(semconv.GC_LEAKED) == 0
    rig.clock.advance(1)
    rig.tracker.expire()
    assert rig.count(semconv.GC_LEAKED) == 1


def test_an_envelope_dated_ahead_of_the_clock_is_leaked_a_ttl_after_it_arrived() -> None:
    rig = Rig()
    rig.tl.now_ns = T0 + 3600 * S  # containerd's clock an hour ahead of the bridge's
    rig.feed([rig.tl.task_exit("ahead"), rig.tl.task_delete("ahead")], sync=False)
    rig.clock.advance(600)
    rig.tracker.expire()
    assert rig.figures()["leaked_now"] == ["ahead"]


# -- overlaps ---------------------------------------------------------------------------------
def test_a_startup_created_during_a_reclaim_overlaps_it() -> None:
    rig = Rig()
    tl = rig.tl
    tl.now_ns = T0 + S
    rig.feed([tl.task_delete("old"), tl.snapshot_remove("old", after_ns=100 * MS)])
    # reclaim: T0+1.0 s .. T0+1.1 s
    during = startup("new", T0 + S + 50 * MS, T0 + S + 150 * MS)
    around = startup("wide", T0 + 900 * MS, T0 + S + 200 * MS)
    touching = startup("touch", T0 + S + 100 * MS, T0 + S + 120 * MS)
    before = startup("early", T0, T0 + 999 * MS)
    after = startup("late", T0 + S + 101 * MS, T0 + S + 300 * MS)
    assert rig.tracker.overlaps(during)
    assert rig.tracker.overlaps(around)
    assert rig.tracker.overlaps(touching)
    assert not rig.tracker.overlaps(before)
    assert not rig.tracker.overlaps(after)


def test_a_reclaim_still_in_flight_overlaps_the_startups_created_since() -> None:
    rig = Rig()
    tl = rig.tl
    tl.now_ns = T0 + S
    rig.feed([tl.task_exit("slow"), tl.task_delete("slow")])  # no remove yet
    assert rig.tracker.overlaps(startup("new", T0 + 2 * S, T0 + 2 * S + 50 * MS))
    assert not rig.tracker.overlaps(startup("earlier", T0, T0 + S - 1))
    rig.feed([tl.snapshot_remove("slow", after_ns=5 * S)])  # now [1 s, 6 s]
    assert rig.tracker.overlaps(startup("new2", T0 + 5 * S, T0 + 5 * S + 50 * MS))
    assert not rig.tracker.overlaps(startup("after", T0 + 7 * S, T0 + 7 * S + 50 * MS))


def test_reclaims_of_other_namespaces_count() -> None:
    rig = Rig()
    tl = rig.tl
    rig.feed([tl.task_delete("x", ns="other")])
    assert rig.tracker.overlaps(startup("mine", T0 + MS, T0 + 50 * MS, ns="default"))


def test_kept_and_leaked_snapshots_are_not_reclaims_in_flight() -> None:
    rig = Rig()
    rig.feed(kept_snapshot(rig, "kept"))  # deleted without a remove: kept, nothing in flight
    assert not rig.tracker.overlaps(startup("new", T0 + S, T0 + 2 * S))
    tl = rig.tl
    rig.feed([tl.task_exit("stopped"), tl.task_delete("stopped")])
    assert rig.tracker.overlaps(startup("new", T0 + S, T0 + 2 * S))
    rig.clock.advance(601)
    rig.tracker.expire()  # leaked: no longer in flight
    assert not rig.tracker.overlaps(startup("new", T0 + S, T0 + 2 * S))


def test_a_startup_that_never_created_its_task_is_judged_on_its_whole_life() -> None:
    rig = Rig()
    tl = rig.tl
    tl.now_ns = T0 + S
    rig.feed([tl.task_delete("old"), tl.snapshot_remove("old", after_ns=10 * MS)])
    deleted = StartupRecord(
        key=ContainerKey("default", "gone"),
        incarnation_ns=T0,
        container_create_ns=T0,
        end_ns=T0 + 2 * S,
    )
    assert rig.tracker.overlaps(deleted)


# -- figures ----------------------------------------------------------------------------------
def test_figures_over_the_window() -> None:
    rig = Rig(SlaConfig(window_s=60))
    tl = rig.tl
    tl.now_ns = T0 + S
    for i, gap_ms in enumerate((10, 20, 3000)):
        rig.feed(
            [
                tl.task_delete(f"r{i}"),
                tl.snapshot_remove(f"r{i}", after_ns=gap_ms * MS),
                tl.container_delete(f"r{i}"),
            ]
        )
    rig.feed([tl.task_delete("x", ns="other"), tl.snapshot_remove("x", ns="other")])
    # one startup created during the first reclaim (shim 40 ms), two outside (10, 30 ms)
    overlapped = startup("o", T0 + S, T0 + S + 44 * MS)
    others = [startup("a", T0, T0 + 14 * MS), startup("b", T0 + 100 * MS, T0 + 134 * MS)]
    assert rig.tracker.overlaps(overlapped)
    assert not any(rig.tracker.overlaps(r) for r in others)

    figures = rig.figures()
    assert figures == {
        "reclaims": 3,
        "degraded": 1,
        "reclaim_p99_s": pytest.approx(3.0),
        "reclaim_budget_s": 2.0,
        "leaked": 0,
        "leaked_now": [],
        "leaked_now_total": 0,
        "leak_ttl_s": 600.0,
        "overlapped_startups": 1,
        "create_p50_s_overlapped": pytest.approx(0.040),
        "create_p50_s_other": pytest.approx(0.010),
    }
    assert rig.figures("other")["reclaims"] == 1
    assert rig.figures("other")["overlapped_startups"] == 0
    assert rig.figures("nowhere")["reclaims"] == 0

    rig.clock.advance(61)  # out of the window; the leaks still there stay listed
    assert rig.figures()["reclaims"] == 0
    assert rig.figures()["overlapped_startups"] == 0
    assert rig.figures()["reclaim_p99_s"] is None
    assert rig.figures()["create_p50_s_other"] is None


def test_figures_list_a_bounded_number_of_leaked_containers() -> None:
    rig = Rig()
    tl = rig.tl
    for i in range(30):
        rig.feed([tl.task_exit(f"c{i:02}"), tl.task_delete(f"c{i:02}")])
    rig.clock.advance(601)
    rig.tracker.expire()
    figures = rig.figures()
    assert figures["leaked_now"] == [f"c{i:02}" for i in range(gcwindow.MAX_LEAKED_LISTED)]
    assert figures["leaked_now_total"] == 30
    assert figures["leaked"] == 30


def test_figures_reach_the_sla_answer_of_the_pipeline() -> None:
    pipeline = Pipeline(Config(), ListSink(), Counters(), clock=EventTimeClock())
    for env in Timeline(start_ns=T0).run_container("web"):
        pipeline.feed(env)
    namespaces = pipeline.sla.snapshot()["namespaces"]
    assert namespaces["default"]["gc"]["reclaims"] == 1


# -- bounds -----------------------------------------------------------------------------------
def test_the_tracked_containers_are_bounded_and_evictions_counted() -> None:
    rig = Rig(max_tracked=3)
    tl = rig.tl
    for i in range(5):
        rig.feed([tl.task_exit(f"c{i}"), tl.task_delete(f"c{i}")])
    assert rig.tracker.tracked == 3
    assert rig.count(semconv.GC_EVICTED) == 2
    rig.clock.advance(601)
    rig.tracker.expire()
    assert rig.figures()["leaked_now"] == ["c2", "c3", "c4"]
    rig.feed([tl.task_exit("c5")])  # evicts a leaked one: it leaves the list
    assert rig.figures()["leaked_now"] == ["c3", "c4"]
    assert rig.count(semconv.GC_EVICTED) == 3


def test_reclaim_intervals_are_bounded() -> None:
    rig = Rig(max_intervals=4)
    tl = rig.tl
    starts = []
    for i in range(10):
        delete = tl.task_delete(f"c{i}")
        starts.append(delete.timestamp_ns)
        rig.feed([delete, tl.snapshot_remove(f"c{i}", after_ns=MS)])
        tl.now_ns += S
    # only the last four are remembered: an early window no longer overlaps
    assert not rig.tracker.overlaps(startup("early", starts[0], starts[0] + 2 * MS))
    assert rig.tracker.overlaps(startup("recent", starts[9], starts[9] + 2 * MS))
    assert rig.tracker.overlaps(startup("recent", starts[6], starts[6] + 2 * MS))
    assert not rig.tracker.overlaps(startup("recent", starts[5], starts[5] + 2 * MS))


def test_the_deadline_heaps_do_not_grow_with_completed_containers() -> None:
    rig = Rig()
    for i in range(2000):
        rig.feed(rig.tl.run_container(f"c{i}"))
        if i % 100 == 0:
            rig.tracker.expire()
    rig.tracker.expire()
    assert rig.tracker.tracked == 0
    assert len(rig.tracker._due) <= 64
    assert len(rig.tracker._flying) <= 64


# -- bad input ---------------------------------------------------------------------------------
def test_duplicates_give_one_reclaim_measured_from_the_first_events() -> None:
    rig = Rig()
    tl = rig.tl
    first_delete = tl.task_delete("dup")
    envs = [
        tl.task_exit("dup"),
        tl.task_exit("dup", after_ns=MS),
        first_delete,
        tl.task_delete("dup", after_ns=MS),
        tl.snapshot_remove("dup", after_ns=MS),
        tl.snapshot_remove("dup", after_ns=MS),
        tl.container_delete("dup", after_ns=MS),
        tl.container_delete("dup", after_ns=MS),
    ]
    [reclaim] = rig.feed(envs)
    assert reclaim.start_ns == first_delete.timestamp_ns
    assert rig.count(semconv.GC_RECLAIMS) == 1
    rig.clock.advance(601)  # the second /containers/delete started no leak clock
    rig.tracker.expire()
    assert rig.count(semconv.GC_LEAKED) == 0
    assert rig.tracker.tracked == 0


def test_a_remove_dated_before_its_deletion_is_a_zero_length_reclaim() -> None:
    rig = Rig()
    tl = rig.tl
    tl.now_ns = T0 + S
    delete = tl.task_delete("skewed")
    tl.now_ns = T0
    [reclaim] = rig.feed([delete, tl.snapshot_remove("skewed")])
    assert reclaim.duration_s == 0
    span = build_reclaim_span(reclaim)
    assert span.end_time_unix_nano == span.start_time_unix_nano


def test_random_event_soup_never_raises() -> None:
    rng = random.Random(4)
    rig = Rig(SlaConfig(gc_leak_ttl_s=5), max_tracked=50, max_intervals=20)
    kinds = list(EventKind)
    for _ in range(20_000):
        event = LifecycleEvent(
            rng.choice(kinds),
            T0 + rng.randrange(-10 * S, 100 * S),
            rng.choice(("a", "b")),
            rng.choice(("c1", "c2", "c3", "", "c1\x00")),
            exec_id=rng.choice(("", "c1", "exec")),
            snapshotter=rng.choice(("", "overlayfs")),
        )
        for reclaim in rig.tracker.process(event):
            build_reclaim_span(reclaim)
        if rng.random() < 0.05:
            rig.clock.advance(rng.random() * 3)
            rig.tracker.expire()
        if rng.random() < 0.05:
            rig.tracker.overlaps(startup("s", event.timestamp_ns, event.timestamp_ns + MS))
    rig.tracker.figures("a")
    assert rig.count(semconv.PIPELINE_ERRORS) == 0


def test_a_bug_costs_one_event_and_is_counted(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig()

    def broken(*_: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(rig.tracker, "_exited", broken)
    monkeypatch.setattr(rig.tracker, "_flying_since", broken)
    monkeypatch.setattr(rig.tracker, "_expire", broken)
    monkeypatch.setattr(rig.tracker._windows, "figures", broken)
    with caplog.at_level(logging.ERROR):
        assert rig.feed(rig.tl.run_container("web")) != []  # the rest goes on
        assert rig.tracker.overlaps(startup("s", T0, T0 + MS)) is False
        rig.tracker.expire()
        assert rig.tracker.figures("default") == {"gc": {}}
    assert rig.count(semconv.PIPELINE_ERRORS) == 3
    assert "gc: could not process" in caplog.text


# -- the span ---------------------------------------------------------------------------------
def attrs(span: Span) -> dict[str, object]:
    out: dict[str, object] = {}
    for kv in span.attributes:
        kind = kv.value.WhichOneof("value")
        assert kind is not None
        out[kv.key] = getattr(kv.value, kind)
    return out


def reclaim_record(**overrides: object) -> ReclaimRecord:
    fields: dict[str, object] = {
        "key": ContainerKey("default", "web"),
        "snapshot_key": "web",
        "snapshotter": "overlayfs",
        "start_ns": T0,
        "end_ns": T0 + 10 * MS,
        "degraded": False,
    }
    fields.update(overrides)
    return ReclaimRecord(**fields)  # type: ignore[arg-type]


def test_the_reclaim_span_is_its_own_trace_with_deterministic_ids() -> None:
    span = build_reclaim_span(reclaim_record())
    assert span.name == semconv.SPAN_SNAPSHOT_RECLAIM == "snapshot.reclaim"
    assert (span.start_time_unix_nano, span.end_time_unix_nano) == (T0, T0 + 10 * MS)
    assert span.parent_span_id == b""
    assert len(span.trace_id) == 16 and len(span.span_id) == 8
    assert span.kind == Span.SpanKind.SPAN_KIND_INTERNAL
    assert span.status.code == Status.StatusCode.STATUS_CODE_UNSET
    assert span.flags == 0x101
    assert attrs(span) == {
        semconv.CONTAINER_ID: "web",
        semconv.CONTAINERD_NAMESPACE: "default",
        semconv.CONTAINERD_SNAPSHOTTER: "overlayfs",
        semconv.OB_GC_SNAPSHOT_KEY: "web",
        semconv.OB_GC_DEGRADED: False,
    }
    assert not span.links
    assert build_reclaim_span(reclaim_record()) == span
    other = build_reclaim_span(reclaim_record(start_ns=T0 + 1))  # a later incarnation
    assert (other.trace_id, other.span_id) != (span.trace_id, span.span_id)
    other_ns = build_reclaim_span(reclaim_record(key=ContainerKey("k8s.io", "web")))
    assert other_ns.trace_id != span.trace_id


def test_a_degraded_or_leaked_reclaim_span_has_status_error() -> None:
    degraded = build_reclaim_span(reclaim_record(end_ns=T0 + 3 * S, degraded=True))
    assert degraded.status.code == Status.StatusCode.STATUS_CODE_ERROR
    assert "3.000 s" in degraded.status.message
    assert attrs(degraded)[semconv.OB_GC_DEGRADED] is True
    leaked = build_reclaim_span(reclaim_record(end_ns=T0 + 900 * S, degraded=True, leaked=True))
    assert leaked.status.code == Status.StatusCode.STATUS_CODE_ERROR
    assert "leaked" in leaked.status.message
    assert attrs(leaked)[semconv.OB_GC_LEAKED] is True
    unknown = build_reclaim_span(reclaim_record(snapshotter=""))
    assert semconv.CONTAINERD_SNAPSHOTTER not in attrs(unknown)


class ListSink:
    def __init__(self) -> None:
        self.spans: list[Span] = []

    def submit(self, spans: list[Span]) -> None:
        self.spans.extend(spans)


def replay(
    envelopes: Iterable[RawEnvelope], info: dict[str, ContainerInfo] | None = None
) -> tuple[Pipeline, list[Span]]:
    sink = ListSink()

    def lookup(namespace: str, cid: str) -> ContainerInfo:
        assert info is not None
        return info[cid]

    pipeline = Pipeline(
        Config(),
        sink,
        Counters(),
        clock=EventTimeClock(),
        lookup=lookup if info is not None else None,
        lookup_async=False,
    )
    for env in envelopes:
        pipeline.feed(env)
    pipeline.finish()
    return pipeline, sink.spans


def named(spans: list[Span], name: str) -> Iterator[Span]:
    return (s for s in spans if s.name == name)


def test_replay_emits_the_reclaim_span_at_the_envelope_times_linked_to_the_startup() -> None:
    envs = Timeline(start_ns=T0).run_container("web")
    by_topic = {e.topic: e.timestamp_ns for e in envs}
    pipeline, spans = replay(envs)
    [reclaim] = named(spans, semconv.SPAN_SNAPSHOT_RECLAIM)
    [root] = named(spans, semconv.SPAN_CONTAINER_STARTUP)
    assert reclaim.start_time_unix_nano == by_topic["/tasks/delete"]
    assert reclaim.end_time_unix_nano == by_topic["/snapshot/remove"]
    assert reclaim.trace_id != root.trace_id
    [link] = reclaim.links
    assert (link.trace_id, link.span_id) == (root.trace_id, root.span_id)
    assert pipeline.counters.get(semconv.GC_RECLAIMS) == 1
    _, again = replay(envs)  # a replay gives the same span
    assert list(named(again, semconv.SPAN_SNAPSHOT_RECLAIM)) == [reclaim]


def test_the_link_follows_the_container_record_identity() -> None:
    """Live, a startup's IDs derive from the record's created_at, not the event time."""
    info = {"web": ContainerInfo(namespace="default", id="web", created_at_ns=T0 - 123)}
    _, spans = replay(Timeline(start_ns=T0).run_container("web"), info)
    [reclaim] = named(spans, semconv.SPAN_SNAPSHOT_RECLAIM)
    [root] = named(spans, semconv.SPAN_CONTAINER_STARTUP)
    identity = ids.startup_identity(ContainerKey("default", "web"), T0 - 123, 1)
    assert root.span_id == ids.span_id(identity, semconv.SPAN_CONTAINER_STARTUP)
    assert (reclaim.links[0].trace_id, reclaim.links[0].span_id) == (root.trace_id, root.span_id)


def test_no_link_when_the_startup_is_under_a_provisioning_context() -> None:
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    info = {
        "web": ContainerInfo(namespace="default", id="web", labels={"traceparent": traceparent})
    }
    _, spans = replay(Timeline(start_ns=T0).run_container("web"), info)
    [root] = named(spans, semconv.SPAN_CONTAINER_STARTUP)
    assert root.trace_id.hex() == traceparent[3:35]  # the rollout's trace (policy parent)
    [reclaim] = named(spans, semconv.SPAN_SNAPSHOT_RECLAIM)
    assert not reclaim.links


def test_a_pod_container_without_a_context_links_into_its_pods_trace() -> None:
    rig = Rig()
    pod = PodContext("k8s.io", "sandbox1", "web", "default", "uid-1", T0 - S, NOT_FOUND)
    info = ContainerInfo(
        namespace="k8s.io",
        id="app",
        snapshotter="overlayfs",
        trace=NOT_FOUND,
        cri=CriInfo(kind="container", sandbox_id="sandbox1"),
        pod=pod,
    )
    record = startup("app", T0, T0 + 50 * MS, ns="k8s.io")
    record.info = info
    rig.tracker.overlaps(record)
    tl = rig.tl
    [reclaim] = rig.feed(
        [
            tl.task_delete("app", ns="k8s.io", after_ns=S),
            tl.at("/snapshot/remove", _remove_without_snapshotter("app"), ns="k8s.io"),
        ]
    )
    assert reclaim.snapshotter == "overlayfs"  # from the container record
    assert reclaim.startup is not None
    assert reclaim.startup.trace_id == ids.trace_id(ids.pod_identity(pod.key, pod.identity_ns))
    identity = ids.startup_identity(record.key, record.incarnation_ns, 1)
    assert reclaim.startup.span_id == ids.span_id(identity, semconv.SPAN_CONTAINER_STARTUP)
    # and that is the span the pipeline builds for it, whatever the link policy
    for policy in ("parent", "link", "ignore"):
        spans = build_startup_spans(record, Enrichment(parent=pod_parent(pod, policy)))
        assert (spans[0].trace_id, spans[0].span_id) == tuple(reclaim.startup)


def test_a_pod_under_a_provisioning_context_gets_no_link() -> None:
    rig = Rig()
    ctx = TraceContext(bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736"), b"\x01" * 8, 1)
    found = Resolution(ctx, "pod_annotation:traceparent", None, None)
    pod = PodContext("k8s.io", "sandbox1", "web", "default", "uid-1", T0 - S, found)
    record = startup("app", T0, T0 + 50 * MS, ns="k8s.io")
    record.info = ContainerInfo(
        namespace="k8s.io", id="app", cri=CriInfo(kind="container", sandbox_id="sandbox1"), pod=pod
    )
    rig.tracker.overlaps(record)
    tl = rig.tl
    [reclaim] = rig.feed(
        [tl.task_delete("app", ns="k8s.io"), tl.snapshot_remove("app", ns="k8s.io")]
    )
    assert reclaim.startup is None


def _remove_without_snapshotter(key: str) -> Message:
    return ev.SnapshotRemove(key=key)  # containerd 1.6 sends no snapshotter


def test_a_startup_created_during_a_reclaim_is_tagged_in_replay() -> None:
    tl = Timeline(start_ns=T0)
    envs = [
        *tl.run_container("first", remove=False),
        tl.task_delete("first", after_ns=MS),
    ]
    envs += tl.run_container("second")  # created while first's reclaim is in flight
    envs.append(tl.snapshot_remove("first", after_ns=MS))
    tl.now_ns += 10 * S
    envs += tl.run_container("third")  # long after
    _, spans = replay(envs)
    roots = {attrs(s)[semconv.CONTAINER_ID]: s for s in named(spans, "container.startup")}
    assert attrs(roots["second"]).get(semconv.OB_GC_OVERLAP) is True
    assert semconv.OB_GC_OVERLAP not in attrs(roots["first"])
    assert semconv.OB_GC_OVERLAP not in attrs(roots["third"])


def test_a_snapshot_key_with_control_characters_is_escaped_and_counted() -> None:
    """Defect 13: client-chosen names reached the reclaim span unescaped."""
    counters = Counters()
    tracker = GcTracker(SlaConfig(), FakeClock(), counters)
    key = "snap\nforged\x1b[2J"
    t = 1_700_000_000_000_000_000
    tracker.process(LifecycleEvent(EventKind.CONTAINER_DELETE, t, "default", key))
    [reclaim] = tracker.process(LifecycleEvent(EventKind.SNAPSHOT_REMOVE, t + MS, "default", key))
    assert reclaim.snapshot_key == "snap\\nforged\\x1b[2J"
    assert counters.get(semconv.ATTRIBUTES_SANITIZED) == 1
