"""Kubernetes pods: container startups of one sandbox -> one ``pod.startup``.

The CRI plugin runs a pod as a sandbox ("pause") container, then the app containers.
Each of them is a ``container.startup`` (child of the pod's ``pod.startup``, whose span ID
derives from the sandbox, so children can name it before it is emitted). This module
decides when the pod's startup is over:

* ``pod.startup`` starts at the sandbox's first event and ends when the last app
  container of the pod became ready;
* containerd does not say how many app containers a pod has, so the pod is taken as
  started once an app container is done and no other one completed for
  ``correlate.pod_settle_s`` (the kubelet starts a pod's containers one after the other,
  tens of milliseconds apart); a pod whose sandbox ends first, or that has no app
  container within ``correlate.startup_timeout_s``, ends then;
* a container (the sandbox included) that exited, was deleted, timed out or was not
  ready makes the pod's outcome ``failed`` (ERROR); a failed sandbox ends the pod at
  once. Startups found by listing (``reconciled``) or cut short (``incomplete``) are not
  failures: they are what a bridge restart leaves;
* ``pod.startup`` always encloses its sandbox's startup; a pod reported once is not
  reported again (a later restarted container joins the pod's trace without a second
  ``pod.startup``).

Init containers that run long separate app containers by more than the settle time:
the pod is then reported ready early (the kubernetes readiness source, which knows the
pod's containers, does not have this limit).

:class:`PodDirectory` keeps the pods whose sandbox record was read, for the lookup
threads to give app containers their pod without reading the sandbox's record again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from otelbridge.core.clock import Clock
from otelbridge.core.model import ContainerKey, Outcome, PodContext, StartupRecord

_NS = 1_000_000_000
# outcomes that make a pod fail (reconciled/incomplete are what a restart leaves)
_FAILED: Final = frozenset({Outcome.EXITED, Outcome.DELETED, Outcome.TIMEOUT, Outcome.NOT_READY})
_REPORTED_LIMIT = 4096


class PodDirectory:
    """Pods by sandbox key, bounded (oldest forgotten first). Thread-safe."""

    def __init__(self, limit: int = 4096) -> None:
        self._pods: OrderedDict[ContainerKey, PodContext] = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()

    def get(self, key: ContainerKey) -> PodContext | None:
        with self._lock:
            return self._pods.get(key)

    def put(self, pod: PodContext) -> None:
        with self._lock:
            self._pods[pod.key] = pod
            self._pods.move_to_end(pod.key)
            while len(self._pods) > self._limit:
                self._pods.popitem(last=False)


@dataclass(slots=True)
class PodStartup:
    """One pod's startup as far as it is known."""

    pod: PodContext
    start_ns: int  # the sandbox's first event (its creation time if the sandbox was missed)
    partial: bool
    end_ns: int = 0  # the newest end of an app container's startup
    containers: int = 0  # app containers done
    failed: int = 0  # of them, failed (see _FAILED)
    deadline_ns: int = 0  # clock time at which it is over unless another container comes
    emitted: bool = False
    sandbox_failed: bool = False
    cut_short: bool = False  # the input ended (flush) before the pod's startup did

    @property
    def outcome(self) -> str:
        if self.sandbox_failed or self.failed:
            return "failed"
        if self.containers == 0:
            return Outcome.INCOMPLETE.value if self.cut_short else Outcome.TIMEOUT.value
        return Outcome.READY.value

    @property
    def error(self) -> str | None:
        """The status message of a pod that did not start, else None."""
        if self.sandbox_failed:
            return "the pod's sandbox did not start"
        if self.failed:
            return f"{self.failed} of {self.containers} containers did not become ready"
        if self.containers == 0 and not self.cut_short:
            return "no app container was ready within the startup timeout"
        return None


class PodTracker:
    """Follows pods from their containers' completed startups. Event thread only.

    :meth:`observe` takes every completed startup of a CRI container; :meth:`expire`
    returns the pods whose startup is over by the clock; :meth:`flush` all of them.
    Memory: one small entry per pod, forgotten ``idle_s`` after its startup was emitted.
    """

    def __init__(self, clock: Clock, *, settle_s: float, timeout_s: float, idle_s: float) -> None:
        self._clock = clock
        self._settle_ns = int(settle_s * _NS)
        self._timeout_ns = int(timeout_s * _NS)
        self._idle_ns = int(idle_s * _NS)
        self._pods: dict[ContainerKey, PodStartup] = {}
        # pods reported and forgotten: (sandbox, identity), so none is reported twice
        self._reported: OrderedDict[tuple[ContainerKey, int], None] = OrderedDict()

    @property
    def tracked(self) -> int:
        """Pods held (in progress, or reported and not yet forgotten)."""
        return len(self._pods)

    @property
    def starting(self) -> bool:
        """Some pod's startup is not reported yet (its deadline is still to come)."""
        return any(not state.emitted for state in self._pods.values())

    def observe(self, record: StartupRecord) -> None:
        info = record.info
        if info is None or info.pod is None or info.cri is None:
            return
        now = self._clock.now_ns()
        pod = info.pod
        if (pod.key, pod.identity_ns) in self._reported:
            return  # a later container (a restart) of a pod reported long ago
        state = self._pods.get(pod.key)
        start_ns = record.start_ns
        if record.partial and pod.identity_ns:
            start_ns = min(start_ns, pod.identity_ns)  # seen in part: from its creation
        if info.cri.kind == "sandbox":
            if state is None:
                state = self._pods[pod.key] = PodStartup(
                    pod, start_ns, record.partial, deadline_ns=now + self._timeout_ns
                )
            elif not state.emitted:
                state.start_ns, state.partial = start_ns, record.partial
            if state.emitted:
                return
            state.end_ns = max(state.end_ns, record.end_ns or start_ns)  # enclose the sandbox
            if record.outcome in _FAILED:
                state.sandbox_failed = True
                state.deadline_ns = now  # the sandbox failed: the pod is over
            return
        if state is None:
            # the sandbox's startup was not seen (bridge started late or restarted)
            state = self._pods[pod.key] = PodStartup(pod, pod.identity_ns, partial=True)
        if state.emitted:
            return  # a later container (a restart): the pod's startup was reported
        state.containers += 1
        state.end_ns = max(state.end_ns, record.end_ns or record.start_ns)
        if record.outcome in _FAILED:
            state.failed += 1
        state.deadline_ns = now + self._settle_ns

    def expire(self) -> list[PodStartup]:
        """Pods whose startup is over by now; each is returned once."""
        now = self._clock.now_ns()
        done = []
        for key, state in list(self._pods.items()):
            if state.emitted:
                if state.deadline_ns + self._idle_ns <= now:
                    del self._pods[key]
                    self._reported[(key, state.pod.identity_ns)] = None
                    if len(self._reported) > _REPORTED_LIMIT:
                        self._reported.popitem(last=False)
                continue
            if state.deadline_ns <= now:
                state.emitted = True
                if state.containers == 0 and not state.sandbox_failed:
                    # timed out: the pod lasted at least until the bridge gave up on it
                    state.end_ns = max(state.end_ns, state.start_ns + self._timeout_ns)
                done.append(state)
        return done

    def flush(self) -> list[PodStartup]:
        """Every pod not reported yet (the input ended)."""
        done = [s for s in self._pods.values() if not s.emitted]
        for state in done:
            state.emitted = True
            state.cut_short = True
        return done
