"""The live source: containerd's event stream, with reconnection and reconciliation.

containerd keeps events in memory only and replays nothing to a subscriber that was
away, so every session goes:

1. ask containerd its version (proves the socket is containerd's), then subscribe
   (optionally filtered to namespaces);
2. wait ``subscribe_settle_s`` so the subscription is registered at containerd;
3. list namespaces, containers and tasks, and hand the listing on as a
   :class:`~otelbridge.core.model.ReconcileSnapshot` *before* any streamed event, so the
   correlator can report containers that started while nobody listened (partial);
4. pass envelopes on until the stream ends.

A failed connection attempt is diagnosed (:mod:`otelbridge.containerd.diagnose`):

* what waiting can heal (the socket is missing or refuses connections: containerd is
  starting or restarting) is said once as a WARNING, then retried quietly (DEBUG per
  attempt, a reminder at most once a minute) with the project's
  :class:`~otelbridge.core.backoff.Backoff`, each failed attempt counted
  (``otelbridge.source.connect_failures``);
* what it cannot (permission denied, not a socket, not containerd) ends :meth:`LiveSource.run`
  with :class:`~otelbridge.core.errors.ContainerdMisconfigured`, whose one-line message
  says what to do.

:attr:`LiveSource.problem` holds the current problem for ``/readyz``. An established
session that ends is counted (``otelbridge.source.reconnects``) and followed by a fresh
backoff. The horizon of the next listing is the newest envelope seen, so only containers
created after it are reported; a bridge restarted from a checkpoint resumes from the
newest event it had committed (:meth:`LiveSource.resume_from`).

While a session runs, containerd is listed again every ``relist_interval_s``, a safety
net for events lost on the way (a full queue, a shim that gave up forwarding): a
container created since the previous listing (and settled for a few seconds) that the
correlator does not know is reported as partial.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, cast

from otelbridge.containerd.diagnose import Diagnosis, diagnose
from otelbridge.core import semconv
from otelbridge.core.backoff import Backoff
from otelbridge.core.clock import Clock, SystemClock
from otelbridge.core.config import SourceConfig
from otelbridge.core.counters import Counters
from otelbridge.core.errors import ContainerdError, ContainerdMisconfigured, MethodNotAllowed
from otelbridge.core.model import (
    ContainerInfo,
    ContainerKey,
    RawEnvelope,
    ReconcileSnapshot,
    SourceItem,
    TaskInfo,
)

_log = logging.getLogger(__name__)
_NS = 1_000_000_000
# a relist leaves out containers this recent: their events may still be on their way
_RELIST_SETTLE_NS = 5 * _NS
# while a healable problem lasts, it is recalled this often (each attempt is DEBUG)
_REMINDER_NS = 60 * _NS


class EventStream(Protocol):
    """An event stream (:class:`otelbridge.containerd.client.Subscription`)."""

    def cancel(self) -> None: ...
    def __iter__(self) -> Iterator[RawEnvelope]: ...


class AttachableStream(Protocol):
    """A stream the event thread reads itself (:class:`~otelbridge.pipeline.runner.Stream`);
    the source only waits for its end."""

    @property
    def done(self) -> threading.Event: ...
    @property
    def error(self) -> ContainerdError | None: ...
    @property
    def newest_ns(self) -> int | None: ...
    def cancel(self) -> None: ...
    def close(self) -> None: ...


class ContainerdAPI(Protocol):
    """What the source needs of a containerd client
    (:class:`otelbridge.containerd.client.ContainerdClient`); tests pass fakes."""

    @property
    def address(self) -> str: ...
    def version(self, timeout_s: float | None = None) -> str: ...
    def subscribe(self, filters: Sequence[str] = ()) -> EventStream: ...
    def list_namespaces(self) -> list[str]: ...
    def list_containers(self, namespace: str) -> list[ContainerInfo]: ...
    def list_tasks(self, namespace: str) -> list[TaskInfo]: ...


class LiveSource:
    """Subscribes to one containerd. :meth:`run` runs on the pipeline's source thread."""

    def __init__(
        self,
        client: ContainerdAPI,
        config: SourceConfig,
        counters: Counters,
        clock: Clock | None = None,
        *,
        backoff: Backoff | None = None,
    ) -> None:
        """``backoff``: the delays between failed connection attempts (default: from
        ``reconnect_initial_s`` up to ``reconnect_max_s``)."""
        self._client = client
        self._cfg = config
        self._counters = counters
        self._clock = clock or SystemClock()
        self._backoff = backoff or Backoff(
            initial_s=config.reconnect_initial_s, max_s=config.reconnect_max_s
        )
        self._horizon_ns: int | None = None
        self._namespaces_checked = False
        self._sessions = 0
        self._lock = threading.Lock()
        self._current: EventStream | AttachableStream | None = None
        self._problem: str | None = None
        # the problem last said at WARNING, and when: a lasting one is not repeated
        self._said: str | None = None
        self._said_at_ns = 0
        self._failures_since_said = 0
        self._attach: Callable[[Any], None] | None = None
        self._open_events: Callable[[Sequence[str]], AttachableStream] | None = None

    def stream_to(
        self,
        attach: Callable[[Any], None],
        open_events: Callable[[Sequence[str]], AttachableStream],
    ) -> None:
        """Each session's event stream is opened with ``open_events`` and handed to the
        event thread with ``attach`` (the runner's), instead of being read here."""
        self._attach = attach
        self._open_events = open_events

    @property
    def problem(self) -> str | None:
        """Why the source is not following containerd right now (one line, for
        ``/readyz``); ``None`` while subscribed and listed, and before the first attempt
        has failed. Readable from any thread."""
        return self._problem

    def resume_from(self, horizon_ns: int | None) -> None:
        """Starts from a checkpoint: the first listing reports containers created after
        ``horizon_ns`` (the newest event the previous run committed) as missed."""
        if horizon_ns is not None:
            self._horizon_ns = horizon_ns

    def filters(self) -> list[str]:
        # containerd ORs the filters of one subscription
        return [f"namespace=={ns}" for ns in self._cfg.namespaces]

    def run(self, sink: Callable[[SourceItem], None], stop: threading.Event) -> None:
        """Streams into ``sink`` until ``stop`` is set; what can heal is retried (see the
        module docstring). Raises :class:`ContainerdMisconfigured` when containerd cannot
        be used at this address and waiting will not change that; sleeps only on
        ``stop`` (``stop.wait``), so setting it ends every wait at once."""
        watcher = threading.Thread(
            target=self._cancel_when, args=(stop,), name="otelbridge-source-stop", daemon=True
        )
        watcher.start()
        failures = 0
        while not stop.is_set():
            try:
                established = self._session(sink, stop)
            except MethodNotAllowed:
                raise  # the allow-list refused one of our own calls: a bug, not containerd
            except ContainerdError as exc:
                if stop.is_set():
                    return
                failures += 1
                self._counters.inc(semconv.SOURCE_CONNECT_FAILURES)
                found = diagnose(self._client.address, exc, connected_before=self._sessions > 0)
                self._problem = found.message
                if not found.can_heal:
                    raise ContainerdMisconfigured(found.message) from exc
                self._say(found, exc, failures)
                if stop.wait(self._backoff.delay(failures)):
                    return
                continue
            if stop.is_set() or not established:
                return
            # an established session ended: a fresh backoff for the next one
            failures = 0
            self._counters.inc(semconv.SOURCE_RECONNECTS)
            if stop.wait(self._cfg.reconnect_initial_s):
                return

    def _say(self, found: Diagnosis, exc: ContainerdError, failures: int) -> None:
        """Logs a healable problem: once at WARNING, then DEBUG per attempt and a
        WARNING reminder at most every minute."""
        now = self._clock.now_ns()
        if found.kind != self._said:
            self._said = found.kind
            self._said_at_ns = now
            self._failures_since_said = 0
            _log.warning("%s", found.message)
            return
        self._failures_since_said += 1
        _log.debug("connection attempt %d to containerd failed: %s", failures, exc)
        if now - self._said_at_ns >= _REMINDER_NS:
            _log.warning(
                "still waiting for containerd (%d failed attempts in %.0fs): %s",
                self._failures_since_said,
                (now - self._said_at_ns) / _NS,
                found.message,
            )
            self._said_at_ns = now
            self._failures_since_said = 0

    def _cancel_when(self, stop: threading.Event) -> None:
        stop.wait()
        with self._lock:
            current = self._current
        if current is not None:
            current.cancel()

    def _session(self, sink: Callable[[SourceItem], None], stop: threading.Event) -> bool:
        """One session. Raises :class:`ContainerdError` when connecting (version,
        subscription, listing) fails; returns whether it was established, once its
        stream has ended or ``stop`` is set."""
        version = self._client.version()
        subscription: EventStream | AttachableStream
        stream: AttachableStream | None = None
        if self._open_events is not None:
            subscription = stream = self._open_events(self.filters())
        else:
            subscription = self._client.subscribe(self.filters())
        with self._lock:
            self._current = subscription
        ended = threading.Event()
        attached = False
        try:
            # the watcher cancels only a subscription it saw: check after publishing it
            if stop.is_set():
                return False
            if self._cfg.subscribe_settle_s and stop.wait(self._cfg.subscribe_settle_s):
                return False
            snapshot = self._snapshot("reconnect" if self._sessions else "connect")
            self._sessions += 1
            self._said = None  # the next outage is said anew
            self._problem = None
            _log.info(
                "subscribed to containerd %s at %s (%s, %d containers listed)",
                version,
                self._client.address,
                snapshot.reason,
                len(snapshot.containers),
            )
            sink(snapshot)
            if self._cfg.relist_interval_s:
                threading.Thread(
                    target=self._relist,
                    args=(sink, ended, snapshot.taken_at_ns),
                    name="otelbridge-relist",
                    daemon=True,
                ).start()
            if stream is not None:
                assert self._attach is not None
                self._attach(stream)
                attached = True
                self._follow(stream, stop)
            else:
                self._iterate(cast(EventStream, subscription), sink, stop)
            return True
        finally:
            ended.set()
            with self._lock:
                self._current = None
            subscription.cancel()
            if stream is not None and not attached:
                stream.close()  # never handed over: nobody else closes it

    def _follow(self, stream: AttachableStream, stop: threading.Event) -> None:
        """Waits while the event thread reads ``stream``, until it ends (or ``stop``:
        the watcher cancels it)."""
        stream.done.wait()
        if stream.newest_ns is not None and (
            self._horizon_ns is None or stream.newest_ns > self._horizon_ns
        ):
            self._horizon_ns = stream.newest_ns
        if stream.error is not None and not stop.is_set():
            self._problem = f"the event stream from containerd ended: {stream.error}"
            _log.warning("containerd event stream ended: %s", stream.error)

    def _iterate(
        self, subscription: EventStream, sink: Callable[[SourceItem], None], stop: threading.Event
    ) -> None:
        """Reads ``subscription`` on this thread, handing each envelope to ``sink``."""
        try:
            for envelope in subscription:
                if self._horizon_ns is None or envelope.timestamp_ns > self._horizon_ns:
                    self._horizon_ns = envelope.timestamp_ns
                sink(envelope)
        except ContainerdError as exc:
            if not stop.is_set():
                self._problem = f"the event stream from containerd ended: {exc}"
                _log.warning("containerd event stream ended: %s", exc)

    def _relist(
        self, sink: Callable[[SourceItem], None], ended: threading.Event, since_ns: int
    ) -> None:
        """Lists containerd every ``relist_interval_s`` until the session ends."""
        while not ended.wait(self._cfg.relist_interval_s):
            until_ns = self._clock.now_ns() - _RELIST_SETTLE_NS
            try:
                snapshot = self._list("relist", since_ns, until_ns)
            except ContainerdError as exc:
                _log.warning("relisting containerd failed: %s", exc)
                continue
            if ended.is_set():
                return  # the session ended meanwhile: the next one lists anyway
            sink(snapshot)
            since_ns = until_ns

    def _snapshot(self, reason: str) -> ReconcileSnapshot:
        if self._horizon_ns is None:
            self._horizon_ns = self._clock.now_ns() - int(self._cfg.initial_lookback_s * _NS)
        if self._cfg.namespaces and not self._namespaces_checked:
            self._check_namespaces()
        return self._list(reason, self._horizon_ns)

    def _check_namespaces(self) -> None:
        """Says once, at the first connect, which ``--namespace`` does not exist in
        containerd (a typo follows nothing, silently): it is followed anyway, in case it is
        created later."""
        self._namespaces_checked = True
        try:
            existing = set(self._client.list_namespaces())
        except ContainerdError as exc:
            _log.debug("listing namespaces to check --namespace failed: %s", exc)
            return
        for ns in self._cfg.namespaces:
            if ns not in existing:
                _log.warning(
                    "containerd at %s has no namespace %r (it has: %s): nothing is seen there "
                    "until it is created; is --namespace right?",
                    self._client.address,
                    ns,
                    ", ".join(sorted(existing)) or "none",
                )

    def _list(self, reason: str, since_ns: int, until_ns: int = 0) -> ReconcileSnapshot:
        now = self._clock.now_ns()
        namespaces = list(self._cfg.namespaces) or self._client.list_namespaces()
        containers: list[ContainerInfo] = []
        tasks: dict[ContainerKey, TaskInfo] = {}
        for ns in namespaces:
            containers.extend(self._client.list_containers(ns))
            for task in self._client.list_tasks(ns):
                tasks[ContainerKey(ns, task.container_id)] = task
        return ReconcileSnapshot(
            reason=reason,
            since_ns=since_ns,
            taken_at_ns=now,
            namespaces=tuple(namespaces),
            containers=tuple(containers),
            tasks=tasks,
            until_ns=until_ns,
        )
