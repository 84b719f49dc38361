"""Enrich: a completed record + its container record -> attributes and trace context.

Trace context is looked up per PRODUCT.md section 5: container labels, then OCI
annotations (each under the configured keys, ``tracing.k8s.io/traceparent`` then
``traceparent`` by default), then the process environment (``TRACEPARENT``). An invalid
value never breaks anything: the startup becomes its own root, carries
``otelbridge.traceparent.invalid=<reason>``, and ``otelbridge.traceparent.invalid`` is
counted.

Tenant-controlled values are limited where they enter, in :meth:`Enricher.admit` (every
container record passes through it before a startup holds it): only the labels and
annotations the bridge reads are kept; of the labels selected by ``label_attributes``, at
most ``max_label_attributes``, keys of printable ASCII only, values cut to
``max_attribute_length``. Every drop and cut is counted (``otelbridge.attributes.dropped``)
and the startup's own number is its span attribute of the same name. Image references
and runtime names from events are cut to ``max_attribute_length`` too, and counted.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging

from otelbridge.config import EnrichConfig
from otelbridge.emit import semconv
from otelbridge.emit.spans import AttrValue, Enrichment
from otelbridge.enrich.tracecontext import MAX_TRACESTATE_LENGTH, NOT_FOUND, Resolution, resolve
from otelbridge.logutil import ThrottledLogger
from otelbridge.model import EMPTY_MAP, ContainerInfo, Outcome, StartupRecord
from otelbridge.stats import Counters

_log = ThrottledLogger(logging.getLogger(__name__))
_ENV_KEYS = (("TRACEPARENT", "TRACESTATE"),)
_MAX_LABEL_KEY = 128
# longer than any valid traceparent/tracestate (the parser rejects it as too long), short
# enough that a hostile annotation cannot make a startup's state large
_MAX_CONTEXT_VALUE = MAX_TRACESTATE_LENGTH + 1


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
        self._env_keys = (
            ((config.env_traceparent, config.env_traceparent.replace("PARENT", "STATE")),)
            if config.env_traceparent
            else ()
        )
        self._max_len = config.max_attribute_length
        self._wanted_keys = frozenset(k for pair in self._keys for k in pair)

    def admit(self, info: ContainerInfo) -> ContainerInfo:
        """``info`` trimmed to what the bridge reads, within the tenant limits.

        Labels and annotations are tenant-controlled and unbounded, and an in-flight
        startup holds its container record until it completes: what it holds must be
        bounded by the configuration. Keeps the trace-context keys, and the labels
        ``label_attributes`` selects, limited in number, key and length; counts every
        drop or cut and records this container's number in ``info.dropped``. Thread-safe
        (runs on the lookup threads).
        """
        wanted = self._wanted_keys
        globs = self._cfg.label_attributes
        labels: dict[str, str] = {}
        selected = 0
        dropped = 0
        for key in sorted(info.labels):
            value = info.labels[key]
            if key in wanted:
                labels[key] = value[:_MAX_CONTEXT_VALUE]
                continue
            if not globs or not any(fnmatch.fnmatchcase(key, g) for g in globs):
                continue
            if not _label_key_ok(key) or selected >= self._cfg.max_label_attributes:
                dropped += 1
                continue
            selected += 1
            if len(value) > self._max_len:
                dropped += 1
                value = value[: self._max_len]
            labels[key] = value
        annotations = {
            k: v[:_MAX_CONTEXT_VALUE] for k, v in info.annotations.items() if k in wanted
        }
        if dropped:
            self._counters.inc(semconv.ATTRIBUTES_DROPPED, dropped)
        return dataclasses.replace(
            info,
            labels=labels or EMPTY_MAP,
            annotations=annotations or EMPTY_MAP,
            dropped=dropped,
        )

    def _cut(self, value: str) -> str:
        if len(value) <= self._max_len:
            return value
        self._counters.inc(semconv.ATTRIBUTES_DROPPED)
        return value[: self._max_len]

    def trace_context(self, info: ContainerInfo | None) -> Resolution:
        """Finds the provisioning context a container carries (first match wins)."""
        if info is None:
            return NOT_FOUND
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
