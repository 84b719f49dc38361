"""What the aggregator holds in memory: the pieces of each startup, the aggregates of a
rollout or a namespace, a rollout. Plain slotted objects, changed only by
:class:`otelbridge.processor.aggregate.Aggregator` under its lock.

A :class:`Startup` is keyed by (trace ID, its container.startup span ID). It exists as
soon as one of its spans arrived and is *rooted* once its container.startup did: only
rooted startups count. Its durations (:meth:`Startup.values`) are those of
:func:`otelbridge.sla.durations`, measured from the spans as docs/telemetry.md emits
them; each is added to the aggregates once, when all of its pieces are there (``added``).
"""

from __future__ import annotations

from typing import Any, Final

from otelbridge.core import semconv
from otelbridge.core.model import PHASES as STARTUP_PHASES
from otelbridge.processor.sketch import Durations
from otelbridge.processor.verdict import Counts

# kinds of facts (the store's ``kind`` column: never renumber)
STARTUP: Final = 0
PHASES: Final = tuple(name for name, _, _ in STARTUP_PHASES)  # kind = 1 + index
POD: Final = 5
ROLLOUT: Final = 6
KINDS: Final = {
    semconv.SPAN_CONTAINER_STARTUP: STARTUP,
    **{name: 1 + i for i, name in enumerate(PHASES)},
    semconv.SPAN_POD_STARTUP: POD,
    semconv.SPAN_ROLLOUT: ROLLOUT,
}
_SHIM: Final = 1  # indexes in PHASES
_TASK: Final = 2
_WAIT: Final = 3

CD_NS: Final = semconv.CONTAINERD_NAMESPACE
K8S_NS: Final = semconv.K8S_NAMESPACE_NAME
_NS: Final = 1e9

NsKey = tuple[str, str]
"""A namespace: (attribute, name), the attribute ``containerd.namespace`` or
``k8s.namespace.name``."""

Order = tuple[float, str, str, str]
Slowest = list[tuple[Order, "Startup"]]
"""The slowest startups, ascending by :meth:`Startup.order` (slowest first)."""


def ns_keys_of(ns: str | None, k8s: str | None) -> list[NsKey]:
    """The namespaces of a startup or pod: its containerd one and its Kubernetes one."""
    keys = [(CD_NS, ns)] if ns else []
    if k8s:
        keys.append((K8S_NS, k8s))
    return keys


class Startup:
    """The pieces of one startup: its container.startup (``rooted``) and its phases."""

    __slots__ = (
        "added",
        "cid",
        "end",
        "k8s",
        "ns",
        "outcome",
        "partial",
        "ph",
        "pod",
        "rooted",
        "sid",
        "start",
        "trace",
    )

    def __init__(self, trace: bytes, sid: bytes) -> None:
        self.trace = trace
        self.sid = sid
        self.rooted = False
        self.start = self.end = 0
        self.outcome: str | None = None
        self.partial = False
        self.cid: str | None = None
        self.ns: str | None = None
        self.k8s: str | None = None
        self.pod: str | None = None
        # per phase of PHASES: (span ID, start ns, end ns, completed) or None
        self.ph: list[tuple[bytes, int, int, bool] | None] = [None, None, None, None]
        self.added = 0  # bit i: sla.DURATIONS[i] measured and added to the aggregates

    def ns_keys(self) -> list[NsKey]:
        return ns_keys_of(self.ns, self.k8s)

    def values(self) -> tuple[float | None, float | None, float | None]:
        """startup_duration, shim_launch_time, task_create_to_ready in seconds (None: not
        measurable, yet or ever); clamped to >= 0 (a span may end before it starts)."""
        ready = self.rooted and self.outcome == "ready"
        sd = _seconds(self.start, self.end) if ready and not self.partial else None
        shim = self.ph[_SHIM]
        completed = self.rooted and shim is not None and shim[3]
        sl = _seconds(shim[1], shim[2]) if completed and shim is not None else None
        task, wait = self.ph[_TASK], self.ph[_WAIT]
        both = ready and task is not None and wait is not None
        tr = _seconds(task[1], wait[2]) if both and task is not None and wait is not None else None
        return sd, sl, tr

    def seconds(self) -> float:
        """Its container.startup span's duration (whatever the outcome)."""
        return _seconds(self.start, self.end)

    def order(self) -> Order:
        """``verdict.slowest_order`` of its :meth:`item`: longest first, then trace,
        namespace, container id."""
        return (-self.seconds(), self.trace.hex(), self.ns or "", self.cid or "")

    def item(self) -> dict[str, Any]:
        """Its entry in a document's ``slowest``."""
        phases = {
            name: round(_seconds(p[1], p[2]), 6)
            for name, p in zip(PHASES, self.ph, strict=True)
            if p is not None
        }
        return {
            "trace_id": self.trace.hex(),
            "container_id": self.cid,
            "namespace": self.ns,
            "k8s_namespace": self.k8s,
            "pod": self.pod,
            "outcome": self.outcome,
            "startup_duration_s": self.seconds(),
            "dominant_phase": max(phases, key=phases.__getitem__) if phases else None,
            "phases": phases,
        }


def _seconds(start_ns: int, end_ns: int) -> float:
    return max(end_ns - start_ns, 0) / _NS


class Agg:
    """Counts, durations and the slowest startups of a rollout or a namespace.
    ``version`` changes with anything a verdict reads (its cached gauges follow it)."""

    __slots__ = (
        "dirty",
        "durations",
        "failed",
        "partial",
        "pods",
        "slowest",
        "startups",
        "version",
    )

    def __init__(self) -> None:
        self.startups = self.failed = self.partial = self.pods = 0
        self.durations = Durations()
        self.slowest: Slowest = []
        self.dirty = False  # slowest lost entries (an eviction): rebuilt before it is read
        self.version = 0

    def counts(self) -> Counts:
        return Counts(self.startups, self.failed, self.partial, self.pods)


class Rollout:
    """One trace: its startups (pending ones too), pods, rollout spans and name."""

    __slots__ = (
        "agg",
        "last_ns",
        "name",
        "pods",
        "rollout_spans",
        "slow_ns",
        "startups",
        "summary",
        "trace",
    )

    def __init__(self, trace: bytes) -> None:
        self.trace = trace
        self.name: str | None = None  # the first rollout span's otelbridge.rollout.name
        self.rollout_spans: list[bytes] = []  # span IDs of its ``rollout`` spans
        self.last_ns = 0  # the clock when a span of it was last accepted
        self.agg = Agg()
        # startup span ID -> pieces; with the phases' span IDs, pods and rollout_spans:
        # the dedup state (a span counts once per trace and span ID)
        self.startups: dict[bytes, Startup] = {}
        self.pods: dict[bytes, list[NsKey]] = {}  # pod.startup span ID -> its namespaces
        # per namespace, the slowest of this rollout there: a namespace's slowest are
        # rebuilt from these when an eviction took some away
        self.slow_ns: dict[NsKey, Slowest] = {}
        self.summary: tuple[int, str, list[float | None]] | None = None  # gauges' cache

    def empty(self) -> bool:
        return not self.startups and not self.pods and not self.rollout_spans


class Overlay:
    """What the request being planned adds to one trace, not in memory yet: the
    aggregator decides a whole request against memory before it writes and applies it."""

    __slots__ = ("others", "phases", "roots", "startups")

    def __init__(self) -> None:
        self.startups: set[bytes] = set()  # startups it adds (rooted or pending)
        self.roots: set[bytes] = set()  # container.startup span IDs
        self.phases: dict[tuple[bytes, int], bytes] = {}  # (startup, phase) -> span ID
        self.others: set[bytes] = set()  # pod.startup and rollout span IDs


__all__ = ["KINDS", "PHASES", "Agg", "NsKey", "Overlay", "Rollout", "Startup", "ns_keys_of"]
