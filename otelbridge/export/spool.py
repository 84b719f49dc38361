"""Durable state: the span spool and the correlator's checkpoint, in one SQLite database.

A node agent must not lose the slow startups exactly when the collector is down or the
bridge restarts. Everything the bridge must not forget lives in ``otelbridge.db`` under
the state directory:

* ``spool``: spans waiting for the collector (serialized OTLP ``Span`` messages), oldest
  first. The store is the delivery engine's persistent
  :class:`~otelbridge.export.storage.Storage`: each exporter's lane reads from its own
  cursor (kept in ``cursors``, so a restart resends nothing an exporter took) and a row
  is deleted once every lane is past it;
* ``inflight``, ``done``, ``unemitted``, ``prepares``, ``meta``: the checkpoint
  (:mod:`~otelbridge.export.checkpoint`) and the newest event time seen.

The spans of a completed startup and the state saying it completed are written in the
**same transaction** (:meth:`StateStore.commit`), so a crash at any moment leaves either
both or neither. Commits are grouped (every ``state.commit_interval_s``); a ``kill -9``
loses at most the events of the last group, found again by listing containerd.

**Disk.** The spool holds at most ``max_spool_bytes``; beyond it the oldest spans not being
sent are dropped, counted once per lane that had not taken them. The filesystem is a
budget too: when its free space falls under a reserve (sized from the filesystem, twice
the most the write-ahead log may hold), the spool stops growing there (its size then
becomes the budget) instead of filling the disk, and grows again once there is room. A
write that fails anyway (another program filled the disk, an I/O error) is counted
(``otelbridge.state.errors``), reported by :meth:`StateStore.problems`, and retried with the
next commit; the spans staged meanwhile stay in memory up to ``max_staged_spans``, the
oldest beyond it dropped and counted. Nothing ends: once writes succeed the store has
recovered by itself.

Why SQLite: it is in the standard library and well kept, its transactions survive a
crash of the process, and in WAL mode the lanes read while the event thread writes.
``synchronous=NORMAL`` keeps every committed transaction across a process crash (a power
cut may lose the last ones): the failure this guards against is the bridge dying.

Threads: :meth:`submit`, :meth:`commit`, :meth:`load` belong to the event thread; the
storage methods to the lanes; every thread gets its own connection.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otelbridge.core import semconv
from otelbridge.core.counters import Counters
from otelbridge.core.errors import StateError
from otelbridge.core.logutil import ThrottledLogger
from otelbridge.core.model import ContainerKey
from otelbridge.export.checkpoint import Checkpoint, StateRow, decode_record, encode_record
from otelbridge.export.storage import Entry

_log = logging.getLogger(__name__)
_tlog = ThrottledLogger(_log)
DB_NAME: Final = "otelbridge.db"
_SCHEMA_VERSION: Final = 3
_KIB: Final = 1024
_PAGE: Final = 4096

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (id INTEGER PRIMARY KEY AUTOINCREMENT, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS cursors (lane TEXT PRIMARY KEY, upto INTEGER NOT NULL);
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


def _wal_limit(directory: Path) -> int:
    """The most the write-ahead log may hold, in bytes: a sixteenth of the filesystem,
    between 64 KiB and 4 MiB (a tiny filesystem must not be filled by the log alone)."""
    try:
        st = os.statvfs(directory)
        size = st.f_blocks * st.f_frsize
    except OSError:
        size = 1 << 40
    return min(max(size // 16, 64 * _KIB), 4096 * _KIB)


class StateStore:
    """The state database: the pipeline's span sink and checkpoint, the delivery
    engine's durable storage. See the module docstring."""

    durable = True
    """A shutdown leaves undelivered spans here (the delivery engine reads this)."""

    def __init__(
        self,
        directory: Path,
        counters: Counters,
        *,
        max_spool_bytes: int,
        max_staged_spans: int = 20_000,
    ) -> None:
        self.directory = directory
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StateError(_why(directory, exc)) from exc
        if not os.access(directory, os.W_OK | os.X_OK):
            raise StateError(_why(directory, PermissionError(13, "permission denied")))
        self.path = directory / DB_NAME
        self._counters = counters
        self._max_spool_bytes = max_spool_bytes
        self._max_staged = max_staged_spans
        self._wal_bytes = _wal_limit(directory)
        self._reserve = 2 * self._wal_bytes + 64 * _KIB
        self._disk_cap: int | None = None  # the budget the filesystem sets, when tight
        self._local = threading.local()
        self._staged: list[bytes] = []
        self._cond = threading.Condition(threading.Lock())  # guards the fields below
        self._spool_bytes = 0
        self._spool_rows = 0
        self._newest = 0
        self._cursors: dict[str, int] = {}
        self._sending: dict[str, int] = {}  # lane -> newest id of the batch it sends
        self._wakes = 0
        # lane -> how many rows it waits for: a commit wakes a lane only once they are
        # there, not at every commit (issue 12: each wake-up is a thread switch)
        self._wanted: dict[str, int] = {}
        self._problem: str | None = None
        db = self._db()
        try:
            db.executescript(_SCHEMA)
            version = db.execute("SELECT value FROM meta WHERE name='schema'").fetchone()
            if version is None or version[0] == 2:  # 2 -> 3 added the cursors table
                db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (_SCHEMA_VERSION,))
            elif version[0] != _SCHEMA_VERSION:
                raise StateError(
                    f"{self.path}: schema {version[0]}, expected {_SCHEMA_VERSION} (written by "
                    "another version of otelbridge; move it away to start afresh)"
                )
            db.commit()
            rows, size, newest = db.execute(
                "SELECT count(*), coalesce(sum(length(data)), 0), coalesce(max(id), 0) FROM spool"
            ).fetchone()
            seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name='spool'").fetchone()
        except sqlite3.Error as exc:
            raise StateError(f"{self.path}: {exc}") from exc
        self._spool_rows, self._spool_bytes = int(rows), int(size)
        self._newest = max(int(newest), int(seq[0]) if seq else 0)

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            try:
                db = sqlite3.connect(self.path, timeout=10.0, isolation_level="DEFERRED")
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                # a small log, checkpointed often and cut back: see the module docstring
                db.execute(f"PRAGMA wal_autocheckpoint={max(self._wal_bytes // _PAGE // 2, 8)}")
                db.execute(f"PRAGMA journal_size_limit={self._wal_bytes}")
            except sqlite3.Error as exc:
                raise StateError(_why(self.path, exc)) from exc
            self._local.db = db
        return db

    def problems(self) -> list[str]:
        """What is wrong with the state database now (for /readyz); empty when fine."""
        with self._cond:
            problems = [self._problem] if self._problem else []
            if self._disk_cap is not None:
                problems.append(
                    f"the disk of {self.directory} is nearly full: the span spool holds at "
                    f"most {self._disk_cap // _KIB} KiB, the oldest spans are dropped"
                )
            return problems

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

    @property
    def staged(self) -> bool:
        """Spans wait for the next :meth:`commit`."""
        return bool(self._staged)

    def submit(self, spans: Sequence[Span]) -> None:
        """Stages spans for the next :meth:`commit` (the pipeline's span sink)."""
        self._staged.extend(span.SerializeToString() for span in spans)

    def commit(self, rows: Iterable[StateRow], horizon_ns: int | None) -> None:
        """Writes the staged spans and the changed state in one transaction. If it fails,
        nothing is written, the spans stay staged (within ``max_staged_spans``) and
        :class:`~otelbridge.core.errors.StateError` says why; the caller keeps its state
        for the next commit."""
        rows = list(rows)
        staged = self._staged
        try:
            newest = self._write(staged, rows, horizon_ns)
        except sqlite3.Error as exc:
            self._counters.inc(semconv.STATE_ERRORS)
            self._bound_staged()
            with self._cond:
                self._problem = f"state database {self.path}: {exc} (spans kept in memory)"
            _tlog.log(logging.ERROR, "commit", "could not write %s: %s", self.path, exc)
            raise StateError(f"{self.path}: {exc}") from exc
        added = sum(len(b) for b in staged)
        self._staged = []
        with self._cond:
            if self._problem is not None:
                _log.warning("state database %s writable again", self.path)
            self._problem = None
            self._spool_rows += len(staged)
            self._spool_bytes += added
            self._newest = max(self._newest, newest)
            if any(
                self._newest - self._cursors.get(lane, 0) >= count
                for lane, count in self._wanted.items()
            ):
                self._cond.notify_all()
        if staged:
            self._enforce_budget()

    def _write(self, staged: list[bytes], rows: list[StateRow], horizon_ns: int | None) -> int:
        db = self._db()
        newest = 0
        with db:  # one transaction: BEGIN ... COMMIT, ROLLBACK on error
            if staged:
                db.executemany("INSERT INTO spool (data) VALUES (?)", ((b,) for b in staged))
                newest = int(db.execute("SELECT max(id) FROM spool").fetchone()[0] or 0)
            for row in rows:
                _write_row(db, row)
            if horizon_ns is not None:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('horizon', ?)", (horizon_ns,))
        return newest

    def _bound_staged(self) -> None:
        excess = len(self._staged) - self._max_staged
        if excess > 0:
            del self._staged[:excess]
            self._counters.inc(semconv.SPANS_DROPPED, excess * max(len(self._cursors), 1))
            _tlog.warning(
                "staged",
                "the state database cannot be written: dropped the %d oldest spans held "
                "in memory (at most %d are kept)",
                excess,
                self._max_staged,
            )

    def dropped_at_exit(self) -> int:
        """Spans staged but never written (the database failed to the end): counted."""
        n = len(self._staged)
        if n:
            self._counters.inc(semconv.SPANS_DROPPED, n * max(len(self._cursors), 1))
            _log.warning("%d spans could not be written to %s and are lost", n, self.path)
            self._staged = []
        return n

    def _budget(self) -> int:
        """The spool's budget now: ``max_spool_bytes``, or less while the disk is tight."""
        try:
            st = os.statvfs(self.directory)
            free = st.f_bavail * st.f_frsize
        except OSError:
            return self._max_spool_bytes
        with self._cond:
            if free < self._reserve:
                if self._disk_cap is None:
                    self._disk_cap = self._spool_bytes
                    _log.warning(
                        "the disk of %s is nearly full (%d KiB free): the span spool stops "
                        "growing at %d KiB; the oldest spans are dropped from here",
                        self.directory,
                        free // _KIB,
                        self._spool_bytes // _KIB,
                    )
            elif free > 2 * self._reserve and self._disk_cap is not None:
                self._disk_cap = None
                _log.warning("the disk of %s has room again", self.directory)
            cap = self._disk_cap
        return self._max_spool_bytes if cap is None else min(cap, self._max_spool_bytes)

    def _enforce_budget(self) -> None:
        """Drops the oldest spans no lane is sending until the spool is back under 90%
        of its budget; each is counted once per lane that had not taken it."""
        budget = self._budget()
        with self._cond:
            excess = self._spool_bytes - int(budget * 0.9)
            if self._spool_bytes <= budget or excess <= 0:
                return
            protected = [(self._cursors[lane], upto) for lane, upto in self._sending.items()]
            cursors = list(self._cursors.values())
            db = self._db()
            victims: list[int] = []
            freed = 0
            try:
                for row_id, size in db.execute("SELECT id, length(data) FROM spool ORDER BY id"):
                    if any(lo < row_id <= hi for lo, hi in protected):
                        continue
                    victims.append(row_id)
                    freed += size
                    if freed >= excess:
                        break
                if not victims:
                    return  # every row is being sent: the next commit tries again
                with db:
                    db.executemany("DELETE FROM spool WHERE id = ?", ((i,) for i in victims))
            except sqlite3.Error as exc:
                self._counters.inc(semconv.STATE_ERRORS)
                _tlog.warning("budget", "dropping spans from %s failed: %s", self.path, exc)
                return
            self._spool_rows -= len(victims)
            self._spool_bytes -= freed
        lost = sum(1 for i in victims for c in cursors if i > c) if cursors else len(victims)
        self._counters.inc(semconv.SPANS_DROPPED, lost)
        _tlog.warning(
            "budget",
            "span spool over its budget of %d bytes: dropped the %d oldest spans",
            budget,
            len(victims),
        )

    # -- the delivery engine's storage (lanes) ---------------------------------------------
    def attach(self, lanes: Sequence[str]) -> None:
        db = self._db()
        saved = dict(db.execute("SELECT lane, upto FROM cursors"))
        oldest = db.execute("SELECT min(id) FROM spool").fetchone()[0]
        with self._cond:
            for lane in lanes:
                if lane in saved:
                    self._cursors[lane] = int(saved[lane])
                elif oldest is not None:
                    # new to this spool: the rows still there are sent to it, once
                    self._cursors[lane] = int(oldest) - 1
                else:
                    self._cursors[lane] = self._newest  # nothing waits: from the next one

    def cursor(self, lane: str) -> int:
        with self._cond:
            return self._cursors[lane]

    def read(self, lane: str, limit: int) -> list[Entry]:
        with self._cond:
            after = self._cursors[lane]
            rows = self._db().execute(
                "SELECT id, data FROM spool WHERE id > ? ORDER BY id LIMIT ?", (after, limit)
            )
            batch: list[Entry] = [(int(i), bytes(d)) for i, d in rows]
            if batch:
                self._sending[lane] = int(batch[-1][0])
            else:
                # nothing after the cursor (the budget may have dropped the newest rows):
                # the lane is up to date; newer rows are committed under this lock
                self._cursors[lane] = max(after, self._newest)
            return batch

    def advance(self, lane: str, upto: int) -> None:
        with self._cond:
            self._cursors[lane] = max(self._cursors[lane], upto)
            self._sending.pop(lane, None)
            floor = min(self._cursors.values())
            db = self._db()
            try:
                # the cursor first, on its own: a delete that fails must not take it back
                with db:
                    db.execute(
                        "INSERT OR REPLACE INTO cursors VALUES (?, ?)", (lane, self._cursors[lane])
                    )
                with db:
                    freed, n = db.execute(
                        "SELECT coalesce(sum(length(data)), 0), count(*) FROM spool WHERE id <= ?",
                        (floor,),
                    ).fetchone()
                    db.execute("DELETE FROM spool WHERE id <= ?", (floor,))
            except sqlite3.Error as exc:
                # the rows stay (deleted by a later advance), the cursor holds in memory:
                # nothing is sent twice meanwhile
                self._counters.inc(semconv.STATE_ERRORS)
                _tlog.warning("ack", "removing delivered spans from %s failed: %s", self.path, exc)
                return
            self._spool_rows -= int(n)
            self._spool_bytes -= int(freed)
            self._cond.notify_all()

    def pending(self, lane: str) -> int:
        with self._cond:
            after = self._cursors.get(lane, 0)
            try:
                row = self._db().execute("SELECT count(*) FROM spool WHERE id > ?", (after,))
                return int(row.fetchone()[0])
            except sqlite3.Error:
                return max(self._newest - after, 0)

    def newest(self) -> int:
        with self._cond:
            return self._newest

    def wait(self, lane: str, count: int, timeout_s: float, since: int | None = None) -> None:
        with self._cond:
            wakes = self._wakes if since is None else since
            self._wanted[lane] = count
            try:
                self._cond.wait_for(
                    lambda: self._wakes != wakes or self._waiting(lane, count),
                    max(timeout_s, 0.0),
                )
            finally:
                del self._wanted[lane]

    def _waiting(self, lane: str, count: int) -> bool:
        """Whether ``lane`` has ``count`` rows after its cursor (rows, not ids: the
        budget leaves holes). Called under the lock."""
        after = self._cursors[lane]
        if self._newest - after < count:
            return False
        try:
            row = (
                self._db()
                .execute(
                    "SELECT count(*) FROM (SELECT 1 FROM spool WHERE id > ? LIMIT ?)",
                    (after, count),
                )
                .fetchone()
            )
        except sqlite3.Error:
            return True  # let the lane read and find out
        return int(row[0]) >= count

    def epoch(self) -> int:
        with self._cond:
            return self._wakes

    def wake(self) -> None:
        with self._cond:
            self._wakes += 1
            self._cond.notify_all()

    def peek(self, limit: int) -> list[Entry]:
        """The oldest ``limit`` spooled spans as (row id, serialized span), whatever the
        lanes' cursors (for inspection: tests, tools)."""
        rows = self._db().execute("SELECT id, data FROM spool ORDER BY id LIMIT ?", (limit,))
        return [(int(i), bytes(d)) for i, d in rows]

    @property
    def spooled(self) -> tuple[int, int]:
        """(spans, bytes) waiting in the spool."""
        with self._cond:
            return self._spool_rows, self._spool_bytes

    def close(self) -> None:
        """Closes this thread's connection (each thread closes its own); the delivery
        engine calls it at shutdown, and wakes waiting lanes first."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


def _write_row(db: sqlite3.Connection, row: StateRow) -> None:
    k = (row.key.namespace, row.key.id)
    if row.record is not None:
        db.execute(
            "INSERT OR REPLACE INTO inflight VALUES (?, ?, ?)",
            (*k, encode_record(row.record, row.last_event_ns)),
        )
    else:
        db.execute("DELETE FROM inflight WHERE ns=? AND id=?", k)
    if row.tombstone is not None:
        db.execute("INSERT OR REPLACE INTO done VALUES (?, ?, ?, ?, ?)", (*k, *row.tombstone))
    else:
        db.execute("DELETE FROM done WHERE ns=? AND id=?", k)
    if row.prepare_ns is not None:
        db.execute("INSERT OR REPLACE INTO prepares VALUES (?, ?, ?)", (*k, row.prepare_ns))
    else:
        db.execute("DELETE FROM prepares WHERE ns=? AND key=?", k)
    db.execute("DELETE FROM unemitted WHERE ns=? AND id=?", k)
    for done in row.unemitted:
        db.execute(
            "INSERT INTO unemitted VALUES (?, ?, ?, ?)",
            (*k, done.attempt, encode_record(done, done.end_ns or 0)),
        )


def _why(path: Path, exc: BaseException) -> str:
    """A state path that cannot be used, said so that the user knows which knob."""
    reason = getattr(exc, "strerror", None) or str(exc)
    return (
        f"state directory {path}: {reason} (set it with --state-dir, OTELBRIDGE_STATE_DIR "
        "or state.dir; an empty value keeps no state on disk)"
    )


__all__ = ["DB_NAME", "StateError", "StateStore"]
