"""Where a rollout's trace context is carried: the environment, a command's arguments,
the carrier file between ``otelbridge rollout`` commands, a pod template's annotations.

Pure functions and small file I/O; no exporters, no processes (:mod:`otelbridge.rollout`
is the command line, :mod:`otelbridge.rollout_exec` runs commands).

The carrier file is a JSON object::

    {"format": "otelbridge-rollout-carrier", "version": 1,
     "traceparent": "00-<trace id>-<span id>-01", "tracestate": "",
     "name": "web-v2", "start_time_unix_nano": 1700000000000000000,
     "end_time_unix_nano": null, "attributes": {"team": "payments"}}

written atomically. One whose ``end_time_unix_nano`` is ``null`` is *open*:
:func:`write_carrier` does not replace it (nor any file that is not a carrier) unless
forced.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, TypeGuard

from otelbridge.core.errors import StateError
from otelbridge.core.tracecontext import (
    DEFAULT_KEYS,
    ENV_TRACEPARENT,
    ENV_TRACESTATE,
    Invalid,
    TraceContext,
    parse_traceparent,
    parse_tracestate,
)

__all__ = [
    "CARRIER_FORMAT",
    "CARRIER_VERSION",
    "LOCAL_CARRIER",
    "STATE_CARRIER",
    "Carrier",
    "child_environ",
    "default_carrier_path",
    "env_lines",
    "new_context",
    "parse_resource",
    "pod_template_patch",
    "read_carrier",
    "substitute",
    "to_yaml",
    "write_carrier",
]

CARRIER_FORMAT: Final = "otelbridge-rollout-carrier"
CARRIER_VERSION: Final = 1
#: the carrier's name in ``$OTELBRIDGE_STATE_DIR``, and in the working directory without it
STATE_CARRIER: Final = "rollout.json"
LOCAL_CARRIER: Final = "otelbridge-rollout.json"
#: a carrier is a few hundred bytes; anything this large is not one
_MAX_CARRIER_BYTES: Final = 1 << 20
_SAMPLED: Final = 0x01


# -- trace context -------------------------------------------------------------------------
def new_context(trace_state: str = "") -> TraceContext:
    """A new root context: random trace and span IDs (never all zero), sampled.
    ``trace_state`` must be normalised (:func:`~otelbridge.core.tracecontext.parse_tracestate`)."""
    while True:
        trace_id, span_id = secrets.token_bytes(16), secrets.token_bytes(8)
        if any(trace_id) and any(span_id):
            return TraceContext(trace_id, span_id, _SAMPLED, trace_state)


def env_lines(ctx: TraceContext) -> list[str]:
    """``TRACEPARENT=...`` (and ``TRACESTATE=...`` when set), quoted for ``eval`` where a
    value needs it (a traceparent never does): one ``NAME=value`` per line."""
    lines = [f"{ENV_TRACEPARENT}={shlex.quote(ctx.to_traceparent())}"]
    if ctx.trace_state:
        lines.append(f"{ENV_TRACESTATE}={shlex.quote(ctx.trace_state)}")
    return lines


def child_environ(environ: Mapping[str, str], ctx: TraceContext) -> dict[str, str]:
    """``environ`` with ``ctx`` as ``TRACEPARENT``/``TRACESTATE``; a ``TRACESTATE`` of
    another trace is removed when ``ctx`` has none."""
    env = dict(environ)
    env[ENV_TRACEPARENT] = ctx.to_traceparent()
    if ctx.trace_state:
        env[ENV_TRACESTATE] = ctx.trace_state
    else:
        env.pop(ENV_TRACESTATE, None)
    return env


_PLACEHOLDER = re.compile(r"\{\{(traceparent|tracestate|trace_id)\}\}")


def substitute(args: Sequence[str], ctx: TraceContext) -> list[str]:
    """``args`` with ``{{traceparent}}``, ``{{tracestate}}`` and ``{{trace_id}}``
    replaced, in one pass (a substituted value is not searched again). Any other
    ``{{...}}`` (a Go template, say) is left as it is."""
    values = {
        "traceparent": ctx.to_traceparent(),
        "tracestate": ctx.trace_state,
        "trace_id": ctx.trace_id_hex,
    }
    return [_PLACEHOLDER.sub(lambda m: values[m.group(1)], arg) for arg in args]


# -- the carrier ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Carrier:
    """One rollout's trace context and what its span needs, as kept between commands."""

    context: TraceContext
    """The rollout span's own context (its span ID is the parent of the startups)."""
    name: str
    """``otelbridge.rollout.name``."""
    start_ns: int
    """When the rollout began (Unix epoch, ns)."""
    attributes: Mapping[str, str] = field(default_factory=dict)
    """``--attr`` values, recorded on the span."""
    end_ns: int | None = None
    """When it ended (``exec``), or ``None`` while it is open."""

    @property
    def open(self) -> bool:
        return self.end_ns is None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": CARRIER_FORMAT,
            "version": CARRIER_VERSION,
            "traceparent": self.context.to_traceparent(),
            "tracestate": self.context.trace_state,
            "name": self.name,
            "start_time_unix_nano": self.start_ns,
            "end_time_unix_nano": self.end_ns,
            "attributes": dict(self.attributes),
        }

    @classmethod
    def from_json(cls, data: object) -> Carrier:
        """The carrier ``data`` (parsed JSON) describes; ``ValueError`` saying what is
        wrong when it is not one."""
        if not isinstance(data, dict) or data.get("format") != CARRIER_FORMAT:
            raise ValueError("not an otelbridge rollout carrier")
        if data.get("version") != CARRIER_VERSION:
            raise ValueError(f"carrier version {data.get('version')!r} is not supported")
        parsed = parse_traceparent(data.get("traceparent"))  # type: ignore[arg-type]
        if isinstance(parsed, Invalid):
            raise ValueError(f"invalid traceparent ({parsed.reason})")
        state, reason = parse_tracestate(data.get("tracestate", ""))
        if reason is not None:
            raise ValueError(f"invalid tracestate ({reason})")
        name = data.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError("no rollout name")
        start, end = data.get("start_time_unix_nano"), data.get("end_time_unix_nano")
        if not _is_time(start):
            raise ValueError("invalid start time")
        if end is not None and not _is_time(end):
            raise ValueError("invalid end time")
        attributes = data.get("attributes", {})
        if not isinstance(attributes, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in attributes.items()
        ):
            raise ValueError("attributes are not a map of strings")
        return cls(replace(parsed, trace_state=state), name, start, attributes, end)


def _is_time(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def default_carrier_path(environ: Mapping[str, str]) -> Path:
    """``$OTELBRIDGE_STATE_DIR/rollout.json`` when that variable is set and not empty,
    else ``./otelbridge-rollout.json``."""
    state_dir = environ.get("OTELBRIDGE_STATE_DIR", "")
    return Path(state_dir) / STATE_CARRIER if state_dir else Path(LOCAL_CARRIER)


def read_carrier(path: Path) -> Carrier:
    """The carrier in ``path``; :class:`StateError` (one line, naming the file) when it
    is missing, unreadable or not a carrier."""
    try:
        with path.open("rb") as f:
            raw = f.read(_MAX_CARRIER_BYTES + 1)
    except FileNotFoundError:
        raise StateError(
            f"no rollout carrier at {path}: start one with `otelbridge rollout start`, "
            "or name it with --carrier"
        ) from None
    except OSError as exc:
        raise StateError(f"cannot read the carrier {path}: {exc.strerror}") from exc
    try:
        if len(raw) > _MAX_CARRIER_BYTES:
            raise ValueError("too large to be one")
        return Carrier.from_json(json.loads(raw))
    except (ValueError, UnicodeDecodeError) as exc:
        why = "not JSON" if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise StateError(f"the carrier {path} is unusable: {why}") from exc


def write_carrier(path: Path, carrier: Carrier, *, force: bool = False) -> None:
    """Writes ``carrier`` to ``path`` atomically, creating its directory. Without
    ``force`` it replaces only an ended carrier: an open one, or a file that is not a
    carrier, raises :class:`StateError` (so does a write that fails)."""
    existing = None
    if not force and os.path.lexists(path):
        existing = _existing_carrier(path)
    data = json.dumps(carrier.to_json(), indent=2) + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(data, encoding="utf-8")
        if force or existing is not None:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if another start won the race: never overwrite
            except FileExistsError:
                _existing_carrier(path)
                os.replace(tmp, path)  # it ended meanwhile
    except OSError as exc:
        raise StateError(f"cannot write the carrier {path}: {exc.strerror}") from exc
    finally:
        with contextlib.suppress(OSError):  # gone (renamed), or never made
            tmp.unlink()


def _existing_carrier(path: Path) -> Carrier:
    """The ended carrier at ``path``, which may be replaced; StateError otherwise."""
    try:
        found = read_carrier(path)
    except StateError:
        raise StateError(
            f"{path} exists and is not a rollout carrier: not overwriting it (--force replaces it)"
        ) from None
    if found.open:
        raise StateError(
            f"rollout {found.name!r} (trace {found.context.trace_id_hex}) is still open in "
            f"{path}: end it with `otelbridge rollout end --carrier {path}`, or start over "
            "with --force"
        )
    return found


# -- annotate ------------------------------------------------------------------------------
#: kubectl's names of the workloads whose pods come from ``spec.template``
_WORKLOADS: Final = {
    **dict.fromkeys(("deployment", "deployments", "deploy"), ("apps/v1", "Deployment")),
    **dict.fromkeys(("statefulset", "statefulsets", "sts"), ("apps/v1", "StatefulSet")),
    **dict.fromkeys(("daemonset", "daemonsets", "ds"), ("apps/v1", "DaemonSet")),
    **dict.fromkeys(("replicaset", "replicasets", "rs"), ("apps/v1", "ReplicaSet")),
    **dict.fromkeys(("job", "jobs"), ("batch/v1", "Job")),
    **dict.fromkeys(("rollout", "rollouts", "ro"), ("argoproj.io/v1alpha1", "Rollout")),
}
_K8S_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


def parse_resource(value: str) -> tuple[str, str, str]:
    """``KIND/NAME`` (``deployment/web``) -> (apiVersion, kind, name); ``ValueError``."""
    kind, sep, name = value.partition("/")
    workload = _WORKLOADS.get(kind.lower())
    if not sep or workload is None:
        known = "deployment, statefulset, daemonset, replicaset, job, rollout"
        raise ValueError(f"{value!r} is not KIND/NAME with KIND one of {known}")
    if _K8S_NAME.fullmatch(name) is None:
        raise ValueError(f"{name!r} is not a Kubernetes object name")
    return (*workload, name)


def pod_template_patch(
    ctx: TraceContext, resource: tuple[str, str, str] | None = None
) -> dict[str, Any]:
    """The patch that puts ``ctx`` in a workload's pod template annotations: a strategic
    merge patch and a JSON merge patch alike (no lists). The tracestate annotation is
    ``null`` (removed) when ``ctx`` has none, so a previous rollout's cannot pair with
    this traceparent. With ``resource`` (apiVersion, kind, name), the object is named,
    as a kustomize patch file needs."""
    traceparent_key, tracestate_key = DEFAULT_KEYS[0]
    annotations = {
        traceparent_key: ctx.to_traceparent(),
        tracestate_key: ctx.trace_state or None,
    }
    patch: dict[str, Any] = {"spec": {"template": {"metadata": {"annotations": annotations}}}}
    if resource is None:
        return patch
    api_version, kind, name = resource
    return {"apiVersion": api_version, "kind": kind, "metadata": {"name": name}, **patch}


_PLAIN_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")
#: plain scalars a YAML 1.1 reader takes for something other than a string
_NOT_STRINGS = frozenset({"null", "true", "false", "yes", "no", "on", "off", "y", "n"})


def to_yaml(doc: Mapping[str, Any], indent: int = 0) -> str:
    """Nested mappings of strings (and ``None``) as block YAML, two spaces per level.
    Scalars are written as JSON strings, which YAML reads as double-quoted scalars."""
    pad = " " * indent
    lines = []
    for key, value in doc.items():
        plain = _PLAIN_KEY.fullmatch(key) and key.lower() not in _NOT_STRINGS
        name = key if plain else json.dumps(key)
        if isinstance(value, Mapping) and value:
            lines.append(f"{pad}{name}:\n{to_yaml(value, indent + 2)}")
        elif isinstance(value, Mapping):
            lines.append(f"{pad}{name}: {{}}")
        else:
            lines.append(f"{pad}{name}: {'null' if value is None else json.dumps(value)}")
    return "\n".join(lines)
