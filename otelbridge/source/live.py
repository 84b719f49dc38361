"""The live source: containerd's event stream, with reconnection and reconciliation.

containerd keeps events in memory only and replays nothing to a subscriber that was
away, so every session goes:

1. subscribe (optionally filtered to namespaces);
2. wait ``subscribe_settle_s`` so the subscription is registered at containerd;
3. list namespaces, containers and tasks, and hand the listing on as a
   :class:`~otelbridge.core.model.ReconcileSnapshot` *before* any streamed event, so the
   correlator can report containers that started while nobody listened (partial);
4. pass envelopes on until the stream ends.

When containerd goes away (the stream fails with UNAVAILABLE, the socket is missing),
the source re-subscribes with capped exponential backoff (tenacity), logging each
failure and counting each reconnect. The horizon of the next listing is the newest
envelope seen, so only containers created after it are reported; a bridge restarted from
a checkpoint resumes from the newest event it had committed (:meth:`LiveSource.resume_from`).

While a session runs, containerd is listed again every ``relist_interval_s``, a safety
net for events lost on the way (a full queue, a shim that gave up forwarding): a
container created since the previous listing (and settled for a few seconds) that the
correlator does not know is reported as partial.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential

from otelbridge.containerd.client import ContainerdClient, Subscription
from otelbridge.core import semconv
from otelbridge.core.clock import Clock, SystemClock
from otelbridge.core.config import SourceConfig
from otelbridge.core.counters import Counters
from otelbridge.core.errors import ContainerdError
from otelbridge.core.model import (
    ContainerInfo,
    ContainerKey,
    ReconcileSnapshot,
    SourceItem,
    TaskInfo,
)

_log = logging.getLogger(__name__)
_NS = 1_000_000_000
# a relist leaves out containers this recent: their events may still be on their way
_RELIST_SETTLE_NS = 5 * _NS


class _StopError(Exception):
    """The stop event was set: leave the retry loop."""


class LiveSource:
    """Subscribes to one containerd. :meth:`run` runs on the pipeline's source thread."""

    def __init__(
        self,
        client: ContainerdClient,
        config: SourceConfig,
        counters: Counters,
        clock: Clock | None = None,
    ) -> None:
        self._client = client
        self._cfg = config
        self._counters = counters
        self._clock = clock or SystemClock()
        self._horizon_ns: int | None = None
        self._sessions = 0
        self._lock = threading.Lock()
        self._current: Subscription | None = None

    def resume_from(self, horizon_ns: int | None) -> None:
        """Starts from a checkpoint: the first listing reports containers created after
        ``horizon_ns`` (the newest event the previous run committed) as missed."""
        if horizon_ns is not None:
            self._horizon_ns = horizon_ns

    def filters(self) -> list[str]:
        # containerd ORs the filters of one subscription
        return [f"namespace=={ns}" for ns in self._cfg.namespaces]

    def run(self, sink: Callable[[SourceItem], None], stop: threading.Event) -> None:
        """Streams into ``sink`` until ``stop`` is set; containerd failures are retried."""
        watcher = threading.Thread(
            target=self._cancel_when, args=(stop,), name="otelbridge-source-stop", daemon=True
        )
        watcher.start()

        def sleep(seconds: float) -> None:
            if stop.wait(seconds):
                raise _StopError

        def log_retry(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            delay = state.next_action.sleep if state.next_action else 0.0
            _log.warning(
                "containerd at %s: %s; retrying in %.1fs", self._client.address, exc, delay
            )

        while not stop.is_set():
            retrying = Retrying(
                retry=retry_if_exception_type(ContainerdError),
                wait=wait_exponential(
                    multiplier=self._cfg.reconnect_initial_s,
                    min=self._cfg.reconnect_initial_s,
                    max=self._cfg.reconnect_max_s,
                ),
                sleep=sleep,
                before_sleep=log_retry,
                reraise=True,
            )
            try:
                # a call returns once an established session has ended, so each new
                # session starts with a fresh backoff
                retrying(self._session, sink, stop)
            except _StopError:
                return
            self._counters.inc(semconv.SOURCE_RECONNECTS)
            if stop.wait(self._cfg.reconnect_initial_s):
                return

    def _cancel_when(self, stop: threading.Event) -> None:
        stop.wait()
        with self._lock:
            current = self._current
        if current is not None:
            current.cancel()

    def _session(self, sink: Callable[[SourceItem], None], stop: threading.Event) -> None:
        subscription = self._client.subscribe(self.filters())
        with self._lock:
            self._current = subscription
        established = False
        ended = threading.Event()
        try:
            if stop.is_set():
                raise _StopError
            if self._cfg.subscribe_settle_s:
                time.sleep(self._cfg.subscribe_settle_s)
            snapshot = self._snapshot("reconnect" if self._sessions else "connect")
            self._sessions += 1
            established = True
            _log.info(
                "subscribed to containerd at %s (%s, %d containers listed)",
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
            for envelope in subscription:
                if self._horizon_ns is None or envelope.timestamp_ns > self._horizon_ns:
                    self._horizon_ns = envelope.timestamp_ns
                sink(envelope)
        except ContainerdError as exc:
            if stop.is_set():
                raise _StopError from exc
            if not established:
                raise  # connecting failed: tenacity backs off and tries again
            _log.warning("containerd event stream ended: %s", exc)
        finally:
            ended.set()
            with self._lock:
                self._current = None
            subscription.cancel()
        if stop.is_set():
            raise _StopError

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
        return self._list(reason, self._horizon_ns)

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
