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
from collections.abc import Callable, Iterable

from otelbridge.core import semconv
from otelbridge.core.counters import Counters
from otelbridge.core.errors import NotFound
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
            except NotFound:
                self._counters.inc(semconv.METADATA_FAILED)
                _log.info("gone", "%s: container gone before its record was read", key)
            except Exception as exc:  # the startup goes on without its record
                self._counters.inc(semconv.METADATA_FAILED)
                _log.warning("lookup", "%s: container record lookup failed: %s", key, exc)
            with self._cond:
                if ticket not in self._wanted:
                    continue
                self._results[ticket] = info
                self._cond.notify_all()
            if self.on_result is not None:
                self.on_result()
