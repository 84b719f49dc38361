"""Enrich: a completed record + its container record -> attributes and trace context.

Trace context is looked up per PRODUCT.md section 5: container labels, then OCI
annotations (each under the configured keys, ``tracing.k8s.io/traceparent`` then
``traceparent`` by default), then the process environment (``TRACEPARENT``). An invalid
value never breaks anything: the startup becomes its own root, carries
``otelbridge.traceparent.invalid=<reason>``, and ``otelbridge.traceparent.invalid`` is
counted.

Tenant-controlled values (labels, image references) are limited: at most
``max_label_attributes`` label attributes, values cut to ``max_attribute_length``, label
keys that are not printable ASCII dropped; each cut or drop is counted.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Mapping

from otelbridge.config import EnrichConfig
from otelbridge.emit import semconv
from otelbridge.emit.spans import AttrValue, Enrichment
from otelbridge.enrich.tracecontext import NOT_FOUND, Resolution, resolve
from otelbridge.logutil import ThrottledLogger
from otelbridge.model import ContainerInfo, Outcome, StartupRecord
from otelbridge.stats import Counters

_log = ThrottledLogger(logging.getLogger(__name__))
_ENV_KEYS = (("TRACEPARENT", "TRACESTATE"),)
_MAX_LABEL_KEY = 128


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
    """The enrich stage. Called on the pipeline's event thread; never raises."""

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

    def _label_attributes(self, labels: Mapping[str, str]) -> list[tuple[str, AttrValue]]:
        out: list[tuple[str, AttrValue]] = []
        dropped = 0
        for key in sorted(labels):
            if not any(fnmatch.fnmatchcase(key, pat) for pat in self._cfg.label_attributes):
                continue
            if not _label_key_ok(key) or len(out) >= self._cfg.max_label_attributes:
                dropped += 1
                continue
            out.append((f"container.label.{key}", self._cut(labels[key])))
        if dropped:
            self._counters.inc(semconv.ATTRIBUTES_DROPPED, dropped)
            out.append((semconv.OB_ATTRIBUTES_DROPPED, dropped))
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
        if info is not None and self._cfg.label_attributes:
            attrs.extend(self._label_attributes(info.labels))

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
