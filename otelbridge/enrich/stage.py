"""Enrich: a completed record + its container record -> attributes and trace context.

Trace context is looked up per PRODUCT.md section 5: container labels, then OCI
annotations (each under the configured keys, ``tracing.k8s.io/traceparent`` then
``traceparent`` by default), then the process environment (``TRACEPARENT``). An invalid
value never breaks anything: the startup becomes its own root, carries
``otelbridge.traceparent.invalid=<reason>``, and ``otelbridge.traceparent.invalid`` is
counted.

Tenant-controlled values are limited where they enter, in :meth:`Enricher.admit` (every
container record passes through it before a startup holds it): the trace context is
resolved there and kept parsed; of the labels only those ``label_attributes`` selects, at
most ``max_label_attributes``, keys of printable ASCII only, values cut to
``max_attribute_length``. Every drop and cut is counted (``otelbridge.attributes.dropped``)
and the startup's own number is its span attribute of the same name. Image references,
runtime and snapshotter names (from the record or from events) and the CRI names are cut
to ``max_attribute_length`` too when the attributes are built, and counted; the CRI names
are kept whole in the admitted record, where they identify the container.

Control characters (C0, DEL, C1: ``\n``, ``\r``, ESC, NUL ...) in tenant-controlled
strings are escaped visibly (:func:`otelbridge.core.text.escape_controls`: a newline
becomes the two characters ``\n``, ESC ``\x1b``) and each value escaped is counted
(``otelbridge.attributes.sanitized``): label values, the image reference (before it is
split, so an embedded newline cannot forge a tag), runtime and snapshotter names, and the
CRI pod name, namespace, UID and container name. The container record's values are
escaped once, at admission, so every later reader (spans, metrics, logs) sees them
escaped; values from events are escaped when the attributes are built. Escaping comes
before the length cut: the limit bounds what is emitted, and the cut never ends inside an
escape (:func:`otelbridge.core.text.truncate`).

A readiness target longer than 512 characters is not one: it is dropped at admission
(the container falls back to the next readiness source), counted in
``otelbridge.readiness.invalid_target`` and logged (throttled) with the container's name.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import sys
import threading
from collections.abc import Mapping

from otelbridge import sla
from otelbridge.core import semconv
from otelbridge.core.config import READINESS_LABEL, EnrichConfig, SlaConfig
from otelbridge.core.counters import Counters
from otelbridge.core.ids import pod_parent
from otelbridge.core.limits import MAX_READINESS_TARGET, label_key_ok
from otelbridge.core.logutil import ThrottledLogger
from otelbridge.core.model import (
    EMPTY_MAP,
    AttrValue,
    ContainerInfo,
    CriInfo,
    Enrichment,
    Outcome,
    PodContext,
    StartupRecord,
)
from otelbridge.core.text import escape_controls, truncate
from otelbridge.core.tracecontext import NOT_FOUND, Resolution, TraceContext, resolve

_log = ThrottledLogger(logging.getLogger(__name__))
_SHARED_LIMIT = 1024  # distinct trace contexts remembered (rollouts in flight)


def split_image_reference(ref: str) -> tuple[str, list[str]]:
    """``registry/repo:tag@digest`` -> (``registry/repo``, [``tag``]).

    A digest is dropped (it belongs to ``container.image.repo_digests``); a ``:`` before
    the last ``/`` is a registry port, not a tag.
    """
    name = ref.partition("@")[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], [name[colon + 1 :]]
    return name, []


class Enricher:
    """The enrich stage. :meth:`enrich` is called on the pipeline's event thread with
    records whose container record went through :meth:`admit`; it never raises."""

    def __init__(
        self,
        config: EnrichConfig,
        counters: Counters,
        *,
        readiness_label: str = READINESS_LABEL,
        sla_limits: Mapping[str, float] | None = None,
    ) -> None:
        self._cfg = config
        self._sla_limits = sla_limits if sla_limits is not None else sla.budgets(SlaConfig())
        self._readiness_label = readiness_label
        self._counters = counters
        self._keys = tuple(
            (key, key.replace("traceparent", "tracestate")) for key in config.traceparent_keys
        )
        self._env_keys = config.env_keys
        self._max_len = config.max_attribute_length
        self._shared: dict[tuple[tuple[str | None, ...], ...], Resolution] = {}
        # every key a carrier is looked up under: the values found identify a resolution
        self._all_keys = tuple(k for pair in (*self._keys, *self._env_keys) for k in pair)
        self._no_values: tuple[None, ...] = (None,) * len(self._all_keys)
        self._shared_lock = threading.Lock()

    def admit(self, info: ContainerInfo, pod: PodContext | None = None) -> ContainerInfo:
        """``info`` reduced to what the bridge uses, within the tenant limits.

        Labels, annotations and the environment are tenant-controlled and unbounded, and
        an in-flight startup holds its container record until it completes: what it holds
        must be bounded by the configuration. So the trace context is resolved here, once,
        and kept parsed (``info.trace``) instead of the raw values; of the labels only
        those ``label_attributes`` selects are kept, limited in number, key and length.
        Every drop or cut is counted and this container's number kept in
        ``info.dropped``. Control characters in label values, the image, runtime and
        snapshotter names and the CRI names are escaped (each value counted in
        ``otelbridge.attributes.sanitized``); the CRI names are not cut, they identify the
        container to the ``kubernetes`` readiness source. The readiness target is kept
        (``info.readiness``) unless it is longer than 512 characters: then it is dropped,
        counted in ``otelbridge.readiness.invalid_target`` and logged (throttled).
        Thread-safe (runs on the lookup threads); admitting an admitted record changes
        nothing and counts nothing again.

        Kubernetes: a sandbox's record yields its pod (``info.pod``), whose trace context
        is looked up in the pod's annotations first; an app container takes ``pod``, its
        sandbox's, and with it the pod's trace context.
        """
        pod = pod or info.pod
        cri = self._escape_cri(info.cri)
        admitted = info.trace is not None
        trace = info.trace
        if trace is None:
            if self._cfg.policy_for(info.namespace) == "ignore":
                trace = NOT_FOUND
            elif cri is not None and cri.kind == "container" and pod is not None:
                trace = pod.trace
            else:
                trace = self._resolve_shared(info)
        if cri is not None and cri.kind == "sandbox" and pod is None:
            pod = PodContext(
                namespace=sys.intern(info.namespace),
                sandbox_id=info.id,
                name=cri.pod_name,
                k8s_namespace=sys.intern(cri.pod_namespace),
                uid=cri.pod_uid,
                identity_ns=info.created_at_ns,
                trace=trace,
            )
        readiness = info.readiness
        if not readiness and not admitted:
            # an admitted record's carriers are gone (the labels kept may hold the label
            # cut to max_attribute_length): its target, or its lack of one, stands
            readiness = next(
                (
                    carrier[self._readiness_label]
                    for carrier in (
                        info.labels,
                        info.annotations,
                        cri.annotations if cri is not None else EMPTY_MAP,
                    )
                    if self._readiness_label in carrier
                ),
                "",
            )
        if len(readiness) > MAX_READINESS_TARGET:
            # a cut target would be probed as another one: none, so the next source decides
            self._counters.inc(semconv.READINESS_INVALID_TARGET)
            _log.warning(
                "readiness_target",
                "%s: readiness target of %d characters ignored (longer than %d); the next "
                "readiness source applies",
                info.key,
                len(readiness),
                MAX_READINESS_TARGET,
            )
            readiness = ""
        if cri is not None and (cri.annotations or cri.pod_annotations):
            cri = dataclasses.replace(cri, annotations=EMPTY_MAP, pod_annotations=EMPTY_MAP)
        globs = self._cfg.label_attributes
        labels: dict[str, str] = {}
        dropped = 0
        if globs:
            for key in sorted(info.labels):
                if not any(fnmatch.fnmatchcase(key, g) for g in globs):
                    continue
                if not label_key_ok(key) or len(labels) >= self._cfg.max_label_attributes:
                    dropped += 1
                    continue
                value = self._escape(info.labels[key])
                if len(value) > self._max_len:
                    dropped += 1
                    value = truncate(value, self._max_len)
                labels[key] = value
        if dropped:
            self._counters.inc(semconv.ATTRIBUTES_DROPPED, dropped)
        intern = sys.intern  # values that repeat across containers: one shared string each
        # every field given (a test checks it): the constructor costs a third of replace()
        return ContainerInfo(
            namespace=intern(info.namespace),
            id=info.id,
            image=intern(self._escape(info.image)),
            runtime=intern(self._escape(info.runtime)),
            snapshotter=intern(self._escape(info.snapshotter)),
            snapshot_key="",  # not used downstream
            created_at_ns=info.created_at_ns,
            labels=labels or EMPTY_MAP,
            annotations=EMPTY_MAP,
            env=EMPTY_MAP,
            trace=trace,
            readiness=readiness,
            cri=cri,
            pod=pod,
            dropped=info.dropped + dropped,
        )

    def _escape(self, value: str) -> str:
        """``value`` with its control characters escaped, counted when there were any."""
        value, escaped = escape_controls(value)
        if escaped:
            self._counters.inc(semconv.ATTRIBUTES_SANITIZED)
        return value

    def _escape_cri(self, cri: CriInfo | None) -> CriInfo | None:
        """``cri`` with its names escaped (:meth:`_escape`); the same object when clean."""
        if cri is None:
            return None
        escaped = (
            self._escape(cri.pod_name),
            self._escape(cri.pod_namespace),
            self._escape(cri.pod_uid),
            self._escape(cri.container_name),
        )
        if escaped == (cri.pod_name, cri.pod_namespace, cri.pod_uid, cri.container_name):
            return cri
        pod_name, pod_namespace, pod_uid, container_name = escaped
        return dataclasses.replace(
            cri,
            pod_name=pod_name,
            pod_namespace=pod_namespace,
            pod_uid=pod_uid,
            container_name=container_name,
        )

    def _bound(self, value: str) -> str:
        """A tenant-controlled attribute value: control characters escaped, then cut to
        ``max_attribute_length`` (an escape is never split), each counted. Nearly free for
        an admitted record's values, which are already escaped."""
        value = self._escape(value)
        if len(value) <= self._max_len:
            return value
        self._counters.inc(semconv.ATTRIBUTES_DROPPED)
        return truncate(value, self._max_len)

    def trace_context(self, info: ContainerInfo | None) -> Resolution:
        """The provisioning context a container carries (first match wins): resolved at
        admission, or now for a record that was not admitted."""
        if info is None:
            return NOT_FOUND
        if info.trace is not None:
            return info.trace
        return self._resolve(info)

    def _resolve_shared(self, info: ContainerInfo) -> Resolution:
        """:meth:`_resolve`, sharing one parsed result among the containers of a rollout
        (they carry the same values). Bounded; safe from the lookup threads."""
        pod_annotations = info.cri.pod_annotations if info.cri is not None else EMPTY_MAP
        keys = self._all_keys
        none = self._no_values  # an empty carrier's part: most have none of the keys
        key = (
            tuple(map(pod_annotations.get, keys)) if pod_annotations else none,
            tuple(map(info.labels.get, keys)) if info.labels else none,
            tuple(map(info.annotations.get, keys)) if info.annotations else none,
            tuple(map(info.env.get, keys)) if info.env else none,
        )
        with self._shared_lock:
            found = self._shared.get(key)
        if found is None:
            found = self._resolve(info)
            with self._shared_lock:
                if len(self._shared) >= _SHARED_LIMIT:
                    self._shared.clear()
                self._shared[key] = found
        return found

    def _resolve(self, info: ContainerInfo) -> Resolution:
        # PRODUCT.md section 5: the pod's annotations first, then the container's labels
        # and OCI annotations, then its environment
        carriers: list[tuple[str, Mapping[str, str]]] = []
        if info.cri is not None and info.cri.pod_annotations:
            carriers.append(("pod_annotation", info.cri.pod_annotations))
        carriers += [("label", info.labels), ("annotation", info.annotations)]
        found = resolve(carriers, self._keys)
        if not found.found and self._env_keys:
            found = resolve((("env", info.env),), self._env_keys)
        return found

    def _label_attributes(self, info: ContainerInfo) -> list[tuple[str, AttrValue]]:
        # info passed through admit(): what is left is within the limits
        globs = self._cfg.label_attributes
        out: list[tuple[str, AttrValue]] = [
            (f"container.label.{key}", value)
            for key, value in info.labels.items()
            if any(fnmatch.fnmatchcase(key, g) for g in globs)
        ]
        if info.dropped:
            out.append((semconv.OB_ATTRIBUTES_DROPPED, info.dropped))
        return out

    def enrich(self, rec: StartupRecord, measured: Mapping[str, float] | None = None) -> Enrichment:
        """Attributes and trace context of a completed startup; ``measured`` are its
        durations (:func:`otelbridge.sla.durations`, computed when not given)."""
        key = rec.key
        info = rec.info
        cri = info.cri if info is not None else None
        pod = info.pod if info is not None else None
        container_name = self._bound(cri.container_name) if cri is not None else ""
        image = (info.image if info is not None and info.image else rec.image) or ""
        attrs: list[tuple[str, AttrValue]] = [
            (semconv.CONTAINER_ID, key.id),
            (semconv.CONTAINER_NAME, container_name or key.id),
            (semconv.CONTAINER_RUNTIME_NAME, semconv.CONTAINER_RUNTIME_VALUE),
            (semconv.CONTAINERD_NAMESPACE, key.namespace),
            (semconv.OB_STARTUP_OUTCOME, rec.outcome.value if rec.outcome else "unknown"),
            (semconv.OB_STARTUP_ATTEMPT, rec.attempt),
            (semconv.OB_PARTIAL, rec.partial),
            (semconv.OB_READINESS_SOURCE, rec.readiness_source),
        ]
        if image:
            # escaped before it is split: a newline in it cannot make a second tag
            image_name, tags = split_image_reference(self._bound(image))
            attrs.append((semconv.CONTAINER_IMAGE_NAME, image_name))
            if tags:
                attrs.append((semconv.CONTAINER_IMAGE_TAGS, tags))
        runtime = (info.runtime if info is not None and info.runtime else rec.runtime) or ""
        if runtime:
            attrs.append((semconv.CONTAINERD_RUNTIME_NAME, self._bound(runtime)))
        snapshotter = (info.snapshotter if info is not None else "") or rec.snapshotter
        if snapshotter:
            attrs.append((semconv.CONTAINERD_SNAPSHOTTER, self._bound(snapshotter)))
        if rec.pid:
            attrs.append((semconv.PROCESS_PID, rec.pid))
        if rec.outcome is Outcome.EXITED and rec.exit_status is not None:
            attrs.append((semconv.PROCESS_EXIT_CODE, rec.exit_status))
        if info is not None and (self._cfg.label_attributes or info.dropped):
            attrs.extend(self._label_attributes(info))
        broken = sla.breached(
            sla.durations(rec) if measured is None else measured, self._sla_limits
        )
        if broken:
            attrs.append((semconv.OB_SLA_BREACHED, broken))

        enrichment = Enrichment(
            attributes=attrs,
            phase_attributes=[
                (semconv.CONTAINER_ID, key.id),
                (semconv.CONTAINERD_NAMESPACE, key.namespace),
            ],
        )
        policy = self._cfg.policy_for(key.namespace)
        if pod is not None and cri is not None:
            # a Kubernetes container: its parent is its pod's pod.startup, which carries
            # the link to the provisioning trace (pod_attributes)
            attrs += self._k8s_attributes(pod)
            attrs.append((semconv.OB_CONTAINER_KIND, cri.kind))
            if cri.kind == "container":
                attrs.append((semconv.K8S_CONTAINER_NAME, container_name))
                attrs.append((semconv.K8S_CONTAINER_RESTART_COUNT, cri.attempt))
            enrichment.parent = pod_parent(pod, policy)
            enrichment.parent_is_remote = False
            return enrichment
        if cri is not None:
            # its sandbox's record could not be read: what its own record says
            attrs += [
                (semconv.K8S_POD_NAME, self._bound(cri.pod_name)),
                (semconv.K8S_POD_UID, self._bound(cri.pod_uid)),
                (semconv.K8S_NAMESPACE_NAME, self._bound(cri.pod_namespace)),
                (semconv.OB_CONTAINER_KIND, cri.kind),
            ]
            if cri.kind == "container":
                attrs.append((semconv.K8S_CONTAINER_NAME, container_name))
                attrs.append((semconv.K8S_CONTAINER_RESTART_COUNT, cri.attempt))
        if policy == "ignore":
            return enrichment
        context = self._context_attributes(self.trace_context(info), policy, key, attrs)
        if context is not None and policy == "link":
            enrichment.link = context
        elif context is not None:
            enrichment.parent = context
        return enrichment

    def _k8s_attributes(self, pod: PodContext) -> list[tuple[str, AttrValue]]:
        return [
            (semconv.K8S_POD_NAME, self._bound(pod.name)),
            (semconv.K8S_POD_UID, self._bound(pod.uid)),
            (semconv.K8S_NAMESPACE_NAME, self._bound(pod.k8s_namespace)),
        ]

    def _context_attributes(
        self, found: Resolution, policy: str, subject: object, attrs: list[tuple[str, AttrValue]]
    ) -> TraceContext | None:
        """Adds to ``attrs`` where the provisioning context came from (and why it was
        rejected, counted); returns the context when it is valid."""
        if not found.found:
            return None
        attrs.append((semconv.OB_TRACE_CONTEXT_SOURCE, found.source))
        attrs.append((semconv.OB_LINK_POLICY, policy))
        if found.invalid_reason is not None:
            self._counters.inc(semconv.TRACEPARENT_INVALID)
            attrs.append((semconv.OB_TRACEPARENT_INVALID, found.invalid_reason))
            _log.warning(
                "traceparent",
                "%s: invalid traceparent in %s (%s); the startup becomes its own trace",
                subject,
                found.source,
                found.invalid_reason,
            )
            return None
        if found.tracestate_invalid_reason is not None:
            self._counters.inc(semconv.TRACESTATE_INVALID)
            attrs.append((semconv.OB_TRACESTATE_INVALID, found.tracestate_invalid_reason))
        return found.context

    def pod_attributes(
        self, pod: PodContext, *, outcome: str, containers: int, partial: bool
    ) -> list[tuple[str, AttrValue]]:
        """The attributes of a ``pod.startup`` span (the pod's trace context counted
        here, once per pod)."""
        attrs: list[tuple[str, AttrValue]] = [
            *self._k8s_attributes(pod),
            (semconv.CONTAINERD_NAMESPACE, pod.namespace),
            (semconv.OB_POD_CONTAINERS, containers),
            (semconv.OB_STARTUP_OUTCOME, outcome),
            (semconv.OB_PARTIAL, partial),
        ]
        policy = self._cfg.policy_for(pod.namespace)
        if policy != "ignore":
            self._context_attributes(
                pod.trace, policy, f"pod {pod.k8s_namespace}/{pod.name}", attrs
            )
        return attrs
