"""Correlate: the per-container state machine, driven by real envelopes and a FakeClock."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pytest

from otelbridge.containerd import topics
from otelbridge.containerd._gen import otelbridge_events_pb2 as ev
from otelbridge.core import semconv
from otelbridge.core.clock import FakeClock
from otelbridge.core.config import CorrelateConfig
from otelbridge.core.counters import Counters
from otelbridge.core.model import (
    ContainerInfo,
    ContainerKey,
    LifecycleEvent,
    Outcome,
    RawEnvelope,
    ReadySignal,
    ReconcileSnapshot,
    StartupRecord,
    TaskInfo,
    TaskState,
)
from otelbridge.correlate.startups import Correlator
from otelbridge.decode import decode
from otelbridge.testing.events import Timeline

MS = 1_000_000
S = 1_000_000_000
T0 = 1_700_000_000_000_000_000
CFG = CorrelateConfig(
    startup_timeout_s=30.0,
    idle_timeout_s=600.0,
    snapshot_ttl_s=60.0,
    reconcile_grace_s=2.0,
    max_tracked=1000,
    max_pending_snapshots=100,
)


@dataclass
class Harness:
    """A correlator with a fake clock, its counters, and every record it completed."""

    config: CorrelateConfig = CFG
    clock: FakeClock = field(default_factory=lambda: FakeClock(T0))
    counters: Counters = field(default_factory=Counters)
    records: list[StartupRecord] = field(default_factory=list)
    new: list[StartupRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.correlator = Correlator(self.config, self.clock, self.counters, self.new.append)

    def feed(self, *envelopes: RawEnvelope | Iterable[RawEnvelope]) -> list[StartupRecord]:
        out: list[StartupRecord] = []
        for item in envelopes:
            for env in [item] if isinstance(item, RawEnvelope) else item:
                event = decode(env)
                assert isinstance(event, LifecycleEvent), event
                out.extend(self.correlator.process(event))
        self.records.extend(out)
        return out

    def advance(self, seconds: float) -> list[StartupRecord]:
        self.clock.advance(seconds)
        out = list(self.correlator.expire())
        self.records.extend(out)
        return out

    def count(self, metric: semconv.MetricDecl) -> int:
        return self.counters.get(metric)


@pytest.fixture
def h() -> Harness:
    return Harness()


@pytest.fixture
def tl() -> Timeline:
    return Timeline(start_ns=T0)


def only(records: Sequence[StartupRecord]) -> StartupRecord:
    assert len(records) == 1, records
    return records[0]


# -- the normal path ---------------------------------------------------------------------------


def test_ctr_run_rm_sequence_gives_one_ready_record_with_envelope_times(
    h: Harness, tl: Timeline
) -> None:
    envs = tl.run_container("c1")
    h.feed(envs)
    rec = only(h.records)
    prepare, create, task_create, task_start = (e.timestamp_ns for e in envs[:4])
    assert rec.outcome is Outcome.READY
    assert rec.key == ContainerKey("default", "c1")
    assert (
        rec.snapshot_prepare_ns,
        rec.container_create_ns,
        rec.task_create_ns,
        rec.task_start_ns,
        rec.ready_ns,
    ) == (prepare, create, task_create, task_start, task_start)
    assert (rec.start_ns, rec.end_ns) == (prepare, task_start)
    assert rec.incarnation_ns == create
    assert (rec.attempt, rec.partial) == (1, False)
    assert rec.readiness_source == "started"
    assert rec.image == "localhost/otelbridge-busybox:latest"
    assert rec.runtime == "io.containerd.runc.v2"
    started = decode(envs[3])
    assert isinstance(started, LifecycleEvent)
    assert rec.pid == started.pid > 0


def test_ready_record_is_returned_by_the_task_start_event(h: Harness, tl: Timeline) -> None:
    envs = tl.run_container("c1", remove=False)
    assert h.feed(envs[:3]) == []
    assert only(h.feed(envs[3])).outcome is Outcome.READY


def test_whole_lifecycle_leaves_no_state_behind(h: Harness, tl: Timeline) -> None:
    h.feed(tl.run_container("c1"))
    assert (h.correlator.in_flight, h.correlator.tracked) == (0, 0)
    assert h.count(semconv.EVENTS_UNMATCHED) == 0
    assert h.count(semconv.STARTUPS_COMPLETED) == 1


def test_new_startup_is_announced_once_through_on_new(h: Harness, tl: Timeline) -> None:
    h.feed(tl.run_container("c1"))
    assert [r.key.id for r in h.new] == ["c1"]
    assert h.new[0] is h.records[0]


# -- snapshots ---------------------------------------------------------------------------------


def test_snapshot_prepare_is_matched_to_the_container_with_the_same_key(
    h: Harness, tl: Timeline
) -> None:
    prepare = tl.snapshot_prepare("c1")
    h.feed(prepare, tl.snapshot_prepare("other", after_ns=MS))
    h.feed(tl.container_create("c1", after_ns=MS), tl.task_start("c1", after_ns=MS))
    assert only(h.records).snapshot_prepare_ns == prepare.timestamp_ns


def test_snapshot_prepare_of_another_namespace_is_not_matched(h: Harness, tl: Timeline) -> None:
    h.feed(tl.snapshot_prepare("c1", ns="other"))
    h.feed(tl.container_create("c1", after_ns=MS), tl.task_start("c1", after_ns=MS))
    assert only(h.records).snapshot_prepare_ns is None


def test_unmatched_snapshot_prepare_is_evicted_after_ttl_and_counted(
    h: Harness, tl: Timeline
) -> None:
    h.feed(tl.snapshot_prepare("extract-1"))
    h.advance(CFG.snapshot_ttl_s - 1)
    assert h.count(semconv.SNAPSHOTS_UNMATCHED) == 0
    h.advance(1)
    assert h.count(semconv.SNAPSHOTS_UNMATCHED) == 1
    # evicted: a container with that key created now does not claim it
    h.feed(tl.container_create("extract-1", after_ns=MS), tl.task_start("extract-1"))
    assert only(h.records).snapshot_prepare_ns is None


def test_committed_snapshot_is_forgotten_without_counting_it_unmatched(
    h: Harness, tl: Timeline
) -> None:
    h.feed(tl.snapshot_prepare("extract-1"))
    h.feed(tl.at(topics.SNAPSHOT_COMMIT, ev.SnapshotCommit(key="extract-1", name="sha256:1")))
    h.advance(CFG.snapshot_ttl_s)
    assert h.count(semconv.SNAPSHOTS_UNMATCHED) == 0


def test_pending_snapshot_limit_evicts_the_oldest_and_counts(tl: Timeline) -> None:
    h = Harness(config=CorrelateConfig(max_pending_snapshots=2))
    h.feed(tl.snapshot_prepare(k) for k in ("a", "b", "c"))
    assert h.count(semconv.SNAPSHOTS_UNMATCHED) == 1
    h.feed(tl.container_create("a"), tl.task_start("a"))
    assert only(h.records).snapshot_prepare_ns is None


def test_snapshot_prepared_twice_does_not_delay_eviction_of_others(
    h: Harness, tl: Timeline
) -> None:
    h.feed(tl.snapshot_prepare("a"))
    h.clock.advance(10)
    h.feed(tl.snapshot_prepare("b"))
    h.clock.advance(10)
    h.feed(tl.snapshot_prepare("a"))  # the same key again: its TTL restarts
    h.advance(CFG.snapshot_ttl_s - 10 + 5)  # "b" is 5 s past its TTL, "a" is not due
    assert h.count(semconv.SNAPSHOTS_UNMATCHED) == 1


# -- ends other than ready ---------------------------------------------------------------------


def test_task_exit_before_start_gives_exited_with_exit_status(h: Harness, tl: Timeline) -> None:
    h.feed(tl.snapshot_prepare("c1"), tl.container_create("c1", after_ns=MS))
    h.feed(tl.task_create("c1", after_ns=MS))
    exit_env = tl.task_exit("c1", status=127, after_ns=MS)
    rec = only(h.feed(exit_env))
    assert rec.outcome is Outcome.EXITED
    assert rec.exit_status == 127
    assert rec.end_ns == exit_env.timestamp_ns
    assert rec.task_start_ns is None and rec.ready_ns is None


def test_exited_container_is_not_reported_again_when_deleted(h: Harness, tl: Timeline) -> None:
    h.feed(tl.container_create("c1"), tl.task_create("c1", after_ns=MS))
    h.feed(tl.task_exit("c1", status=1, after_ns=MS), tl.task_delete("c1", after_ns=MS))
    h.feed(tl.container_delete("c1", after_ns=MS))
    assert len(h.records) == 1
    assert h.correlator.tracked == 0


def test_container_deleted_before_task_start_gives_deleted(h: Harness, tl: Timeline) -> None:
    h.feed(tl.snapshot_prepare("c1"), tl.container_create("c1", after_ns=MS))
    delete = tl.container_delete("c1", after_ns=5 * MS)
    rec = only(h.feed(delete))
    assert rec.outcome is Outcome.DELETED
    assert rec.end_ns == delete.timestamp_ns
    assert h.correlator.tracked == 0


def test_startup_not_ready_within_timeout_gives_timeout(h: Harness, tl: Timeline) -> None:
    create = tl.container_create("c1")
    h.feed(create, tl.task_create("c1", after_ns=MS))
    assert h.advance(CFG.startup_timeout_s - 0.001) == []
    rec = only(h.advance(0.001))
    assert rec.outcome is Outcome.TIMEOUT
    assert rec.end_ns == create.timestamp_ns + int(CFG.startup_timeout_s * S)
    assert h.correlator.in_flight == 0


def test_task_start_after_a_timeout_is_not_a_second_record(h: Harness, tl: Timeline) -> None:
    h.feed(tl.container_create("c1"))
    h.advance(CFG.startup_timeout_s)
    h.feed(tl.task_start("c1", after_ns=40 * S))
    assert len(h.records) == 1
    assert h.count(semconv.EVENTS_UNMATCHED) == 1


# -- missed events -----------------------------------------------------------------------------


def test_task_create_without_container_create_gives_partial_record(
    h: Harness, tl: Timeline
) -> None:
    task_create = tl.task_create("c1")
    h.feed(task_create, tl.task_start("c1", after_ns=MS))
    rec = only(h.records)
    assert (rec.outcome, rec.partial) == (Outcome.READY, True)
    assert rec.container_create_ns is None
    assert rec.start_ns == rec.incarnation_ns == task_create.timestamp_ns
    assert h.count(semconv.STARTUPS_PARTIAL) == 1


def test_task_start_alone_gives_partial_record(h: Harness, tl: Timeline) -> None:
    start = tl.task_start("c1", pid=77)
    rec = only(h.feed(start))
    assert (rec.outcome, rec.partial, rec.pid) == (Outcome.READY, True, 77)
    assert rec.task_create_ns is None
    assert rec.start_ns == rec.end_ns == rec.ready_ns == start.timestamp_ns


def test_task_exit_of_a_container_never_seen_is_unmatched(h: Harness, tl: Timeline) -> None:
    assert h.feed(tl.task_exit("old")) == []
    assert h.count(semconv.EVENTS_UNMATCHED) == 1
    assert h.correlator.tracked == 0


def test_container_delete_of_a_container_never_seen_is_ignored(h: Harness, tl: Timeline) -> None:
    assert h.feed(tl.container_delete("old")) == []
    assert h.correlator.tracked == 0


# -- duplicates, restarts, execs ---------------------------------------------------------------


def test_each_envelope_delivered_twice_gives_one_record(h: Harness, tl: Timeline) -> None:
    for env in tl.run_container("c1"):
        h.feed(env, env)
    assert only(h.records).outcome is Outcome.READY
    # /containers/create, /tasks/create and /tasks/start repeated
    assert h.count(semconv.EVENTS_UNMATCHED) == 3


def test_duplicate_container_create_is_counted_unmatched(h: Harness, tl: Timeline) -> None:
    create = tl.container_create("c1")
    h.feed(create, create)
    assert h.count(semconv.EVENTS_UNMATCHED) == 1
    assert h.correlator.in_flight == 1


def test_duplicate_task_start_after_ready_is_counted_unmatched(h: Harness, tl: Timeline) -> None:
    envs = tl.run_container("c1", remove=False)
    h.feed(envs[:4])
    h.feed(envs[3])
    assert len(h.records) == 1
    assert h.count(semconv.EVENTS_UNMATCHED) == 1


def test_duplicate_task_create_after_ready_is_unmatched_not_a_restart(
    h: Harness, tl: Timeline
) -> None:
    envs = tl.run_container("c1", remove=False)
    h.feed(envs[:4])
    h.feed(envs[2])  # the same /tasks/create envelope again
    assert h.count(semconv.EVENTS_UNMATCHED) == 1
    assert h.correlator.in_flight == 0
    assert h.advance(CFG.startup_timeout_s) == []


def test_new_task_after_a_completed_startup_is_attempt_two(h: Harness, tl: Timeline) -> None:
    first = tl.run_container("c1", remove=False)
    h.feed(first)
    h.feed(tl.task_delete("c1", after_ns=MS))
    task_create = tl.task_create("c1", pid=5000, after_ns=S)
    h.feed(task_create, tl.task_start("c1", pid=5000, after_ns=MS))
    one, two = h.records
    assert (one.attempt, two.attempt) == (1, 2)
    assert two.incarnation_ns == one.incarnation_ns == first[1].timestamp_ns
    assert (two.outcome, two.partial) == (Outcome.READY, False)
    assert two.start_ns == task_create.timestamp_ns
    assert two.container_create_ns is None and two.pid == 5000


def test_third_task_is_attempt_three(h: Harness, tl: Timeline) -> None:
    h.feed(tl.container_create("c1"))
    for _ in range(3):
        h.feed(tl.task_create("c1", after_ns=MS), tl.task_start("c1", after_ns=MS))
        h.feed(tl.task_exit("c1", after_ns=MS), tl.task_delete("c1", after_ns=MS))
    assert [r.attempt for r in h.records] == [1, 2, 3]


def test_container_id_reused_after_delete_is_a_new_incarnation(h: Harness, tl: Timeline) -> None:
    h.feed(tl.run_container("c1"))
    second = tl.run_container("c1")
    h.feed(second)
    one, two = h.records
    assert two.attempt == 1
    assert two.incarnation_ns == second[1].timestamp_ns != one.incarnation_ns


def test_exec_process_exit_is_ignored(h: Harness, tl: Timeline) -> None:
    h.feed(tl.container_create("c1"), tl.task_create("c1", after_ns=MS))
    assert h.feed(tl.task_exit("c1", status=2, exec_id="exec-1", after_ns=MS)) == []
    assert h.correlator.in_flight == 1
    rec = only(h.feed(tl.task_start("c1", after_ns=MS)))
    assert (rec.outcome, rec.exit_status) == (Outcome.READY, None)


def test_oom_is_recorded_on_the_in_flight_record(h: Harness, tl: Timeline) -> None:
    h.feed(tl.container_create("c1"), tl.task_create("c1", after_ns=MS))
    oom = tl.task_oom("c1", after_ns=MS)
    h.feed(oom)
    rec = only(h.feed(tl.task_exit("c1", status=137, after_ns=MS)))
    assert rec.oom_ns == [oom.timestamp_ns]
    assert (rec.outcome, rec.exit_status) == (Outcome.EXITED, 137)


def test_oom_of_an_untracked_container_is_ignored(h: Harness, tl: Timeline) -> None:
    assert h.feed(tl.task_oom("c9")) == []
    assert h.correlator.tracked == 0


# -- many containers ---------------------------------------------------------------------------


def test_fifty_interleaved_containers_give_fifty_correct_records(h: Harness, tl: Timeline) -> None:
    ids = [f"c{i:02d}" for i in range(50)]
    expected: dict[str, list[int]] = {cid: [] for cid in ids}
    for step in (tl.snapshot_prepare, tl.container_create, tl.task_create, tl.task_start):
        for cid in ids:
            env = step(cid, after_ns=1000)
            expected[cid].append(env.timestamp_ns)
            h.feed(env)
    for cid in ids:
        h.feed(tl.task_exit(cid, after_ns=1000))
    assert sorted(r.key.id for r in h.records) == ids
    for rec in h.records:
        prepare, create, task_create, task_start = expected[rec.key.id]
        assert rec.outcome is Outcome.READY and not rec.partial
        assert (
            rec.snapshot_prepare_ns,
            rec.container_create_ns,
            rec.task_create_ns,
            rec.task_start_ns,
            rec.end_ns,
        ) == (prepare, create, task_create, task_start, task_start)
    assert h.count(semconv.EVENTS_UNMATCHED) == 0


# -- memory bounds -----------------------------------------------------------------------------


def test_max_tracked_evicts_the_oldest_tombstone_first_and_counts(tl: Timeline) -> None:
    h = Harness(config=CorrelateConfig(max_tracked=2))
    h.feed(tl.run_container("done", remove=False)[:4])
    h.feed(tl.container_create("a"), tl.container_create("b"))
    assert h.count(semconv.STATE_EVICTED) == 1
    assert not h.correlator.knows(ContainerKey("default", "done"))
    assert h.correlator.in_flight == 2


def test_max_tracked_evicted_in_flight_startup_is_returned_as_timeout_by_expire(
    tl: Timeline,
) -> None:
    h = Harness(config=CorrelateConfig(max_tracked=2, startup_timeout_s=30.0))
    first = tl.container_create("a")
    h.feed(first, tl.container_create("b", after_ns=MS))
    assert h.feed(tl.container_create("c", after_ns=MS)) == []
    assert h.count(semconv.STATE_EVICTED) == 1
    assert h.correlator.in_flight == 2
    rec = only(h.advance(0))
    assert (rec.key.id, rec.outcome) == ("a", Outcome.TIMEOUT)
    assert rec.end_ns == first.timestamp_ns + 30 * S
    assert h.advance(0) == []


def test_idle_tombstone_is_evicted_after_idle_timeout_and_counted(h: Harness, tl: Timeline) -> None:
    h.feed(tl.run_container("c1", remove=False)[:4])
    assert h.correlator.tracked == 1
    h.advance(CFG.idle_timeout_s - 1)
    assert h.correlator.tracked == 1
    h.advance(1)
    assert h.correlator.tracked == 0
    assert h.count(semconv.STATE_EVICTED) == 1


def test_task_exit_keeps_a_tombstone_alive(h: Harness, tl: Timeline) -> None:
    h.feed(tl.run_container("c1", remove=False)[:4])
    h.advance(CFG.idle_timeout_s - 1)
    h.feed(tl.task_exit("c1", after_ns=MS))
    h.advance(2)
    assert h.correlator.tracked == 1
    h.advance(CFG.idle_timeout_s)
    assert h.correlator.tracked == 0


# -- reconciliation ----------------------------------------------------------------------------

SINCE = T0 - 60 * S


def listing(
    containers: Sequence[ContainerInfo] = (),
    tasks: Sequence[TaskInfo] = (),
    *,
    namespaces: tuple[str, ...] = ("default",),
    taken_at_ns: int = T0,
) -> ReconcileSnapshot:
    return ReconcileSnapshot(
        reason="connect",
        since_ns=SINCE,
        taken_at_ns=taken_at_ns,
        namespaces=namespaces,
        containers=tuple(containers),
        tasks={ContainerKey(t.namespace, t.container_id): t for t in tasks},
    )


def running(cid: str, pid: int = 321, ns: str = "default") -> TaskInfo:
    return TaskInfo(ns, cid, pid, TaskState.RUNNING)


def info(cid: str, created_at_ns: int, ns: str = "default") -> ContainerInfo:
    return ContainerInfo(
        ns, cid, image="img:1", runtime="io.containerd.runc.v2", created_at_ns=created_at_ns
    )


def test_reconcile_unknown_running_container_becomes_partial_reconciled_after_grace(
    h: Harness,
) -> None:
    created = T0 - 5 * S
    c = info("missed", created)
    assert h.correlator.reconcile(listing([c], [running("missed")])) == ()
    assert h.advance(CFG.reconcile_grace_s - 0.5) == []
    rec = only(h.advance(0.5))
    assert (rec.outcome, rec.partial) == (Outcome.RECONCILED, True)
    assert rec.info is c
    assert rec.incarnation_ns == created
    assert rec.pid == 321
    assert h.count(semconv.STARTUPS_RECONCILED) == 1
    assert h.count(semconv.STARTUPS_PARTIAL) == 1


def test_reconcile_unknown_container_whose_events_arrive_within_grace_is_normal(
    h: Harness, tl: Timeline
) -> None:
    c = info("c1", T0 + 1)
    h.correlator.reconcile(listing([c], [running("c1")]))
    envs = tl.run_container("c1", remove=False)
    h.feed(envs[:4])
    rec = only(h.records)
    assert (rec.outcome, rec.partial) == (Outcome.READY, False)
    assert rec.container_create_ns == rec.incarnation_ns == envs[1].timestamp_ns
    assert rec.task_start_ns == envs[3].timestamp_ns
    assert h.advance(CFG.reconcile_grace_s) == []
    assert h.count(semconv.STARTUPS_RECONCILED) == 0
    assert h.count(semconv.STARTUPS_PARTIAL) == 0


def test_reconcile_ignores_containers_created_before_since(h: Harness) -> None:
    h.correlator.reconcile(listing([info("old", SINCE)], [running("old")]))
    assert h.correlator.tracked == 0
    assert h.advance(CFG.reconcile_grace_s) == []


def test_reconcile_tracked_container_missing_from_listing_becomes_incomplete_after_grace(
    h: Harness, tl: Timeline
) -> None:
    h.feed(tl.container_create("gone"), tl.task_create("gone", after_ns=MS))
    h.correlator.reconcile(listing([]))
    assert h.advance(CFG.reconcile_grace_s - 0.5) == []
    rec = only(h.advance(0.5))
    assert (rec.outcome, rec.partial) == (Outcome.INCOMPLETE, True)
    assert h.count(semconv.STARTUPS_PARTIAL) == 1


def test_reconcile_tracked_container_listed_running_becomes_reconciled_after_grace(
    h: Harness, tl: Timeline
) -> None:
    h.feed(tl.container_create("c1"), tl.task_create("c1", pid=55, after_ns=MS))
    h.correlator.reconcile(listing([info("c1", T0)], [running("c1", pid=55)]))
    rec = only(h.advance(CFG.reconcile_grace_s))
    assert (rec.outcome, rec.partial) == (Outcome.RECONCILED, True)


def test_reconcile_tracked_container_whose_task_start_arrives_within_grace_is_ready(
    h: Harness, tl: Timeline
) -> None:
    h.feed(tl.container_create("c1"), tl.task_create("c1", after_ns=MS))
    h.correlator.reconcile(listing([info("c1", T0)], [running("c1")]))
    h.clock.advance(CFG.reconcile_grace_s / 2)
    rec = only(h.feed(tl.task_start("c1", after_ns=MS)))
    assert (rec.outcome, rec.partial) == (Outcome.READY, False)
    assert h.advance(CFG.reconcile_grace_s) == []


def test_reconcile_leaves_namespaces_not_covered_by_the_listing_untouched(
    h: Harness, tl: Timeline
) -> None:
    h.feed(tl.container_create("c1", ns="other"))
    h.feed(tl.run_container("done", ns="other", remove=False)[:4])
    h.records.clear()
    h.correlator.reconcile(listing([], namespaces=("default",)))
    assert h.advance(CFG.reconcile_grace_s) == []
    assert h.correlator.in_flight == 1
    assert h.correlator.knows(ContainerKey("other", "done"))
    rec = only(h.feed(tl.task_start("c1", ns="other", after_ns=MS)))
    assert (rec.outcome, rec.partial) == (Outcome.READY, True)


def test_reconcile_drops_tombstones_of_containers_that_are_gone(h: Harness, tl: Timeline) -> None:
    h.feed(tl.run_container("c1", remove=False)[:4])
    h.correlator.reconcile(listing([]))
    assert h.correlator.tracked == 0


# -- flush -------------------------------------------------------------------------------------


def test_flush_completes_in_flight_startups_as_incomplete(h: Harness, tl: Timeline) -> None:
    h.feed(tl.run_container("ready", remove=False)[:4])
    h.feed(tl.container_create("a"))
    last = tl.task_create("a", after_ns=MS)
    h.feed(last, tl.container_create("b", after_ns=MS))
    out = sorted(h.correlator.flush(), key=lambda r: r.key.id)
    assert [(r.key.id, r.outcome) for r in out] == [
        ("a", Outcome.INCOMPLETE),
        ("b", Outcome.INCOMPLETE),
    ]
    assert out[0].end_ns == last.timestamp_ns
    assert h.correlator.in_flight == 0
    assert h.correlator.flush() == []


@pytest.mark.parametrize("periodic", [True, False])
def test_a_listing_during_a_readiness_wait_leaves_the_startup_to_its_verdict(
    tl: Timeline, periodic: bool
) -> None:
    """Defect 5: a relist took a startup waiting for readiness (its /tasks/start seen, its
    task RUNNING) for one whose events were missed, and emitted it as a 70 ms
    ``reconciled`` partial startup: the slow startups the SLA exists to catch."""
    h = Harness()
    h.correlator = Correlator(CFG, h.clock, h.counters, h.new.append, readiness=lambda r: False)
    envs = tl.run_container("slow", remove=False)[:4]  # ... /tasks/start, not ready yet
    assert h.feed(envs) == []
    snap = listing([info("slow", envs[1].timestamp_ns)], [running("slow")])
    if periodic:  # a relist: a bounded window, judged beside the stream
        snap = dataclasses.replace(snap, until_ns=h.clock.now_ns(), since_ns=T0 - S)
    h.correlator.reconcile(snap)
    assert h.advance(CFG.reconcile_grace_s * 3) == []  # still waiting, not reconciled
    ready_at = envs[3].timestamp_ns + 8 * S
    rec = only(
        h.correlator.ready(ReadySignal(ContainerKey("default", "slow"), 1, ready_at, "probe"))
    )
    assert (rec.outcome, rec.partial, rec.ready_ns) == (Outcome.READY, False, ready_at)
    assert rec.readiness_source == "probe"
    assert h.count(semconv.STARTUPS_RECONCILED) == 0
