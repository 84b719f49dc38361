"""containerd records (protobuf) -> otelbridge model values.

The OCI runtime spec travels inside ``Container.spec`` as an ``Any`` whose value is the
spec's JSON; only its annotations and the trace-context variables of ``process.env`` are
kept (the environment may hold secrets).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from otelbridge.enrich.tracecontext import ENV_TRACEPARENT, ENV_TRACESTATE
from otelbridge.model import EMPTY_MAP, ContainerInfo, TaskInfo, TaskState

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
