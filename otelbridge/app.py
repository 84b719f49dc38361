"""Assembly: every mode of the bridge built in one place, from configuration and environment.

========================  ===========================  ====================  ==================
mode                      source                       delivery storage      readiness
========================  ===========================  ====================  ==================
``run`` (state dir)       containerd, live             SQLite spool          kubernetes, probe
``run`` (no state), demo  containerd, live             memory                kubernetes, probe
``record``                containerd, live             memory, no exporter   as run; recorded
``replay``                a recording, ``ctr events``  memory                the recorded ones
========================  ===========================  ====================  ==================

(``started`` decides where no source applies.)

The command line (:mod:`otelbridge.cli`), the demo and the tests assemble bridges only
through the functions here, so what runs is what was tested.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otelbridge import __version__
from otelbridge.containerd.client import ContainerdClient, socket_path
from otelbridge.core import semconv
from otelbridge.core.clock import Clock, EventTimeClock, SystemClock
from otelbridge.core.config import Config
from otelbridge.core.counters import Counters
from otelbridge.core.model import RawEnvelope, SourceItem, StartupRecord
from otelbridge.emit.metrics import BridgeMetrics
from otelbridge.export import SpanExporter
from otelbridge.export.delivery import Delivery, DeliveryConfig
from otelbridge.export.factory import build_exporters, build_resource
from otelbridge.export.spool import StateStore
from otelbridge.export.storage import MemoryStorage
from otelbridge.pipeline import MetadataLookup, Pipeline
from otelbridge.readiness import ReadinessSource
from otelbridge.readiness.probe import ProbeSource
from otelbridge.runtime import RuntimePhases, Spool, SpoolJanitor
from otelbridge.source.live import LiveSource
from otelbridge.source.recording import Recorder

_log = logging.getLogger(__name__)


def scope() -> InstrumentationScope:
    return InstrumentationScope(name=semconv.INSTRUMENTATION_SCOPE, version=__version__)


def exporter_environ(environ: Mapping[str, str], exporter: str | None) -> Mapping[str, str]:
    """``environ`` with ``OTEL_TRACES_EXPORTER`` replaced by a ``--exporter`` flag."""
    if not exporter:
        return environ
    return {**environ, "OTEL_TRACES_EXPORTER": exporter}


@dataclass
class Exporting:
    """Where spans go: the exporters, the bridge's resource, the environment read."""

    exporters: list[SpanExporter]
    resource: Resource
    environ: Mapping[str, str]

    @classmethod
    def from_env(
        cls,
        config: Config,
        *,
        environ: Mapping[str, str] | None = None,
        exporter: str | None = None,
        jsonl_path: str | None = None,
        extra_exporters: Sequence[SpanExporter] = (),
    ) -> Exporting:
        env = exporter_environ(os.environ if environ is None else environ, exporter)
        exporters = [*build_exporters(env, jsonl_path=jsonl_path), *extra_exporters]
        extra = {}
        node = config.enrich.node_name or env.get("NODE_NAME", "")
        if node:
            extra[semconv.K8S_NODE_NAME] = node
        return cls(exporters, build_resource(env, extra=extra), env)


def memory_delivery(exporting: Exporting, counters: Counters) -> tuple[MemoryStorage, Delivery]:
    """A bounded memory queue and the delivery engine draining it into the exporters."""
    config = DeliveryConfig.from_env(exporting.environ)
    storage = MemoryStorage(counters, max_size=config.max_queue_size)
    delivery = Delivery(
        exporting.exporters, storage, exporting.resource, scope(), counters, config=config
    )
    return storage, delivery


def containerd_client(config: Config, counters: Counters | None = None) -> ContainerdClient:
    """A read-only client keeping the environment variables the enricher looks at."""
    return ContainerdClient(
        config.source.address,
        timeout_s=config.source.connect_timeout_s,
        env_keys=tuple(name for pair in config.enrich.env_keys for name in pair),
        counters=counters,
    )


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


# -- run, demo ----------------------------------------------------------------------------------
@dataclass
class Bridge:
    """A live bridge: containerd client, source, pipeline, storage and delivery, not started.

    ``store`` is set when the bridge keeps state on disk (``state.dir``): spans then wait
    in the spool, else in ``memory``.
    """

    client: ContainerdClient
    source: LiveSource
    pipeline: Pipeline
    delivery: Delivery
    counters: Counters
    store: StateStore | None = None
    metrics: BridgeMetrics | None = None
    memory: MemoryStorage | None = None
    hook_spool: SpoolJanitor | None = None

    def start(self) -> None:
        self.delivery.start()
        self.pipeline.start(self.source)
        if self.hook_spool is not None:
            self.hook_spool.start()

    def submit(self, spans: list[Span]) -> None:
        """Spans from outside the pipeline (the demo's rollout span); memory mode only."""
        if self.memory is None:
            raise TypeError("a bridge with a state directory takes spans from its pipeline only")
        self.memory.submit(spans)

    def record_to(
        self,
        out: IO[str],
        *,
        address: str,
        max_events: int = 0,
        on_limit: Callable[[], None] | None = None,
        on_error: Callable[[OSError], None] | None = None,
    ) -> Recorder:
        """Records what this bridge's event thread processes into ``out`` (a recording
        whose replay gives this run's spans, IDs and verdicts); call before start. The
        bridge must be built with ``record_verdicts``."""
        recorder = Recorder(
            out, self.counters, max_events=max_events, on_limit=on_limit, on_error=on_error
        )
        recorder.header(address=address, started_at_ns=time.time_ns())
        self.pipeline.tap = recorder.item
        self.pipeline.records.on_read = recorder.record
        return recorder

    def health(self) -> list[str]:
        """Why the bridge is not alive (for /healthz); empty while it is."""
        problems = []
        if self.pipeline.stopped.is_set():
            problems.append(f"the event pipeline stopped: {self.pipeline.failure or 'shutdown'}")
        if not self.delivery.alive():
            problems.append("a span delivery thread stopped")
        return problems

    def readiness(self) -> list[str]:
        """Why the bridge is not doing its job fully now (for /readyz); empty when it is."""
        problems = []
        reason = self.source.problem
        if reason is not None:
            problems.append(f"not following containerd at {self.client.address}: {reason}")
        elif not self.pipeline.connected.is_set():
            problems.append(f"not subscribed to containerd at {self.client.address} yet")
        if self.store is not None:
            problems.extend(self.store.problems())
        problems.extend(self.delivery.problems())
        return problems

    def shutdown(self, grace_s: float | None = None) -> None:
        """Stops listening, commits or emits what is known, and lets the exporters send
        for at most ``grace_s`` (default ``state.shutdown_grace_s``). Idempotent."""
        grace = self.pipeline.config.state.shutdown_grace_s if grace_s is None else grace_s
        self.pipeline.shutdown()
        if self.hook_spool is not None:
            self.hook_spool.stop()
        self.delivery.shutdown(grace)
        if self.metrics is not None:  # after the pipeline: the last startups are in it
            self.metrics.shutdown()
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
    metrics: bool = True,
    record_verdicts: bool = False,
) -> Bridge:
    """A bridge as ``otelbridge run`` builds it. With ``config.state.dir`` it keeps its
    state there and resumes from what a previous run left. ``metrics``: record and export
    the bridge's metrics (``OTEL_METRICS_EXPORTER``). ``record_verdicts``: every readiness
    verdict goes through the arbiter (``otelbridge record``)."""
    counters = Counters()
    clock = clock or SystemClock()
    exporting = Exporting.from_env(
        config,
        environ=environ,
        exporter=exporter,
        jsonl_path=jsonl_path,
        extra_exporters=extra_exporters,
    )
    client = containerd_client(config, counters)
    lookup: MetadataLookup = client.get_container
    source = LiveSource(client, config.source, counters, clock)
    # on a unix socket, the event thread reads the stream and the records itself
    decoder = client.container_from if socket_path(client.address) is not None else None
    readiness = readiness_sources(config, counters)
    pipeline: Pipeline | None = None

    def sla_snapshot() -> dict[str, Any]:
        return pipeline.sla.snapshot() if pipeline is not None else {}

    bridge_metrics = (
        BridgeMetrics(
            config, counters, sla_snapshot, environ=exporting.environ, resource=exporting.resource
        )
        if metrics
        else None
    )
    on_measured = bridge_metrics.record_startup if bridge_metrics is not None else None
    if not config.state.dir:
        memory, delivery = memory_delivery(exporting, counters)
        pipeline = Pipeline(
            config,
            memory,
            counters,
            clock=clock,
            lookup=lookup,
            record_decoder=decoder,
            on_record=on_record,
            readiness_sources=readiness,
            on_measured=on_measured,
            decide_every_start=record_verdicts,
        )
        _stream_events(client, source, pipeline, decoder is not None)
        _name_the_node(pipeline, exporting)
        return Bridge(
            client,
            source,
            pipeline,
            delivery,
            counters,
            metrics=bridge_metrics,
            memory=memory,
            hook_spool=_runtime_phases(config, pipeline, counters, clock),
        )
    store = StateStore(
        Path(config.state.dir),
        counters,
        max_spool_bytes=int(config.state.max_spool_mb * 1024 * 1024),
    )
    delivery = Delivery(
        exporting.exporters,
        store,
        exporting.resource,
        scope(),
        counters,
        config=DeliveryConfig.from_env(
            exporting.environ, max_elapsed_s=None, max_backoff_s=config.state.export_max_backoff_s
        ),
        clock=clock,
    )
    pipeline = Pipeline(
        config,
        store,
        counters,
        clock=clock,
        lookup=lookup,
        record_decoder=decoder,
        on_record=on_record,
        store=store,
        readiness_sources=readiness,
        on_measured=on_measured,
        decide_every_start=record_verdicts,
    )
    _stream_events(client, source, pipeline, decoder is not None)
    source.resume_from(pipeline.restore())
    _name_the_node(pipeline, exporting)
    janitor = _runtime_phases(config, pipeline, counters, clock)
    return Bridge(
        client, source, pipeline, delivery, counters, store, bridge_metrics, hook_spool=janitor
    )


def _stream_events(
    client: ContainerdClient, source: LiveSource, pipeline: Pipeline, streaming: bool
) -> None:
    """The event connection (issue 12): opened by the source, read by the event thread;
    without it (a TCP address) the source reads gRPC's stream on its own thread."""
    if streaming:
        source.stream_to(pipeline.runner.attach, client.open_events)


def _runtime_phases(
    config: Config, pipeline: Pipeline, counters: Counters, clock: Clock
) -> SpoolJanitor | None:
    """With ``runtime.hook_spool``: the runtime-internal spans of each startup from the
    recorder's spool, and the janitor that bounds the spool (docs/runtime.md)."""
    if not config.runtime.hook_spool:
        return None
    spool = Spool(Path(config.runtime.hook_spool), counters, followed=config.source.namespaces)
    pipeline.emitter.on_spans = RuntimePhases(spool, counters).attach
    return SpoolJanitor(spool, clock)


def _name_the_node(pipeline: Pipeline, exporting: Exporting) -> None:
    """``/v1/sla`` says which bridge answers: its resource (host, node, cluster)."""
    pipeline.sla.resource = {kv.key: kv.value.string_value for kv in exporting.resource.attributes}


# -- replay ------------------------------------------------------------------------------------
@dataclass
class ReplayResult:
    """What a replay did, for the command's summary and exit code."""

    counters: dict[str, int]
    elapsed_s: float
    cpu_s: float
    delivered: bool
    notes: list[str] = field(default_factory=list)

    @property
    def startups(self) -> int:
        return self.counters[semconv.STARTUPS_COMPLETED.name]


@dataclass
class Replay:
    """A pipeline fed from a file on the caller's thread, its clock the events' time."""

    pipeline: Pipeline
    memory: MemoryStorage
    delivery: Delivery
    counters: Counters
    namespaces: frozenset[str]

    def run(self, items: Iterable[SourceItem], timeout_s: float = 30.0) -> ReplayResult:
        """Feeds every item, finishes, delivers (within ``timeout_s``)."""
        self.delivery.start()
        started = time.perf_counter()
        cpu_started = time.process_time()
        namespaces = self.namespaces
        for item in items:
            if not namespaces or _namespace(item) in namespaces:
                self.pipeline.feed(item)
        self.pipeline.finish()
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        delivered = self.delivery.force_flush(timeout_s)
        self.delivery.shutdown(1.0)
        counters = self.counters.snapshot()
        dropped = counters[semconv.SPANS_DROPPED.name]
        return ReplayResult(counters, elapsed, cpu, delivered and not dropped)


def _namespace(item: SourceItem) -> str:
    return item.namespace if isinstance(item, RawEnvelope) else getattr(item, "key", ("",))[0]


def build_replay(
    config: Config,
    lookup: MetadataLookup,
    *,
    counters: Counters | None = None,
    environ: Mapping[str, str] | None = None,
    exporter: str | None = None,
    jsonl_path: str | None = None,
    recorded_verdicts: bool = False,
) -> Replay:
    """A replay: records looked up in the recording (``lookup``), the readiness verdicts
    taken from it when it holds them (``recorded_verdicts``), spans into the exporters."""
    counters = counters or Counters()
    exporting = Exporting.from_env(
        config, environ=environ, exporter=exporter, jsonl_path=jsonl_path
    )
    memory, delivery = memory_delivery(exporting, counters)
    pipeline = Pipeline(
        config,
        memory,
        counters,
        clock=EventTimeClock(),
        lookup=lookup,
        lookup_async=False,
        recorded_verdicts=recorded_verdicts,
    )
    return Replay(pipeline, memory, delivery, counters, frozenset(config.source.namespaces))


__all__ = [
    "Bridge",
    "Exporting",
    "Replay",
    "ReplayResult",
    "build_live_bridge",
    "build_replay",
    "containerd_client",
    "memory_delivery",
    "readiness_sources",
    "scope",
]
