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
and the startup's own number is its span attribute of the same name. Image references
and runtime names from events are cut to ``max_attribute_length`` too, and counted.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import sys
import threading

from otelbridge.config import EnrichConfig
from otelbridge.emit import semconv
from otelbridge.emit.spans import AttrValue, Enrichment
from otelbridge.enrich.tracecontext import NOT_FOUND, Resolution, resolve
from otelbridge.logutil import ThrottledLogger
from otelbridge.model import EMPTY_MAP, ContainerInfo, Outcome, StartupRecord
from otelbridge.stats import Counters

_log = ThrottledLogger(logging.getLogger(__name__))
_MAX_LABEL_KEY = 128
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


def _label_key_ok(key: str) -> bool:
    return 0 < len(key) <= _MAX_LABEL_KEY and key.isascii() and key.isprintable()


class Enricher:
    """The enrich stage. :meth:`enrich` is called on the pipeline's event thread with
    records whose container record went through :meth:`admit`; it never raises."""

    def __init__(self, config: EnrichConfig, counters: Counters) -> None:
        self._cfg = config
        self._counters = counters
        self._keys = tuple(
            (key, key.replace("traceparent", "tracestate")) for key in config.traceparent_keys
        )
        self._env_keys = config.env_keys
        self._max_len = config.max_attribute_length
        self._shared: dict[tuple[str | None, ...], Resolution] = {}
        self._shared_lock = threading.Lock()

    def admit(self, info: ContainerInfo) -> ContainerInfo:
        """``info`` reduced to what the bridge uses, within the tenant limits.

        Labels, annotations and the environment are tenant-controlled and unbounded, and
        an in-flight startup holds its container record until it completes: what it holds
        must be bounded by the configuration. So the trace context is resolved here, once,
        and kept parsed (``info.trace``) instead of the raw values; of the labels only
        those ``label_attributes`` selects are kept, limited in number, key and length.
        Every drop or cut is counted and this container's number kept in
        ``info.dropped``. Thread-safe (runs on the lookup threads); admitting an admitted
        record changes nothing.
        """
        trace = info.trace
        if trace is None:
            trace = (
                NOT_FOUND
                if self._cfg.policy_for(info.namespace) == "ignore"
                else self._resolve_shared(info)
            )
        globs = self._cfg.label_attributes
        labels: dict[str, str] = {}
        dropped = 0
        if globs:
            for key in sorted(info.labels):
                if not any(fnmatch.fnmatchcase(key, g) for g in globs):
                    continue
                if not _label_key_ok(key) or len(labels) >= self._cfg.max_label_attributes:
                    dropped += 1
                    continue
                value = info.labels[key]
                if len(value) > self._max_len:
                    dropped += 1
                    value = value[: self._max_len]
                labels[key] = value
        if dropped:
            self._counters.inc(semconv.ATTRIBUTES_DROPPED, dropped)
        intern = sys.intern  # values that repeat across containers: one shared string each
        return dataclasses.replace(
            info,
            namespace=intern(info.namespace),
            image=intern(info.image),
            runtime=intern(info.runtime),
            snapshotter=intern(info.snapshotter),
            snapshot_key="",  # not used downstream
            labels=labels or EMPTY_MAP,
            annotations=EMPTY_MAP,
            env=EMPTY_MAP,
            trace=trace,
            dropped=info.dropped + dropped,
        )

    def _cut(self, value: str) -> str:
        if len(value) <= self._max_len:
            return value
        self._counters.inc(semconv.ATTRIBUTES_DROPPED)
        return value[: self._max_len]

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
        key = tuple(
            carrier.get(k)
            for carrier in (info.labels, info.annotations, info.env)
            for pair in (*self._keys, *self._env_keys)
            for k in pair
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
        found = resolve((("label", info.labels), ("annotation", info.annotations)), self._keys)
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

    def enrich(self, rec: StartupRecord) -> Enrichment:
        key = rec.key
        info = rec.info
        image = (info.image if info is not None and info.image else rec.image) or ""
        attrs: list[tuple[str, AttrValue]] = [
            (semconv.CONTAINER_ID, key.id),
            (semconv.CONTAINER_NAME, key.id),
            (semconv.CONTAINER_RUNTIME_NAME, semconv.CONTAINER_RUNTIME_VALUE),
            (semconv.CONTAINERD_NAMESPACE, key.namespace),
            (semconv.OB_STARTUP_OUTCOME, rec.outcome.value if rec.outcome else "unknown"),
            (semconv.OB_STARTUP_ATTEMPT, rec.attempt),
            (semconv.OB_PARTIAL, rec.partial),
            (semconv.OB_READINESS_SOURCE, rec.readiness_source),
        ]
        if image:
            name, tags = split_image_reference(self._cut(image))
            attrs.append((semconv.CONTAINER_IMAGE_NAME, name))
            if tags:
                attrs.append((semconv.CONTAINER_IMAGE_TAGS, tags))
        runtime = (info.runtime if info is not None and info.runtime else rec.runtime) or ""
        if runtime:
            attrs.append((semconv.CONTAINERD_RUNTIME_NAME, self._cut(runtime)))
        snapshotter = (info.snapshotter if info is not None else "") or rec.snapshotter
        if snapshotter:
            attrs.append((semconv.CONTAINERD_SNAPSHOTTER, self._cut(snapshotter)))
        if rec.pid:
            attrs.append((semconv.PROCESS_PID, rec.pid))
        if rec.outcome is Outcome.EXITED and rec.exit_status is not None:
            attrs.append((semconv.PROCESS_EXIT_CODE, rec.exit_status))
        if info is not None and (self._cfg.label_attributes or info.dropped):
            attrs.extend(self._label_attributes(info))

        enrichment = Enrichment(
            attributes=attrs,
            phase_attributes=[
                (semconv.CONTAINER_ID, key.id),
                (semconv.CONTAINERD_NAMESPACE, key.namespace),
            ],
        )
        policy = self._cfg.policy_for(key.namespace)
        if policy == "ignore":
            return enrichment
        found = self.trace_context(info)
        if not found.found:
            return enrichment
        attrs.append((semconv.OB_TRACE_CONTEXT_SOURCE, found.source))
        attrs.append((semconv.OB_LINK_POLICY, policy))
        if found.invalid_reason is not None:
            self._counters.inc(semconv.TRACEPARENT_INVALID)
            attrs.append((semconv.OB_TRACEPARENT_INVALID, found.invalid_reason))
            _log.warning(
                "traceparent",
                "%s: invalid traceparent in %s (%s); the startup becomes its own trace",
                key,
                found.source,
                found.invalid_reason,
            )
            return enrichment
        if found.tracestate_invalid_reason is not None:
            self._counters.inc(semconv.TRACESTATE_INVALID)
            attrs.append((semconv.OB_TRACESTATE_INVALID, found.tracestate_invalid_reason))
        if policy == "link":
            enrichment.link = found.context
        else:
            enrichment.parent = found.context
        return enrichment
