"""The readiness arbiter: who decides that a started container is ready.

At ``/tasks/start`` the correlator asks :meth:`ReadinessArbiter.ready_now`. The first
readiness source that applies to the container (``kubernetes``, then ``probe``; PRODUCT.md
section 5) is armed and will report a :class:`~otelbridge.core.model.ReadySignal` through
the pipeline's ordered queue; when none applies, the container is ready at its task's
start (``started``), decided inline. Which sources apply depends on the container record,
so a container whose record is still being read waits, undecided, until it arrives or
``enrich.metadata_timeout_s`` passes (then ``started``).

Every decision made here, not by a source, is told to ``on_decision`` (the recorder
writes it, so that a replay reproduces the live verdicts). Replaying such a recording
(``recorded``), the arbiter decides nothing: every started container waits for the
verdict the recording holds. Event thread only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from otelbridge.core.clock import Clock
from otelbridge.core.model import ContainerInfo, ContainerKey, ReadySignal, StartupRecord
from otelbridge.pipeline.records import RecordDesk
from otelbridge.readiness import SOURCE_STARTED, ReadinessRequest, ReadinessSource

_NS = 1_000_000_000


class ReadinessArbiter:
    """Arms readiness sources and decides the rest (see the module docstring).

    ``report`` is where armed sources send their verdicts (the pipeline's ``offer``);
    ``wall`` is the clock sources' deadlines are set in."""

    def __init__(
        self,
        sources: Sequence[ReadinessSource],
        records: RecordDesk,
        clock: Clock,
        wall: Clock,
        *,
        probe_deadline_s: float,
        report: Callable[[ReadySignal], None],
        recorded: bool = False,
    ) -> None:
        self.sources = list(sources)
        self._records = records
        self._clock = clock
        self._wall = wall
        self._deadline_ns = int(probe_deadline_s * _NS)
        self._report = report
        self._recorded = recorded
        # started containers whose record is still being read: (record, since when)
        self._undecided: list[tuple[StartupRecord, int]] = []
        self._armed: dict[ContainerKey, ReadinessSource] = {}
        self.on_decision: Callable[[ReadySignal], None] | None = None

    @property
    def active(self) -> bool:
        """Whether any source can say better than ``started``."""
        return bool(self.sources)

    @property
    def undecided(self) -> bool:
        return bool(self._undecided)

    def start(self) -> None:
        for source in self.sources:
            source.start()

    def shutdown(self) -> None:
        """No verdict after this: waiting startups are checkpointed or ended."""
        for source in self.sources:
            source.shutdown()

    # -- the correlator's question ----------------------------------------------------------
    def ready_now(self, record: StartupRecord) -> bool:
        """True when the container is ready now (no source applies: ``started``); False
        when a source was armed, or the decision waits for the container's record (or,
        ``recorded``, for the recording's verdict)."""
        if self._recorded:
            return False
        known, info = self._records.take_now(record)
        if not known:
            self._undecided.append((record, self._clock.now_ns()))
            return False
        if self._arm(record, info):
            return False
        self._decided(record)
        return True

    def _decided(self, record: StartupRecord) -> None:
        if self.on_decision is not None and record.task_start_ns is not None:
            self.on_decision(
                ReadySignal(record.key, record.attempt, record.task_start_ns, SOURCE_STARTED)
            )

    def _arm(self, record: StartupRecord, info: ContainerInfo | None) -> bool:
        if info is None or record.task_start_ns is None:
            return False
        for source in self.sources:
            if source.applies(info):
                request = ReadinessRequest(
                    record.key,
                    record.attempt,
                    info,
                    record.task_start_ns,
                    self._wall.now_ns() + self._deadline_ns,
                    pid=record.pid,
                )
                self._armed[record.key] = source
                source.watch(request, self._report)
                return True
        return False

    def decide_pending(self) -> list[ReadySignal]:
        """Decides the started containers whose record has arrived (or whose lookup took
        longer than ``metadata_timeout_s``: then ``started``); returns the ``started``
        verdicts, for the correlator."""
        if not self._undecided:
            return []
        now = self._clock.now_ns()
        timeout_ns = self._records.timeout_ns
        waiting = []
        signals = []
        for record, since in self._undecided:
            if record.done:
                continue
            known, info = self._records.take_now(record)
            if not known and since + timeout_ns > now:
                waiting.append((record, since))
                continue
            if self._arm(record, info):
                continue
            assert record.task_start_ns is not None
            self._decided(record)
            signals.append(
                ReadySignal(record.key, record.attempt, record.task_start_ns, SOURCE_STARTED)
            )
        self._undecided = waiting
        return signals

    def rearm(self, record: StartupRecord) -> None:
        """A restored startup that was waiting for readiness: decided again."""
        if self.sources and record.task_start_ns is not None and record.ready_ns is None:
            self._undecided.append((record, self._clock.now_ns()))

    # -- verdicts and endings ---------------------------------------------------------------
    def verdict(self, signal: ReadySignal) -> None:
        """A source reported: it no longer watches the container."""
        self._armed.pop(signal.key, None)

    def ended(self, record: StartupRecord) -> None:
        """The startup completed: a source still watching it (it exited, was deleted or
        timed out first) is told to stop."""
        source = self._armed.pop(record.key, None)
        if source is not None:
            source.cancel(record.key)


__all__ = ["ReadinessArbiter"]
