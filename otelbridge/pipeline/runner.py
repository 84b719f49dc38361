"""The live runner: the threads that drive a :class:`~otelbridge.pipeline.chain.Chain`.

* the **source thread** runs the :class:`Source`: it connects to containerd, lists it,
  and hands the event stream itself to the event thread (:meth:`LiveRunner.attach`); a
  source whose stream is not a :class:`Stream` hands each item over a bounded queue
  instead (envelopes are dropped, and counted, when it is full). Listings and readiness
  verdicts always come through the queue and wait for room: they must not be lost;
* the **event thread** waits, in one ``select``, on the attached stream's socket, on a
  wake-up fd (an item was queued, a lookup's result arrived, the runner stops) and on
  its next deadline. It feeds the chain one item at a time, so the events of a container
  are handled in containerd's order, queued items before the stream's; then it takes a
  *turn* (decide pending readiness, apply deadlines, commit the checkpoint), which says
  how long it may sleep. Nothing polls, and an event read off the socket crosses no
  thread: one wake-up per read, however many events it holds (issue 12). While the
  stream is held for a batch window, the turn's deadlines wait for the window's end
  (one wake-up for the read, the checks and the commit); a ``wake()`` from the event
  thread itself (a lookup answered on its connection) only makes the next turn idle.

Shutdown joins the source first, then feeds what it left in the queue on the calling
thread. A source that dies of an unexpected error stops the runner (``failed``, and the
reason in ``failure``) rather than leaving the daemon idle.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import selectors
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from otelbridge.core import semconv
from otelbridge.core.clock import Clock
from otelbridge.core.counters import Counters
from otelbridge.core.logutil import ThrottledLogger
from otelbridge.core.model import RawEnvelope, SourceItem

_log = logging.getLogger(__name__)
_tlog = ThrottledLogger(_log)
_NS = 1_000_000_000


class Source(Protocol):
    """A live source: runs until ``stop`` is set, handing items to ``sink`` in order."""

    def run(self, sink: Callable[[SourceItem], None], stop: threading.Event) -> None: ...


class Stream(Protocol):
    """An event stream the event thread reads itself
    (:class:`~otelbridge.containerd.stream.EventConnection`)."""

    @property
    def done(self) -> threading.Event: ...
    def fileno(self) -> int: ...
    def read(self) -> list[RawEnvelope]:
        """What the socket holds, without waiting; sets ``done`` when it is over."""
        ...

    def close(self) -> None: ...


class _Attach:
    """A stream handed to the event thread, queued after the listing that precedes it."""

    __slots__ = ("stream",)

    def __init__(self, stream: Stream) -> None:
        self.stream = stream


class Turns(Protocol):
    """What the event thread does: the pipeline's side of the runner."""

    def feed(self, item: SourceItem) -> None: ...
    def turn(self, idle: bool, now_ns: int) -> float:
        """Work between items; returns how long (seconds) the thread may sleep."""
        ...

    def prompt(self) -> bool:
        """Whether the next events must be read as they come (no batch window)."""
        ...

    def blocked(self) -> bool:
        """Whether the next event must wait: a started container's readiness waits for
        its record (its exit, read in the same batch, must not overtake the verdict)."""
        ...


class LiveRunner:
    """Runs a source and the event thread (see the module docstring)."""

    def __init__(
        self,
        turns: Turns,
        counters: Counters,
        clock: Clock,
        *,
        queue_size: int,
        batch_window_s: float = 0.0,
    ) -> None:
        """``batch_window_s``: after a read that brought events, the stream's socket is
        left alone this long, then read at once (``source.batch_window_s``)."""
        self._turns = turns
        self._batch_window_s = batch_window_s
        self._counters = counters
        self._clock = clock
        self.queue: queue.Queue[SourceItem | _Attach] = queue.Queue(queue_size)
        self._wake_fd = -1  # an eventfd while the threads run (start to join)
        self._wake_lock = threading.Lock()
        self.stop = threading.Event()
        self._source_thread: threading.Thread | None = None
        self._event_thread: threading.Thread | None = None
        self._event_ident: int | None = None
        self._woke_itself = False  # wake() was called on the event thread
        self.failed = False
        """Set when the source died of an unexpected error (the runner has stopped)."""
        self.failure = ""
        """What the source died of, in one line."""
        self.on_attach: list[Callable[[Any], None]] = []
        """Called on the event thread with each stream attached, and ``None`` when it
        ends (the lookups riding on its connection)."""

    def offer(self, item: SourceItem) -> None:
        """Called by the source thread (and readiness sources). See the module docstring."""
        if isinstance(item, RawEnvelope):
            try:
                self.queue.put_nowait(item)
            except queue.Full:
                self._counters.inc(semconv.EVENTS_DROPPED)
                _tlog.warning("queue", "event queue full: dropping an event")
                return
            self.wake()
            return
        self._put(item)

    def attach(self, stream: Stream) -> None:
        """Hands ``stream`` to the event thread (the source thread, after its listing);
        the stream's ``done`` is set when it is over, then the event thread closes it."""
        self._put(_Attach(stream))

    def _put(self, item: SourceItem | _Attach) -> None:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.2)
            except queue.Full:
                continue
            self.wake()
            return

    def wake(self) -> None:
        """Ends the event thread's sleep now (any thread). Called on the event thread
        itself (a lookup answered on its connection), it only makes the coming turn an
        idle one: the thread is awake, and a wake-up would cost it another loop."""
        if threading.get_ident() == self._event_ident:
            self._woke_itself = True
            return
        with self._wake_lock:  # not a closed fd, whose number may be another's by now
            if self._wake_fd >= 0:
                os.eventfd_write(self._wake_fd, 1)

    def start(self, source: Source) -> None:
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
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
        turns = self._turns
        stop = self.stop
        selector = selectors.DefaultSelector()
        selector.register(self._wake_fd, selectors.EVENT_READ)
        stream: Stream | None = None
        sleep_s = 0.0
        window_ns = int(self._batch_window_s * _NS)
        held_until = 0  # clock time until which the stream's socket is left alone
        pending: deque[RawEnvelope] = deque()  # read, not fed yet (blocked)
        now_ns = self._clock.now_ns
        self._event_ident = threading.get_ident()
        try:
            while not stop.is_set():
                readable = False
                if held_until:
                    # the turn's deadlines (checks, the next commit) wait for the window's
                    # end too, at most batch_window_s: one wake-up for all of it
                    sleep_s = max(held_until - now_ns(), 0) / _NS
                for key, _ in selector.select(sleep_s):
                    if key.fd == self._wake_fd:
                        with contextlib.suppress(BlockingIOError):
                            os.eventfd_read(self._wake_fd)  # before the queue: none missed
                    else:
                        readable = True
                stream, attached, fed = self._feed_queued(selector, stream)
                if attached:
                    held_until = 0  # a new stream, registered already
                # (a clock stepped back must not hold the stream longer than the window)
                if held_until and not 0 < held_until - now_ns() <= window_ns:
                    held_until = 0
                    readable = True  # read whatever came meanwhile
                    if stream is not None:
                        selector.register(stream.fileno(), selectors.EVENT_READ)
                got = False
                if stream is not None and (readable or attached) and not held_until:
                    envelopes = stream.read()
                    got = bool(envelopes)
                    pending.extend(envelopes)
                    if stream.done.is_set():
                        self._detach(selector, stream)
                        stream = None
                fed = self._feed_pending(pending) or fed
                idle = not fed or self._woke_itself
                self._woke_itself = False
                sleep_s = turns.turn(idle, now_ns())
                if pending:  # blocked: the record it waits for comes on the stream, unheld
                    if not turns.blocked():
                        sleep_s = 0.0  # the turn unblocked it: go on at once
                elif got and stream is not None and window_ns and not turns.prompt():
                    # what comes in the next moment is read in one go, one wake-up
                    held_until = now_ns() + window_ns
                    selector.unregister(stream.fileno())
        finally:
            for envelope in pending:  # read already: not to be lost
                turns.feed(envelope)
            if stream is not None:
                self._detach(selector, stream)
            selector.close()

    def _feed_pending(self, pending: deque[RawEnvelope]) -> bool:
        """Feeds the envelopes read, in order, until the chain is blocked (see
        :meth:`Turns.blocked`); returns whether any was fed."""
        turns = self._turns
        fed = False
        while pending and not turns.blocked():
            turns.feed(pending.popleft())
            fed = True
        return fed

    def _feed_queued(
        self, selector: selectors.BaseSelector, stream: Stream | None
    ) -> tuple[Stream | None, bool, bool]:
        """Feeds the queued items, attaching a queued stream (the previous one detached
        first). Returns the current stream, whether one was attached, whether an item
        was fed."""
        get = self.queue.get_nowait
        attached = fed = False
        while True:
            try:
                item = get()
            except queue.Empty:
                return stream, attached, fed
            if isinstance(item, _Attach):
                if stream is not None:
                    self._detach(selector, stream)
                stream = item.stream
                selector.register(stream.fileno(), selectors.EVENT_READ)
                attached = True
                for hook in self.on_attach:
                    hook(stream)
                continue
            self._turns.feed(item)
            fed = True

    def _detach(self, selector: selectors.BaseSelector, stream: Stream) -> None:
        with contextlib.suppress(KeyError, ValueError, OSError):
            selector.unregister(stream.fileno())
        stream.close()
        for hook in self.on_attach:
            hook(None)

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
        with self._wake_lock:
            if self._wake_fd >= 0:
                os.close(self._wake_fd)
                self._wake_fd = -1
        return True

    def drain(self) -> None:
        """Feeds what the source left in the queue (the event thread has stopped); a
        stream never attached is closed."""
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Attach):
                item.stream.close()
            else:
                self._turns.feed(item)


def _said(exc: Exception) -> bool:
    """Errors whose message says everything (no traceback needed)."""
    from otelbridge.core.errors import OtelbridgeError  # noqa: PLC0415 - bottom layer

    return isinstance(exc, OtelbridgeError)


__all__ = ["LiveRunner", "Source", "Stream", "Turns"]
