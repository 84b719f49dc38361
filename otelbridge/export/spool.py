"""Durable state: the span spool and the correlator's checkpoint, in one SQLite database.

A node agent must not lose the slow startups exactly when the collector is down or the
bridge restarts. Everything the bridge must not forget lives in ``otelbridge.db`` under
the state directory:

* ``spool``: spans waiting for the collector (serialized OTLP ``Span`` messages), oldest
  first, within a disk budget; the :class:`SpoolExporter` deletes them once a receiver
  accepted them (at least once: a resend is the same span, IDs are deterministic);
* ``inflight``, ``done``, ``prepares``, ``meta``: the correlator's state (startups in
  flight, completed containers' tombstones, unclaimed snapshot prepares) and the newest
  event time seen, so a restarted bridge resumes where it stopped.

The spans of a completed startup and the state saying it completed are written in the
**same transaction** (:meth:`StateStore.commit`), so a crash at any moment leaves either
both or neither: a startup is neither lost nor emitted twice. Commits are grouped (every
``state.commit_interval_s``); a ``kill -9`` loses at most the events of the last group,
and a restarted bridge finds those containers again by listing containerd.

Why SQLite: it is in the standard library and well kept, its transactions survive a
crash of the process, and in WAL mode the export thread reads while the event thread
writes. ``synchronous=NORMAL`` keeps every committed transaction across a process crash
(a power cut may lose the last ones): the failure this guards against is the bridge
dying, not the node.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import tenacity
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from otelbridge.core import semconv
from otelbridge.core.counters import Counters
from otelbridge.core.errors import OtelbridgeError
from otelbridge.core.logutil import ThrottledLogger
from otelbridge.core.model import ContainerKey, Outcome, StartupRecord
from otelbridge.export import ExportResult, ReportsFeedback, SpanExporter

_log = logging.getLogger(__name__)
_tlog = ThrottledLogger(_log)
DB_NAME = "otelbridge.db"
_SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (id INTEGER PRIMARY KEY AUTOINCREMENT, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS inflight (
    ns TEXT NOT NULL, id TEXT NOT NULL, record TEXT NOT NULL, PRIMARY KEY (ns, id));
CREATE TABLE IF NOT EXISTS done (
    ns TEXT NOT NULL, id TEXT NOT NULL, incarnation INTEGER NOT NULL, attempt INTEGER NOT NULL,
    task_create INTEGER NOT NULL, PRIMARY KEY (ns, id));
CREATE TABLE IF NOT EXISTS unemitted (
    ns TEXT NOT NULL, id TEXT NOT NULL, attempt INTEGER NOT NULL, record TEXT NOT NULL,
    PRIMARY KEY (ns, id, attempt));
CREATE TABLE IF NOT EXISTS prepares (
    ns TEXT NOT NULL, key TEXT NOT NULL, ts INTEGER NOT NULL, PRIMARY KEY (ns, key));
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class StateError(OtelbridgeError):
    """The state directory or its database cannot be used."""


# -- records <-> JSON ------------------------------------------------------------------------
def encode_record(record: StartupRecord, last_event_ns: int) -> str:
    """A record as the checkpoint keeps it; its container record is looked up again."""
    return json.dumps(
        {
            "inc": record.incarnation_ns,
            "att": record.attempt,
            "t": [
                record.snapshot_prepare_ns,
                record.container_create_ns,
                record.task_create_ns,
                record.task_start_ns,
                record.ready_ns,
                record.end_ns,
            ],
            "out": record.outcome.value if record.outcome is not None else None,
            "partial": record.partial,
            "pid": record.pid,
            "exit": record.exit_status,
            "image": record.image,
            "runtime": record.runtime,
            "snap": record.snapshotter,
            "ready_by": record.readiness_source,
            "oom": record.oom_ns,
            "last": last_event_ns,
        },
        separators=(",", ":"),
    )


def decode_record(key: ContainerKey, text: str) -> tuple[StartupRecord, int]:
    d = json.loads(text)
    prepare, create, task_create, task_start, ready, end = d["t"]
    record = StartupRecord(
        key=key,
        incarnation_ns=int(d["inc"]),
        attempt=int(d["att"]),
        snapshot_prepare_ns=prepare,
        container_create_ns=create,
        task_create_ns=task_create,
        task_start_ns=task_start,
        ready_ns=ready,
        end_ns=end,
        outcome=Outcome(d["out"]) if d["out"] is not None else None,
        partial=bool(d["partial"]),
        pid=int(d["pid"]),
        exit_status=d["exit"],
        image=str(d["image"]),
        runtime=str(d["runtime"]),
        snapshotter=str(d["snap"]),
        readiness_source=str(d["ready_by"]),
        oom_ns=[int(t) for t in d["oom"]],
    )
    return record, int(d["last"])


@dataclass(slots=True)
class StateRow:
    """What the checkpoint holds for one key after a change (``None``: nothing)."""

    key: ContainerKey
    record: StartupRecord | None = None  # the startup in flight
    last_event_ns: int = 0
    tombstone: tuple[int, int, int] | None = None  # (incarnation, attempt, task create)
    prepare_ns: int | None = None
    unemitted: Sequence[StartupRecord] = ()  # completed attempts whose spans are not out


@dataclass
class Checkpoint:
    """What a previous run left: see :meth:`StateStore.load`."""

    in_flight: list[tuple[StartupRecord, int]] = field(default_factory=list)
    unemitted: list[StartupRecord] = field(default_factory=list)
    done: list[tuple[ContainerKey, int, int, int]] = field(default_factory=list)
    prepares: list[tuple[ContainerKey, int]] = field(default_factory=list)
    horizon_ns: int | None = None
    spooled: int = 0


class StateStore:
    """The state database. Writer methods (:meth:`submit`, :meth:`commit`, :meth:`load`)
    belong to the event thread; reader methods (:meth:`read_batch`, :meth:`ack`) to the
    export thread; each thread gets its own connection."""

    def __init__(self, directory: Path, counters: Counters, *, max_spool_bytes: int) -> None:
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StateError(f"state directory {directory}: {exc.strerror}") from exc
        self.path = directory / DB_NAME
        self._counters = counters
        self._max_spool_bytes = max_spool_bytes
        self._local = threading.local()
        self._staged: list[bytes] = []
        self._lock = threading.Lock()
        self._spool_bytes = 0
        self._spool_rows = 0
        # the newest row id of the batch the exporter is sending: the budget leaves those
        # rows alone, so a span is never both dropped and delivered
        self._sending_upto = 0
        self._sending_lock = threading.Lock()
        db = self._db()
        try:
            db.executescript(_SCHEMA)
            version = db.execute("SELECT value FROM meta WHERE name='schema'").fetchone()
            if version is None:
                db.execute("INSERT INTO meta VALUES ('schema', ?)", (_SCHEMA_VERSION,))
            elif version[0] != _SCHEMA_VERSION:
                raise StateError(f"{self.path}: schema {version[0]}, expected {_SCHEMA_VERSION}")
            db.commit()
            rows, size = db.execute(
                "SELECT count(*), coalesce(sum(length(data)), 0) FROM spool"
            ).fetchone()
        except sqlite3.Error as exc:
            raise StateError(f"{self.path}: {exc}") from exc
        self._spool_rows, self._spool_bytes = int(rows), int(size)

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            try:
                db = sqlite3.connect(self.path, timeout=10.0, isolation_level="DEFERRED")
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error as exc:
                raise StateError(f"{self.path}: {exc}") from exc
            self._local.db = db
        return db

    # -- event thread ----------------------------------------------------------------------
    def load(self) -> Checkpoint:
        """The state a previous run committed (an empty one on a first start)."""
        db = self._db()
        cp = Checkpoint(spooled=self._spool_rows)
        rows = [*db.execute("SELECT ns, id, record FROM inflight")]
        rows += [*db.execute("SELECT ns, id, record FROM unemitted ORDER BY attempt")]
        for ns, cid, text in rows:
            key = ContainerKey(ns, cid)
            try:
                record, last = decode_record(key, text)
            except (ValueError, KeyError, TypeError) as exc:
                _log.warning("checkpoint: unreadable state of %s dropped (%s)", key, exc)
                continue
            if record.outcome is None:
                cp.in_flight.append((record, last))
            else:
                cp.unemitted.append(record)
        for ns, cid, inc, attempt, task_create in db.execute(
            "SELECT ns, id, incarnation, attempt, task_create FROM done"
        ):
            cp.done.append((ContainerKey(ns, cid), inc, attempt, task_create))
        for ns, key, ts in db.execute("SELECT ns, key, ts FROM prepares"):
            cp.prepares.append((ContainerKey(ns, key), ts))
        row = db.execute("SELECT value FROM meta WHERE name='horizon'").fetchone()
        cp.horizon_ns = int(row[0]) if row else None
        return cp

    def submit(self, spans: Sequence[Span]) -> None:
        """Stages spans for the next :meth:`commit` (the pipeline's span sink)."""
        self._staged.extend(span.SerializeToString() for span in spans)

    def commit(self, rows: Iterable[StateRow], horizon_ns: int | None) -> None:
        """Writes the staged spans and the changed state in one transaction. If it fails,
        nothing is written and the spans stay staged for the next commit."""
        staged = self._staged
        db = self._db()
        added = sum(len(b) for b in staged)
        with db:  # one transaction: BEGIN ... COMMIT, ROLLBACK on error
            db.executemany("INSERT INTO spool (data) VALUES (?)", ((b,) for b in staged))
            for row in rows:
                k = (row.key.namespace, row.key.id)
                if row.record is not None:
                    db.execute(
                        "INSERT OR REPLACE INTO inflight VALUES (?, ?, ?)",
                        (*k, encode_record(row.record, row.last_event_ns)),
                    )
                else:
                    db.execute("DELETE FROM inflight WHERE ns=? AND id=?", k)
                if row.tombstone is not None:
                    db.execute(
                        "INSERT OR REPLACE INTO done VALUES (?, ?, ?, ?, ?)", (*k, *row.tombstone)
                    )
                else:
                    db.execute("DELETE FROM done WHERE ns=? AND id=?", k)
                if row.prepare_ns is not None:
                    db.execute(
                        "INSERT OR REPLACE INTO prepares VALUES (?, ?, ?)", (*k, row.prepare_ns)
                    )
                else:
                    db.execute("DELETE FROM prepares WHERE ns=? AND key=?", k)
                db.execute("DELETE FROM unemitted WHERE ns=? AND id=?", k)
                for done in row.unemitted:
                    db.execute(
                        "INSERT INTO unemitted VALUES (?, ?, ?, ?)",
                        (*k, done.attempt, encode_record(done, done.end_ns or 0)),
                    )
            if horizon_ns is not None:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('horizon', ?)", (horizon_ns,))
        self._staged = []
        with self._lock:
            self._spool_rows += len(staged)
            self._spool_bytes += added
            over = self._spool_bytes > self._max_spool_bytes
        if over:
            self._enforce_budget(db)

    def _enforce_budget(self, db: sqlite3.Connection) -> None:
        """Drops the oldest spans not being sent until the spool is back under 90% of
        its budget."""
        with self._lock:
            excess = self._spool_bytes - int(self._max_spool_bytes * 0.9)
        if excess <= 0:
            return
        # held across the delete: read_batch cannot pick rows this is about to drop
        with self._sending_lock:
            freed = dropped = 0
            last_id = None
            for row_id, size in db.execute(
                "SELECT id, length(data) FROM spool WHERE id > ? ORDER BY id",
                (self._sending_upto,),
            ):
                freed += size
                dropped += 1
                last_id = row_id
                if freed >= excess:
                    break
            if last_id is None:
                return
            with db:
                db.execute(
                    "DELETE FROM spool WHERE id > ? AND id <= ?", (self._sending_upto, last_id)
                )
        with self._lock:
            self._spool_rows -= dropped
            self._spool_bytes -= freed
        self._counters.inc(semconv.SPANS_DROPPED, dropped)
        _tlog.warning(
            "budget",
            "span spool over its budget of %d bytes: dropped the %d oldest spans",
            self._max_spool_bytes,
            dropped,
        )

    # -- export thread ---------------------------------------------------------------------
    def read_batch(self, limit: int) -> list[tuple[int, bytes]]:
        """The oldest ``limit`` spooled spans as (row id, serialized span); they are
        being sent until :meth:`ack` (or the next read_batch)."""
        with self._sending_lock:
            rows = self._db().execute("SELECT id, data FROM spool ORDER BY id LIMIT ?", (limit,))
            batch = [(int(i), bytes(d)) for i, d in rows]
            self._sending_upto = batch[-1][0] if batch else 0
        return batch

    def ack(self, rows: Sequence[tuple[int, bytes]]) -> None:
        """Deletes spans that are done with (delivered, or given up and counted)."""
        if not rows:
            return
        db = self._db()
        with db:
            db.executemany("DELETE FROM spool WHERE id = ?", ((i,) for i, _ in rows))
        with self._lock:
            self._spool_rows -= len(rows)
            self._spool_bytes -= sum(len(d) for _, d in rows)
        with self._sending_lock:
            self._sending_upto = 0

    @property
    def spooled(self) -> tuple[int, int]:
        """(spans, bytes) waiting in the spool."""
        with self._lock:
            return self._spool_rows, self._spool_bytes

    def close(self) -> None:
        """Closes this thread's connection (each thread closes its own)."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


class SpoolExporter:
    """Exports the spool on its own thread, retrying until the collector answers.

    Batches of up to ``max_batch_size`` spans go to every exporter as one request. A
    batch leaves the spool when no exporter asks to retry it: accepted spans are counted
    exported, permanently refused ones dropped. While a receiver asks to retry (down,
    overloaded), the same batch is sent again with capped exponential backoff, forever:
    the spool, not memory, absorbs the outage, within its disk budget.
    """

    def __init__(
        self,
        store: StateStore,
        exporters: Sequence[SpanExporter],
        resource: Resource,
        scope: InstrumentationScope,
        counters: Counters,
        *,
        max_batch_size: int = 512,
        schedule_delay_s: float = 1.0,
        initial_backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
    ) -> None:
        """Waits between attempts grow from ``initial_backoff_s`` to ``max_backoff_s``,
        plus up to ``initial_backoff_s`` of jitter (so bridges that lost the same
        collector do not return in lockstep)."""
        self._store = store
        self._exporters = list(exporters)
        self._resource = resource
        self._scope = scope
        self._counters = counters
        self._max_batch = max_batch_size
        self._delay_s = schedule_delay_s
        self._backoff = tenacity.wait_exponential(
            multiplier=initial_backoff_s, max=max_backoff_s
        ) + tenacity.wait_random(0, initial_backoff_s)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._deadline: float | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._abandoned = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="otelbridge-export", daemon=True)
        self._thread.start()

    def notify(self) -> None:
        """New spans were committed."""
        self._wake.set()

    def _sleep(self, seconds: float) -> bool:
        """Waits; False when it is time to stop instead."""
        if self._deadline is not None:
            seconds = min(seconds, max(0.0, self._deadline - time.monotonic()))
        self._wake.wait(seconds)
        self._wake.clear()
        return not (self._deadline is not None and time.monotonic() >= self._deadline)

    def _run(self) -> None:
        attempt = 0
        try:
            while True:
                rows = self._store.read_batch(self._max_batch)
                if not rows:
                    if self._stopping.is_set():
                        return
                    self._sleep(self._delay_s)
                    continue
                retry_after = self._send(rows)
                if retry_after is None:
                    attempt = 0
                    if self._past_deadline():
                        return
                    if len(rows) < self._max_batch and not self._stopping.is_set():
                        self._sleep(self._delay_s)  # let a fuller batch gather
                    continue
                attempt += 1
                self._counters.inc(semconv.EXPORT_RETRIES)
                delay = max(retry_after, self._backoff_s(attempt))
                _tlog.warning(
                    "retry",
                    "collector unavailable; %d spans spooled, retrying in %.1fs",
                    self._store.spooled[0],
                    delay,
                )
                if not self._sleep(delay):
                    return
        except Exception:  # the export thread must say why it died
            _log.exception("span export thread failed; spans stay spooled for the next start")
        finally:
            self._store.close()

    def _past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def _backoff_s(self, attempt: int) -> float:
        state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})
        state.attempt_number = attempt
        return float(self._backoff(state))

    def _send(self, rows: list[tuple[int, bytes]]) -> float | None:
        """One attempt for one batch: ``None`` when it is done with, else the delay the
        receivers asked for (0: none) before it is sent again."""
        spans = []
        corrupt = []
        for row in rows:
            try:
                spans.append(Span.FromString(row[1]))
            except Exception:  # a corrupt row must not block the spool: out, counted once
                corrupt.append(row)
        if corrupt:
            self._store.ack(corrupt)
            self._counters.inc(semconv.SPANS_DROPPED, len(corrupt))
            _tlog.warning("corrupt", "%d unreadable spans in the spool dropped", len(corrupt))
            rows = [row for row in rows if row not in corrupt]
            if not spans:
                return None
        request = ExportTraceServiceRequest(
            resource_spans=[
                ResourceSpans(
                    resource=self._resource,
                    scope_spans=[ScopeSpans(scope=self._scope, spans=spans)],
                )
            ]
        )
        retry_after: float | None = None
        for exporter in self._exporters:
            result = exporter.export(request, len(spans))
            feedback = exporter.last_feedback() if isinstance(exporter, ReportsFeedback) else None
            if result is ExportResult.RETRY:
                asked = feedback.retry_after_s if feedback and feedback.retry_after_s else 0.0
                retry_after = max(retry_after or 0.0, asked)
                continue
            rejected = feedback.rejected_spans if feedback else 0
            if result is ExportResult.SUCCESS:
                self._counters.inc(semconv.SPANS_EXPORTED, len(spans) - rejected)
                if rejected:
                    self._counters.inc(semconv.SPANS_DROPPED, rejected)
            elif self._abandoned:
                # the exporters were shut down under a thread that overran its grace: the
                # batch is not refused, it stays spooled for the next start
                return 0.0
            else:
                self._counters.inc(semconv.SPANS_DROPPED, len(spans))
                _tlog.warning("refused", "%d spans refused permanently; dropped", len(spans))
        if retry_after is not None:
            return retry_after
        self._store.ack(rows)
        return None

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Sends what is spooled for at most ``timeout_s``; the rest stays on disk for
        the next start. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._deadline = time.monotonic() + timeout_s
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s + 1.0)
        self._abandoned = True
        for exporter in self._exporters:
            exporter.shutdown()
        rows, _ = self._store.spooled
        if rows:
            _log.warning("%d spans stay spooled for the next start", rows)


__all__ = ["Checkpoint", "SpoolExporter", "StateError", "StateRow", "StateStore"]
