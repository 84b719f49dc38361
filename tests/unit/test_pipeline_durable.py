"""The pipeline with a StateStore (``otelbridge run``): checkpoint, restore, durable shutdown.

A "restart" is a second Pipeline on a second StateStore over the same ``tmp_path``, as a new
process would open it; the first pipeline is either shut down or simply abandoned (a
``kill -9`` runs no code). Envelopes are real containerd payloads from ``Timeline``; spans
are read back from the spool and compared, byte for byte, with what a pipeline that was
never interrupted emits for the same events.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otelbridge.core import semconv
from otelbridge.core.clock import FakeClock, SystemClock
from otelbridge.core.config import Config, EnrichConfig, StateConfig
from otelbridge.core.counters import Counters
from otelbridge.core.model import ContainerInfo, ContainerKey, Outcome, RawEnvelope, StartupRecord
from otelbridge.export.checkpoint import Checkpoint
from otelbridge.export.spool import DB_NAME, StateStore
from otelbridge.pipeline import Pipeline, SourceItem
from otelbridge.testing.events import Timeline

S = 1_000_000_000
T0 = 1_700_000_000_000_000_000
C1 = ContainerKey("default", "c1")
CONFIG = Config(
    enrich=EnrichConfig(metadata_timeout_s=5.0, lookup_workers=2),
    state=StateConfig(commit_interval_s=0.02),
)


# -- helpers ---------------------------------------------------------------------------------
class ListSink:
    def __init__(self) -> None:
        self.spans: list[Span] = []

    def submit(self, spans: list[Span]) -> None:
        self.spans.extend(spans)


class Run:
    """One "process": a StateStore on the state directory and a Pipeline over it."""

    def __init__(
        self,
        directory: Path,
        *,
        config: Config = CONFIG,
        lookup: Callable[[str, str], ContainerInfo] | None = None,
        clock: FakeClock | SystemClock | None = None,
        wall_clock: FakeClock | None = None,
    ) -> None:
        self.counters = Counters()
        self.store = StateStore(directory, self.counters, max_spool_bytes=1 << 30)
        self.records: list[StartupRecord] = []
        self.pipeline = Pipeline(
            config,
            self.store,
            self.counters,
            clock=clock or FakeClock(T0),
            wall_clock=wall_clock,
            lookup=lookup,
            on_record=lambda record, spans: self.records.append(record),
            store=self.store,
        )

    def feed(self, *envelopes: RawEnvelope) -> None:
        for env in envelopes:
            self.pipeline.feed(env)


class Runs:
    """Creates runs and, at teardown, shuts down those the test left running."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[Run] = []

    def __call__(self, **kwargs: object) -> Run:
        run = Run(self.directory, **kwargs)  # type: ignore[arg-type]
        self.started.append(run)
        return run


@pytest.fixture
def runs(tmp_path: Path) -> Iterator[Runs]:
    r = Runs(tmp_path / "state")
    yield r
    for run in r.started:
        run.pipeline.shutdown()  # idempotent; stops lookup threads


def on_disk(directory: Path) -> tuple[Checkpoint, list[Span]]:
    """What a restarted bridge would find: the checkpoint and the spooled spans."""
    store = StateStore(directory, Counters(), max_spool_bytes=1 << 30)
    try:
        return store.load(), [Span.FromString(d) for _, d in store.peek(100_000)]
    finally:
        store.close()


def reference_spans(envelopes: list[RawEnvelope]) -> list[Span]:
    """The spans a pipeline that was never interrupted emits for ``envelopes``."""
    sink = ListSink()
    pipeline = Pipeline(CONFIG, sink, Counters(), clock=FakeClock(T0))
    for env in envelopes:
        pipeline.feed(env)
    return sink.spans


def wait_until(cond: Callable[[], bool], timeout_s: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what or cond}")
        time.sleep(0.005)


def tick_until_emitted(run: Run) -> None:
    """Runs the deadline check (the event thread's tick) until a startup was emitted."""

    def emitted() -> bool:
        run.pipeline.tick()
        return bool(run.records)

    wait_until(emitted, what="a startup to be emitted")


def fail_writes_to(directory: Path, table: str) -> Callable[[], None]:
    """Makes every write to ``table`` fail, as a full disk would: a trigger installed by
    another connection (the store's own transaction then rolls back). Returns the undo."""
    db = sqlite3.connect(directory / DB_NAME, isolation_level=None)
    db.execute(
        f"CREATE TRIGGER fail_{table} BEFORE INSERT ON {table} "
        "BEGIN SELECT RAISE(ABORT, 'injected: database or disk is full'); END"
    )

    def undo() -> None:
        db.execute(f"DROP TRIGGER fail_{table}")
        db.close()

    return undo


# -- restart: nothing lost, nothing twice ----------------------------------------------------
def test_a_startup_in_flight_at_the_checkpoint_completes_once_after_restore(
    runs: Runs,
) -> None:
    tl = Timeline(start_ns=T0)
    envs = tl.run_container("c1", remove=False)[:4]  # prepare, create, task create, start
    first = runs()
    first.feed(*envs[:3])
    first.pipeline.checkpoint()
    cp, spooled = on_disk(runs.directory)
    assert first.records == [] and spooled == []
    assert [r.key for r, _ in cp.in_flight] == [C1]
    # the first bridge dies here (kill -9: no shutdown)

    second = runs()
    second.pipeline.restore()
    assert second.pipeline.correlator.in_flight == 1
    second.feed(envs[3])
    second.pipeline.checkpoint()

    [record] = second.records
    assert record.outcome is Outcome.READY and not record.partial
    assert (
        record.snapshot_prepare_ns,
        record.container_create_ns,
        record.task_create_ns,
        record.task_start_ns,
    ) == tuple(e.timestamp_ns for e in envs)
    cp, spooled = on_disk(runs.directory)
    assert spooled == reference_spans(envs)  # the very spans, IDs and times included
    assert spooled[0].start_time_unix_nano == envs[0].timestamp_ns
    assert cp.in_flight == [] and cp.unemitted == []
    assert [k for k, *_ in cp.done] == [C1]


def test_a_startup_emitted_before_the_checkpoint_is_not_emitted_again(runs: Runs) -> None:
    tl = Timeline(start_ns=T0)
    envs = tl.run_container("c1", remove=False)[:4]
    first = runs()
    first.feed(*envs)
    first.pipeline.checkpoint()
    assert len(first.records) == 1
    _, spooled = on_disk(runs.directory)
    assert spooled == reference_spans(envs)

    second = runs()
    second.pipeline.restore()
    second.feed(*envs[1:])  # containerd's events again (say, a replayed stream)
    second.pipeline.checkpoint()

    assert second.records == []
    assert second.counters.get(semconv.EVENTS_UNMATCHED) == 3  # create, task create, start
    assert second.counters.get(semconv.SPANS_EMITTED) == 0
    _, spooled_after = on_disk(runs.directory)
    assert spooled_after == spooled


def test_a_startup_completed_while_its_lookup_ran_is_checkpointed_and_emitted_once(
    runs: Runs,
) -> None:
    created_at = T0 - 5 * S  # the container record's identity wins over the envelope time
    release = threading.Event()

    def blocked(namespace: str, container_id: str) -> ContainerInfo:
        release.wait(10)
        return ContainerInfo(namespace, container_id, created_at_ns=created_at)

    def answers(namespace: str, container_id: str) -> ContainerInfo:
        return ContainerInfo(namespace, container_id, created_at_ns=created_at)

    tl = Timeline(start_ns=T0)
    envs = tl.run_container("c1", remove=False)[:4]
    config = Config(enrich=EnrichConfig(metadata_timeout_s=0.2, lookup_workers=1))
    try:
        first = runs(config=config, lookup=blocked)
        first.feed(*envs)  # complete, but waiting for its container record
        first.pipeline.checkpoint()
        assert first.records == []
        cp, spooled = on_disk(runs.directory)
        # complete (its tombstone is kept), its spans not out yet (kept to emit)
        assert spooled == [] and cp.in_flight == [] and [k for k, *_ in cp.done] == [C1]
        [unemitted] = cp.unemitted
        assert unemitted.key == C1 and unemitted.outcome is Outcome.READY
        assert unemitted.task_start_ns == envs[3].timestamp_ns
        # a graceful stop while the lookup still hangs: it stays "to emit"
        first.pipeline.shutdown()
        assert first.records == []
        assert len(on_disk(runs.directory)[0].unemitted) == 1
    finally:
        release.set()

    second = runs(config=config, lookup=answers)
    second.pipeline.restore()
    tick_until_emitted(second)
    second.pipeline.checkpoint()
    [record] = second.records
    assert record.outcome is Outcome.READY
    assert record.incarnation_ns == created_at
    assert record.info is not None
    cp, spooled = on_disk(runs.directory)
    assert cp.unemitted == [] and [k for k, *_ in cp.done] == [C1]
    assert len(spooled) == len(reference_spans(envs))
    assert len({s.span_id for s in spooled}) == len(spooled)

    third = runs(config=config, lookup=answers)  # and once more: nothing left to emit
    third.pipeline.restore()
    third.pipeline.shutdown()
    assert third.records == []
    assert on_disk(runs.directory)[1] == spooled


def test_restore_returns_the_horizon_of_the_last_commit(runs: Runs) -> None:
    assert runs().pipeline.restore() is None  # a first start

    tl = Timeline(start_ns=T0)
    envs = tl.run_container("c1", remove=False)[:4]
    first = runs()
    first.feed(*envs[:2])
    first.pipeline.checkpoint()
    first.feed(envs[2])  # not committed: lost with the process

    assert runs().pipeline.restore() == envs[1].timestamp_ns


def test_shutdown_of_a_durable_pipeline_checkpoints_in_flight_startups_instead_of_emitting(
    runs: Runs,
) -> None:
    tl = Timeline(start_ns=T0)
    envs = tl.run_container("c1", remove=False)[:4]
    first = runs()
    first.feed(*envs[:3])
    first.pipeline.shutdown()  # no checkpoint() of our own: shutdown commits
    first.pipeline.shutdown()  # idempotent
    assert first.records == []
    assert first.counters.get(semconv.STARTUPS_COMPLETED) == 0
    cp, spooled = on_disk(runs.directory)
    assert spooled == []
    assert [r.key for r, _ in cp.in_flight] == [C1]

    second = runs()
    assert second.pipeline.restore() == envs[2].timestamp_ns
    second.feed(envs[3])
    second.pipeline.shutdown()
    [record] = second.records
    assert record.outcome is Outcome.READY and not record.partial
    assert on_disk(runs.directory)[1] == reference_spans(envs)


def test_a_live_pipeline_commits_from_its_event_thread_and_resumes_after_shutdown(
    runs: Runs,
) -> None:
    tl = Timeline(start_ns=T0)
    c1 = tl.run_container("c1", remove=False)[:4]
    c2 = tl.run_container("c2", remove=False)[:4]

    class Scripted:
        def run(self, sink: Callable[[SourceItem], None], stop: threading.Event) -> None:
            for env in [*c1[:3], *c2]:
                sink(env)
            stop.wait()

    first = runs(clock=SystemClock())
    first.pipeline.start(Scripted())
    # the event thread commits every commit_interval_s: c2's spans reach the disk
    wait_until(lambda: len(on_disk(runs.directory)[1]) == 5, what="c2's spans on disk")
    first.pipeline.shutdown()

    second = runs(clock=SystemClock())
    second.pipeline.restore()
    second.feed(c1[3])
    second.pipeline.shutdown()
    assert [r.key.id for r in first.records] == ["c2"]
    assert [r.key.id for r in second.records] == ["c1"]
    _, spooled = on_disk(runs.directory)
    assert spooled == reference_spans(c2) + reference_spans(c1)


# -- a commit that fails -----------------------------------------------------------------------
def test_a_failing_commit_is_counted_and_retried_with_the_next_checkpoint(runs: Runs) -> None:
    tl = Timeline(start_ns=T0)
    envs = tl.run_container("c1", remove=False)[:4]
    first = runs()
    first.feed(*envs[:3])
    undo = fail_writes_to(runs.directory, "inflight")
    first.pipeline.checkpoint()
    assert first.counters.get(semconv.STATE_ERRORS) == 1
    cp, _ = on_disk(runs.directory)
    assert cp.in_flight == [] and cp.horizon_ns is None  # rolled back as a whole

    undo()  # space again
    first.pipeline.checkpoint()  # no new event: the failed keys are written now
    assert first.counters.get(semconv.STATE_ERRORS) == 1
    cp, _ = on_disk(runs.directory)
    [(record, _)] = cp.in_flight
    assert record.task_create_ns == envs[2].timestamp_ns
    assert cp.horizon_ns == envs[2].timestamp_ns

    second = runs()
    second.pipeline.restore()
    second.feed(envs[3])
    [done] = second.records
    assert done.outcome is Outcome.READY and not done.partial


def test_the_spans_of_a_failed_commit_are_written_by_the_next_one(runs: Runs) -> None:
    tl = Timeline(start_ns=T0)
    envs = tl.run_container("c1", remove=False)[:4]
    first = runs()
    first.feed(*envs)  # completed and emitted: its spans are staged
    undo = fail_writes_to(runs.directory, "spool")
    first.pipeline.checkpoint()
    assert first.counters.get(semconv.STATE_ERRORS) == 1
    undo()
    first.pipeline.checkpoint()

    cp, spooled = on_disk(runs.directory)
    assert [k for k, *_ in cp.done] == [C1]
    assert spooled == reference_spans(envs)  # else the startup is lost for good


def test_an_envelope_dated_far_in_the_future_does_not_become_the_horizon(runs: Runs) -> None:
    tl = Timeline(start_ns=T0)
    envs = tl.run_container("c1", remove=False)[:3]
    corrupt = Timeline(start_ns=T0 + 10 * 365 * 86_400 * S).task_oom("x")
    first = runs(wall_clock=FakeClock(T0 + S))
    first.feed(*envs, corrupt)
    assert first.counters.get(semconv.EVENTS_MALFORMED) == 1
    first.pipeline.checkpoint()

    # the horizon tells the next start which containers were created while it was away;
    # ten years ahead, none ever would be
    assert runs().pipeline.restore() == envs[2].timestamp_ns


def test_a_restart_in_flight_is_not_hidden_by_an_earlier_attempt_waiting_for_its_record(
    runs: Runs,
) -> None:
    release = threading.Event()

    def blocked(namespace: str, container_id: str) -> ContainerInfo:
        release.wait(10)
        return ContainerInfo(namespace, container_id)

    tl = Timeline(start_ns=T0)
    envs = tl.run_container("c1", remove=False)[:5]  # ..., start, exit
    restart = tl.task_create("c1", pid=5000, after_ns=S)  # attempt 2
    restart_start = tl.task_start("c1", pid=5000, after_ns=S // 100)
    config = Config(enrich=EnrichConfig(metadata_timeout_s=0.2, lookup_workers=2))
    try:
        first = runs(config=config, lookup=blocked)
        first.feed(*envs, restart)  # attempt 1 waits for its record; attempt 2 in flight
        assert first.pipeline.correlator.in_flight == 1
        first.pipeline.checkpoint()
        first.pipeline.shutdown()
    finally:
        release.set()

    second = runs(config=config, lookup=ContainerInfo)
    second.pipeline.restore()
    tick_until_emitted(second)  # attempt 1, once its record is read
    second.feed(restart_start)
    second.pipeline.shutdown()
    assert [(r.attempt, r.outcome) for r in second.records] == [
        (1, Outcome.READY),
        (2, Outcome.READY),
    ]
