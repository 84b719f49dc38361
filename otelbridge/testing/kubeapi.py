"""A stand-in Kubernetes API server for tests: pods, listed and watched, on loopback.

No Kubernetes API server (and no kubelet) runs on the machines where otelbridge is
developed and tested, so the ``kubernetes`` readiness source
(:mod:`otelbridge.readiness.kubernetes`) is tested against this stand-in instead. It is
a real HTTP server (``http.server``, one thread per connection; HTTPS with ``tls``) that
speaks the part of the API a pod watcher uses, on the wire as kube-apiserver does:

* ``GET /api/v1/pods`` and ``GET /api/v1/namespaces/{ns}/pods``: a ``PodList`` whose
  ``metadata.resourceVersion`` is the current version; ``fieldSelector`` (``=``,
  ``==``, ``!=`` on any field path, comma-separated) filters the items;
* the same with ``watch=true``: a chunked stream of JSON lines
  ``{"type": "ADDED|MODIFIED|DELETED|BOOKMARK|ERROR", "object": {...}}``. From
  ``resourceVersion=N`` it replays every change after N, then follows; without one (or
  ``0``) it starts with an ``ADDED`` per existing pod. With a field selector, a pod that
  starts to match arrives as ``ADDED`` and one that stops matching as ``DELETED``, as the
  apiserver's watch cache does. ``timeoutSeconds`` ends the stream cleanly;
* a watch from a resourceVersion older than the last :meth:`FakeKubeAPI.compact` is
  answered as kube-apiserver answers it: HTTP 200 and one ``ERROR`` event carrying a
  ``Status`` with code 410 (reason ``Expired``, "too old resource version"), or with
  ``gone_as_http = True`` an HTTP 410 response with that ``Status``;
* bearer-token authentication (401 otherwise), and a ``Status`` object for every error.

The test feeds it realistic v1 Pod objects (:func:`make_pod` builds one shaped like what
kube-apiserver returns for a pod the kubelet has reported on; :func:`set_container`
changes one container status as the kubelet would) and steers its failures:
:meth:`~FakeKubeAPI.pause_watches` (changes are kept but not streamed),
:meth:`~FakeKubeAPI.drop_watches` (connections cut without the closing chunk),
:meth:`~FakeKubeAPI.expire_watches` (410 to every open watch),
:meth:`~FakeKubeAPI.fail_requests` (the next requests answered with an HTTP error).
:meth:`~FakeKubeAPI.write_kubeconfig` writes a kubeconfig pointing at the server::

    with FakeKubeAPI() as api:
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        api.put_pod(make_pod("web-0", node_name="node-a", containers=[ContainerSpec("app", cid)]))
        ...

Not implemented: other resources, label selectors, ``limit``/``continue`` paging,
``resourceVersionMatch``, writes (create/update/delete go through the test's methods).
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import http.server
import json
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

from otelbridge.testing.serving import TrackingHTTPServer, serve_in_thread

__all__ = [
    "ApiRequest",
    "ContainerSpec",
    "FakeKubeAPI",
    "make_pod",
    "set_container",
]

Pod = dict[str, Any]

# a realistic starting point: a fresh cluster's resourceVersion is not 1
_FIRST_RESOURCE_VERSION = 48_000
_CREATED = "2024-05-02T10:11:12Z"
_STARTED = "2024-05-02T10:11:14Z"


# -- pod objects --------------------------------------------------------------------------
@dataclass(frozen=True)
class ContainerSpec:
    """One container of a pod built by :func:`make_pod`, and its status.

    ``container_id`` is containerd's id (64 hex digits), written to the status as
    ``containerd://<id>``; empty: the container is not created yet (``waiting``).
    """

    name: str
    container_id: str = ""
    ready: bool = False
    restart_count: int = 0
    image: str = "docker.io/library/nginx:1.27.0"


def make_pod(
    name: str,
    *,
    namespace: str = "default",
    uid: str = "",
    node_name: str = "node-a",
    containers: Sequence[ContainerSpec] = (),
    init_containers: Sequence[ContainerSpec] = (),
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> Pod:
    """A v1 Pod as kube-apiserver returns it once the kubelet has reported on it: a
    Deployment's pod (owner reference, ``pod-template-hash``), spec with the defaults the
    apiserver fills in, and a status with conditions and one status per container. A
    fresh ``uid`` is made when none is given."""
    template_hash = "7c9d8f6b5d"
    pod: Pod = {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "generateName": name.rsplit("-", 1)[0] + "-",
            "namespace": namespace,
            "uid": uid or str(uuid.uuid4()),
            "resourceVersion": "",
            "creationTimestamp": _CREATED,
            "labels": {
                **(labels if labels is not None else {"app": name.split("-", maxsplit=1)[0]}),
                "pod-template-hash": template_hash,
            },
            "annotations": dict(annotations or {}),
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": f"{name.split('-', maxsplit=1)[0]}-{template_hash}",
                    "uid": "5d0f6a3e-3f2b-4c1e-9a57-0c1d2e3f4a5b",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "initContainers": [_container_spec(c) for c in init_containers],
            "containers": [_container_spec(c) for c in containers],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "serviceAccount": "default",
            "nodeName": node_name,
            "securityContext": {},
            "schedulerName": "default-scheduler",
            "tolerations": [
                {
                    "key": "node.kubernetes.io/not-ready",
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 300,
                },
                {
                    "key": "node.kubernetes.io/unreachable",
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 300,
                },
            ],
            "priority": 0,
            "enableServiceLinks": True,
            "preemptionPolicy": "PreemptLowerPriority",
        },
        "status": {
            "phase": "Running",
            "conditions": [],
            "hostIP": "192.0.2.10",
            "hostIPs": [{"ip": "192.0.2.10"}],
            "podIP": "198.51.100.23",
            "podIPs": [{"ip": "198.51.100.23"}],
            "startTime": _CREATED,
            "initContainerStatuses": [_container_status(c) for c in init_containers],
            "containerStatuses": [_container_status(c) for c in containers],
            "qosClass": "BestEffort",
        },
    }
    if not init_containers:
        del pod["spec"]["initContainers"]
        del pod["status"]["initContainerStatuses"]
    _set_conditions(pod)
    return pod


def set_container(
    pod: Pod,
    name: str,
    *,
    ready: bool | None = None,
    container_id: str | None = None,
    restart_count: int | None = None,
) -> Pod:
    """A copy of ``pod`` with container ``name``'s status changed as the kubelet changes
    it (a new ``container_id`` is a restart: the old one moves to ``lastState``); the
    pod's ``Ready`` and ``ContainersReady`` conditions follow. Raises ``KeyError`` when
    the pod has no such container."""
    pod = copy.deepcopy(pod)
    status = pod["status"]
    for cs in (*status.get("initContainerStatuses", ()), *status["containerStatuses"]):
        if cs["name"] != name:
            continue
        if container_id is not None and _cid(container_id) != cs.get("containerID", ""):
            if cs.get("containerID"):
                cs["lastState"] = {
                    "terminated": {
                        "exitCode": 1,
                        "reason": "Error",
                        "startedAt": _STARTED,
                        "finishedAt": _STARTED,
                        "containerID": cs["containerID"],
                    }
                }
            cs["containerID"] = _cid(container_id)
            cs["state"] = _state(container_id)
            cs["started"] = bool(container_id)
        if restart_count is not None:
            cs["restartCount"] = restart_count
        if ready is not None:
            cs["ready"] = ready
        _set_conditions(pod)
        return pod
    raise KeyError(name)


def _cid(container_id: str) -> str:
    return f"containerd://{container_id}" if container_id else ""


def _state(container_id: str) -> dict[str, Any]:
    if not container_id:
        return {"waiting": {"reason": "ContainerCreating"}}
    return {"running": {"startedAt": _STARTED}}


def _container_spec(c: ContainerSpec) -> dict[str, Any]:
    return {
        "name": c.name,
        "image": c.image,
        "ports": [{"containerPort": 8080, "protocol": "TCP"}],
        "readinessProbe": {
            "httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP"},
            "periodSeconds": 1,
            "timeoutSeconds": 1,
            "successThreshold": 1,
            "failureThreshold": 3,
        },
        "resources": {},
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent",
    }


def _container_status(c: ContainerSpec) -> dict[str, Any]:
    status: dict[str, Any] = {
        "name": c.name,
        "state": _state(c.container_id),
        "lastState": {},
        "ready": c.ready,
        "restartCount": c.restart_count,
        "image": c.image,
        "imageID": "docker.io/library/nginx@sha256:"
        "a484819eb60211f5299034ac80f6a681b06f89e65866ce91f356ed7c72af059c",
        "started": bool(c.container_id),
    }
    if c.container_id:
        status["containerID"] = _cid(c.container_id)
    return status


def _set_conditions(pod: Pod) -> None:
    status = pod["status"]
    unready = [cs["name"] for cs in status["containerStatuses"] if not cs["ready"]]

    def condition(kind: str, true: bool, reason: str = "", message: str = "") -> dict[str, Any]:
        c: dict[str, Any] = {
            "type": kind,
            "status": "True" if true else "False",
            "lastProbeTime": None,
            "lastTransitionTime": _STARTED,
        }
        if reason:
            c["reason"], c["message"] = reason, message
        return c

    message = f"containers with unready status: [{' '.join(unready)}]"
    status["conditions"] = [
        condition("PodReadyToStartContainers", True),
        condition("Initialized", True),
        condition("Ready", not unready, "" if not unready else "ContainersNotReady", message),
        condition(
            "ContainersReady", not unready, "" if not unready else "ContainersNotReady", message
        ),
        condition("PodScheduled", True),
    ]


# -- field selectors ------------------------------------------------------------------------
_Requirement = tuple[str, str, str]  # (field path, "=" or "!=", value)


def _parse_selector(text: str) -> list[_Requirement]:
    """``spec.nodeName=a,metadata.namespace!=b`` -> requirements; ValueError if bad."""
    out: list[_Requirement] = []
    for term in filter(None, (t.strip() for t in text.split(","))):
        for op in ("!=", "==", "="):
            path, sep, value = term.partition(op)
            if sep:
                if not path:
                    raise ValueError(f"invalid field selector term {term!r}")
                out.append((path, "!=" if op == "!=" else "=", value))
                break
        else:
            raise ValueError(f"invalid field selector term {term!r}")
    return out


def _field(obj: Mapping[str, Any], path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return "" if value is None else str(value)


def _matches(obj: Mapping[str, Any], selector: Iterable[_Requirement]) -> bool:
    return all((_field(obj, path) == value) == (op == "=") for path, op, value in selector)


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


# -- the server -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ApiRequest:
    """One request the server received (failed ones included)."""

    method: str
    path: str
    query: Mapping[str, str]
    authorization: str

    @property
    def watch(self) -> bool:
        return self.query.get("watch") in ("true", "1")


@dataclass(frozen=True)
class _Change:
    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    obj: Pod  # the pod after the change (before it, for DELETED), rv set
    prev: Pod | None  # the pod before the change


@dataclass(eq=False)
class _Watch:
    selector: list[_Requirement]
    index: int  # changes[index:] are still to be sent
    bookmarks: bool
    end: str = ""  # "drop" or "expire": set by the test
    established: bool = False


class _HttpServer(TrackingHTTPServer):
    """Keeps its connections so :meth:`FakeKubeAPI.close` can cut them."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], owner: FakeKubeAPI) -> None:
        self.owner = owner
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that cut its connection (a dropped watch, a stopping bridge) is not
        # the server's error; anything else is printed as socketserver does
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _HttpServer
    protocol_version = "HTTP/1.1"  # keep-alive and chunked streams, as kube-apiserver
    timeout = 10  # an idle kept-alive connection does not hold a thread forever

    def do_GET(self) -> None:
        self.server.owner._serve(self)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests read ApiRequest records, not stderr

    def reply_json(self, code: int, body: Mapping[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def reply_status(self, code: int, reason: str, message: str) -> None:
        self.reply_json(code, _status(code, reason, message))

    def start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def send_event(self, kind: str, obj: Mapping[str, Any]) -> None:
        """One watch event, in a chunk of its own (a line of JSON, as the apiserver)."""
        data = json.dumps({"type": kind, "object": obj}).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def cut(self) -> None:
        """Ends the connection without the closing chunk: the client sees a broken
        stream, as when a load balancer or the apiserver's process goes away."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


class FakeKubeAPI:
    """The stand-in API server (see the module docstring). Thread-safe; use it as a
    context manager, or :meth:`start` and :meth:`close`.

    ``token``: the bearer token a request must carry (empty: no authentication).
    ``tls``: ``(certificate file, key file)`` to serve HTTPS instead of HTTP.
    """

    def __init__(
        self,
        *,
        token: str = "otelbridge-test-token",
        tls: tuple[str, str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.token = token
        self.host = host
        self.port = port
        self.gone_as_http = False
        """Answer a watch from an expired resourceVersion with HTTP 410 (the default is
        what kube-apiserver does: HTTP 200 and an ``ERROR`` event with code 410)."""
        self._tls = tls
        self._cond = threading.Condition()
        self._pods: dict[str, Pod] = {}  # uid -> pod, rv set
        self._changes: list[_Change] = []
        self._rvs: list[int] = []  # the changes' rvs, for bisect
        self._rv = _FIRST_RESOURCE_VERSION
        self._oldest = 0  # a watch from an rv below this is answered 410
        self._paused = False
        self._failures: list[int] = []
        self._watches: set[_Watch] = set()
        self._requests: list[ApiRequest] = []
        self._closing = False
        self._server: _HttpServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        scheme = "https" if self._tls else "http"
        return f"{scheme}://{self.host}:{self.port}"

    def start(self) -> Self:
        """Starts serving (again after :meth:`close`: the pods and history are kept, on
        a new port unless ``port`` was given); idempotent."""
        if self._server is not None:
            return self
        with self._cond:
            self._closing = False
        server = _HttpServer((self.host, self.port), self)
        self._thread = serve_in_thread(server, self._tls, "fake-kube-api")
        self.port = server.server_address[1]
        self._server = server
        return self

    def close(self) -> None:
        """Ends every watch, stops serving and cuts every connection. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        server.shutdown()
        server.cut_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write_kubeconfig(self, path: str | Path, *, ca_file: str = "") -> Path:
        """Writes a kubeconfig whose current context points at this server with its
        token (JSON, which kubeconfig loaders read as YAML). ``ca_file``: the CA that
        signed the ``tls`` certificate, for an HTTPS server."""
        cluster: dict[str, Any] = {"server": self.url}
        if ca_file:
            cluster["certificate-authority"] = ca_file
        user: dict[str, Any] = {"token": self.token} if self.token else {}
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": cluster}],
            "users": [{"name": "otelbridge", "user": user}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "otelbridge"}}],
            "current-context": "fake",
        }
        path = Path(path)
        path.write_text(json.dumps(config, indent=2), encoding="utf-8")
        return path

    # -- the test's side ------------------------------------------------------------------
    @property
    def resource_version(self) -> int:
        with self._cond:
            return self._rv

    def put_pod(self, pod: Mapping[str, Any]) -> int:
        """Creates the pod (``ADDED``) or replaces the one with its uid (``MODIFIED``);
        returns the change's resourceVersion. The pod is copied."""
        obj: Pod = copy.deepcopy(dict(pod))
        uid = obj["metadata"]["uid"]
        with self._cond:
            prev = self._pods.get(uid)
            return self._record("MODIFIED" if prev is not None else "ADDED", obj, prev)

    def delete_pod(self, uid: str) -> int:
        """Deletes the pod (``DELETED``); returns the change's resourceVersion."""
        with self._cond:
            prev = self._pods[uid]
            return self._record("DELETED", copy.deepcopy(prev), prev)

    def pods(self) -> list[Pod]:
        with self._cond:
            return copy.deepcopy(list(self._pods.values()))

    def pause_watches(self) -> None:
        """Open watches stop receiving changes (they are kept, and sent on
        :meth:`resume_watches` unless the watch ended meanwhile)."""
        with self._cond:
            self._paused = True

    def resume_watches(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def compact(self) -> None:
        """Forgets the history, as etcd's compaction does: a watch from a
        resourceVersion older than the current one is answered 410 Gone."""
        with self._cond:
            self._oldest = self._rv

    def expire_watches(self) -> None:
        """Compacts and ends every open watch with an ``ERROR`` event, code 410 (what a
        client sees when its watch fell behind the history the server keeps)."""
        with self._cond:
            self._oldest = self._rv
            for watch in self._watches:
                watch.end = "expire"
            self._cond.notify_all()

    def drop_watches(self) -> None:
        """Cuts the connection of every open watch, without the closing chunk."""
        with self._cond:
            for watch in self._watches:
                watch.end = "drop"
            self._cond.notify_all()

    def fail_requests(self, count: int, status: int = 503) -> None:
        """The next ``count`` requests are answered with HTTP ``status``."""
        with self._cond:
            self._failures.extend([status] * count)

    def requests(self) -> list[ApiRequest]:
        with self._cond:
            return list(self._requests)

    def open_watches(self) -> int:
        """Watches that are streaming (their initial events sent)."""
        with self._cond:
            return sum(1 for w in self._watches if w.established and not w.end)

    def wait_watching(self, count: int = 1, timeout_s: float = 5.0) -> bool:
        """Waits until at least ``count`` watches are streaming."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while sum(1 for w in self._watches if w.established and not w.end) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def wait_delivered(self, rv: int, timeout_s: float = 5.0) -> bool:
        """Waits until some open watch has been sent the change ``rv`` (or a later
        one); does not say that the client has read it."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not any(
                w.index > 0 and self._changes[w.index - 1].rv >= rv for w in self._watches
            ):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    # -- the server's side ----------------------------------------------------------------
    def _record(self, kind: str, obj: Pod, prev: Pod | None) -> int:
        """Under the lock: applies one change and wakes the watches."""
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        uid = obj["metadata"]["uid"]
        if kind == "DELETED":
            del self._pods[uid]
        else:
            self._pods[uid] = obj
        self._changes.append(_Change(self._rv, kind, copy.deepcopy(obj), prev))
        self._rvs.append(self._rv)
        self._cond.notify_all()
        return self._rv

    def _serve(self, handler: _Handler) -> None:
        url = urlsplit(handler.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        authorization = handler.headers.get("Authorization", "")
        with self._cond:
            self._requests.append(ApiRequest("GET", url.path, query, authorization))
            failure = self._failures.pop(0) if self._failures else None
        if failure is not None:
            handler.reply_status(failure, "ServiceUnavailable", "injected failure")
            return
        if self.token:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer" or token.strip() != self.token:
                handler.reply_status(401, "Unauthorized", "Unauthorized")
                return
        parts = url.path.strip("/").split("/")
        if parts == ["api", "v1", "pods"]:
            namespace = ""
        elif len(parts) == 5 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "pods":
            namespace = parts[3]
        else:
            handler.reply_status(404, "NotFound", f"the server could not find {url.path}")
            return
        try:
            selector = _parse_selector(query.get("fieldSelector", ""))
        except ValueError as exc:
            handler.reply_status(400, "BadRequest", str(exc))
            return
        if namespace:
            selector.append(("metadata.namespace", "=", namespace))
        if query.get("watch") in ("true", "1"):
            self._serve_watch(handler, query, selector)
        else:
            self._serve_list(handler, selector)

    def _serve_list(self, handler: _Handler, selector: list[_Requirement]) -> None:
        with self._cond:
            items = [p for p in self._pods.values() if _matches(p, selector)]
            body = {
                "kind": "PodList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self._rv)},
                "items": copy.deepcopy(items),
            }
        handler.reply_json(200, body)

    def _serve_watch(
        self, handler: _Handler, query: Mapping[str, str], selector: list[_Requirement]
    ) -> None:
        rv_text = query.get("resourceVersion", "")
        timeout_s = float(query.get("timeoutSeconds") or 0) or None
        deadline = time.monotonic() + timeout_s if timeout_s else None
        with self._cond:
            initial: list[Pod] = []
            if rv_text in ("", "0"):
                # a watch from "any version" starts with the current state
                initial = copy.deepcopy([p for p in self._pods.values() if _matches(p, selector)])
                start = self._rv
            elif not rv_text.isdigit():
                start = -1
            else:
                start = int(rv_text)
            expired = 0 <= start < self._oldest
            watch = _Watch(
                selector,
                bisect.bisect_right(self._rvs, start),
                query.get("allowWatchBookmarks") in ("true", "1"),
            )
            current = self._rv
        if start < 0:
            handler.reply_status(400, "BadRequest", f"invalid resourceVersion {rv_text!r}")
            return
        gone = f"too old resource version: {start} ({current})"
        if expired and self.gone_as_http:
            handler.reply_status(410, "Expired", gone)
            return
        try:
            handler.start_stream()
            if expired:
                handler.send_event("ERROR", _status(410, "Expired", gone))
                handler.end_stream()
                return
            for pod in initial:
                handler.send_event("ADDED", pod)
            with self._cond:
                watch.established = True
                self._watches.add(watch)
                self._cond.notify_all()
            self._stream(handler, watch, deadline)
        except OSError:
            pass  # the client went away
        finally:
            with self._cond:
                self._watches.discard(watch)
                self._cond.notify_all()

    def _stream(self, handler: _Handler, watch: _Watch, deadline: float | None) -> None:
        while True:
            with self._cond:
                while True:
                    if watch.end or self._closing:
                        end = watch.end or "close"
                        break
                    if not self._paused and watch.index < len(self._changes):
                        end = ""
                        break
                    if deadline is not None and time.monotonic() >= deadline:
                        end = "timeout"
                        break
                    wait = 0.5 if deadline is None else max(0.0, deadline - time.monotonic())
                    self._cond.wait(min(wait, 0.5))
                batch = [] if end else self._changes[watch.index :]
                watch.index += len(batch)
                current = self._rv
                position = self._changes[watch.index - 1].rv if watch.index else current
                self._cond.notify_all()  # wait_delivered
            for change in batch:
                kind = _event_type(change, watch.selector)
                if kind:
                    handler.send_event(kind, change.obj)
            if end == "drop":
                handler.cut()
                return
            if end == "expire":
                message = f"too old resource version: {position} ({current})"
                handler.send_event("ERROR", _status(410, "Expired", message))
            elif end == "timeout" and watch.bookmarks:
                handler.send_event(
                    "BOOKMARK",
                    {
                        "kind": "Pod",
                        "apiVersion": "v1",
                        "metadata": {"resourceVersion": str(current)},
                    },
                )
            if end:
                handler.end_stream()
                return


def _event_type(change: _Change, selector: list[_Requirement]) -> str:
    """What a watch with ``selector`` sees of a change ("" for nothing): a pod that
    starts matching is ADDED for it, one that stops matching DELETED."""
    now = change.type != "DELETED" and _matches(change.obj, selector)
    before = change.prev is not None and _matches(change.prev, selector)
    if now and before:
        return "MODIFIED"
    if now:
        return "ADDED"
    if before:
        return "DELETED"
    return ""
