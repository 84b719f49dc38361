"""Decode: ``RawEnvelope`` -> ``LifecycleEvent``.

:func:`decode` is pure and never raises: an envelope is either a lifecycle event or a
:class:`Skipped` saying why not (a topic that does not concern startups, an unknown
topic, or a payload that does not parse). :class:`Decoder` wraps it for the pipeline,
counting and logging every skip.

containerd's ``Any`` type URLs carry no ``/`` (``containerd.events.TaskExit``), so
``Any.Unpack`` cannot be used: decode dispatches on the topic, checks the type URL
matches it, and parses the bytes with the matching hand-written message.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from otelbridge.containerd import topics
from otelbridge.containerd._gen import otelbridge_events_pb2 as ev
from otelbridge.containerd.records import timestamp_ns
from otelbridge.core import semconv
from otelbridge.core.counters import Counters
from otelbridge.core.logutil import ThrottledLogger
from otelbridge.core.model import EMPTY_MAP, EventKind, LifecycleEvent, RawEnvelope

_log = ThrottledLogger(logging.getLogger(__name__))


class SkipReason(enum.Enum):
    IGNORED = "ignored"  # a known topic that says nothing about startups
    UNKNOWN = "unknown"  # a topic otelbridge does not know
    MALFORMED = "malformed"  # the envelope or its payload is broken


@dataclass(frozen=True, slots=True)
class Skipped:
    reason: SkipReason
    detail: str


def _snapshot_prepare(m: Any, t: int, ns: str) -> LifecycleEvent:
    return LifecycleEvent(
        EventKind.SNAPSHOT_PREPARE, t, ns, m.key, snapshotter=m.snapshotter, parent=m.parent
    )


def _snapshot_commit(m: Any, t: int, ns: str) -> LifecycleEvent:
    return LifecycleEvent(EventKind.SNAPSHOT_COMMIT, t, ns, m.key, snapshotter=m.snapshotter)


def _snapshot_remove(m: Any, t: int, ns: str) -> LifecycleEvent:
    return LifecycleEvent(EventKind.SNAPSHOT_REMOVE, t, ns, m.key, snapshotter=m.snapshotter)


def _container_create(m: Any, t: int, ns: str) -> LifecycleEvent:
    return LifecycleEvent(
        EventKind.CONTAINER_CREATE, t, ns, m.id, image=m.image, runtime=m.runtime.name
    )


def _container_update(m: Any, t: int, ns: str) -> LifecycleEvent:
    return LifecycleEvent(
        EventKind.CONTAINER_UPDATE,
        t,
        ns,
        m.id,
        image=m.image,
        labels=dict(m.labels) if m.labels else EMPTY_MAP,
    )


def _container_delete(m: Any, t: int, ns: str) -> LifecycleEvent:
    return LifecycleEvent(EventKind.CONTAINER_DELETE, t, ns, m.id)


def _task_create(m: Any, t: int, ns: str) -> LifecycleEvent:
    return LifecycleEvent(EventKind.TASK_CREATE, t, ns, m.container_id, pid=m.pid)


def _task_start(m: Any, t: int, ns: str) -> LifecycleEvent:
    return LifecycleEvent(EventKind.TASK_START, t, ns, m.container_id, pid=m.pid)


def _task_ended(kind: EventKind) -> Callable[[Any, int, str], LifecycleEvent]:
    """TaskExit and TaskDelete carry the same fields (container, process, exit)."""

    def build(m: Any, t: int, ns: str) -> LifecycleEvent:
        return LifecycleEvent(
            kind,
            t,
            ns,
            m.container_id,
            pid=m.pid,
            exec_id=m.id,
            exit_status=m.exit_status,
            exited_at_ns=timestamp_ns(m.exited_at),
        )

    return build


_task_exit = _task_ended(EventKind.TASK_EXIT)
_task_delete = _task_ended(EventKind.TASK_DELETE)


def _task_oom(m: Any, t: int, ns: str) -> LifecycleEvent:
    return LifecycleEvent(EventKind.TASK_OOM, t, ns, m.container_id)


_Build = Callable[[Any, int, str], LifecycleEvent]

#: topic -> (expected type URL, payload message class, builder)
DISPATCH: dict[str, tuple[str, Any, _Build]] = {
    topics.SNAPSHOT_PREPARE: (topics.TYPE_SNAPSHOT_PREPARE, ev.SnapshotPrepare, _snapshot_prepare),
    topics.SNAPSHOT_COMMIT: (topics.TYPE_SNAPSHOT_COMMIT, ev.SnapshotCommit, _snapshot_commit),
    topics.SNAPSHOT_REMOVE: (topics.TYPE_SNAPSHOT_REMOVE, ev.SnapshotRemove, _snapshot_remove),
    topics.CONTAINER_CREATE: (topics.TYPE_CONTAINER_CREATE, ev.ContainerCreate, _container_create),
    topics.CONTAINER_UPDATE: (topics.TYPE_CONTAINER_UPDATE, ev.ContainerUpdate, _container_update),
    topics.CONTAINER_DELETE: (topics.TYPE_CONTAINER_DELETE, ev.ContainerDelete, _container_delete),
    topics.TASK_CREATE: (topics.TYPE_TASK_CREATE, ev.TaskCreate, _task_create),
    topics.TASK_START: (topics.TYPE_TASK_START, ev.TaskStart, _task_start),
    topics.TASK_EXIT: (topics.TYPE_TASK_EXIT, ev.TaskExit, _task_exit),
    topics.TASK_DELETE: (topics.TYPE_TASK_DELETE, ev.TaskDelete, _task_delete),
    topics.TASK_OOM: (topics.TYPE_TASK_OOM, ev.TaskOOM, _task_oom),
}

#: The payload message class for each known type URL (used by replay to re-encode
#: ``ctr events`` JSON into the bytes containerd would have sent).
MESSAGE_FOR_TOPIC: dict[str, Any] = {topic: entry[1] for topic, entry in DISPATCH.items()}
TYPE_URL_FOR_TOPIC: dict[str, str] = {topic: entry[0] for topic, entry in DISPATCH.items()}


def _bare_type_url(type_url: str) -> str:
    # containerd 1.x sends bare names; tolerate a "host/path/" prefix as Any.Pack writes it.
    slash = type_url.rfind("/")
    return type_url if slash < 0 else type_url[slash + 1 :]


def decode(env: RawEnvelope) -> LifecycleEvent | Skipped:
    """Decodes one envelope. Pure; never raises."""
    entry = DISPATCH.get(env.topic)
    if entry is None:
        if env.topic in topics.IGNORED_TOPICS:
            return Skipped(SkipReason.IGNORED, env.topic)
        return Skipped(SkipReason.UNKNOWN, f"unknown topic {env.topic[:120]!r}")
    type_url, message, build = entry
    if env.timestamp_ns <= 0:
        return Skipped(SkipReason.MALFORMED, f"{env.topic}: envelope without a timestamp")
    if not env.namespace:
        return Skipped(SkipReason.MALFORMED, f"{env.topic}: envelope without a namespace")
    if env.type_url != type_url and _bare_type_url(env.type_url) != type_url:
        return Skipped(
            SkipReason.MALFORMED,
            f"{env.topic}: payload type {env.type_url[:120]!r}, expected {type_url!r}",
        )
    try:
        event = build(message.FromString(env.payload), env.timestamp_ns, env.namespace)
    except Exception as exc:  # protobuf raises DecodeError, upb may raise others: skip them all
        return Skipped(SkipReason.MALFORMED, f"{env.topic}: undecodable payload ({exc})")
    if not event.subject:
        return Skipped(SkipReason.MALFORMED, f"{env.topic}: payload without a container id/key")
    return event


class Decoder:
    """The decode stage: :func:`decode` plus counting and (throttled) logging of skips.

    Called on one thread only (the pipeline's event thread); never raises.
    """

    def __init__(self, counters: Counters) -> None:
        self._counters = counters
        self._decoded = counters.cell(semconv.EVENTS_DECODED)  # written by this thread only

    def __call__(self, env: RawEnvelope) -> LifecycleEvent | None:
        result = decode(env)
        if type(result) is LifecycleEvent:
            self._decoded.value += 1
            return result
        assert isinstance(result, Skipped)
        if result.reason is SkipReason.IGNORED:
            self._counters.inc(semconv.EVENTS_IGNORED)
        elif result.reason is SkipReason.UNKNOWN:
            self._counters.inc(semconv.EVENTS_UNKNOWN)
            _log.warning(
                "unknown", "skipping event: %s (namespace %r)", result.detail, env.namespace
            )
        else:
            self._counters.inc(semconv.EVENTS_MALFORMED)
            _log.warning("malformed", "skipping malformed event: %s", result.detail)
        return None
