"""The processor's durable state: what it accepted, in one SQLite database.

``processor.db`` under the state directory (``--state-dir``) is a **log of facts**, not
of aggregates: the aggregates (counts, sketches, the slowest, the dedup state, pending
phase spans) are a deterministic function of the facts the aggregator accepted, so
replaying the log in order at start rebuilds every rollout exactly, and an ingest appends
one small row per trace it touched instead of rewriting sketches.

Schema (version 1)::

    log(id INTEGER PRIMARY KEY,  -- the order of replay
        trace BLOB NOT NULL,     -- the rollout (trace ID) the row is about; indexed
        op INTEGER NOT NULL,     -- 0: facts accepted; 1: pending startups forgotten
        data TEXT NOT NULL)      -- op 0: JSON [[span, kind, parent, start_ns, end_ns, at_ns,
                                 --   flag, outcome, container, ns, k8s_ns, pod, name], ...]
                                 --   (IDs in hex, trailing nulls left out: see Fact)
                                 -- op 1: JSON [startup span ID (hex), ...]
    rollouts(trace BLOB PRIMARY KEY, last_ns INTEGER NOT NULL)  -- rowid order: idlest first
    meta(name TEXT PRIMARY KEY, value INTEGER NOT NULL)           -- the schema version

Why rows per request and trace rather than per span: binding a row costs microseconds,
and the processor's bar is 50,000 spans per second per core end to end; a request of 512
spans is a handful of rows. Evicting a rollout deletes its rows (by the trace index).

Contracts:

* :meth:`commit` writes one request's facts and the rollouts it touched in **one
  transaction**; when it returns they survive a ``kill -9`` (WAL, ``synchronous=NORMAL``:
  every committed transaction survives the process; a power cut may lose the last ones).
  When it fails nothing of it is written and :class:`StateError` says why: the caller
  then leaves its memory unchanged and refuses the request (the Collector retries).
* :meth:`forget` deletes evicted rollouts and records forgotten pending startups, in one
  transaction; StateError likewise.
* ``rollouts`` is written with ``INSERT OR REPLACE``, which gives the row a new, larger
  rowid: read by rowid, the rollouts come from the idlest to the latest touched, the
  order that evicting the idlest needs after a restart.
* A row that cannot be read back (a damaged file) is logged and skipped at load.

An unusable directory or database raises :class:`StateError` naming ``--state-dir``.
The aggregator calls every method under its lock; the store has its own lock too, and one
connection (``check_same_thread=False``): writes are serialized anyway, and one
connection lets :meth:`close` close everything.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, NamedTuple, NoReturn

from otelbridge.core import semconv
from otelbridge.core.counters import Counters
from otelbridge.core.errors import StateError

_log = logging.getLogger(__name__)
DB_NAME: Final = "processor.db"
_SCHEMA_VERSION: Final = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS log (
    id INTEGER PRIMARY KEY, trace BLOB NOT NULL, op INTEGER NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS log_trace ON log (trace);
CREATE TABLE IF NOT EXISTS rollouts (trace BLOB PRIMARY KEY, last_ns INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
_ACCEPTED: Final = 0
_FORGOTTEN: Final = 1
_FIELDS: Final = 14

Record = tuple[bytes, list["Fact"], list[bytes]]
"""A row of the log as :meth:`RolloutStore.load` gives it: (trace ID, facts accepted,
pending startup span IDs forgotten); one of the two lists is empty."""


class Fact(NamedTuple):
    """One accepted span, as much of it as the verdict needs (an element of a log row)."""

    trace: bytes
    span: bytes
    kind: int
    parent: bytes
    start_ns: int
    end_ns: int
    at_ns: int
    flag: int
    outcome: str | None = None
    container: str | None = None
    ns: str | None = None
    k8s_ns: str | None = None
    pod: str | None = None
    name: str | None = None


class RolloutStore:
    """The processor's state database (see the module docstring)."""

    def __init__(self, directory: Path, counters: Counters) -> None:
        self.directory = directory
        self.path = directory / DB_NAME
        self._counters = counters
        # the counter exists only where the lead declared it among the processor's
        self._count_errors = semconv.STATE_ERRORS.name in counters.snapshot()
        self._lock = threading.Lock()
        self._problem: str | None = None
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StateError(_why(directory, exc)) from exc
        if not os.access(directory, os.W_OK | os.X_OK):
            raise StateError(_why(directory, PermissionError(13, "permission denied")))
        try:
            db = sqlite3.connect(
                self.path, timeout=10.0, isolation_level="DEFERRED", check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StateError(_why(self.path, exc)) from exc
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(f"PRAGMA journal_size_limit={16 * 1024 * 1024}")
            db.executescript(_SCHEMA)
            row = db.execute("SELECT value FROM meta WHERE name='schema'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('schema', ?)", (_SCHEMA_VERSION,))
                db.commit()
            elif row[0] != _SCHEMA_VERSION:
                db.close()
                raise StateError(
                    f"{self.path}: schema {row[0]}, expected {_SCHEMA_VERSION} (written by "
                    "another version of otelbridge; move it away to start afresh, or point "
                    "--state-dir elsewhere)"
                )
        except sqlite3.Error as exc:
            db.close()
            raise StateError(_why(self.path, exc)) from exc
        self._db: sqlite3.Connection | None = db

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StateError(f"{self.path}: the state database is closed")
        return self._db

    def load(self) -> tuple[list[tuple[bytes, int]], Iterator[Record]]:
        """What previous runs committed: the rollouts (trace ID, last activity ns) from the
        idlest to the latest, and the log in order (read lazily, unreadable rows logged
        and skipped)."""
        db = self._conn()
        try:
            rollouts = [
                (bytes(t), int(n))
                for t, n in db.execute("SELECT trace, last_ns FROM rollouts ORDER BY rowid")
            ]
            cursor = db.execute("SELECT id, trace, op, data FROM log ORDER BY id")
        except sqlite3.Error as exc:
            raise StateError(f"{self.path}: {exc}") from exc
        return rollouts, self._records(cursor)

    def _records(self, cursor: sqlite3.Cursor) -> Iterator[Record]:
        skipped = 0
        for row_id, blob, op, data in cursor:
            trace = bytes(blob)
            try:
                items = json.loads(data)
                if op == _ACCEPTED:
                    yield trace, [_fact(trace, item) for item in items], []
                elif op == _FORGOTTEN:
                    yield trace, [], [bytes.fromhex(sid) for sid in items]
                else:
                    raise ValueError(f"unknown op {op!r}")
            except (ValueError, TypeError, AttributeError) as exc:
                if not skipped:
                    _log.warning("%s: row %d unreadable, skipped (%s)", self.path, row_id, exc)
                skipped += 1
        if skipped > 1:
            _log.warning("%s: %d unreadable rows skipped in all", self.path, skipped)

    def commit(self, facts: Sequence[Fact], touched: Mapping[bytes, int]) -> None:
        """Writes one request's facts and the last activity of the rollouts it touched (in
        the order they were last touched) in one transaction; StateError if it fails,
        with nothing written."""
        by_trace: dict[bytes, list[list[Any]]] = {}
        for f in facts:
            by_trace.setdefault(f.trace, []).append(_row(f))
        rows = [(t, _ACCEPTED, json.dumps(v, separators=(",", ":"))) for t, v in by_trace.items()]
        with self._lock:
            db = self._conn()
            try:
                with db:  # BEGIN ... COMMIT, ROLLBACK on error
                    db.executemany("INSERT INTO log (trace, op, data) VALUES (?, ?, ?)", rows)
                    db.executemany("INSERT OR REPLACE INTO rollouts VALUES (?, ?)", touched.items())
            except sqlite3.Error as exc:
                self._failed("write", exc)
            self._ok()

    def forget(
        self, traces: Iterable[bytes], pending: Mapping[bytes, Sequence[bytes]] | None = None
    ) -> None:
        """Deletes every row of ``traces`` (and their rollout rows) and records that the
        pending startups ``pending`` (trace ID -> startup span IDs) were forgotten, in one
        transaction; StateError if it fails."""
        gone = [(t,) for t in traces]
        notes = [
            (t, _FORGOTTEN, json.dumps([sid.hex() for sid in sids]))
            for t, sids in (pending or {}).items()
        ]
        if not gone and not notes:
            return
        with self._lock:
            db = self._conn()
            try:
                with db:
                    db.executemany("DELETE FROM log WHERE trace = ?", gone)
                    db.executemany("DELETE FROM rollouts WHERE trace = ?", gone)
                    db.executemany("INSERT INTO log (trace, op, data) VALUES (?, ?, ?)", notes)
            except sqlite3.Error as exc:
                self._failed("delete from", exc)
            self._ok()

    def _failed(self, what: str, exc: sqlite3.Error) -> NoReturn:
        if self._count_errors:
            self._counters.inc(semconv.STATE_ERRORS)
        self._problem = f"state database {self.path}: {exc}"
        raise StateError(f"could not {what} {self.path}: {exc}") from exc

    def _ok(self) -> None:
        if self._problem is not None:
            _log.warning("state database %s writable again", self.path)
            self._problem = None

    def problems(self) -> list[str]:
        """What is wrong with the database now (for /readyz); empty when fine."""
        with self._lock:
            return [self._problem] if self._problem else []

    def close(self) -> None:
        """Closes the database; idempotent. Later calls raise StateError."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


def _row(f: Fact) -> list[Any]:
    """A fact as a JSON array: IDs in hex, the trace left out (the row has it), trailing
    nulls dropped (a phase span has no attributes)."""
    row: list[Any] = [f.span.hex(), f.kind, f.parent.hex(), *f[4:]]
    while row[-1] is None:
        row.pop()
    return row


def _fact(trace: bytes, item: Any) -> Fact:
    if not isinstance(item, list) or not 7 <= len(item) <= _FIELDS - 1:
        raise ValueError(f"not a fact: {item!r}")
    span, kind, parent, *rest = item
    for value in (kind, *rest[:4]):
        if not isinstance(value, int):
            raise ValueError(f"not a fact: {item!r}")
    for value in rest[4:]:
        if value is not None and not isinstance(value, str):
            raise ValueError(f"not a fact: {item!r}")
    rest += [None] * (_FIELDS - 4 - len(rest))
    return Fact(trace, bytes.fromhex(span), kind, bytes.fromhex(parent), *rest)


def _why(path: Path, exc: BaseException) -> str:
    """A state path that cannot be used, said so that the user knows which knob."""
    reason = getattr(exc, "strerror", None) or str(exc)
    return (
        f"state directory {path}: {reason} (set it with --state-dir or "
        "OTELBRIDGE_STATE_DIR; an empty value keeps the processor's state in memory only)"
    )


__all__ = ["DB_NAME", "Fact", "Record", "RolloutStore"]
