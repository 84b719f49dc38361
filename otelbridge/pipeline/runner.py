"""The live runner: the threads that drive a :class:`~otelbridge.pipeline.chain.Chain`.

* the **source thread** runs the :class:`Source` (containerd's event stream) and hands
  its items over a bounded queue: envelopes are dropped (and counted) when it is full,
  listings and readiness verdicts wait for room, they must not be lost;
* the **event thread** feeds the chain one item at a time, so the events of a container
  are handled in containerd's order; between items it takes a *turn* (decide pending
  readiness, apply deadlines, commit the checkpoint), and the turn says how long the
  thread may then sleep. It sleeps on the queue: an item, or a :meth:`LiveRunner.wake`
  (a lookup's result arrived, the runner stops), ends the sleep early. Nothing polls: an
  idle bridge wakes only for its deadlines.

Shutdown joins the source first, then feeds what it left in the queue on the calling
thread. A source that dies of an unexpected error stops the runner (``failed``, and the
reason in ``failure``) rather than leaving the daemon idle.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Protocol

from otelbridge.core import semconv
from otelbridge.core.clock import Clock
from otelbridge.core.counters import Counters
from otelbridge.core.logutil import ThrottledLogger
from otelbridge.core.model import RawEnvelope, SourceItem

_log = logging.getLogger(__name__)
_tlog = ThrottledLogger(_log)
_LIVE_TICK_NS = 200_000_000  # deadlines are checked every 200 ms


class Source(Protocol):
    """A live source: runs until ``stop`` is set, handing items to ``sink`` in order."""

    def run(self, sink: Callable[[SourceItem], None], stop: threading.Event) -> None: ...


class Turns(Protocol):
    """What the event thread does: the pipeline's side of the runner."""

    def feed(self, item: SourceItem) -> None: ...
    def turn(self, idle: bool, now_ns: int) -> float:
        """Work between items; returns how long (seconds) the thread may sleep."""
        ...


class LiveRunner:
    """Runs a source and the event thread (see the module docstring)."""

    def __init__(self, turns: Turns, counters: Counters, clock: Clock, *, queue_size: int) -> None:
        self._turns = turns
        self._counters = counters
        self._clock = clock
        # None is a wake-up (see wake), not an item
        self.queue: queue.Queue[SourceItem | None] = queue.Queue(queue_size)
        self.stop = threading.Event()
        self._source_thread: threading.Thread | None = None
        self._event_thread: threading.Thread | None = None
        self.failed = False
        """Set when the source died of an unexpected error (the runner has stopped)."""
        self.failure = ""
        """What the source died of, in one line."""

    def offer(self, item: SourceItem) -> None:
        """Called by the source thread (and readiness sources). See the module docstring."""
        if isinstance(item, RawEnvelope):
            try:
                self.queue.put_nowait(item)
            except queue.Full:
                self._counters.inc(semconv.EVENTS_DROPPED)
                _tlog.warning("queue", "event queue full: dropping an event")
            return
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def wake(self) -> None:
        """Ends the event thread's sleep now (any thread). A full queue needs no wake-up."""
        with contextlib.suppress(queue.Full):
            self.queue.put_nowait(None)

    def start(self, source: Source) -> None:
        self._event_thread = threading.Thread(
            target=self._run_events, name="otelbridge-events", daemon=True
        )
        self._source_thread = threading.Thread(
            target=self._run_source, args=(source,), name="otelbridge-source", daemon=True
        )
        self._event_thread.start()
        self._source_thread.start()

    def _run_source(self, source: Source) -> None:
        try:
            source.run(self.offer, self.stop)
        except Exception as exc:  # the source must not die silently: stop, so `run` exits 1
            _log.error("the event source stopped: %s", exc, exc_info=not _said(exc))
            self.failure = str(exc) or type(exc).__name__
            self.failed = True
            self.stop.set()

    def _run_events(self) -> None:
        get, get_nowait = self.queue.get, self.queue.get_nowait
        turns = self._turns
        stop = self.stop
        sleep_s = 0.0
        while not stop.is_set():
            try:
                item = get(timeout=sleep_s) if sleep_s > 0 else get_nowait()
            except queue.Empty:
                item = None
            if item is not None:
                turns.feed(item)
            sleep_s = turns.turn(item is None, self._clock.now_ns())

    def join(self, timeout_s: float) -> bool:
        """Stops the threads, the source first (after it, nothing more is queued). True
        when the event thread stopped: the queue is then the caller's to drain."""
        self.stop.set()
        self.wake()
        for thread in (self._source_thread, self._event_thread):
            if thread is not None:
                thread.join(timeout_s)
        if self._event_thread is not None and self._event_thread.is_alive():
            _log.error("event thread did not stop in %.1fs; its queue is abandoned", timeout_s)
            return False
        return True

    def drain(self) -> None:
        """Feeds what the source left in the queue (the event thread has stopped)."""
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                self._turns.feed(item)


def _said(exc: Exception) -> bool:
    """Errors whose message says everything (no traceback needed)."""
    from otelbridge.core.errors import OtelbridgeError  # noqa: PLC0415 - bottom layer

    return isinstance(exc, OtelbridgeError)


__all__ = ["LiveRunner", "Source", "Turns"]
