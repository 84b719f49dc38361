"""The checkpointer: the correlator's state and the spans it produced, committed together.

With a :class:`~otelbridge.export.spool.StateStore` (``otelbridge run``) the event thread
commits, every ``state.commit_interval_s``, the state of every container that changed and
the spans staged since the previous commit, in one transaction: a crash leaves either
both or neither, so a startup is neither lost nor emitted twice. A startup completed but
not yet emitted (its container record still being read) is checkpointed as "completed,
not emitted" until its spans are staged; after a crash it is emitted by the next start.

A commit that fails (a full disk) is counted by the store; the keys stay marked changed
and the spans staged, and the next commit writes them. Event thread only.
"""

from __future__ import annotations

import logging

from otelbridge.core.errors import StateError
from otelbridge.core.logutil import ThrottledLogger
from otelbridge.core.model import ContainerKey, Outcome, StartupRecord
from otelbridge.correlate.startups import Correlator
from otelbridge.export.checkpoint import Checkpoint, StateRow
from otelbridge.export.spool import StateStore

_log = logging.getLogger(__name__)
_tlog = ThrottledLogger(_log)


class Checkpointer:
    """Keeps what a commit must write (see the module docstring)."""

    def __init__(self, store: StateStore, correlator: Correlator) -> None:
        self.store = store
        self._correlator = correlator
        correlator.track_changes()
        # completed startups whose spans are not committed yet, by key and attempt
        self._unemitted: dict[ContainerKey, dict[int, StartupRecord]] = {}
        self._emitted: set[ContainerKey] = set()
        self._completed: set[ContainerKey] = set()  # completed since the last commit
        self.horizon_ns: int | None = None
        """The newest envelope time seen: where a restarted source resumes."""
        self._committed_horizon_ns: int | None = None

    @property
    def dirty(self) -> bool:
        """Something to commit: changed state, staged spans, or a newer horizon."""
        return bool(
            self._correlator.has_changes
            or self._emitted
            or self._completed
            or self.store.staged
            or self.horizon_ns != self._committed_horizon_ns
        )

    def observe(self, timestamp_ns: int) -> None:
        if self.horizon_ns is None or timestamp_ns > self.horizon_ns:
            self.horizon_ns = timestamp_ns

    def completed(self, record: StartupRecord) -> None:
        """A startup completed; its spans are not committed yet."""
        self._unemitted.setdefault(record.key, {})[record.attempt] = record
        self._completed.add(record.key)

    def emitted(self, record: StartupRecord) -> None:
        """Its spans are staged: the next commit writes them with its new state."""
        attempts = self._unemitted.get(record.key)
        if attempts is not None and attempts.pop(record.attempt, None) is not None:
            if not attempts:
                del self._unemitted[record.key]
            self._emitted.add(record.key)

    def load(self) -> Checkpoint:
        """The checkpoint a previous run committed, loaded into the correlator; the
        caller looks up, re-arms and emits what it holds (see ``Pipeline.restore``)."""
        cp = self.store.load()
        completed_tombstones = [
            (r.key, r.incarnation_ns, r.attempt, r.task_create_ns or r.start_ns)
            for r in cp.unemitted
            if r.outcome not in (Outcome.DELETED, Outcome.INCOMPLETE)
        ]
        self._correlator.restore(cp.in_flight, [*cp.done, *completed_tombstones], cp.prepares)
        self.horizon_ns = cp.horizon_ns
        if cp.in_flight or cp.unemitted or cp.spooled:
            _log.warning(
                "resumed: %d startups in flight, %d to emit, %d spans spooled",
                len(cp.in_flight),
                len(cp.unemitted),
                cp.spooled,
            )
        return cp

    def commit(self) -> bool:
        """Commits the changed state and the spans it produced, in one transaction. False
        when the store could not write (counted there; written with the next commit).
        Nothing to write (not :attr:`dirty`) is no transaction."""
        if not self.dirty:
            return True
        correlator = self._correlator
        # a key still unemitted but unchanged since it was written keeps its rows
        keys = correlator.take_changes() | self._emitted | self._completed
        self._emitted, self._completed = set(), set()
        rows = []
        for key in keys:
            record, last_event_ns, tombstone, prepare_ns = correlator.state_of(key)
            unemitted = tuple(self._unemitted.get(key, {}).values())
            rows.append(StateRow(key, record, last_event_ns, tombstone, prepare_ns, unemitted))
        try:
            self.store.commit(rows, self.horizon_ns)
        except StateError:  # a full disk must not stop the stream: state stays in memory
            correlator.mark_changed(keys)  # written with the next commit
            return False
        self._committed_horizon_ns = self.horizon_ns
        return True


__all__ = ["Checkpointer"]
