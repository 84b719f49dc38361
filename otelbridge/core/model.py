"""The values that travel between stages.

``RawEnvelope`` (source) -> ``LifecycleEvent`` (decode) -> ``StartupRecord`` (correlate,
completed by enrich with ``ContainerInfo``) -> spans (emit).

All times are ``int`` nanoseconds since the Unix epoch taken from containerd (``*_ns``);
``None`` means "not observed".
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple

from otelbridge.core import semconv
from otelbridge.core.tracecontext import Resolution, TraceContext

EMPTY_MAP: Mapping[str, str] = MappingProxyType({})


def _empty_map() -> Mapping[str, str]:
    return EMPTY_MAP


class ContainerKey(NamedTuple):
    """A container is identified by its containerd namespace and id."""

    namespace: str
    id: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.id}"


class RawEnvelope(NamedTuple):
    """One event as containerd published it, payload still encoded.

    ``type_url`` and ``payload`` are the envelope's ``Any``; a recording stores exactly
    these fields, so replaying it is lossless. (A NamedTuple, like LifecycleEvent: one
    is built per event, and a frozen dataclass costs several times more to build.)
    """

    timestamp_ns: int
    namespace: str
    topic: str
    type_url: str
    payload: bytes


class EventKind(enum.Enum):
    """The lifecycle events otelbridge understands (one per containerd topic)."""

    SNAPSHOT_PREPARE = "snapshot_prepare"
    SNAPSHOT_COMMIT = "snapshot_commit"
    SNAPSHOT_REMOVE = "snapshot_remove"
    CONTAINER_CREATE = "container_create"
    CONTAINER_UPDATE = "container_update"
    CONTAINER_DELETE = "container_delete"
    TASK_CREATE = "task_create"
    TASK_START = "task_start"
    TASK_EXIT = "task_exit"
    TASK_DELETE = "task_delete"
    TASK_OOM = "task_oom"


class LifecycleEvent(NamedTuple):
    """A decoded event. ``subject`` is the container id (the snapshot key for
    snapshot events). Fields that the topic does not carry keep their defaults."""

    kind: EventKind
    timestamp_ns: int
    namespace: str
    subject: str
    pid: int = 0
    exec_id: str = ""
    exit_status: int = 0
    exited_at_ns: int = 0
    image: str = ""
    runtime: str = ""
    snapshotter: str = ""
    parent: str = ""
    labels: Mapping[str, str] = EMPTY_MAP

    @property
    def key(self) -> ContainerKey:
        return ContainerKey(self.namespace, self.subject)


@dataclass(frozen=True, slots=True)
class CriInfo:
    """What containerd's CRI plugin (Kubernetes) recorded about a container.

    From the OCI annotations ``io.kubernetes.cri.*`` and the ``io.cri-containerd.*``
    metadata extensions (Go JSON). ``pod_annotations`` are the pod's, read from the
    sandbox's record only; ``annotations`` are the container's own CRI annotations.
    """

    kind: str  # "sandbox" or "container"
    sandbox_id: str
    pod_name: str = ""
    pod_namespace: str = ""
    pod_uid: str = ""
    container_name: str = ""
    attempt: int = 0
    annotations: Mapping[str, str] = field(default_factory=_empty_map)
    pod_annotations: Mapping[str, str] = field(default_factory=_empty_map)


@dataclass(frozen=True, slots=True)
class PodContext:
    """A pod as its sandbox's record describes it, resolved when the record was admitted:
    who it is and which provisioning trace its annotations name."""

    namespace: str  # containerd namespace
    sandbox_id: str
    name: str
    k8s_namespace: str
    uid: str
    identity_ns: int  # the sandbox record's created_at: the pod's IDs derive from it
    trace: Resolution

    @property
    def key(self) -> ContainerKey:
        return ContainerKey(self.namespace, self.sandbox_id)


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    """What containerd's container record says about a container (``Containers/Get``).

    ``env`` holds only the trace-context carrier variables (``TRACEPARENT``,
    ``TRACESTATE``) of the process environment: the rest may hold secrets and is never
    kept.
    """

    namespace: str
    id: str
    image: str = ""
    runtime: str = ""
    snapshotter: str = ""
    snapshot_key: str = ""
    created_at_ns: int = 0
    labels: Mapping[str, str] = field(default_factory=_empty_map)
    annotations: Mapping[str, str] = field(default_factory=_empty_map)
    env: Mapping[str, str] = field(default_factory=_empty_map)
    dropped: int = 0
    """Labels dropped or cut by the tenant limits when the record was admitted."""
    trace: Resolution | None = None
    """The trace context the record carries, resolved when it was admitted (then the raw
    annotations and environment are no longer kept); ``None``: not admitted yet."""
    readiness: str = ""
    """The readiness target the container asks for (``otelbridge.io/readiness``:
    ``tcp://HOST:PORT`` or ``http://HOST:PORT/PATH``), kept when it was admitted."""
    cri: CriInfo | None = None
    """Set for containers the CRI plugin created (Kubernetes pods)."""
    pod: PodContext | None = None
    """The pod of a CRI container (its sandbox's, for the sandbox), once admitted."""

    @property
    def key(self) -> ContainerKey:
        return ContainerKey(self.namespace, self.id)


class TaskState(enum.Enum):
    UNKNOWN = "unknown"
    CREATED = "created"
    RUNNING = "running"
    STOPPED = "stopped"
    PAUSED = "paused"


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """A container's init task as ``Tasks/List`` reports it."""

    namespace: str
    container_id: str
    pid: int
    state: TaskState
    exit_status: int = 0
    exited_at_ns: int = 0


@dataclass(frozen=True, slots=True)
class ReconcileSnapshot:
    """What containerd holds right after a (re)subscription, for reconciliation.

    ``since_ns`` is the horizon: a container created after it that the correlator does
    not know was started while nobody listened. ``taken_at_ns`` is the clock time of the
    listing; ``namespaces`` are the namespaces it covers completely.
    """

    reason: str
    since_ns: int
    taken_at_ns: int
    namespaces: tuple[str, ...]
    containers: tuple[ContainerInfo, ...]
    tasks: Mapping[ContainerKey, TaskInfo]
    until_ns: int = 0
    """A periodic relist looks only at containers created up to here (0: no bound), so a
    container whose events are still on their way is not taken for a missed one."""


class Outcome(enum.Enum):
    """How a startup ended; the value is the ``otelbridge.startup.outcome`` attribute."""

    READY = "ready"
    EXITED = "exited"  # the task exited before it was ready
    DELETED = "deleted"  # the container was deleted before its task started
    TIMEOUT = "timeout"  # not ready within the startup timeout
    RECONCILED = "reconciled"  # found by listing; its events were missed
    INCOMPLETE = "incomplete"  # the input ended (replay) before the startup did
    NOT_READY = "not_ready"  # its readiness source gave up (a probe past its deadline)


#: The outcomes that count as a failed startup: the rollout gate's ``max_failed_ratio``
#: and the report's failed startups (a deleted container was stopped on purpose; a
#: reconciled or incomplete one is partial, not failed).
FAILED_OUTCOMES: frozenset[str] = frozenset(
    {Outcome.EXITED.value, Outcome.TIMEOUT.value, Outcome.NOT_READY.value}
)


class PhaseBound(NamedTuple):
    """One phase of a startup: its span name and time range; ``complete`` is false for
    the phase a failed startup stopped in."""

    name: str
    begin_ns: int
    end_ns: int
    complete: bool


#: The phase spans of a startup in order: (span name, index of the moment that begins it
#: and of the one that ends it in :meth:`StartupRecord.moments`).
PHASES: tuple[tuple[str, int, int], ...] = (
    (semconv.SPAN_CONTAINER_CREATE, 0, 1),
    (semconv.SPAN_SHIM_LAUNCH, 1, 2),
    (semconv.SPAN_TASK_START, 2, 3),
    (semconv.SPAN_READINESS_WAIT, 3, 4),
)


class ReadySignal(NamedTuple):
    """A readiness source's verdict on one startup: ready at ``at_ns`` (the bridge's
    clock: containerd has no "ready" event), or, with ``ok`` false, given up on."""

    key: ContainerKey
    attempt: int
    at_ns: int
    source: str
    ok: bool = True
    reason: str = ""


@dataclass(slots=True)
class StartupRecord:
    """One container startup, as the correlator assembled it.

    Mutable while in flight (the correlator's per-container state), frozen in practice
    once handed on. ``incarnation_ns`` tells apart containers that reuse an id: it is the
    ``/containers/create`` envelope time when seen, else the record's ``created_at``, else
    the first event time. Span IDs derive from ``(key, incarnation_ns, attempt)``.
    """

    key: ContainerKey
    incarnation_ns: int
    attempt: int = 1
    snapshot_prepare_ns: int | None = None
    container_create_ns: int | None = None
    task_create_ns: int | None = None
    task_start_ns: int | None = None
    ready_ns: int | None = None
    end_ns: int | None = None
    outcome: Outcome | None = None
    partial: bool = False
    pid: int = 0
    exit_status: int | None = None
    image: str = ""
    runtime: str = ""
    snapshotter: str = ""
    readiness_source: str = "started"
    failure: str = ""  # why the readiness source gave up (outcome not_ready)
    oom_ns: list[int] = field(default_factory=list)
    info: ContainerInfo | None = None

    def moments(self) -> tuple[int | None, ...]:
        """The five moments that bound the four :data:`PHASES`, in order."""
        return (
            self.snapshot_prepare_ns,
            self.container_create_ns,
            self.task_create_ns,
            self.task_start_ns,
            self.ready_ns,
        )

    def phase_bounds(self) -> tuple[list[PhaseBound], list[str]]:
        """The phases this startup has, in order, and the names of those it lacks.

        A phase whose first moment was not seen is missing. One whose last moment was not
        seen is missing too when the startup became ready (the event was missed), else it
        is the phase the startup failed in: it ends with the startup, incomplete, and no
        later phase began. An end before its begin (a replay out of order) is clamped."""
        times = self.moments()
        end_ns = self.end_ns if self.end_ns is not None else self.start_ns
        found: list[PhaseBound] = []
        missing: list[str] = []
        for name, i, j in PHASES:
            begin, finish = times[i], times[j]
            if begin is None:
                missing.append(name)
            elif finish is not None:
                found.append(PhaseBound(name, begin, max(finish, begin), True))
            elif self.outcome is Outcome.READY:
                missing.append(name)
            else:
                found.append(PhaseBound(name, begin, max(end_ns, begin), False))
                break  # later phases never began
        return found, missing

    @property
    def start_ns(self) -> int:
        """The first known moment of the startup."""
        for t in (
            self.snapshot_prepare_ns,
            self.container_create_ns,
            self.task_create_ns,
            self.task_start_ns,
        ):
            if t is not None:
                return t
        return self.incarnation_ns

    @property
    def done(self) -> bool:
        return self.outcome is not None


AttrValue = str | bool | int | float | Sequence[str]
"""A span attribute value."""


@dataclass(slots=True)
class Enrichment:
    """What the enrich stage adds to a record before its spans are built.

    ``parent``: the provisioning span the startup becomes a child of (link policy
    ``parent``); ``link``: the provisioning span the startup links to (policy ``link``).
    At most one of them is set. ``attributes`` go on ``container.startup``;
    ``phase_attributes`` on every phase span.
    """

    attributes: list[tuple[str, AttrValue]] = field(default_factory=list)
    phase_attributes: list[tuple[str, AttrValue]] = field(default_factory=list)
    parent: TraceContext | None = None
    link: TraceContext | None = None
    parent_is_remote: bool = True  # False when the parent is our own pod.startup


class SpanRef(NamedTuple):
    """A span another span links to: its trace and span IDs."""

    trace_id: bytes
    span_id: bytes


@dataclass(slots=True)
class ReclaimRecord:
    """One container snapshot reclaimed: from the container's deletion to
    ``/snapshot/remove`` (both envelope times, ns).

    ``start_ns`` is the ``/tasks/delete`` of the init process, else the
    ``/containers/delete``, else (neither seen) the ``/tasks/exit``. ``degraded``: it took
    longer than ``sla.gc_reclaim_max_s``. ``leaked``: the snapshot had been reported
    leaked before this late remove. ``startup``: the container's ``container.startup``
    span, when its IDs are known for certain (see :meth:`GcTracker.overlaps`).
    """

    key: ContainerKey
    snapshot_key: str
    snapshotter: str
    start_ns: int
    end_ns: int
    degraded: bool
    leaked: bool = False
    startup: SpanRef | None = None

    @property
    def duration_s(self) -> float:
        return max(0, self.end_ns - self.start_ns) / 1_000_000_000


SourceItem = RawEnvelope | ReconcileSnapshot | ReadySignal
"""What the event thread processes, in order: containerd's envelopes, listings of it, and
readiness verdicts."""


def startup_label(attributes: Mapping[str, object]) -> str:
    """How a startup is called for people, from its span attributes: ``pod/container``,
    ``pod (sandbox)`` for a pod's sandbox, else the container's name or id."""
    pod = attributes.get(semconv.K8S_POD_NAME)
    container = attributes.get(semconv.K8S_CONTAINER_NAME)
    if pod and container:
        return f"{pod}/{container}"
    if pod:
        return f"{pod} (sandbox)"
    name = attributes.get(semconv.CONTAINER_NAME) or attributes.get(semconv.CONTAINER_ID)
    return str(name or "?")
