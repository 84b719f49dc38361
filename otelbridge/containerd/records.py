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

containerd stores whatever bytes a client gives it, so a record may hold a label that is
not UTF-8, which protobuf refuses to decode as a ``string``. :func:`parse_container`
reads such a record leniently instead of losing it: one tenant's odd label must not hide
the container, let alone the whole listing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from otelbridge.containerd._gen import otelbridge_api_pb2 as api
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


@dataclass(frozen=True)
class ParsedContainer:
    """What :func:`parse_container` made of one serialized ``Container``."""

    container: api.Container | None
    """The record, or ``None`` when it cannot be read at all."""

    id: str
    """The container id as far as it could be read ("" when not at all)."""

    problem: str = ""
    """Empty for a clean record; else what was wrong with it, for the log."""


# how many offending label keys a problem names (a record may have thousands)
_NAMED_LABELS = 3


def _text(raw: bytes) -> str:
    """Bytes as text; bytes that are not UTF-8 become ``\\xNN`` escapes (readable in a
    log and an attribute, and distinguishable from a valid character)."""
    return raw.decode("utf-8", "backslashreplace")


def _bad(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def parse_container(raw: bytes) -> ParsedContainer:
    """Parses one serialized ``Container`` message; never raises.

    A record protobuf decodes is returned as it is. One it refuses (invalid UTF-8 in a
    string field) is parsed again with :class:`LenientContainer` (every string as bytes)
    and rebuilt as a ``Container`` whose invalid bytes are ``\\xNN`` escapes, with
    ``problem`` naming the fields. A record even that cannot parse (truncated, not a
    Container) gives ``container=None``."""
    try:
        strict = api.Container.FromString(raw)
    except DecodeError as exc:
        strict_error = str(exc) or type(exc).__name__
    else:
        return ParsedContainer(strict, strict.id)
    try:
        lenient = api.LenientContainer.FromString(raw)
    except DecodeError as exc:
        return ParsedContainer(None, "", f"cannot be decoded: {exc or type(exc).__name__}")
    container, fields = _rebuild(lenient)
    if fields:
        problem = "invalid UTF-8 in " + ", ".join(fields) + ": read leniently, bytes escaped"
    else:  # nothing we read is wrong: a field we skip leniently (runtime options)
        problem = f"{strict_error}: read leniently, unread fields dropped"
    return ParsedContainer(container, container.id, problem)


def _rebuild(lenient: Any) -> tuple[api.Container, list[str]]:
    """A ``Container`` from a :class:`LenientContainer`, and the fields that held
    invalid UTF-8."""
    fields: list[str] = []
    c = api.Container()
    for name in ("id", "image", "snapshotter", "snapshot_key", "sandbox"):
        value = getattr(lenient, name)
        if _bad(value):
            fields.append(name)
        setattr(c, name, _text(value))
    bad_labels = []
    for entry in lenient.labels:
        if _bad(entry.key) or _bad(entry.value):
            bad_labels.append(_text(entry.key))
        c.labels[_text(entry.key)] = _text(entry.value)
    if bad_labels:
        named = ", ".join(repr(k) for k in bad_labels[:_NAMED_LABELS])
        more = len(bad_labels) - _NAMED_LABELS
        fields.append(f"label {named}" + (f" and {more} more" if more > 0 else ""))
    if lenient.HasField("runtime"):
        if _bad(lenient.runtime.name):
            fields.append("runtime")
        c.runtime.name = _text(lenient.runtime.name)
    if lenient.HasField("spec"):
        if _bad(lenient.spec.type_url):
            fields.append("spec")
        c.spec.type_url = _text(lenient.spec.type_url)
        c.spec.value = lenient.spec.value  # JSON, read by spec_fields with its own checks
    for stamp in ("created_at", "updated_at"):
        if lenient.HasField(stamp):
            getattr(c, stamp).CopyFrom(getattr(lenient, stamp))
    bad_extensions = False
    for ext in lenient.extensions:
        bad_extensions |= _bad(ext.key) or _bad(ext.value.type_url)
        target = c.extensions[_text(ext.key)]
        target.type_url = _text(ext.value.type_url)
        target.value = ext.value.value
    if bad_extensions:
        fields.append("extensions")
    return c, fields
