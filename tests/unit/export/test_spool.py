"""The state database: the span spool (the delivery engine's durable storage, one cursor per
lane) and the correlator's checkpoint, in one SQLite file; and the engine over it.

Every state directory is a ``tmp_path``; a "crash" is a store dropped without ``close()``
or a real ``kill -9`` of a child process; a full disk is a trigger, installed by a
connection of the test's own, that makes the statement fail as SQLite would
(``database or disk is full``). Retry arithmetic runs on a fake clock; outages against a
real OTLP/gRPC receiver on loopback use short backoffs.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otelbridge.core import semconv
from otelbridge.core.counters import Counters
from otelbridge.core.model import ContainerKey, Outcome, StartupRecord
from otelbridge.export import ExportResult
from otelbridge.export.checkpoint import StateRow
from otelbridge.export.delivery import DeliveryConfig
from otelbridge.export.spool import DB_NAME, StateError, StateStore
from otelbridge.export.storage import Entry
from otelbridge.testing.otlp import OtlpReceiver
from tests.unit.export.test_delivery import (
    BIG,
    Deliveries,
    FakeTime,
    ProbedStorage,
    ScriptedExporter,
    entry_names,
    export_threads,
    fast_config,
    feed,
    grpc_exporter,
    received_names,
    wait_until,
)

# nanosecond times that a float (53-bit mantissa) could not hold exactly
T0 = 1_700_000_000_123_456_789
MS = 1_000_000
REPO = Path(__file__).resolve().parents[3]
FULL = "injected: database or disk is full"


# -- helpers -------------------------------------------------------------------------------------
def span(i: int) -> Span:
    """A span whose serialized size does not depend on ``i`` (fixed-width fields only)."""
    return Span(
        trace_id=i.to_bytes(16, "big"),
        span_id=(i + 1).to_bytes(8, "big"),
        name=f"span-{i:06d}",
        start_time_unix_nano=T0 + i,
        end_time_unix_nano=T0 + i + 1,
    )


SPAN_SIZE = len(span(0).SerializeToString())


def spans(start: int, stop: int) -> list[Span]:
    return [span(i) for i in range(start, stop)]


def expected(start: int, stop: int) -> list[str]:
    return [f"span-{i:06d}" for i in range(start, stop)]


def key(cid: str, ns: str = "default") -> ContainerKey:
    return ContainerKey(ns, cid)


def full_record(k: ContainerKey, *, outcome: Outcome | None = None) -> StartupRecord:
    """A record with every persisted field set to a value other than its default."""
    return StartupRecord(
        key=k,
        incarnation_ns=T0 + 1,
        attempt=3,
        snapshot_prepare_ns=T0 + 1,
        container_create_ns=T0 + 4 * MS + 3,
        task_create_ns=T0 + 48 * MS + 7,
        task_start_ns=T0 + 57 * MS + 11,
        ready_ns=T0 + 58 * MS + 13,
        end_ns=T0 + 59 * MS + 17,
        outcome=outcome,
        partial=True,
        pid=4242,
        exit_status=137,
        image="localhost/otelbridge-busybox:latest",
        runtime="io.containerd.runc.v2",
        snapshotter="overlayfs",
        readiness_source="probe",
        oom_ns=[T0 + 50 * MS + 1, T0 + 51 * MS + 2],
        failure="probe did not succeed by its deadline",
    )


def raw(directory: Path) -> sqlite3.Connection:
    """A connection of our own to the state database (another process would use one)."""
    return sqlite3.connect(directory / DB_NAME, isolation_level=None)


def fail_on(directory: Path, when: str) -> None:
    """Makes every ``when`` (``INSERT`` or ``DELETE``) on the spool fail as a full disk."""
    db = raw(directory)
    db.execute(
        f"CREATE TRIGGER fail_{when.lower()} BEFORE {when} ON spool "
        f"BEGIN SELECT RAISE(ABORT, '{FULL}'); END"
    )
    db.close()


def heal(directory: Path, when: str) -> None:
    db = raw(directory)
    db.execute(f"DROP TRIGGER fail_{when.lower()}")
    db.close()


def take(store: StateStore, lane: str, limit: int = 1000) -> list[str]:
    """What a lane does with a batch it delivered: reads it, moves its cursor past it."""
    batch = store.read(lane, limit)
    if batch:
        store.advance(lane, batch[-1][0])
    return entry_names(batch)


def in_thread(fn: Callable[[], object], timeout_s: float = 10.0) -> bool:
    """Runs ``fn`` on a thread of its own (its own connection); True if it ended in time."""
    thread = threading.Thread(target=fn)
    thread.start()
    thread.join(timeout_s)
    return not thread.is_alive()


@pytest.fixture
def deliveries(tmp_path: Path) -> Iterator[Deliveries]:
    d = Deliveries(tmp_path)
    yield d
    d.close()


# -- the checkpoint ------------------------------------------------------------------------------
def test_a_fresh_directory_loads_an_empty_checkpoint(
    tmp_path: Path, deliveries: Deliveries
) -> None:
    directory = tmp_path / "a" / "state"  # parents are created too
    store = deliveries.store(Counters(), directory)
    cp = store.load()
    assert (cp.in_flight, cp.unemitted, cp.done, cp.prepares) == ([], [], [], [])
    assert cp.horizon_ns is None
    assert cp.spooled == 0
    assert store.spooled == (0, 0)
    assert store.peek(10) == []
    assert store.newest() == 0
    assert store.problems() == []
    assert (directory / DB_NAME).is_file()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700  # spans may hold tenant data


def test_in_flight_records_round_trip_every_field_to_the_nanosecond(
    tmp_path: Path, deliveries: Deliveries
) -> None:
    a = full_record(key("a"))
    b = StartupRecord(key("b", ns="k8s.io"), incarnation_ns=T0 + 99)  # defaults, None times
    deliveries.store(Counters()).commit(
        [StateRow(a.key, a, T0 + 60 * MS + 19), StateRow(b.key, b, T0 + 99)], T0 + 60 * MS + 19
    )

    cp = deliveries.store(Counters()).load()  # a second store: what a restarted bridge reads
    assert sorted(cp.in_flight, key=lambda pair: pair[0].key) == [
        (a, T0 + 60 * MS + 19),
        (b, T0 + 99),
    ]
    assert cp.unemitted == [] and cp.done == [] and cp.prepares == []
    assert cp.horizon_ns == T0 + 60 * MS + 19


def test_unemitted_records_tombstones_prepares_and_horizon_round_trip(
    deliveries: Deliveries,
) -> None:
    ready = full_record(key("ready"), outcome=Outcome.READY)
    exited = full_record(key("exited"), outcome=Outcome.EXITED)
    exited.exit_status = None  # an exit status not observed stays None
    rows = [
        StateRow(ready.key, unemitted=[ready]),  # completed, its spans not out yet
        StateRow(exited.key, exited, 0),  # a record with an outcome counts as unemitted
        StateRow(key("done"), tombstone=(T0 + 5, 2, T0 + 48 * MS + 7)),
        StateRow(key("snap-1"), prepare_ns=T0 + 123),
    ]
    deliveries.store(Counters()).commit(rows, T0 + 7 * 1_000_000_000)

    cp = deliveries.store(Counters()).load()
    assert sorted(cp.unemitted, key=lambda r: r.key) == [exited, ready]
    assert cp.in_flight == []
    assert cp.done == [(key("done"), T0 + 5, 2, T0 + 48 * MS + 7)]
    assert cp.prepares == [(key("snap-1"), T0 + 123)]
    assert cp.horizon_ns == T0 + 7 * 1_000_000_000


def test_a_later_commit_that_removes_a_keys_state_deletes_it(deliveries: Deliveries) -> None:
    store = deliveries.store(Counters())
    k = key("c1")
    rec = full_record(k)
    # the same key in every table at once (a snapshot is named after its container)
    store.commit([StateRow(k, rec, T0, (T0, 1, T0), T0 + 1)], T0 + 10)
    cp = store.load()
    assert len(cp.in_flight) == 1 and len(cp.done) == 1 and len(cp.prepares) == 1

    store.commit([StateRow(k, None, 0, (T0, 1, T0 + 2), None)], None)  # completed: tombstone
    cp = store.load()
    assert cp.in_flight == [] and cp.prepares == []
    assert cp.done == [(k, T0, 1, T0 + 2)]
    assert cp.horizon_ns == T0 + 10  # a commit without a horizon keeps the last one

    store.commit([StateRow(k)], T0 + 11)  # deleted: nothing left
    cp = deliveries.store(Counters()).load()
    assert (cp.in_flight, cp.unemitted, cp.done, cp.prepares) == ([], [], [], [])
    assert cp.horizon_ns == T0 + 11


def test_a_corrupt_inflight_row_is_skipped_with_a_log_line(
    tmp_path: Path, deliveries: Deliveries, caplog: pytest.LogCaptureFixture
) -> None:
    good = full_record(key("good"))
    deliveries.store(Counters()).commit([StateRow(good.key, good, T0)], T0)
    db = raw(tmp_path / "state")
    db.executemany(
        "INSERT INTO inflight VALUES ('default', ?, ?)",
        [
            ("not-json", "{truncated"),
            ("missing-fields", '{"inc": 1}'),
            (
                "bad-outcome",
                '{"inc":1,"att":1,"t":[null,null,null,null,null,null],'
                '"out":"exploded","partial":false,"pid":0,"exit":null,"image":"",'
                '"runtime":"","snap":"","ready_by":"started","oom":[],"last":0}',
            ),
            ("a-list", "[1, 2, 3]"),
        ],
    )
    db.close()

    with caplog.at_level(logging.WARNING, logger="otelbridge.export.spool"):
        cp = deliveries.store(Counters()).load()
    assert cp.in_flight == [(good, T0)]
    assert cp.unemitted == []
    for cid in ("not-json", "missing-fields", "bad-outcome", "a-list"):
        assert f"default/{cid}" in caplog.text


@pytest.mark.parametrize("how", ["under-a-file", "db-is-garbage", "db-is-a-directory"])
def test_an_unusable_directory_raises_state_error(tmp_path: Path, how: str) -> None:
    directory = tmp_path / "state"
    if how == "under-a-file":
        (tmp_path / "file").write_text("")
        directory = tmp_path / "file" / "state"
    elif how == "db-is-garbage":
        directory.mkdir()
        (directory / DB_NAME).write_bytes(b"this is not a database" * 100)
    else:
        (directory / DB_NAME).mkdir(parents=True)
    with pytest.raises(StateError) as err:
        StateStore(directory, Counters(), max_spool_bytes=BIG)
    assert str(directory) in str(err.value)


# the schema otelbridge wrote before the delivery engine (schema 2: no cursors table)
SCHEMA_2 = """
CREATE TABLE spool (id INTEGER PRIMARY KEY AUTOINCREMENT, data BLOB NOT NULL);
CREATE TABLE inflight (
    ns TEXT NOT NULL, id TEXT NOT NULL, record TEXT NOT NULL, PRIMARY KEY (ns, id));
CREATE TABLE done (
    ns TEXT NOT NULL, id TEXT NOT NULL, incarnation INTEGER NOT NULL, attempt INTEGER NOT NULL,
    task_create INTEGER NOT NULL, PRIMARY KEY (ns, id));
CREATE TABLE unemitted (
    ns TEXT NOT NULL, id TEXT NOT NULL, attempt INTEGER NOT NULL, record TEXT NOT NULL,
    PRIMARY KEY (ns, id, attempt));
CREATE TABLE prepares (
    ns TEXT NOT NULL, key TEXT NOT NULL, ts INTEGER NOT NULL, PRIMARY KEY (ns, key));
CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO meta VALUES ('schema', 2);
INSERT INTO meta VALUES ('horizon', 1700000000123456789);
"""


def test_a_schema_2_database_opens_gains_the_cursors_table_and_its_spans_go_out_once(
    tmp_path: Path, deliveries: Deliveries
) -> None:
    directory = tmp_path / "state"
    directory.mkdir(mode=0o700)
    db = raw(directory)
    db.executescript(SCHEMA_2)
    db.executemany(
        "INSERT INTO spool (data) VALUES (?)", [(s.SerializeToString(),) for s in spans(0, 3)]
    )
    db.execute("INSERT INTO prepares VALUES ('default', 'snap-1', ?)", (T0,))
    db.close()

    counters = Counters()
    store = deliveries.store(counters)
    cp = store.load()
    assert (cp.horizon_ns, cp.prepares, cp.spooled) == (T0, [(key("snap-1"), T0)], 3)
    db = raw(directory)
    assert db.execute("SELECT value FROM meta WHERE name='schema'").fetchone() == (3,)
    assert db.execute("SELECT count(*) FROM cursors").fetchone() == (0,)
    db.close()
    exporter = ScriptedExporter(name="a")
    deliveries([exporter], store, counters, fake=FakeTime()).shutdown(5)
    assert exporter.delivered == expected(0, 3)  # the old spool's rows: sent, once
    store.close()

    again = ScriptedExporter(name="a")
    deliveries([again], deliveries.store(Counters()), Counters(), fake=FakeTime()).shutdown(5)
    assert again.calls == []


def test_a_database_of_another_schema_is_refused(tmp_path: Path) -> None:
    StateStore(tmp_path, Counters(), max_spool_bytes=BIG).close()
    db = raw(tmp_path)
    db.execute("UPDATE meta SET value = 99 WHERE name = 'schema'")
    db.close()
    with pytest.raises(StateError, match="schema 99"):
        StateStore(tmp_path, Counters(), max_spool_bytes=BIG)


# -- the spool as a storage ----------------------------------------------------------------------
def test_staged_spans_are_invisible_until_commit(deliveries: Deliveries) -> None:
    store = deliveries.store(Counters())
    store.attach(["lane"])
    store.submit([span(0), span(1)])
    assert store.read("lane", 10) == []
    assert store.spooled == (0, 0)
    assert store.newest() == 0
    assert deliveries.store(Counters()).spooled == (0, 0)  # not on disk either
    store.commit([], None)
    assert entry_names(store.read("lane", 10)) == expected(0, 2)
    assert store.spooled == (2, 2 * SPAN_SIZE)
    assert store.newest() == 2
    assert store.pending("lane") == 2


def test_each_lane_reads_from_its_cursor_and_a_row_goes_once_every_lane_is_past_it(
    deliveries: Deliveries,
) -> None:
    store = deliveries.store(Counters())
    store.attach(["a", "b"])
    for i in range(5):  # five transactions, two spans each
        feed(store, spans(2 * i, 2 * i + 2))
    first = store.read("a", 4)
    assert entry_names(first) == expected(0, 4)
    assert store.read("a", 4) == first  # reading takes nothing away
    assert [row_id for row_id, _ in first] == sorted(row_id for row_id, _ in first)
    assert [data for _, data in first] == [span(i).SerializeToString() for i in range(4)]

    store.advance("a", first[-1][0])
    assert store.cursor("a") == first[-1][0]
    assert entry_names(store.read("a", 100)) == expected(4, 10)
    assert entry_names(store.read("b", 100)) == expected(0, 10)  # b has taken nothing
    assert store.spooled == (10, 10 * SPAN_SIZE)  # kept for b
    assert (store.pending("a"), store.pending("b")) == (6, 10)

    assert take(store, "b", 6) == expected(0, 6)
    assert store.spooled == (6, 6 * SPAN_SIZE)  # rows 1-4: both past; 5-6: a is not
    assert entry_names(store.peek(100)) == expected(4, 10)


def test_cursors_survive_a_restart_and_a_new_lane_gets_the_rows_still_there(
    deliveries: Deliveries,
) -> None:
    store = deliveries.store(Counters())
    store.attach(["a", "b"])
    feed(store, spans(0, 6))
    assert take(store, "a") == expected(0, 6)
    assert take(store, "b", 2) == expected(0, 2)
    store.close()

    restarted = deliveries.store(Counters())
    restarted.attach(["a", "b", "c"])
    assert restarted.read("a", 100) == []  # a took everything: nothing again
    assert entry_names(restarted.read("b", 100)) == expected(2, 6)
    assert entry_names(restarted.read("c", 100)) == expected(2, 6)  # what is still there
    assert restarted.newest() == 6
    feed(restarted, spans(6, 7))
    assert [e[0] for e in restarted.read("a", 100)] == [7]  # ids never reused


def test_spooled_rows_and_bytes_are_exact_across_commit_advance_and_reopen(
    deliveries: Deliveries,
) -> None:
    store = deliveries.store(Counters())
    store.attach(["lane"])
    sizes: list[int] = []
    for i in range(7):
        s = Span(name="x" * (i * 13 + 1), span_id=i.to_bytes(8, "big"))  # uneven sizes
        sizes.append(len(s.SerializeToString()))
        store.submit([s])
    store.commit([], None)
    assert store.spooled == (7, sum(sizes))

    take(store, "lane", 3)
    assert store.spooled == (4, sum(sizes[3:]))
    assert store.load().spooled == 4

    reopened = deliveries.store(Counters())
    reopened.attach(["lane"])
    assert reopened.spooled == (4, sum(sizes[3:]))
    take(reopened, "lane")
    assert reopened.spooled == (0, 0)
    assert deliveries.store(Counters()).spooled == (0, 0)


def test_wait_ends_on_a_commit_a_wake_or_its_timeout(deliveries: Deliveries) -> None:
    store = deliveries.store(Counters())
    store.attach(["lane"])
    done = threading.Event()

    def waiter(count: int = 1) -> None:
        store.wait("lane", count, 30.0)
        done.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    feed(store, spans(0, 1))  # a commit wakes a waiting lane
    assert done.wait(10)
    thread.join(10)

    done.clear()
    thread = threading.Thread(target=waiter, args=(5,))
    thread.start()

    def woken() -> bool:
        store.wake()  # a flush or a shutdown (again until it lands: it may not wait yet)
        return done.wait(0.01)

    wait_until(woken, what="wake() to end the wait")
    thread.join(10)
    assert in_thread(lambda: store.wait("lane", 5, 0.05))  # the timeout


def test_a_lane_new_to_a_drained_spool_starts_at_its_newest_row_and_waits(
    deliveries: Deliveries,
) -> None:
    store = deliveries.store(Counters())
    store.attach(["a"])
    feed(store, spans(0, 5))
    take(store, "a")
    assert store.spooled == (0, 0)
    store.close()

    restarted = deliveries.store(Counters())
    restarted.attach(["a", "new"])
    assert restarted.pending("new") == 0
    assert restarted.newest() == 5
    started = time.monotonic()
    restarted.wait("new", 1, 0.2)  # nothing after its cursor: waits out the timeout
    waited = time.monotonic() - started
    assert restarted.cursor("new") == restarted.newest()
    assert waited >= 0.15, waited


def test_wait_counts_rows_not_ids_after_the_budget_dropped_some(deliveries: Deliveries) -> None:
    counters = Counters()
    store = deliveries.store(counters, budget=10 * SPAN_SIZE)
    store.attach(["lane"])
    feed(store, spans(0, 10))
    being_sent = store.read("lane", 10)
    feed(store, spans(10, 15))  # over budget; rows 1-10 are being sent: 11-15 go
    assert counters.get(semconv.SPANS_DROPPED) == 5
    store.advance("lane", being_sent[-1][0])
    assert store.pending("lane") == 0
    started = time.monotonic()
    store.wait("lane", 1, 0.2)
    waited = time.monotonic() - started
    assert waited >= 0.15, waited


# -- the budget ----------------------------------------------------------------------------------
def test_the_budget_drops_the_oldest_spans_and_counts_them_once_per_lane_that_had_not_taken_them(
    deliveries: Deliveries, caplog: pytest.LogCaptureFixture
) -> None:
    counters = Counters()
    budget = 10 * SPAN_SIZE
    store = deliveries.store(counters, budget=budget)
    store.attach(["a", "b"])
    feed(store, spans(0, 10))  # exactly at the budget: nothing dropped
    assert counters.get(semconv.SPANS_DROPPED) == 0

    with caplog.at_level(logging.WARNING, logger="otelbridge.export.spool"):
        feed(store, spans(10, 12))
    # 12 spans over a budget of 10: back under 90% of it, the oldest going first; neither
    # lane had taken them: each is lost twice
    rows, size = store.spooled
    assert size <= budget * 0.9
    assert rows == 9
    assert counters.get(semconv.SPANS_DROPPED) == 3 * 2
    assert "budget" in caplog.text
    assert entry_names(store.peek(100)) == expected(3, 12)  # (peek: b is not sending them)

    assert take(store, "a") == expected(3, 12)  # a has them all; b has none
    feed(store, spans(12, 15))  # 12 again: 3 more go, lost to b only
    assert counters.get(semconv.SPANS_DROPPED) == 6 + 3
    assert entry_names(store.read("b", 100)) == expected(6, 15)
    assert entry_names(store.read("a", 100)) == expected(12, 15)
    assert deliveries.store(Counters()).spooled == store.spooled  # the on-disk truth agrees


def test_the_budget_leaves_the_batch_being_sent_alone_and_spooled_stays_exact(
    deliveries: Deliveries,
) -> None:
    # a lane reads a batch; the event thread's next commit goes over the budget; the batch
    # is then delivered: no span is both dropped and delivered, and the counts hold
    counters = Counters()
    store = deliveries.store(counters, budget=20 * SPAN_SIZE)
    store.attach(["lane"])
    feed(store, spans(0, 10))
    being_sent = store.read("lane", 10)
    feed(store, spans(10, 22))  # 22 > 20: back to 18, the oldest spans not being sent go
    assert counters.get(semconv.SPANS_DROPPED) == 4
    assert entry_names(store.peek(100))[9:11] == ["span-000009", "span-000014"]
    store.advance("lane", being_sent[-1][0])

    assert entry_names(store.read("lane", 100)) == expected(14, 22)
    assert store.spooled == deliveries.store(Counters()).spooled == (8, 8 * SPAN_SIZE)
    assert len(being_sent) + counters.get(semconv.SPANS_DROPPED) + store.spooled[0] == 22


def test_a_nearly_full_disk_caps_the_spool_where_it_is(
    deliveries: Deliveries, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    counters = Counters()
    store = deliveries.store(counters)
    store.attach(["lane"])
    feed(store, spans(0, 10))
    real_statvfs = os.statvfs
    free: list[int | None] = [None]

    def statvfs(path: str | Path) -> os.statvfs_result:
        st = real_statvfs(path)
        if free[0] is None:
            return st
        fields = list(st)
        fields[4] = free[0] // st.f_frsize  # f_bavail
        return os.statvfs_result(fields)

    monkeypatch.setattr(os, "statvfs", statvfs)
    free[0] = 0
    with caplog.at_level(logging.WARNING, logger="otelbridge.export.spool"):
        feed(store, spans(10, 15))  # the disk is found tight: the spool stops here
        assert counters.get(semconv.SPANS_DROPPED) == 0
        feed(store, spans(15, 20))  # over its size of then: back under 90% of it
    rows, size = store.spooled
    assert size <= 15 * SPAN_SIZE * 0.9
    assert counters.get(semconv.SPANS_DROPPED) == 20 - rows
    assert entry_names(store.read("lane", 100)) == expected(20 - rows, 20)  # oldest went
    assert "nearly full" in caplog.text

    free[0] = 1 << 50  # room again: the spool grows
    before = counters.get(semconv.SPANS_DROPPED)
    feed(store, spans(20, 40))
    assert counters.get(semconv.SPANS_DROPPED) == before
    assert store.spooled[0] == rows + 20


# -- threads and crashes -------------------------------------------------------------------------
def test_a_lane_thread_and_the_event_thread_work_concurrently(deliveries: Deliveries) -> None:
    store = deliveries.store(Counters())
    store.attach(["lane"])
    total = 400
    got: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def lane() -> None:
        try:
            start.wait(5)
            deadline = time.monotonic() + 20
            while len(got) < total and time.monotonic() < deadline:
                got.extend(take(store, "lane", 7))
        except BaseException as exc:
            errors.append(exc)
        finally:
            store.close()  # the lane's own connection

    thread = threading.Thread(target=lane)
    thread.start()
    start.wait(5)
    for i in range(0, total, 8):  # the event thread: 50 transactions of 8 spans
        store.submit(spans(i, i + 8))
        store.commit([StateRow(key(f"c{i}"), prepare_ns=T0 + i)], T0 + i)
    thread.join(30)

    assert not thread.is_alive()
    assert errors == []
    assert got == expected(0, total)  # each once, oldest first
    assert store.spooled == (0, 0)
    assert len(store.load().prepares) == total // 8


def test_a_lane_does_not_wait_for_an_open_write_transaction(
    tmp_path: Path, deliveries: Deliveries
) -> None:
    store = deliveries.store(Counters())
    store.attach(["lane"])
    feed(store, spans(0, 1))
    writer = raw(tmp_path / "state")
    assert writer.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    writer.execute("BEGIN IMMEDIATE")  # holds the write lock, as a long commit would
    writer.execute("INSERT INTO spool (data) VALUES (?)", (span(1).SerializeToString(),))
    read: list[Entry] = []

    def lane() -> None:
        read.extend(store.read("lane", 10))
        store.close()  # its own connection

    try:
        # the lane's thread reads the committed state only, without the 10 s busy wait
        assert in_thread(lane, 5.0)
        assert entry_names(read) == expected(0, 1)
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_reopening_after_a_crash_keeps_every_committed_transaction(
    tmp_path: Path, deliveries: Deliveries
) -> None:
    # never closed, and still alive while the restarted store opens: no close-time WAL
    # checkpoint happens, the new store reads what the old one left in the log
    crashed = StateStore(tmp_path / "state", Counters(), max_spool_bytes=BIG)
    crashed.attach(["lane"])
    rec = full_record(key("c1"))
    crashed.submit([span(0), span(1)])
    crashed.commit([StateRow(rec.key, rec, T0)], T0 + 1)
    crashed.submit([span(2)])
    crashed.commit([StateRow(key("c2"), tombstone=(T0, 1, T0))], T0 + 2)
    take(crashed, "lane", 1)  # its cursor is on disk too
    crashed.submit([span(3)])  # staged, never committed: lost by the crash, as documented

    restarted = deliveries.store(Counters())
    restarted.attach(["lane"])
    cp = restarted.load()
    assert cp.in_flight == [(rec, T0)]
    assert cp.done == [(key("c2"), T0, 1, T0)]
    assert cp.horizon_ns == T0 + 2
    assert cp.spooled == 2
    assert restarted.spooled == (2, 2 * SPAN_SIZE)
    assert entry_names(restarted.read("lane", 10)) == expected(1, 3)
    assert crashed.spooled == (2, 2 * SPAN_SIZE)  # (kept alive until here on purpose)


def test_kill_9_of_the_process_keeps_every_committed_transaction(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        from pathlib import Path
        from opentelemetry.proto.trace.v1.trace_pb2 import Span
        from otelbridge.core.counters import Counters
        from otelbridge.core.model import ContainerKey, StartupRecord
        from otelbridge.export.checkpoint import StateRow
        from otelbridge.export.spool import StateStore

        store = StateStore(Path(sys.argv[1]), Counters(), max_spool_bytes=1 << 40)
        store.attach(["lane"])
        for i in range(50):
            k = ContainerKey("default", f"c{{i}}")
            store.submit([Span(name=f"committed-{{i}}")])
            store.commit([StateRow(k, StartupRecord(k, {T0} + i), {T0} + i)], {T0} + i)
            if i == 9:
                batch = store.read("lane", 5)
                store.advance("lane", batch[-1][0])
        store.submit([Span(name="staged")])
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr

    store = StateStore(tmp_path, Counters(), max_spool_bytes=BIG)
    try:
        store.attach(["lane"])
        cp = store.load()
        assert sorted(r.key.id for r, _ in cp.in_flight) == sorted(f"c{i}" for i in range(50))
        assert cp.horizon_ns == T0 + 49
        assert entry_names(store.read("lane", 100)) == [f"committed-{i}" for i in range(5, 50)]
    finally:
        store.close()


# -- a failing disk (defect 10: the spool's part) ------------------------------------------------
def test_a_failing_commit_raises_keeps_the_spans_staged_and_a_later_commit_writes_them(
    tmp_path: Path, deliveries: Deliveries
) -> None:
    counters = Counters()
    store = deliveries.store(counters)
    store.attach(["lane"])
    fail_on(tmp_path / "state", "INSERT")
    store.submit(spans(0, 3))
    with pytest.raises(StateError, match="disk is full"):
        store.commit([StateRow(key("c1"), prepare_ns=T0)], T0)
    assert counters.get(semconv.STATE_ERRORS) == 1
    (problem,) = store.problems()
    assert "disk is full" in problem and "kept in memory" in problem
    assert store.peek(10) == [] and store.newest() == 0
    cp = store.load()
    assert (cp.prepares, cp.horizon_ns) == ([], None)  # nothing of the transaction written

    store.submit(spans(3, 4))
    with pytest.raises(StateError):
        store.commit([StateRow(key("c1"), prepare_ns=T0)], T0)
    assert counters.get(semconv.STATE_ERRORS) == 2
    heal(tmp_path / "state", "INSERT")
    store.commit([StateRow(key("c1"), prepare_ns=T0)], T0)
    assert store.problems() == []
    assert entry_names(store.read("lane", 10)) == expected(0, 4)  # each once, in order
    assert store.load().prepares == [(key("c1"), T0)]
    assert counters.get(semconv.SPANS_DROPPED) == 0


def test_staged_spans_beyond_max_staged_spans_are_dropped_oldest_first_and_counted(
    tmp_path: Path, deliveries: Deliveries
) -> None:
    counters = Counters()
    store = deliveries.store(counters, max_staged_spans=5)
    store.attach(["a", "b"])
    fail_on(tmp_path / "state", "INSERT")
    store.submit(spans(0, 3))
    with pytest.raises(StateError):
        store.commit([], None)
    assert counters.get(semconv.SPANS_DROPPED) == 0  # 3 held: within the bound
    store.submit(spans(3, 8))
    with pytest.raises(StateError):
        store.commit([], None)
    assert counters.get(semconv.SPANS_DROPPED) == 3 * 2  # the 3 oldest, lost to both lanes
    heal(tmp_path / "state", "INSERT")
    store.commit([], None)
    assert entry_names(store.read("a", 10)) == expected(3, 8)
    assert store.dropped_at_exit() == 0


def test_dropped_at_exit_counts_the_spans_never_written(
    tmp_path: Path, deliveries: Deliveries
) -> None:
    counters = Counters()
    store = deliveries.store(counters)
    store.attach(["a", "b"])
    fail_on(tmp_path / "state", "INSERT")
    store.submit(spans(0, 2))
    with pytest.raises(StateError):
        store.commit([], None)
    assert store.dropped_at_exit() == 2
    assert counters.get(semconv.SPANS_DROPPED) == 2 * 2
    assert store.dropped_at_exit() == 0  # counted once


def test_a_failing_delete_holds_the_cursor_and_a_later_advance_removes_the_rows(
    tmp_path: Path, deliveries: Deliveries
) -> None:
    counters = Counters()
    store = deliveries.store(counters)
    store.attach(["lane"])
    feed(store, spans(0, 5))
    fail_on(tmp_path / "state", "DELETE")
    assert take(store, "lane") == expected(0, 5)  # advance() never raises
    assert counters.get(semconv.STATE_ERRORS) == 1
    assert store.cursor("lane") == 5
    assert store.read("lane", 10) == []  # nothing twice
    assert len(store.peek(10)) == 5  # the rows are still there
    feed(store, spans(5, 7))
    assert take(store, "lane") == expected(5, 7)
    assert counters.get(semconv.STATE_ERRORS) == 2

    heal(tmp_path / "state", "DELETE")
    feed(store, spans(7, 8))
    assert take(store, "lane") == expected(7, 8)
    assert store.peek(10) == []  # the later advance removed them all
    assert store.spooled == (0, 0)
    assert deliveries.store(Counters()).spooled == (0, 0)


def test_a_failing_delete_does_not_make_a_restart_resend(
    tmp_path: Path, deliveries: Deliveries
) -> None:
    store = deliveries.store(Counters())
    store.attach(["lane"])
    feed(store, spans(0, 5))
    fail_on(tmp_path / "state", "DELETE")
    assert take(store, "lane") == expected(0, 5)
    store.close()

    restarted = deliveries.store(Counters())
    restarted.attach(["lane"])
    assert restarted.read("lane", 10) == []


# -- the delivery engine over the spool ----------------------------------------------------------
def test_committed_spans_are_delivered_and_leave_the_spool(
    deliveries: Deliveries, receiver: OtlpReceiver
) -> None:
    counters = Counters()
    store = deliveries.store(counters)
    engine = deliveries([grpc_exporter(receiver)], store, counters, config=fast_config())
    engine.start()
    feed(store, spans(0, 5))

    received = receiver.wait_for_spans(5, timeout_s=10)
    wait_until(lambda: store.spooled == (0, 0), what="the spool to empty")
    assert [s.name for s in received] == expected(0, 5)
    assert received[0].scope.name == "otelbridge"
    assert counters.get(semconv.SPANS_EXPORTED) == 5
    assert counters.get(semconv.SPANS_DROPPED) == 0
    assert deliveries.store(Counters()).spooled == (0, 0)


def test_spans_stay_spooled_while_the_receiver_is_down_and_arrive_once_it_is_back(
    deliveries: Deliveries, receiver: OtlpReceiver
) -> None:
    counters = Counters()
    store = deliveries.store(counters)
    config = fast_config(max_elapsed_s=None)
    engine = deliveries([grpc_exporter(receiver, timeout_s=2.0)], store, counters, config=config)
    receiver.stop()  # the collector is down
    engine.start()
    feed(store, spans(0, 6))

    wait_until(lambda: counters.get(semconv.EXPORT_RETRIES) >= 3, what="three retries")
    assert store.spooled == (6, 6 * SPAN_SIZE)  # nothing given up
    assert counters.get(semconv.SPANS_DROPPED) == 0
    assert engine.problems() and "waiting" in engine.problems()[0]
    feed(store, spans(6, 7))  # more arrive during the outage

    receiver.start()  # same port
    receiver.wait_for_spans(7, timeout_s=10)
    wait_until(lambda: store.spooled == (0, 0), what="the spool to empty")
    assert sorted(received_names(receiver)) == expected(0, 7)  # each exactly once
    assert counters.get(semconv.SPANS_EXPORTED) == 7
    assert counters.get(semconv.SPANS_DROPPED) == 0


def test_a_permanent_refusal_drops_and_counts(
    deliveries: Deliveries, receiver: OtlpReceiver
) -> None:
    counters = Counters()
    store = deliveries.store(counters)
    receiver.set_failure(grpc.StatusCode.INVALID_ARGUMENT, "bad spans")
    engine = deliveries([grpc_exporter(receiver)], store, counters, config=fast_config())
    engine.start()
    feed(store, spans(0, 3))

    wait_until(lambda: store.spooled == (0, 0), what="the refused batch to leave the spool")
    assert counters.get(semconv.SPANS_DROPPED) == 3
    assert counters.get(semconv.SPANS_EXPORTED) == 0
    assert counters.get(semconv.EXPORT_RETRIES) == 0
    assert receiver.attempts == 1  # not sent again
    assert receiver.spans() == []


def test_shutdown_with_the_receiver_down_returns_in_time_and_the_next_start_sends_the_spans(
    deliveries: Deliveries, receiver: OtlpReceiver
) -> None:
    counters = Counters()
    store = deliveries.store(counters)
    config = fast_config(max_backoff_s=5.0, max_elapsed_s=None)
    engine = deliveries([grpc_exporter(receiver, timeout_s=2.0)], store, counters, config=config)
    receiver.stop()
    engine.start()
    feed(store, spans(0, 4))
    wait_until(lambda: counters.get(semconv.EXPORT_RETRIES) >= 1, what="a retry")

    started = time.monotonic()
    engine.shutdown(0.5)
    assert time.monotonic() - started < 3.0  # its timeout, plus slack for a loaded machine
    wait_until(lambda: not export_threads(), what="the lanes to end")
    engine.shutdown(0.5)  # idempotent
    store.close()
    assert counters.get(semconv.SPANS_DROPPED) == 0

    receiver.start()
    restarted = deliveries.store(Counters())
    assert restarted.spooled == (4, 4 * SPAN_SIZE)
    assert restarted.load().spooled == 4
    later = Counters()
    deliveries([grpc_exporter(receiver)], restarted, later, config=config).shutdown(10)
    assert received_names(receiver) == expected(0, 4)
    assert restarted.spooled == (0, 0)
    assert later.get(semconv.SPANS_EXPORTED) == 4


def test_shutdown_without_start_sends_what_is_spooled_and_is_idempotent(
    deliveries: Deliveries, receiver: OtlpReceiver
) -> None:
    counters = Counters()
    store = deliveries.store(counters)
    feed(store, spans(0, 2))
    engine = deliveries([grpc_exporter(receiver)], store, counters, config=fast_config())
    engine.shutdown(5.0)
    engine.shutdown(5.0)
    assert received_names(receiver) == expected(0, 2)
    assert deliveries.store(Counters()).spooled == (0, 0)
    assert export_threads() == []


def test_a_corrupt_spooled_span_is_skipped_and_counted_once_per_lane(
    tmp_path: Path, deliveries: Deliveries
) -> None:
    deliveries.store(Counters()).close()  # creates the schema
    db = raw(tmp_path / "state")
    db.execute("INSERT INTO spool (data) VALUES (?)", (b"\xff\xff\xff\xff",))  # corrupt
    db.execute("INSERT INTO spool (data) VALUES (?)", (span(1).SerializeToString(),))
    db.close()
    counters = Counters()
    store = deliveries.store(counters)
    assert store.spooled[0] == 2
    flaky = ScriptedExporter(ExportResult.RETRY, ExportResult.RETRY, name="flaky")
    healthy = ScriptedExporter(name="healthy")
    config = DeliveryConfig(max_elapsed_s=None)
    engine = deliveries([flaky, healthy], store, counters, fake=FakeTime(), config=config)
    engine.shutdown(60)
    assert flaky.delivered == healthy.delivered == ["span-000001"]
    assert counters.get(semconv.SPANS_EXPORTED) == 2
    assert counters.get(semconv.SPANS_DROPPED) == 2  # one corrupt row, once per lane
    assert store.spooled == (0, 0)


def test_shutdown_with_a_slow_receiver_stops_sending_at_the_deadline(
    deliveries: Deliveries, receiver: OtlpReceiver
) -> None:
    counters = Counters()
    store = deliveries.store(counters)
    feed(store, spans(0, 20))
    receiver.set_delay(0.2)  # answers, slowly: 20 one-span batches take 4 s
    config = fast_config(max_batch_size=1, max_elapsed_s=None)
    engine = deliveries([grpc_exporter(receiver)], store, counters, config=config)
    engine.start()
    receiver.wait_for_attempts(1)

    started = time.monotonic()
    try:
        engine.shutdown(0.4)
        # the deadline plus at most the one export under way (loose for a loaded machine;
        # a missed deadline would take seconds more)
        assert time.monotonic() - started < 3.0
    finally:
        receiver.set_delay(0)
    wait_until(lambda: not export_threads(), what="the lanes to end")
    store.close()
    assert counters.get(semconv.SPANS_DROPPED) == 0
    left = deliveries.store(Counters()).spooled[0]
    assert left > 0  # stopped at the deadline, the rest kept for the next start
    assert len(set(received_names(receiver))) + left >= 20


def run_then_restart(
    deliveries: Deliveries, first: Sequence[ScriptedExporter], then: Sequence[ScriptedExporter]
) -> None:
    """Delivers 10 spans with ``first`` (in fake time, till shutdown's deadline), then
    restarts on the same directory with ``then``, which deliver till the end."""
    counters = Counters()
    store = deliveries.store(counters)
    config = DeliveryConfig(max_elapsed_s=None, max_batch_size=4)
    engine = deliveries(first, store, counters, fake=FakeTime(), config=config)
    feed(store, spans(0, 10))
    engine.shutdown(60)
    assert counters.get(semconv.SPANS_DROPPED) == 0
    store.close()
    later = Counters()
    store = deliveries.store(later)
    deliveries(then, store, later, fake=FakeTime(), config=config).shutdown(60)
    assert store.spooled == (0, 0)


def test_a_restart_resends_nothing_an_exporter_had_taken(deliveries: Deliveries) -> None:
    a = ScriptedExporter(name="a")
    b = ScriptedExporter(ExportResult.SUCCESS, then=ExportResult.RETRY, name="b")  # goes down
    a2, b2 = ScriptedExporter(name="a"), ScriptedExporter(name="b")
    run_then_restart(deliveries, [a, b], [a2, b2])
    assert a.delivered == expected(0, 10)
    assert b.delivered == expected(0, 4)
    assert a2.calls == []  # a's cursor was on disk
    assert b2.delivered == expected(4, 10)  # b's too: from where it was


def test_an_exporter_new_to_the_spool_gets_the_rows_still_there(deliveries: Deliveries) -> None:
    a = ScriptedExporter(name="a")
    b = ScriptedExporter(ExportResult.SUCCESS, then=ExportResult.RETRY, name="b")
    a2, b2, c = ScriptedExporter(name="a"), ScriptedExporter(name="b"), ScriptedExporter(name="c")
    run_then_restart(deliveries, [a, b], [a2, b2, c])
    assert a2.calls == []
    assert b2.delivered == expected(4, 10)
    assert c.delivered == expected(4, 10)  # rows 1-4 were gone (both lanes past them)


def test_listing_the_exporters_in_another_order_resends_nothing(deliveries: Deliveries) -> None:
    a = ScriptedExporter(name="a")
    b = ScriptedExporter(ExportResult.SUCCESS, then=ExportResult.RETRY, name="b")
    a2, b2 = ScriptedExporter(name="a"), ScriptedExporter(name="b")
    run_then_restart(deliveries, [a, b], [b2, a2])
    assert b2.delivered == expected(4, 10)
    assert a2.calls == []


def test_failing_deletes_neither_end_delivery_nor_resend(
    tmp_path: Path, deliveries: Deliveries
) -> None:
    # Defect 10, the engine's part: a failing DELETE of delivered rows ended the old
    # export thread (or had the batch sent again). Now the lanes go on, the cursor holds
    # in memory, and a later advance removes the rows once the disk lets it.
    counters = Counters()
    store = deliveries.store(counters)
    a, b = ScriptedExporter(name="a"), ScriptedExporter(name="b")
    engine = deliveries([a, b], store, counters, config=fast_config(max_elapsed_s=None))
    engine.start()
    fail_on(tmp_path / "state", "DELETE")
    feed(store, spans(0, 10))
    assert engine.force_flush(10)
    errors = counters.get(semconv.STATE_ERRORS)
    assert errors >= 1  # the advance of the lane that came last (the other deleted nothing)
    assert store.spooled[0] == 10  # still there
    feed(store, spans(10, 15))
    assert engine.force_flush(10)
    assert counters.get(semconv.STATE_ERRORS) > errors
    assert engine.alive()

    heal(tmp_path / "state", "DELETE")
    feed(store, spans(15, 16))
    assert engine.force_flush(10)
    wait_until(lambda: store.spooled == (0, 0), what="a later advance to remove the rows")
    assert a.delivered == b.delivered == expected(0, 16)  # each span once per exporter
    assert counters.get(semconv.SPANS_EXPORTED) == 32
    assert counters.get(semconv.SPANS_DROPPED) == 0


def test_a_failing_commit_does_not_disturb_delivery(tmp_path: Path, deliveries: Deliveries) -> None:
    counters = Counters()
    store = deliveries.store(counters)
    exporter = ScriptedExporter()
    engine = deliveries([exporter], store, counters, config=fast_config(max_elapsed_s=None))
    engine.start()
    feed(store, spans(0, 2))
    assert engine.force_flush(10)
    fail_on(tmp_path / "state", "INSERT")
    store.submit(spans(2, 5))
    with pytest.raises(StateError):
        store.commit([], None)
    assert store.problems()
    assert engine.force_flush(10)  # nothing new stored: done
    assert engine.alive() and engine.problems() == []
    heal(tmp_path / "state", "INSERT")
    store.commit([], None)
    assert engine.force_flush(10)
    assert exporter.delivered == expected(0, 5)
    assert store.problems() == []


def test_spans_being_sent_are_never_both_dropped_and_delivered(deliveries: Deliveries) -> None:
    counters = Counters()
    store = deliveries.store(counters, budget=20 * SPAN_SIZE)
    sending = threading.Event()
    release = threading.Event()

    def slow() -> ExportResult:
        sending.set()
        release.wait(30)
        return ExportResult.SUCCESS

    exporter = ScriptedExporter(slow)
    engine = deliveries([exporter], store, counters, config=fast_config(max_elapsed_s=None))
    engine.start()
    feed(store, spans(0, 10))
    try:
        assert sending.wait(10)
        assert exporter.calls == [10]
        feed(store, spans(10, 22))  # over budget while rows 1-10 are being sent
    finally:
        release.set()
    assert engine.force_flush(10)
    dropped = counters.get(semconv.SPANS_DROPPED)
    assert dropped == 4
    assert exporter.delivered == expected(0, 10) + expected(14, 22)
    assert counters.get(semconv.SPANS_EXPORTED) + dropped == 22
    assert store.spooled == (0, 0)


def test_force_flush_is_done_when_the_budget_dropped_the_newest_spans(
    deliveries: Deliveries,
) -> None:
    counters = Counters()
    store = deliveries.store(counters, budget=10 * SPAN_SIZE)
    sending = threading.Event()
    release = threading.Event()

    def slow() -> ExportResult:
        sending.set()
        release.wait(30)
        return ExportResult.SUCCESS

    exporter = ScriptedExporter(slow)
    engine = deliveries([exporter], store, counters, config=fast_config(max_elapsed_s=None))
    engine.start()
    feed(store, spans(0, 10))
    try:
        assert sending.wait(10)
        feed(store, spans(10, 15))  # rows 11-15 dropped: 1-10 are being sent
        assert counters.get(semconv.SPANS_DROPPED) == 5
    finally:
        release.set()
    wait_until(lambda: counters.get(semconv.SPANS_EXPORTED) == 10)
    assert engine.force_flush(1.0)


def test_an_exporter_added_to_a_drained_spool_idles_and_flushes(deliveries: Deliveries) -> None:
    counters = Counters()
    store = deliveries.store(counters)
    first = deliveries([ScriptedExporter(name="a")], store, counters, fake=FakeTime())
    feed(store, spans(0, 5))
    first.shutdown(5)
    assert store.spooled == (0, 0)
    store.close()

    probed = ProbedStorage(deliveries.store(counters))
    added = ScriptedExporter(name="new")
    config = fast_config(schedule_delay_s=0.1)
    engine = deliveries([ScriptedExporter(name="a"), added], probed, counters, config=config)
    engine.start()
    time.sleep(0.3)
    waits = probed.waits
    flushed = engine.force_flush(1.0)
    engine.shutdown(5)
    assert added.calls == []
    assert waits < 50, waits  # ~3 per lane: one per schedule_delay_s
    assert flushed
