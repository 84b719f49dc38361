"""Assembly: builds the stages of a bridge from configuration and the environment.

Kept apart from :mod:`otelbridge.cli` so the demo and the tests assemble a bridge exactly
as the commands do.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otelbridge import __version__
from otelbridge.containerd.client import ContainerdClient
from otelbridge.core import semconv
from otelbridge.core.clock import Clock, SystemClock
from otelbridge.core.config import Config
from otelbridge.core.counters import Counters
from otelbridge.core.model import StartupRecord
from otelbridge.durable import SpoolExporter, StateStore
from otelbridge.emit.metrics import BridgeMetrics
from otelbridge.export import SpanExporter
from otelbridge.export.batch import BatchConfig, BatchProcessor
from otelbridge.export.factory import build_exporters, build_resource
from otelbridge.pipeline import MetadataLookup, Pipeline
from otelbridge.readiness import ReadinessSource
from otelbridge.readiness.probe import ProbeSource
from otelbridge.source.live import LiveSource


def scope() -> InstrumentationScope:
    return InstrumentationScope(name=semconv.INSTRUMENTATION_SCOPE, version=__version__)


def exporter_environ(environ: Mapping[str, str], exporter: str | None) -> Mapping[str, str]:
    """``environ`` with ``OTEL_TRACES_EXPORTER`` replaced by a ``--exporter`` flag."""
    if not exporter:
        return environ
    return {**environ, "OTEL_TRACES_EXPORTER": exporter}


def _exporters_and_resource(
    config: Config,
    environ: Mapping[str, str] | None,
    exporter: str | None,
    jsonl_path: str | None,
    extra_exporters: Sequence[SpanExporter],
) -> tuple[list[SpanExporter], Resource, Mapping[str, str]]:
    env = exporter_environ(os.environ if environ is None else environ, exporter)
    exporters = [*build_exporters(env, jsonl_path=jsonl_path), *extra_exporters]
    extra = {}
    node = config.enrich.node_name or env.get("NODE_NAME", "")
    if node:
        extra[semconv.K8S_NODE_NAME] = node
    return exporters, build_resource(env, extra=extra), env


def build_batch(
    config: Config,
    counters: Counters,
    *,
    environ: Mapping[str, str] | None = None,
    exporter: str | None = None,
    jsonl_path: str | None = None,
    extra_exporters: Sequence[SpanExporter] = (),
) -> BatchProcessor:
    """Exporters (``OTEL_TRACES_EXPORTER`` or ``exporter``) behind an in-memory batch
    processor (replay, the demo, a bridge without a state directory)."""
    exporters, resource, env = _exporters_and_resource(
        config, environ, exporter, jsonl_path, extra_exporters
    )
    return BatchProcessor.from_config(
        exporters, resource, scope(), counters, BatchConfig.from_env(env)
    )


def containerd_client(config: Config) -> ContainerdClient:
    """A read-only client keeping the environment variables the enricher looks at."""
    return ContainerdClient(
        config.source.address,
        timeout_s=config.source.connect_timeout_s,
        env_keys=tuple(name for pair in config.enrich.env_keys for name in pair),
    )


class ExportStage(Protocol):
    def start(self) -> None: ...
    def shutdown(self, timeout_s: float = ...) -> None: ...


@dataclass
class Bridge:
    """A live bridge: containerd client, source, pipeline and export stage, not started.

    ``store`` is set when the bridge keeps state on disk (``state.dir``): spans then go
    through the spool (``exporter`` is a SpoolExporter), else through an in-memory
    BatchProcessor.
    """

    client: ContainerdClient
    source: LiveSource
    pipeline: Pipeline
    exporter: ExportStage
    counters: Counters
    store: StateStore | None = None
    metrics: BridgeMetrics | None = None

    def start(self) -> None:
        self.exporter.start()
        self.pipeline.start(self.source)

    def submit(self, spans: list[Span]) -> None:
        """Spans from outside the pipeline (the demo's rollout span); memory mode only."""
        if not isinstance(self.exporter, BatchProcessor):
            raise TypeError("a bridge with a state directory takes spans from its pipeline only")
        self.exporter.submit(spans)

    def shutdown(self, grace_s: float | None = None) -> None:
        """Stops listening, commits or emits what is known, and lets the exporters send
        for at most ``grace_s`` (default ``state.shutdown_grace_s``). Idempotent."""
        grace = self.pipeline.config.state.shutdown_grace_s if grace_s is None else grace_s
        self.pipeline.shutdown()
        self.exporter.shutdown(grace)
        if self.metrics is not None:  # after the pipeline: the last startups are in it
            self.metrics.shutdown()
        self.client.close()


def readiness_sources(config: Config, counters: Counters) -> list[ReadinessSource]:
    """The readiness sources ``[readiness]`` enables, in the order they are asked:
    kubernetes (the kubelet knows best), then probe."""
    sources: list[ReadinessSource] = []
    if config.readiness.kubernetes:
        # imported only when enabled: the Kubernetes client is a heavy library
        from otelbridge.readiness.kubernetes import KubernetesSource  # noqa: PLC0415

        node = config.enrich.node_name or os.environ.get("NODE_NAME", "")
        sources.append(KubernetesSource(config.readiness, counters, node_name=node))
    if config.readiness.probe:
        sources.append(ProbeSource(config.readiness, counters))
    return sources


def build_live_bridge(
    config: Config,
    *,
    environ: Mapping[str, str] | None = None,
    exporter: str | None = None,
    jsonl_path: str | None = None,
    extra_exporters: Sequence[SpanExporter] = (),
    clock: Clock | None = None,
    on_record: Callable[[StartupRecord, list[Span]], None] | None = None,
    metrics: bool = True,
) -> Bridge:
    """A bridge as ``otelbridge run`` builds it. With ``config.state.dir`` it keeps its
    state there and resumes from what a previous run left. ``metrics``: record and export
    the bridge's metrics (``OTEL_METRICS_EXPORTER``)."""
    counters = Counters()
    clock = clock or SystemClock()
    client = containerd_client(config)
    lookup: MetadataLookup = client.get_container
    source = LiveSource(client, config.source, counters, clock)
    readiness = readiness_sources(config, counters)
    exporters, resource, env = _exporters_and_resource(
        config, environ, exporter, jsonl_path, extra_exporters
    )
    pipeline: Pipeline | None = None

    def sla_snapshot() -> dict[str, Any]:
        return pipeline.sla.snapshot() if pipeline is not None else {}

    bridge_metrics = (
        BridgeMetrics(config, counters, sla_snapshot, environ=env, resource=resource)
        if metrics
        else None
    )
    on_measured = bridge_metrics.record_startup if bridge_metrics is not None else None
    batch_config = BatchConfig.from_env(env)
    if not config.state.dir:
        batch = BatchProcessor.from_config(exporters, resource, scope(), counters, batch_config)
        pipeline = Pipeline(
            config,
            batch,
            counters,
            clock=clock,
            lookup=lookup,
            on_record=on_record,
            readiness_sources=readiness,
            on_measured=on_measured,
        )
        return Bridge(client, source, pipeline, batch, counters, metrics=bridge_metrics)
    store = StateStore(
        Path(config.state.dir),
        counters,
        max_spool_bytes=int(config.state.max_spool_mb * 1024 * 1024),
    )
    spool = SpoolExporter(
        store,
        exporters,
        resource,
        scope(),
        counters,
        max_batch_size=batch_config.max_batch_size,
        schedule_delay_s=batch_config.schedule_delay_s,
        max_backoff_s=config.state.export_max_backoff_s,
    )
    pipeline = Pipeline(
        config,
        store,
        counters,
        clock=clock,
        lookup=lookup,
        on_record=on_record,
        store=store,
        readiness_sources=readiness,
        on_measured=on_measured,
    )
    pipeline.on_commit = spool.notify
    source.resume_from(pipeline.restore())
    return Bridge(client, source, pipeline, spool, counters, store, bridge_metrics)
