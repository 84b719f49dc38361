"""Container records for the stage chain: looked up when a container appears, admitted.

``Containers/Get`` takes about half a millisecond and the event thread must not wait for
it: live, the :class:`~otelbridge.enrich.lookups.LookupPool` reads a record on its
threads when the correlator starts tracking a container, and the chain takes the result
when it needs it (at ``/tasks/start`` to decide readiness, at completion to emit). A
completed startup whose record has not arrived waits for it at most
``enrich.metadata_timeout_s`` without holding other containers up. Replay reads records
from the recording, synchronously.

Every record is *admitted* (:meth:`~otelbridge.enrich.stage.Enricher.admit`) where it is
read: its trace context resolved, its labels cut to the tenant limits; an app container
of a Kubernetes pod gets its pod from the :class:`~otelbridge.correlate.pods.PodDirectory`,
or by reading its sandbox's record once.

Called on the event thread only, except :meth:`RecordDesk.read` (lookup threads, when
records are not read on the event connection).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from otelbridge.core import semconv
from otelbridge.core.clock import Clock
from otelbridge.core.counters import Counters
from otelbridge.core.errors import NotFound
from otelbridge.core.logutil import ThrottledLogger
from otelbridge.core.model import ContainerInfo, ContainerKey, StartupRecord
from otelbridge.correlate.pods import PodDirectory
from otelbridge.enrich.lookups import LookupPool, StreamLookups
from otelbridge.enrich.stage import Enricher

_tlog = ThrottledLogger(logging.getLogger(__name__))
_NS = 1_000_000_000

MetadataLookup = Callable[[str, str], ContainerInfo]
"""``(namespace, container id) -> ContainerInfo``; raises NotFound or another error."""

RecordDecoder = Callable[[str, str, bytes], ContainerInfo]
"""``(namespace, container id, Get response) -> ContainerInfo``: the records read on
the event connection (:meth:`~otelbridge.containerd.client.ContainerdClient.container_from`)."""


@dataclass(slots=True)
class _Held:
    record: StartupRecord
    ticket: int  # its lookup in the LookupPool
    deadline_ns: int


class RecordDesk:
    """Looks up, admits and hands out container records (see the module docstring).

    ``on_read`` is called with every record as containerd returned it, before it is
    admitted (the recorder writes it into a recording; lookup threads)."""

    def __init__(
        self,
        enricher: Enricher,
        counters: Counters,
        clock: Clock,
        *,
        lookup: MetadataLookup | None,
        asynchronous: bool,
        workers: int,
        metadata_timeout_s: float,
        decode: RecordDecoder | None = None,
    ) -> None:
        """``decode``: lookups ride on the event connection (:class:`StreamLookups`, the
        runner attaches it), ``lookup`` reads only at shutdown; else, asynchronous
        lookups run ``lookup`` on ``workers`` threads."""
        self.enricher = enricher
        self.pods = PodDirectory()
        self._counters = counters
        self._clock = clock
        self._lookup = lookup
        self.stream: StreamLookups | None = None
        self._pool: LookupPool | StreamLookups | None = None
        if lookup is not None and asynchronous:
            if decode is not None:
                self.stream = StreamLookups(
                    lambda key, raw: self.accept(key, decode(key.namespace, key.id, raw)),
                    self.read,
                    counters,
                )
                self._pool = self.stream
            else:
                self._pool = LookupPool(self.read, workers, counters)
        self._tickets: dict[int, int] = {}  # id(record) -> ticket, while the record lives
        self._held: list[_Held] = []
        self._lazy: set[int] = set()  # id(record) of records to read when needed (replay)
        self._timeout_ns = int(metadata_timeout_s * _NS)
        self.on_read: Callable[[ContainerInfo], None] | None = None

    @property
    def timeout_ns(self) -> int:
        return self._timeout_ns

    def on_result(self, wake: Callable[[], None]) -> None:
        """``wake`` is called (on a lookup thread) whenever a lookup's result arrives."""
        if self._pool is not None:
            self._pool.on_result = wake

    # -- looking up ------------------------------------------------------------------------
    def on_new(self, record: StartupRecord) -> None:
        """The correlator tracks a new container: start reading its record."""
        if self._lookup is None or record.info is not None:
            return
        if self._pool is not None:
            self._tickets[id(record)] = self._pool.submit(record.key)
            return
        self._lazy.add(id(record))  # read when first needed: see the module docstring

    def _read_lazily(self, record: StartupRecord) -> None:
        if id(record) not in self._lazy:
            return
        self._lazy.discard(id(record))
        if record.info is not None:
            return
        self._counters.inc(semconv.METADATA_LOOKUPS)
        try:
            record.info = self.read(record.key)
        except NotFound:
            self._counters.inc(semconv.METADATA_FAILED)
        except Exception as exc:  # the startup goes on without its record
            self._counters.inc(semconv.METADATA_FAILED)
            _tlog.warning("lookup", "%s: container record lookup failed: %s", record.key, exc)

    def read(self, key: ContainerKey) -> ContainerInfo:
        """Reads and admits a container record (lookup threads, or replay's thread). An
        app container of a pod gets its pod from the directory, or by reading its
        sandbox's record."""
        assert self._lookup is not None
        return self.accept(key, self._lookup(key.namespace, key.id))

    def accept(self, key: ContainerKey, info: ContainerInfo) -> ContainerInfo:
        """Admits a record just read (see :meth:`read`)."""
        assert self._lookup is not None
        if self.on_read is not None:
            self.on_read(info)
        cri = info.cri
        pod = None
        if cri is not None and cri.kind == "container" and cri.sandbox_id:
            sandbox = ContainerKey(key.namespace, cri.sandbox_id)
            pod = self.pods.get(sandbox)
            if pod is None:
                self._counters.inc(semconv.METADATA_LOOKUPS)
                try:
                    raw = self._lookup(sandbox.namespace, sandbox.id)
                    if self.on_read is not None:
                        self.on_read(raw)
                    pod = self.enricher.admit(raw).pod
                except Exception as exc:  # gone, or worse: the container goes on podless
                    self._counters.inc(semconv.METADATA_FAILED)
                    _tlog.info("sandbox", "%s: its sandbox's record is unreadable: %s", key, exc)
                if pod is not None:
                    self.pods.put(pod)
        admitted = self.enricher.admit(info, pod)
        if cri is not None and cri.kind == "sandbox" and admitted.pod is not None:
            self.pods.put(admitted.pod)
        return admitted

    def take_now(self, record: StartupRecord) -> tuple[bool, ContainerInfo | None]:
        """(known, record): whether the record's lookup is over, and what it found; takes
        a finished lookup's result now instead of at completion."""
        self._read_lazily(record)
        if record.info is not None:
            return True, record.info
        ticket = self._tickets.get(id(record))
        if ticket is None or self._pool is None:
            return True, None
        done, info = self._pool.take(ticket)
        if not done:
            return False, None
        del self._tickets[id(record)]
        if info is not None:
            record.info = info
        return True, info

    def may_name_readiness(self, record: StartupRecord) -> bool:
        """Whether ``record``'s container names a readiness target, or may (its record
        is still being read). Takes nothing."""
        info = record.info
        if info is None:
            ticket = self._tickets.get(id(record))
            if ticket is None or self._pool is None:
                return False
            done, info = self._pool.peek(ticket)
            if not done:
                return True
        return info is not None and bool(info.readiness)

    # -- completed startups waiting for their record ----------------------------------------
    def hold(self, record: StartupRecord) -> bool:
        """A startup completed: True when its record is still being read (it is held until
        :meth:`release` hands it out), False when it can be emitted now."""
        self._read_lazily(record)
        ticket = self._tickets.pop(id(record), None)
        if ticket is None:
            return False
        self._held.append(_Held(record, ticket, self._clock.now_ns() + self._timeout_ns))
        return True

    @property
    def holding(self) -> bool:
        return bool(self._held)

    def release(self, *, force: bool = False) -> list[StartupRecord]:
        """Takes off the list the held startups whose record arrived, or that waited long
        enough (``force``: all of them), and returns them to be emitted."""
        if self._pool is None or not self._held:
            return []
        now = self._clock.now_ns()
        out = []
        pending, self._held = self._held, []
        for item in pending:
            done, info = self._pool.take(item.ticket)
            if not done and not force and item.deadline_ns > now:
                self._held.append(item)
                continue
            if done:
                if info is not None and item.record.info is None:
                    item.record.info = info
            else:
                self._pool.abandon(item.ticket)
                self._counters.inc(semconv.METADATA_LATE)
                _tlog.warning("late", "%s: container record not there in time", item.record.key)
            out.append(item.record)
        return out

    def wait(self, timeout_s: float) -> None:
        """Waits for the held startups' lookups, at most ``timeout_s`` in all."""
        if self._held and self._pool is not None:
            self._pool.wait((item.ticket for item in self._held), timeout_s)

    # -- listings --------------------------------------------------------------------------
    def admit_listing(self, containers: tuple[ContainerInfo, ...]) -> tuple[ContainerInfo, ...]:
        """Admits a listing's records, sandboxes first so their pods are known to their
        containers (no record is read: a listing holds them all)."""
        admit = self.enricher.admit
        sandboxes = [admit(c) for c in containers if c.cri is not None and c.cri.kind == "sandbox"]
        for sandbox in sandboxes:
            if sandbox.pod is not None:
                self.pods.put(sandbox.pod)
        others = [
            admit(c, self.pods.get(ContainerKey(c.namespace, c.cri.sandbox_id)))
            if c.cri is not None and c.cri.kind == "container"
            else admit(c)
            for c in containers
            if c.cri is None or c.cri.kind != "sandbox"
        ]
        return (*sandboxes, *others)

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()


__all__ = ["MetadataLookup", "RecordDesk"]
