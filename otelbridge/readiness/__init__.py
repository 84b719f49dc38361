"""Readiness sources: when is a started container really ready?

containerd has no "ready" event. By default a container is ready when its task started
(source ``started``). A :class:`ReadinessSource` can say better, per container, first
that applies (PRODUCT.md section 5):

* ``kubernetes`` (:mod:`otelbridge.readiness.kubernetes`): the moment the kubelet marks
  the container ready in the pod's status, from a watch of this node's pods;
* ``probe`` (:mod:`otelbridge.readiness.probe`): the container names a target in its
  ``otelbridge.io/readiness`` label or annotation (``tcp://HOST:PORT`` or
  ``http://HOST:PORT/PATH``) and the bridge probes it until it answers or the deadline.

The pipeline arms a source when a container's task starts (:meth:`ReadinessSource.watch`)
and the source reports back once with a :class:`~otelbridge.core.model.ReadySignal` (ready at
a time of the bridge's clock, or given up on). Reports go through the pipeline's queue,
so they are handled on the event thread in order with the events.

A source that connects to a container does so from the container's own network
namespace, never the node's (PRODUCT.md section 8):
:class:`~otelbridge.readiness.netns.ContainerNetns` makes the sockets there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from otelbridge.core.model import ContainerInfo, ContainerKey, ReadySignal

SOURCE_STARTED = "started"
SOURCE_PROBE = "probe"
SOURCE_KUBERNETES = "kubernetes"


@dataclass(frozen=True, slots=True)
class ReadinessRequest:
    """One container to watch: from its task's start until ready, or ``deadline_ns``."""

    key: ContainerKey
    attempt: int
    info: ContainerInfo
    started_ns: int  # the /tasks/start envelope time
    deadline_ns: int  # give up (report not ok) at this time of the bridge's clock
    pid: int = 0
    """The container's init process (from /tasks/create or /tasks/start); 0: unknown, so
    nothing can be probed from its network namespace."""


Report = Callable[[ReadySignal], None]


class ReadinessSource(Protocol):
    """A way to learn that a container is ready. ``watch`` and ``cancel`` are called on
    the pipeline's event thread and must not block; ``report`` may be called from any
    thread, exactly once per watched request (unless cancelled)."""

    name: str

    def applies(self, info: ContainerInfo) -> bool:
        """Whether this source can tell when this container is ready."""
        ...

    def watch(self, request: ReadinessRequest, report: Report) -> None: ...

    def cancel(self, key: ContainerKey) -> None:
        """The startup ended otherwise (exited, deleted): stop watching, report nothing."""
        ...

    def start(self) -> None: ...

    def shutdown(self) -> None:
        """Stops watching everything; idempotent."""
        ...
