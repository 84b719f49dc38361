"""The Kubernetes API plumbing of the ``kubernetes`` readiness source.

The client's configuration (a kubeconfig, or the pod's service account), the lines of a
raw watch stream, what a pod object says of its containers, and how a failure is said.

The library's own watch helper (``kubernetes.watch.Watch``) is not used: on a 410 it
silently re-watches once from the same expired resourceVersion, and without deserialising
every pod into a model it neither tracks the resourceVersion nor survives an ``ERROR``
event. :func:`stream_lines` reads the raw response instead. No state here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.incluster_config import (
    SERVICE_CERT_FILENAME,
    SERVICE_TOKEN_FILENAME,
    InClusterConfigLoader,
)

from otelbridge.core.errors import ConfigError
from otelbridge.core.logutil import ThrottledLogger

__all__ = [
    "ContainerStatus",
    "PodStatus",
    "WatchError",
    "container_id",
    "cut",
    "is_transport_error",
    "load_configuration",
    "log_failure",
    "metadata",
    "statuses",
    "stream_lines",
]

_log = logging.getLogger(__name__)


class WatchError(Exception):
    """The watch stream reported an error other than 410."""


def container_id(status_id: str) -> str:
    """``containerd://abc`` -> ``abc`` (any runtime scheme is taken off)."""
    return status_id.partition("://")[2] or status_id


def statuses(pod: Mapping[str, Any]) -> dict[str, tuple[str, int, bool]]:
    """Container name -> (container id, restart count, ready) from a pod object. Init
    containers count too: a sidecar (a restartable init container) has a readiness of
    its own, and a plain init container has ended before it would be ready."""
    status = pod.get("status")
    out: dict[str, tuple[str, int, bool]] = {}
    if not isinstance(status, Mapping):
        return out
    for key in ("initContainerStatuses", "containerStatuses"):
        statuses = status.get(key)
        if not isinstance(statuses, list):
            continue
        for cs in statuses:
            if not isinstance(cs, Mapping):
                continue
            name = cs.get("name")
            if not isinstance(name, str) or not name:
                continue
            cid = cs.get("containerID")
            restarts = cs.get("restartCount")
            out[name] = (
                container_id(cid) if isinstance(cid, str) else "",
                restarts if isinstance(restarts, int) else 0,
                cs.get("ready") is True,
            )
    return out


def metadata(obj: Any) -> Mapping[str, Any]:
    meta = obj.get("metadata") if isinstance(obj, Mapping) else None
    return meta if isinstance(meta, Mapping) else {}


def stream_lines(response: Any) -> Iterator[bytes]:
    """The non-empty lines of a watch response, as they arrive (one JSON event each)."""
    pending = bytearray()
    # amt=None: a chunked response yields each chunk as it comes, not a full buffer
    for chunk in response.stream(None):
        pending += chunk
        while (end := pending.find(b"\n")) >= 0:
            line = bytes(pending[:end]).strip()
            del pending[: end + 1]
            if line:
                yield line
    if pending.strip():
        raise WatchError("the watch stream ended in the middle of an event")


def cut(response: Any) -> None:
    """Unblocks a thread reading ``response`` (urllib3 >= 2.3 ``shutdown``)."""
    try:
        shutdown = getattr(response, "shutdown", None)
        if shutdown is not None:
            shutdown()
        else:
            response.close()
    except Exception:  # the stream may be ending by itself at the same time
        _log.debug("cutting the pod watch failed", exc_info=True)


def is_transport_error(exc: Exception) -> bool:
    """urllib3's errors (connection refused, broken stream, read timeout)."""
    return type(exc).__module__.startswith("urllib3")


def load_configuration(
    kubeconfig: str, environ: Mapping[str, str], service_account_dir: str
) -> Any:
    """The client configuration: from ``kubeconfig`` (its current context) when set,
    else in-cluster (the pod's service account token and CA, the API server from
    ``KUBERNETES_SERVICE_HOST``/``_PORT``). The token is re-read as the library does
    (bound service account tokens rotate). The kubeconfig file is never written back."""
    configuration = k8s_client.Configuration()
    try:
        if kubeconfig:
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig,
                client_configuration=configuration,
                persist_config=False,
            )
        else:
            token, ca = SERVICE_TOKEN_FILENAME, SERVICE_CERT_FILENAME
            if service_account_dir:
                token = str(Path(service_account_dir) / "token")
                ca = str(Path(service_account_dir) / "ca.crt")
            loader = InClusterConfigLoader(  # type: ignore[no-untyped-call]
                token_filename=token, cert_filename=ca, environ=environ
            )
            loader.load_and_set(configuration)  # type: ignore[no-untyped-call]
    except Exception as exc:  # the library raises ConfigException, OSError, YAML errors
        where = f"readiness.kubeconfig {kubeconfig}" if kubeconfig else "in-cluster config"
        raise ConfigError(
            [f"readiness.kubernetes: cannot load the Kubernetes client's {where}: {exc}"]
        ) from exc
    return configuration


@dataclass(slots=True)
class ContainerStatus:
    """The last status seen of one container of a pod."""

    container_id: str  # containerd's id, without the "containerd://" scheme
    restart_count: int
    ready: bool
    ready_since_ns: int | None  # when it was seen turning ready (this container id)


@dataclass(slots=True)
class PodStatus:
    namespace: str
    name: str
    containers: dict[str, ContainerStatus]


def log_failure(tlog: ThrottledLogger, exc: Exception, delay: float) -> None:
    """Says why listing or watching pods failed: RBAC refusals as what to fix, API and
    network errors in a line, anything else (a bug) with its traceback."""
    if isinstance(exc, ApiException):
        status = exc.status
        if status in (401, 403):
            tlog.log(
                logging.ERROR,
                "refused",
                "the Kubernetes API refused to list/watch pods (%s %s): the bridge's "
                "service account needs get, list and watch on pods (deploy/rbac.yaml); "
                "retrying in %.1fs, other readiness sources apply meanwhile",
                status,
                exc.reason,
                delay,
            )
            return
        tlog.warning(
            "api",
            "the Kubernetes API answered %s %s; retrying in %.1fs",
            status,
            exc.reason,
            delay,
        )
        return
    if isinstance(exc, (OSError, WatchError, ValueError)) or is_transport_error(exc):
        tlog.warning("connection", "watching pods failed: %s; retrying in %.1fs", exc, delay)
        return
    # not a failure of the API or the network: a bug, with its traceback
    tlog.log(logging.ERROR, "bug", "watching pods failed; retrying in %.1fs", delay, exc_info=True)
