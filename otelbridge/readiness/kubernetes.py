"""The ``kubernetes`` readiness source: the moment the kubelet marks a container ready.

The kubelet decides when a container is ready (its readiness probe passed, or at once
when it has none) and writes it to the pod's status
(``status.containerStatuses[].ready``). :class:`KubernetesSource` lists and then watches
the pods of this node (``fieldSelector=spec.nodeName=<node>``, all namespaces) through
the official ``kubernetes`` client library, keeps per pod uid and container name the
last status seen, and reports a watched startup ready when its container's status is
ready **and names this very container** (``containerID`` = ``containerd://<id of the
startup>``): a status still describing an earlier attempt of a restarted container
never counts.

The moment
    is the bridge's clock (``time.time_ns``, or the injected clock) when the watch event
    that showed the container ready arrived. Kubernetes' own timestamps
    (``lastTransitionTime``, ``startedAt``) have a precision of one second only, so they
    are not used. The measured moment lags the kubelet's decision by the status update's
    trip through the API server (usually tens of milliseconds), and the decision itself
    comes at the readiness probe's ``periodSeconds`` granularity.

Watch restarts
    * a watch that ended cleanly (the server's ``timeoutSeconds``) or whose connection
      broke resumes from the last resourceVersion seen: the server replays what was
      missed, so no transition is lost; broken connections and errors are retried with
      capped, jittered exponential backoff;
    * ``410 Gone`` (the resourceVersion expired: an ``ERROR`` watch event with code 410,
      or an HTTP 410) makes the source list the pods again and compare the listing with
      its cache: a container that turned ready while the watch was down is taken as
      ready at the listing's time, and counted (``otelbridge.kubernetes.ready_late``)
      and logged as observed late. Listings are served from the API server's watch
      cache (``resourceVersion=0``, then ``NotOlderThan`` the version reached), not
      etcd: every node runs a bridge;
    * 401/403 (no RBAC for pods): logged as such and retried; meanwhile the source does
      not apply, so containers fall back to the next readiness source;
    * the stream is read line by line from the library's raw response
      (:func:`otelbridge.readiness.k8s.stream_lines`, which says why).

Threads: one watches the API (I/O only, never reports), one delivers verdicts and
applies deadlines; :meth:`KubernetesSource.watch` and :meth:`KubernetesSource.cancel`
only take a lock. Errors never end the watching thread: everything is logged, counted
and retried.
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException

from otelbridge.core import semconv
from otelbridge.core.backoff import Backoff
from otelbridge.core.clock import Clock, SystemClock
from otelbridge.core.config import ReadinessConfig
from otelbridge.core.counters import Counters
from otelbridge.core.errors import ConfigError
from otelbridge.core.logutil import ThrottledLogger
from otelbridge.core.model import ContainerInfo, ContainerKey, ReadySignal
from otelbridge.readiness import SOURCE_KUBERNETES, ReadinessRequest, Report, k8s

__all__ = ["KubernetesSource"]

_log = logging.getLogger(__name__)
_tlog = ThrottledLogger(_log)

_NS = 1_000_000_000
_CONNECT_TIMEOUT_S = 5.0
_LIST_READ_TIMEOUT_S = 60.0
# a watch's read timeout: the server ends the stream after timeoutSeconds, so a longer
# silence means a connection that died without a word (a vanished peer, a partition)
_WATCH_READ_MARGIN_S = 30.0
# how often the delivering thread looks at the clock while nothing is due (an injected
# clock may be moved without telling anyone)
_MAX_IDLE_WAIT_S = 0.25
_JOIN_TIMEOUT_S = 5.0


class _Gone(Exception):
    """The watch's resourceVersion expired (410): list again."""


@dataclass(slots=True, eq=False)
class _Watched:
    """One watched startup, from :meth:`KubernetesSource.watch` to its verdict's
    delivery (or cancel)."""

    request: ReadinessRequest
    report: Report
    pod_uid: str
    container: str
    verdict: ReadySignal | None = None  # decided, waiting to be delivered
    cancelled: bool = False


@dataclass(order=True)
class _Deadline:
    at_ns: int
    seq: int
    watched: _Watched = field(compare=False)


def _pod_uid(info: ContainerInfo) -> str:
    if info.pod is not None and info.pod.uid:
        return info.pod.uid
    return info.cri.pod_uid if info.cri is not None else ""


class KubernetesSource:
    """The ``kubernetes`` readiness source (see the module docstring).

    ``node_name``: this node's name (``spec.nodeName`` of its pods; the downward API's
    ``NODE_NAME``). ``clock``: the bridge's clock, for the measured moments and the
    deadlines (must be the clock the pipeline sets ``deadline_ns`` with; default the
    wall clock). ``watch_timeout_s``: how long one watch request lasts before the server
    ends it and it is renewed. ``backoff_initial_s``/``backoff_max_s``: the delays
    between attempts after a failure. ``environ``/``service_account_dir``: where the
    in-cluster configuration is read (tests point them elsewhere).

    The client configuration is loaded here when ``config.kubernetes`` is set (a
    kubeconfig file when ``config.kubeconfig`` names one, else the in-cluster service
    account); a configuration that cannot be loaded raises
    :class:`~otelbridge.core.errors.ConfigError`. Nothing is contacted before :meth:`start`.
    """

    name = SOURCE_KUBERNETES

    def __init__(
        self,
        config: ReadinessConfig,
        counters: Counters,
        *,
        node_name: str,
        clock: Clock | None = None,
        watch_timeout_s: int = 300,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 30.0,
        environ: Mapping[str, str] | None = None,
        service_account_dir: str = "",
    ) -> None:
        self._enabled = config.kubernetes
        self._counters = counters
        self._node = node_name
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._watch_timeout_s = watch_timeout_s
        # half of each delay random: the bridges of all nodes lose the API server
        # together, and must not come back in lockstep
        self._backoff = Backoff(initial_s=backoff_initial_s, max_s=backoff_max_s, jitter=0.5)
        self._api: Any = None
        self._api_client: Any = None
        if self._enabled:
            if not node_name:
                raise ConfigError(
                    [
                        "readiness.kubernetes needs this node's name: set NODE_NAME (from "
                        "the downward API, spec.nodeName) or enrich.node_name"
                    ]
                )
            configuration = k8s.load_configuration(
                config.kubeconfig,
                os.environ if environ is None else environ,
                service_account_dir,
            )
            self._api_client = k8s_client.ApiClient(configuration)
            self._api = k8s_client.CoreV1Api(self._api_client)

        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # the delivering thread's
        # -- under _lock --
        self._pods: dict[str, k8s.PodStatus] = {}
        self._watched: dict[ContainerKey, _Watched] = {}
        self._by_pod: dict[str, set[ContainerKey]] = {}
        self._deadlines: list[_Deadline] = []
        self._outbox: deque[_Watched] = deque()
        self._seq = 0
        self._listed = False  # a first listing has been applied
        self._refused = False  # the last listing was refused (401/403): do not apply
        self._closed = False
        # -- the watching thread's own --
        self._rv: str | None = None  # resume the watch from here; None: list first
        self._relist_from = ""  # after a 410: the listing must be at least this new
        self._received = False  # the current attempt got something from the server
        # held while a verdict is handed over, so none is after shutdown() returns
        self._deliver_lock = threading.Lock()
        self._stop = threading.Event()
        self._response_lock = threading.Lock()
        self._response: Any = None  # the open watch response, for shutdown to cut
        self._threads: list[threading.Thread] = []

    # -- the ReadinessSource protocol -----------------------------------------------------
    def applies(self, info: ContainerInfo) -> bool:
        """An app container of a pod (CRI ``kind`` ``container``: sidecars and init
        containers included), when the source is enabled. While the API server refuses
        the bridge (401/403: missing RBAC), the source does not apply, so containers fall
        back to the next source instead of all ending ``not_ready``."""
        if not self._enabled or info.cri is None or info.cri.kind != "container":
            return False
        if not info.cri.container_name or not _pod_uid(info):
            return False
        with self._lock:
            return not self._refused and not self._closed

    def watch(self, request: ReadinessRequest, report: Report) -> None:
        """Watches one startup; never blocks (the verdict is delivered by the source's
        own thread, at once when the container is already ready for this startup).
        ``report`` gets exactly one verdict unless :meth:`cancel` comes first. A second
        watch of the same container replaces the first, which then reports nothing."""
        info = request.info
        uid = _pod_uid(info)
        name = info.cri.container_name if info.cri is not None else ""
        watched = _Watched(request, report, uid, name)
        with self._lock:
            if self._closed:
                return
            self._forget(request.key)
            self._watched[request.key] = watched
            if not uid or not name:  # applies() said no; answer anyway, once
                self._decide(watched, None, "not a container of a Kubernetes pod")
                return
            self._by_pod.setdefault(uid, set()).add(request.key)
            self._seq += 1
            heapq.heappush(self._deadlines, _Deadline(request.deadline_ns, self._seq, watched))
            self._evaluate(watched)
            self._wake.notify()

    def cancel(self, key: ContainerKey) -> None:
        """Stops watching ``key``; a verdict not yet handed over is dropped."""
        with self._lock:
            self._forget(key)

    def start(self) -> None:
        """Starts the watching and delivering threads (nothing when disabled)."""
        if not self._enabled or self._threads or self._closed:
            return
        self._threads = [
            threading.Thread(target=self._run_watch, name="otelbridge-k8s-watch", daemon=True),
            threading.Thread(target=self._run_deliver, name="otelbridge-k8s-ready", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def shutdown(self) -> None:
        """Stops watching; no verdict is delivered after this returns (one being handed
        over is waited for). Idempotent; works without :meth:`start`."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._watched.clear()
            self._by_pod.clear()
            self._deadlines.clear()
            self._outbox.clear()
            self._wake.notify_all()
        with self._deliver_lock:
            pass  # a report being made has returned; the next one sees _closed
        self._stop.set()
        with self._response_lock:
            response = self._response
        if response is not None:
            k8s.cut(response)
        for thread in self._threads:
            thread.join(_JOIN_TIMEOUT_S)
        if self._api_client is not None:
            try:
                self._api_client.close()
            except Exception:  # closing is best effort: the process is stopping
                _log.debug("closing the Kubernetes API client failed", exc_info=True)

    # -- verdicts (under _lock) -----------------------------------------------------------
    def _forget(self, key: ContainerKey) -> None:
        watched = self._watched.pop(key, None)
        if watched is None:
            return
        watched.cancelled = True  # its deadline entry and outbox entry are skipped
        keys = self._by_pod.get(watched.pod_uid)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_pod[watched.pod_uid]

    def _decide(self, watched: _Watched, ready_ns: int | None, reason: str = "") -> None:
        request = watched.request
        watched.verdict = ReadySignal(
            request.key,
            request.attempt,
            ready_ns if ready_ns is not None else self._clock.now_ns(),
            SOURCE_KUBERNETES,
            ok=ready_ns is not None,
            reason=reason,
        )
        self._watched.pop(request.key, None)
        keys = self._by_pod.get(watched.pod_uid)
        if keys is not None:
            keys.discard(request.key)
            if not keys:
                del self._by_pod[watched.pod_uid]
        self._outbox.append(watched)
        self._wake.notify()

    def _evaluate(self, watched: _Watched) -> None:
        """Decides ``watched`` when its container's status is ready for this startup."""
        pod = self._pods.get(watched.pod_uid)
        status = pod.containers.get(watched.container) if pod is not None else None
        if (
            status is not None
            and status.ready
            and status.ready_since_ns is not None
            and status.container_id == watched.request.key.id
        ):
            self._decide(watched, status.ready_since_ns)

    def _why_not(self, watched: _Watched) -> str:
        """Why a startup was not ready by its deadline, for the verdict's reason."""
        pod = self._pods.get(watched.pod_uid)
        if pod is None:
            if not self._listed:
                return "the Kubernetes API has not been listed yet"
            return f"pod {watched.pod_uid} not seen on node {self._node}"
        status = pod.containers.get(watched.container)
        where = f"container {watched.container} of pod {pod.namespace}/{pod.name}"
        if status is None:
            return f"{where} has no status yet"
        if status.container_id != watched.request.key.id:
            return f"{where}: its status describes another container ({status.container_id})"
        return f"{where} not ready"

    # -- the pod cache (under _lock) ------------------------------------------------------
    def _apply(self, obj: Any, now_ns: int, *, late: bool) -> None:
        """One pod's current state (a watch event's or a listing's)."""
        meta = k8s.metadata(obj)
        uid = meta.get("uid")
        if not isinstance(uid, str) or not uid:
            return
        spec = obj.get("spec")
        if isinstance(spec, Mapping) and spec.get("nodeName") != self._node:
            # the field selector should have left it out; never keep another node's pods
            self._pods.pop(uid, None)
            return
        pod = self._pods.get(uid)
        if pod is None:
            pod = self._pods[uid] = k8s.PodStatus(
                str(meta.get("namespace", "")), str(meta.get("name", "")), {}
            )
        containers: dict[str, k8s.ContainerStatus] = {}
        for name, (cid, restarts, ready) in k8s.statuses(obj).items():
            before = pod.containers.get(name)
            same = (
                before is not None
                and before.container_id == cid
                and before.restart_count == restarts
            )
            if ready and same and before is not None and before.ready:
                containers[name] = before  # still ready since then
                continue
            # a new container id or restart count is another container: its readiness
            # starts afresh even if the previous one's was already true
            containers[name] = k8s.ContainerStatus(cid, restarts, ready, now_ns if ready else None)
            if ready and late:
                self._counters.inc(semconv.KUBERNETES_READY_LATE)
                _log.info(
                    "container %s of pod %s/%s turned ready while the pod watch was down: "
                    "taken as ready at the relisting",
                    name,
                    pod.namespace,
                    pod.name,
                )
        pod.containers = containers
        for key in list(self._by_pod.get(uid, ())):
            watched = self._watched.get(key)
            if watched is not None:
                self._evaluate(watched)

    def _remove(self, obj: Any) -> None:
        uid = k8s.metadata(obj).get("uid")
        if isinstance(uid, str):
            self._pods.pop(uid, None)

    # -- the watching thread --------------------------------------------------------------
    def _run_watch(self) -> None:
        try:
            self._watch_loop()
        except BaseException:  # a bug: say so rather than stop measuring silently
            _log.exception("the Kubernetes pod watch failed; kubernetes readiness stops")
            raise

    def _watch_loop(self) -> None:
        failures = 0  # in a row, for the backoff
        while not self._stop.is_set():
            self._received = False
            try:
                if self._rv is None:
                    self._list()
                self._watch_once()
                failures = 0  # ended cleanly (the server's timeout): renew at once
                continue
            except _Gone as exc:
                _log.info("the pod watch expired (%s): listing the node's pods again", exc)
                self._relist_from, self._rv = self._rv or self._relist_from, None
                if self._received:
                    failures = 0
                # a 410 is normal after an outage: relist at once, unless it repeats
                delay = 0.0 if failures == 0 else self._delay(failures)
            except Exception as exc:
                if self._stop.is_set():
                    return
                self._counters.inc(semconv.KUBERNETES_API_ERRORS)
                if self._received:
                    failures = 0  # it worked for a while: the backoff starts afresh
                delay = self._delay(failures + 1)
                self._log_failure(exc, delay)
            failures += 1
            self._counters.inc(semconv.KUBERNETES_WATCH_RESTARTS)
            if self._stop.wait(delay):
                return

    def _delay(self, attempt: int) -> float:
        return self._backoff.delay(attempt)

    def _log_failure(self, exc: Exception, delay: float) -> None:
        k8s.log_failure(_tlog, exc, delay)

    def _list(self) -> None:
        """Lists the node's pods and reconciles the cache with them.

        The listing is served from the API server's watch cache, not etcd (every node
        runs a bridge): the first from any version ("0"), a relisting from a version at
        least as new as the one the watch had reached, so the cache never goes back in
        time."""
        since = self._relist_from
        try:
            response = self._api.list_pod_for_all_namespaces(
                field_selector=f"spec.nodeName={self._node}",
                resource_version=since or "0",
                resource_version_match="NotOlderThan" if since else None,
                _preload_content=False,
                _request_timeout=(_CONNECT_TIMEOUT_S, _LIST_READ_TIMEOUT_S),
            )
        except ApiException as exc:
            self._refusing(exc)
            raise
        try:
            body = response.data
        finally:
            response.release_conn()
        now = self._clock.now_ns()
        listing = json.loads(body)
        items = listing.get("items") if isinstance(listing, Mapping) else None
        rv = k8s.metadata(listing).get("resourceVersion")
        if not isinstance(items, list) or not isinstance(rv, str):
            raise k8s.WatchError("the pod listing has no items or no resourceVersion")
        with self._lock:
            relisting = self._listed
            if relisting:
                self._counters.inc(semconv.KUBERNETES_RELISTS)
            seen = set()
            for obj in items:
                uid = k8s.metadata(obj).get("uid")
                if isinstance(uid, str):
                    seen.add(uid)
                # a transition first seen here happened while the watch was down
                self._apply(obj, now, late=relisting)
            for uid in set(self._pods) - seen:  # deleted while the watch was down
                del self._pods[uid]
            self._listed = True
        self._rv = rv

    def _refusing(self, exc: ApiException) -> None:
        """401/403 (no RBAC, a revoked token): the source stops applying until a watch
        is let in again, so containers fall back to the next readiness source."""
        if exc.status in (401, 403):
            with self._lock:
                self._refused = True

    def _watch_once(self) -> None:
        """Streams one watch request until the server ends it; raises on a failure."""
        started = time.monotonic()
        try:
            response = self._api.list_pod_for_all_namespaces(
                field_selector=f"spec.nodeName={self._node}",
                watch=True,
                resource_version=self._rv,
                allow_watch_bookmarks=True,
                timeout_seconds=self._watch_timeout_s,
                _preload_content=False,
                _request_timeout=(
                    _CONNECT_TIMEOUT_S,
                    self._watch_timeout_s + _WATCH_READ_MARGIN_S,
                ),
            )
        except ApiException as exc:
            if exc.status == 410:  # an HTTP 410 instead of an ERROR event: the same
                raise _Gone(f"HTTP 410 {exc.reason}") from exc
            self._refusing(exc)
            raise
        with self._lock:
            self._refused = False  # listed and watching: the source can tell again
        with self._response_lock:
            self._response = response
        try:
            if self._stop.is_set():  # shutdown() came before the response was kept
                return
            for line in k8s.stream_lines(response):
                self._on_event(line)
                if self._stop.is_set():
                    return
        finally:
            with self._response_lock:
                self._response = None
            response.close()
            response.release_conn()
        if not self._received and time.monotonic() - started < 1.0:
            # a server that ends every watch at once must not make this loop spin
            raise k8s.WatchError("the watch ended as soon as it started")

    def _on_event(self, line: bytes) -> None:
        now = self._clock.now_ns()  # the moment of arrival is the measured moment
        event = json.loads(line)
        if not isinstance(event, Mapping):
            raise k8s.WatchError(f"a watch event that is not an object: {line[:200]!r}")
        kind = event.get("type")
        obj = event.get("object")
        self._received = True
        if kind == "ERROR":
            status = obj if isinstance(obj, Mapping) else {}
            message = f"{status.get('reason', '')}: {status.get('message', '')}"
            if status.get("code") == 410:
                raise _Gone(message)
            raise k8s.WatchError(f"watch error {status.get('code')} {message}")
        rv = k8s.metadata(obj).get("resourceVersion")
        if kind in ("ADDED", "MODIFIED"):
            with self._lock:
                self._apply(obj, now, late=False)
        elif kind == "DELETED":
            with self._lock:
                self._remove(obj)
        elif kind != "BOOKMARK":
            _tlog.warning("event", "skipping a pod watch event of type %r", kind)
            return
        if isinstance(rv, str) and rv:
            self._rv = rv

    # -- the delivering thread ------------------------------------------------------------
    def _run_deliver(self) -> None:
        while True:
            try:
                watched = self._next_verdict()
            except Exception:  # a bug: keep delivering the others
                _log.exception("kubernetes readiness: deciding a deadline failed")
                continue
            if watched is None:
                return
            self._deliver(watched)

    def _next_verdict(self) -> _Watched | None:
        """Waits for a verdict to deliver (deciding the startups past their deadline);
        None once closed."""
        with self._lock:
            while not self._closed:
                while self._outbox:
                    watched = self._outbox.popleft()
                    if not watched.cancelled:
                        return watched
                now = self._clock.now_ns()
                while self._deadlines:
                    first = self._deadlines[0]
                    if first.watched.cancelled or first.watched.verdict is not None:
                        heapq.heappop(self._deadlines)
                    elif first.at_ns <= now:
                        heapq.heappop(self._deadlines)
                        why = self._why_not(first.watched)
                        self._decide(first.watched, None, f"not ready by the deadline: {why}")
                    else:
                        break
                if self._outbox:
                    continue
                wait = _MAX_IDLE_WAIT_S
                if self._deadlines:
                    wait = min(wait, max(0.0, (self._deadlines[0].at_ns - now) / _NS))
                self._wake.wait(wait)
            return None

    def _deliver(self, watched: _Watched) -> None:
        verdict = watched.verdict
        assert verdict is not None
        with self._deliver_lock:
            with self._lock:
                # cancel() may have come since it was taken from the outbox
                if self._closed or watched.cancelled:
                    return
            try:
                # not under _lock: report may wait for room in the pipeline's queue,
                # whose consumer may be calling cancel() meanwhile
                watched.report(verdict)
            except Exception:
                _log.exception("reporting the readiness of %s failed", verdict.key)
