"""Assembly: builds the stages of a bridge from configuration and the environment.

Kept apart from :mod:`otelbridge.cli` so the demo and the tests assemble a bridge exactly
as the commands do.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otelbridge import __version__
from otelbridge.clock import Clock, SystemClock
from otelbridge.config import Config
from otelbridge.containerd.client import ContainerdClient
from otelbridge.emit import semconv
from otelbridge.export import SpanExporter
from otelbridge.export.batch import BatchConfig, BatchProcessor
from otelbridge.export.factory import build_exporters, build_resource
from otelbridge.model import StartupRecord
from otelbridge.pipeline import MetadataLookup, Pipeline
from otelbridge.source.live import LiveSource
from otelbridge.stats import Counters


def scope() -> InstrumentationScope:
    return InstrumentationScope(name=semconv.INSTRUMENTATION_SCOPE, version=__version__)


def exporter_environ(environ: Mapping[str, str], exporter: str | None) -> Mapping[str, str]:
    """``environ`` with ``OTEL_TRACES_EXPORTER`` replaced by a ``--exporter`` flag."""
    if not exporter:
        return environ
    return {**environ, "OTEL_TRACES_EXPORTER": exporter}


def build_batch(
    config: Config,
    counters: Counters,
    *,
    environ: Mapping[str, str] | None = None,
    exporter: str | None = None,
    jsonl_path: str | None = None,
    extra_exporters: Sequence[SpanExporter] = (),
) -> BatchProcessor:
    """Exporters (``OTEL_TRACES_EXPORTER`` or ``exporter``) behind a batch processor."""
    env = exporter_environ(os.environ if environ is None else environ, exporter)
    exporters = [*build_exporters(env, jsonl_path=jsonl_path), *extra_exporters]
    extra = {}
    node = config.enrich.node_name or env.get("NODE_NAME", "")
    if node:
        extra[semconv.K8S_NODE_NAME] = node
    resource = build_resource(env, extra=extra)
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


@dataclass
class Bridge:
    """A live bridge: containerd client, source, pipeline and exporters, not started."""

    client: ContainerdClient
    source: LiveSource
    pipeline: Pipeline
    batch: BatchProcessor
    counters: Counters

    def start(self) -> None:
        self.batch.start()
        self.pipeline.start(self.source)

    def shutdown(self, grace_s: float = 10.0) -> None:
        """Stops listening, emits what is known and flushes the exporters. Idempotent."""
        self.pipeline.shutdown()
        self.batch.shutdown(grace_s)
        self.client.close()


def build_live_bridge(
    config: Config,
    *,
    environ: Mapping[str, str] | None = None,
    exporter: str | None = None,
    jsonl_path: str | None = None,
    extra_exporters: Sequence[SpanExporter] = (),
    clock: Clock | None = None,
    on_record: Callable[[StartupRecord, list[Span]], None] | None = None,
) -> Bridge:
    counters = Counters()
    clock = clock or SystemClock()
    client = containerd_client(config)
    batch = build_batch(
        config,
        counters,
        environ=environ,
        exporter=exporter,
        jsonl_path=jsonl_path,
        extra_exporters=extra_exporters,
    )
    lookup: MetadataLookup = client.get_container
    pipeline = Pipeline(config, batch, counters, clock=clock, lookup=lookup, on_record=on_record)
    source = LiveSource(client, config.source, counters, clock)
    return Bridge(client, source, pipeline, batch, counters)
