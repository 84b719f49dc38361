"""Container records read off the event thread.

``Containers/Get`` takes about half a millisecond; the event thread must not wait for it.
A :class:`LookupPool` reads records on a few worker threads and hands each result back
by *ticket*: the event thread submits a key when a container appears and, when its
startup completes, takes the result if it has arrived. Nothing per container is held but
the ticket and, once read, the (admitted, so bounded) record; a ticket is never reused,
so a late result can never be attached to another container.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from otelbridge.core import semconv
from otelbridge.core.counters import Counters
from otelbridge.core.errors import ContainerdError, ContainerdUnavailable, NotFound
from otelbridge.core.logutil import ThrottledLogger
from otelbridge.core.model import ContainerInfo, ContainerKey

_log = ThrottledLogger(logging.getLogger(__name__))

#: the result of a lookup that failed (counted when it happened)
FAILED = None


class LookupPool:
    """Reads container records with ``read`` on ``workers`` daemon threads.

    :meth:`submit`, :meth:`take` and :meth:`abandon` are called by the event thread,
    :meth:`wait` and :meth:`shutdown` by whoever stops the pipeline.
    """

    def __init__(
        self, read: Callable[[ContainerKey], ContainerInfo], workers: int, counters: Counters
    ) -> None:
        self._read = read
        self._counters = counters
        self._requests: queue.SimpleQueue[tuple[int, ContainerKey] | None] = queue.SimpleQueue()
        self._tickets = itertools.count(1)
        self._cond = threading.Condition()
        self._wanted: set[int] = set()
        self._results: dict[int, ContainerInfo | None] = {}
        self.on_result: Callable[[], None] | None = None
        """Called (on a lookup thread) after each wanted result is stored: it wakes the
        event thread, which would otherwise find the result only at its next deadline."""
        self._threads = [
            threading.Thread(target=self._work, name=f"otelbridge-lookup-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, key: ContainerKey) -> int:
        """Queues a lookup; returns its ticket."""
        ticket = next(self._tickets)
        with self._cond:
            self._wanted.add(ticket)
        self._counters.inc(semconv.METADATA_LOOKUPS)
        self._requests.put((ticket, key))
        return ticket

    def take(self, ticket: int) -> tuple[bool, ContainerInfo | None]:
        """``(True, record)`` once the lookup is over (record ``None`` if it failed),
        ``(False, None)`` while it runs. A taken ticket is forgotten."""
        with self._cond:
            if ticket in self._results:
                self._wanted.discard(ticket)
                return True, self._results.pop(ticket)
        return False, None

    def peek(self, ticket: int) -> tuple[bool, ContainerInfo | None]:
        """Like :meth:`take`, but the result stays to be taken."""
        with self._cond:
            if ticket in self._results:
                return True, self._results[ticket]
        return False, None

    def abandon(self, ticket: int) -> None:
        """The result is no longer wanted: it is dropped when it arrives."""
        with self._cond:
            self._wanted.discard(ticket)
            self._results.pop(ticket, None)

    def wait(self, tickets: Iterable[int], timeout_s: float) -> bool:
        """Waits until every lookup of ``tickets`` is over, at most ``timeout_s`` in all."""
        pending = set(tickets)
        with self._cond:
            return self._cond.wait_for(lambda: pending <= self._results.keys(), timeout_s)

    def shutdown(self) -> None:
        """Lets the workers finish the lookup in hand and stop. Idempotent."""
        for _ in self._threads:
            self._requests.put(None)

    def _work(self) -> None:
        while True:
            request = self._requests.get()
            if request is None:
                return
            ticket, key = request
            with self._cond:
                if ticket not in self._wanted:
                    continue  # abandoned while queued
            info: ContainerInfo | None = FAILED
            try:
                info = self._read(key)
            except Exception as exc:  # the startup goes on without its record
                _failed(self._counters, key, exc)
            with self._cond:
                if ticket not in self._wanted:
                    continue
                self._results[ticket] = info
                self._cond.notify_all()
            if self.on_result is not None:
                self.on_result()


class GetConnection(Protocol):
    """A connection that reads container records asynchronously
    (:class:`~otelbridge.containerd.stream.EventConnection`)."""

    def get_container(
        self,
        namespace: str,
        container_id: str,
        done: Callable[[bytes | None, ContainerdError | None], None],
    ) -> None: ...


class StreamLookups:
    """Container records read on the event connection, by the event thread: no thread of
    its own, and no wake-up but the connection's (issue 12).

    The same tickets as :class:`LookupPool`. A lookup is sent on the attached connection
    (:meth:`attach`); submitted while none is, or cut by the end of one, it is sent on the
    next. ``accept(key, response)`` turns a response into an admitted record; ``read``
    reads one synchronously (another connection), for :meth:`wait` at shutdown, when the
    event thread no longer reads. Event thread only, except :meth:`wait`, called once it
    has stopped.
    """

    def __init__(
        self,
        accept: Callable[[ContainerKey, bytes], ContainerInfo],
        read: Callable[[ContainerKey], ContainerInfo],
        counters: Counters,
    ) -> None:
        self._accept = accept
        self._read = read
        self._counters = counters
        self._tickets = itertools.count(1)
        self._connection: GetConnection | None = None
        self._pending: dict[int, ContainerKey] = {}  # wanted, no result yet
        self._unsent: set[int] = set()  # pending, not sent on the current connection
        self._results: dict[int, ContainerInfo | None] = {}
        self.on_result: Callable[[], None] | None = None
        """Called after each result is stored: the event thread takes a turn for it."""

    def attach(self, connection: GetConnection | None) -> None:
        """Lookups go to ``connection`` from now on (``None``: it ended); those waiting
        for one are sent."""
        self._connection = connection
        if connection is not None:
            unsent, self._unsent = self._unsent, set()
            for ticket in sorted(unsent):
                self._send(ticket)

    def submit(self, key: ContainerKey) -> int:
        ticket = next(self._tickets)
        self._pending[ticket] = key
        self._counters.inc(semconv.METADATA_LOOKUPS)
        self._send(ticket)
        return ticket

    def _send(self, ticket: int) -> None:
        connection = self._connection
        if connection is None:
            self._unsent.add(ticket)
            return
        key = self._pending[ticket]

        def done(response: bytes | None, error: ContainerdError | None) -> None:
            self._done(ticket, connection, response, error)

        connection.get_container(key.namespace, key.id, done)

    def _done(
        self,
        ticket: int,
        connection: GetConnection,
        response: bytes | None,
        error: ContainerdError | None,
    ) -> None:
        key = self._pending.get(ticket)
        if key is None:
            return  # abandoned
        if isinstance(error, ContainerdUnavailable):  # the connection ended: the next one
            if self._connection is connection:
                self._connection = None
            self._unsent.add(ticket)
            return
        info: ContainerInfo | None = FAILED
        if error is not None:
            _failed(self._counters, key, error)
        else:
            assert response is not None
            try:
                info = self._accept(key, response)
            except Exception as exc:  # the startup goes on without its record
                _failed(self._counters, key, exc)
        del self._pending[ticket]
        self._results[ticket] = info
        if self.on_result is not None:
            self.on_result()

    def take(self, ticket: int) -> tuple[bool, ContainerInfo | None]:
        if ticket in self._results:
            return True, self._results.pop(ticket)
        return False, None

    def peek(self, ticket: int) -> tuple[bool, ContainerInfo | None]:
        if ticket in self._results:
            return True, self._results[ticket]
        return False, None

    def abandon(self, ticket: int) -> None:
        self._pending.pop(ticket, None)
        self._unsent.discard(ticket)
        self._results.pop(ticket, None)

    def wait(self, tickets: Iterable[int], timeout_s: float) -> bool:
        """Reads the records of ``tickets`` still pending synchronously (the event thread
        has stopped: nobody reads the connection). No read starts after ``timeout_s``;
        one started may take its own call timeout beyond it."""
        deadline = time.monotonic() + timeout_s
        for ticket in tickets:
            key = self._pending.get(ticket)
            if key is None:
                continue
            if time.monotonic() >= deadline:
                return False
            info: ContainerInfo | None = FAILED
            try:
                info = self._read(key)
            except Exception as exc:
                _failed(self._counters, key, exc)
            self.abandon(ticket)
            self._results[ticket] = info
        return True

    def shutdown(self) -> None:
        """Nothing runs: the connection is the runner's to close."""


def _failed(counters: Counters, key: ContainerKey, exc: Exception) -> None:
    counters.inc(semconv.METADATA_FAILED)
    if isinstance(exc, NotFound):
        _log.info("gone", "%s: container gone before its record was read", key)
    else:
        _log.warning("lookup", "%s: container record lookup failed: %s", key, exc)


__all__ = ["FAILED", "GetConnection", "LookupPool", "StreamLookups"]
