"""containerd records (protobuf) -> otelbridge model values.

The OCI runtime spec travels inside ``Container.spec`` as an ``Any`` whose value is the
spec's JSON; only its annotations and the trace-context variables of ``process.env`` are
kept (the environment may hold secrets).

Containers of the CRI plugin (Kubernetes, namespace ``k8s.io``) also carry, verified on
containerd 1.6 (docs/kubernetes.md):

* OCI annotations ``io.kubernetes.cri.container-type`` (``sandbox``/``container``),
  ``sandbox-id``, ``sandbox-name``, ``sandbox-namespace``, ``sandbox-uid`` and, for app
  containers, ``container-name`` (the record's own ``sandbox`` field stays empty);
* an extension whose value is Go ``encoding/json`` bytes (not protobuf):
  ``io.cri-containerd.sandbox.metadata`` with the pod's annotations at
  ``Metadata.Config.annotations``, and ``io.cri-containerd.container.metadata`` with the
  container's attempt at ``Metadata.Config.metadata.attempt`` (absent when 0) and its own
  CRI annotations at ``Metadata.Config.annotations``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from otelbridge.core.model import EMPTY_MAP, ContainerInfo, CriInfo, TaskInfo, TaskState
from otelbridge.core.tracecontext import ENV_TRACEPARENT, ENV_TRACESTATE

#: the process environment variables kept by default (the OpenTelemetry carrier's)
CARRIER_ENV = (ENV_TRACEPARENT, ENV_TRACESTATE)

_TASK_STATES = {
    0: TaskState.UNKNOWN,
    1: TaskState.CREATED,
    2: TaskState.RUNNING,
    3: TaskState.STOPPED,
    4: TaskState.PAUSED,
    5: TaskState.PAUSED,  # pausing
}


def timestamp_ns(ts: Any) -> int:
    """A protobuf Timestamp in ns; Go's zero time (year 1) and unset stamps give 0."""
    return max(0, int(ts.seconds) * 1_000_000_000 + int(ts.nanos))


def spec_fields(
    spec_json: bytes, env_keys: tuple[str, ...] = CARRIER_ENV
) -> tuple[Mapping[str, str], Mapping[str, str]]:
    """(annotations, carrier env) from an OCI spec's JSON; empty maps if it is unusable."""
    if not spec_json:
        return EMPTY_MAP, EMPTY_MAP
    try:
        spec = json.loads(spec_json)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return EMPTY_MAP, EMPTY_MAP
    if not isinstance(spec, dict):
        return EMPTY_MAP, EMPTY_MAP
    annotations = spec.get("annotations")
    if isinstance(annotations, dict):
        # OCI annotations are strings; anything else is malformed and left out
        annotations = {k: v for k, v in annotations.items() if isinstance(v, str)}
    else:
        annotations = EMPTY_MAP
    env: dict[str, str] = {}
    process = spec.get("process")
    entries = process.get("env") if isinstance(process, dict) else None
    if isinstance(entries, list):
        for entry in entries:
            if isinstance(entry, str):
                name, sep, value = entry.partition("=")
                # the first definition wins, as getenv(3) reads it
                if sep and name in env_keys and name not in env:
                    env[name] = value
    return annotations, env or EMPTY_MAP


CRI_TYPE = "io.kubernetes.cri.container-type"
CRI_SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
CRI_SANDBOX_NAME = "io.kubernetes.cri.sandbox-name"
CRI_SANDBOX_NAMESPACE = "io.kubernetes.cri.sandbox-namespace"
CRI_SANDBOX_UID = "io.kubernetes.cri.sandbox-uid"
CRI_CONTAINER_NAME = "io.kubernetes.cri.container-name"
EXT_SANDBOX = "io.cri-containerd.sandbox.metadata"
EXT_CONTAINER = "io.cri-containerd.container.metadata"


def _extension_config(c: Any, name: str) -> dict[str, Any]:
    """``Metadata.Config`` of a CRI extension; empty when absent or unreadable."""
    if name not in c.extensions:
        return {}
    try:
        doc = json.loads(c.extensions[name].value)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return {}
    meta = doc.get("Metadata") if isinstance(doc, dict) else None
    config = meta.get("Config") if isinstance(meta, dict) else None
    return config if isinstance(config, dict) else {}


def _str_map(value: Any) -> Mapping[str, str]:
    if not isinstance(value, dict):
        return EMPTY_MAP
    return {
        k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)
    } or EMPTY_MAP


def cri_info(c: Any, annotations: Mapping[str, str]) -> CriInfo | None:
    """The CRI facts of a container record, or ``None`` for a container CRI did not make."""
    kind = annotations.get(CRI_TYPE, "")
    if kind not in ("sandbox", "container"):
        return None
    if kind == "sandbox":
        config = _extension_config(c, EXT_SANDBOX)
        pod_annotations = _str_map(config.get("annotations"))
        own: Mapping[str, str] = EMPTY_MAP
    else:
        config = _extension_config(c, EXT_CONTAINER)
        pod_annotations = EMPTY_MAP
        own = _str_map(config.get("annotations"))
    meta = config.get("metadata")
    attempt = meta.get("attempt", 0) if isinstance(meta, dict) else 0
    return CriInfo(
        kind=kind,
        sandbox_id=annotations.get(CRI_SANDBOX_ID, c.id if kind == "sandbox" else ""),
        pod_name=annotations.get(CRI_SANDBOX_NAME, ""),
        pod_namespace=annotations.get(CRI_SANDBOX_NAMESPACE, ""),
        pod_uid=annotations.get(CRI_SANDBOX_UID, ""),
        container_name=annotations.get(CRI_CONTAINER_NAME, ""),
        attempt=max(0, attempt)
        if isinstance(attempt, int) and not isinstance(attempt, bool)
        else 0,
        annotations=own,
        pod_annotations=pod_annotations,
    )


def container_info(
    namespace: str, c: Any, env_keys: tuple[str, ...] = CARRIER_ENV
) -> ContainerInfo:
    """A ``Container`` message (api.proto) as a :class:`ContainerInfo`; of the process
    environment only the variables ``env_keys`` are kept."""
    annotations, env = (
        spec_fields(c.spec.value, env_keys) if c.HasField("spec") else (EMPTY_MAP, EMPTY_MAP)
    )
    return ContainerInfo(
        namespace=namespace,
        id=c.id,
        image=c.image,
        runtime=c.runtime.name,
        snapshotter=c.snapshotter,
        snapshot_key=c.snapshot_key,
        created_at_ns=timestamp_ns(c.created_at),
        labels=dict(c.labels) if c.labels else EMPTY_MAP,
        annotations=annotations,
        env=env,
        cri=cri_info(c, annotations),
    )


def task_info(namespace: str, p: Any) -> TaskInfo:
    """A ``Process`` message from ``Tasks/List``. containerd 1.6 fills ``id`` (the
    container id for init processes), not ``container_id``."""
    return TaskInfo(
        namespace=namespace,
        container_id=p.container_id or p.id,
        pid=p.pid,
        state=_TASK_STATES.get(p.status, TaskState.UNKNOWN),
        exit_status=p.exit_status,
        exited_at_ns=timestamp_ns(p.exited_at),
    )
