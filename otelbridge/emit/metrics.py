"""The bridge's metrics, through the OpenTelemetry metrics SDK.

One SDK :class:`~opentelemetry.sdk.metrics.MeterProvider` per bridge (never the global
one), with the instruments of :mod:`otelbridge.core.semconv` (every name, unit,
description and bucket factor is declared there, and documented in docs/telemetry.md):

* histograms of the three SLA durations (``otelbridge.startup.duration``,
  ``otelbridge.shim_launch.duration``, ``otelbridge.task_create_to_ready.duration``, in
  seconds), recorded by :meth:`BridgeMetrics.record_startup` with ``containerd.namespace``
  (and ``k8s.namespace.name`` for a pod's containers), on explicit buckets placed around
  each configured budget (:meth:`~otelbridge.core.semconv.HistogramDecl.boundaries`);
* every counter of :data:`~otelbridge.core.semconv.COUNTERS` as an observable counter of
  the same name and unit, read from :class:`~otelbridge.core.counters.Counters` at collection;
* observable gauges ``otelbridge.sla.coverage`` (per namespace) and
  ``otelbridge.sla.verdict`` (per namespace and budget: 0 pass, 1 breach, 2 insufficient),
  read from the SLA snapshot (the ``/v1/sla`` document) at collection.

Readers, chosen by ``OTEL_METRICS_EXPORTER`` (a comma list; default ``otlp,prometheus``;
``none`` for no metrics at all), see :class:`MetricsConfig`:

* ``otlp``: a ``PeriodicExportingMetricReader`` with the SDK's OTLP metric exporter (gRPC,
  or ``http/protobuf``), configured from ``OTEL_EXPORTER_OTLP_[METRICS_]*`` of the
  ``environ`` given, every ``OTEL_METRIC_EXPORT_INTERVAL`` ms. Each setting otelbridge
  reads is passed to the SDK explicitly; the SDK itself still looks in ``os.environ`` for
  the few it alone knows (client certificates for mutual TLS, its Python credential
  provider hooks);
* ``prometheus``: an SDK ``InMemoryMetricReader`` collected on each request of the status
  API's ``/metrics`` (:meth:`BridgeMetrics.prometheus_route`) and rendered here to the
  Prometheus text exposition format 0.0.4 (:func:`render_prometheus`). Not the
  ``opentelemetry-exporter-prometheus`` package: its reader registers itself on
  ``prometheus_client``'s process-global registry, it is a pre-release versioned in step
  with one SDK release, and it would bring a second metrics library in; three instrument
  kinds render in a hundred lines with no dependency and no global state.

Temporality is cumulative for every reader (what Prometheus needs, and what a collector
converts from losslessly).

Threads: :meth:`~BridgeMetrics.record_startup` runs on the pipeline's event thread; the
observable callbacks run on whichever thread collects (the periodic reader's, or a status
API thread for ``/metrics``); every public method is thread-safe and none raises, except
the constructor, which raises :class:`~otelbridge.core.errors.ConfigError` listing every
problem of the environment.

Logging: with no collector listening, the SDK's OTLP exporters log a warning per retry and
an error per failed export, every interval, forever. A filter on their loggers (and on the
periodic reader's) lets the first line of each kind through, then at most one per
:data:`EXPORT_LOG_INTERVAL_S` (5 min) saying how many were held back; DEBUG and INFO pass
untouched. Errors are never silenced entirely: a collector that stays down is still said.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import grpc
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.metrics import Histogram as HistogramInstrument
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    MeterProvider,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    InMemoryMetricReader,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource as SdkResource

from otelbridge import __version__, sla
from otelbridge.core import semconv
from otelbridge.core.config import Config
from otelbridge.core.counters import Counters
from otelbridge.core.errors import ConfigError
from otelbridge.core.logutil import LogThrottle, ThrottledLogger
from otelbridge.core.model import StartupRecord
from otelbridge.emit.prometheus import PROMETHEUS_CONTENT_TYPE, prometheus_name, render_prometheus
from otelbridge.export.otlpenv import OtlpConfig, OtlpProtocol

__all__ = [
    "DEFAULT_METRICS_EXPORTERS",
    "METRICS_EXPORTER_NAMES",
    "PROMETHEUS_CONTENT_TYPE",
    "BridgeMetrics",
    "MetricsConfig",
    "prometheus_name",
    "render_prometheus",
]

log = logging.getLogger(__name__)
_tlog = ThrottledLogger(log)

#: The values ``OTEL_METRICS_EXPORTER`` accepts (comma-separated).
METRICS_EXPORTER_NAMES: Final = ("otlp", "prometheus", "none")
#: What an unset ``OTEL_METRICS_EXPORTER`` means.
DEFAULT_METRICS_EXPORTERS: Final = ("otlp", "prometheus")
#: Repeated OTLP export failures are logged at most once per this many seconds per kind.
EXPORT_LOG_INTERVAL_S: Final = 300.0
#: What :meth:`BridgeMetrics.shutdown` allows the last OTLP export by default, in seconds:
#: a listening collector takes milliseconds; one that is down would otherwise hold the
#: exit for the exporter's retries (up to ``OTEL_EXPORTER_OTLP_TIMEOUT``, 10 s).
DEFAULT_SHUTDOWN_TIMEOUT_S: Final = 2.0


#: The SDK loggers that report OTLP metric export failures (see the module docstring).
_EXPORT_LOGGERS: Final = (
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.sdk.metrics._internal.export",
)
_CUMULATIVE: Final[dict[type, AggregationTemporality]] = {
    kind: AggregationTemporality.CUMULATIVE
    for kind in (
        Counter,
        UpDownCounter,
        Histogram,
        ObservableCounter,
        ObservableUpDownCounter,
        ObservableGauge,
    )
}


# -- configuration ----------------------------------------------------------------------------
_PROTOCOLS: Final[tuple[OtlpProtocol, ...]] = ("grpc", "http/protobuf")  # the SDK has no JSON


@dataclasses.dataclass(frozen=True)
class MetricsConfig:
    """Which metric readers run and where OTLP metrics go. Defaults live here only."""

    exporters: tuple[str, ...] = DEFAULT_METRICS_EXPORTERS
    """Readers to run: ``otlp``, ``prometheus``; empty (``OTEL_METRICS_EXPORTER=none``)
    runs no metrics at all."""

    export_interval_s: float = 60.0
    """Time between two OTLP exports (``OTEL_METRIC_EXPORT_INTERVAL``, milliseconds)."""

    export_timeout_s: float = 30.0
    """Time allowed for one collection and export (``OTEL_METRIC_EXPORT_TIMEOUT``, ms)."""

    otlp: OtlpConfig = dataclasses.field(default_factory=OtlpConfig)
    """Where OTLP metrics go: ``OTEL_EXPORTER_OTLP_[METRICS_]*``, read by the same reader
    as the spans' (:class:`otelbridge.export.otlpenv.OtlpConfig`), ``grpc`` or
    ``http/protobuf``; its ``timeout_s`` covers one export request, retries included."""

    def validate(self) -> list[str]:
        """Every problem of this configuration (empty when it is usable)."""
        problems: list[str] = []
        unknown = [n for n in self.exporters if n not in METRICS_EXPORTER_NAMES or n == "none"]
        if unknown:
            problems.append(f"exporters: unknown {', '.join(map(repr, unknown))}")
        for name in ("export_interval_s", "export_timeout_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                problems.append(f"{name}: must be a positive duration")
        problems.extend(f"otlp.{p}" for p in self.otlp.validate(_PROTOCOLS))
        return problems

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> MetricsConfig:
        """Reads ``OTEL_METRICS_EXPORTER``, ``OTEL_METRIC_EXPORT_INTERVAL`` /
        ``_TIMEOUT`` (milliseconds) and the ``OTEL_EXPORTER_OTLP_[METRICS_]*`` variables
        (:meth:`~otelbridge.export.otlpenv.OtlpConfig.from_env`; a generic
        ``OTEL_EXPORTER_OTLP_PROTOCOL=http/json`` meant for the spans sends metrics as
        ``http/protobuf`` to the same receiver).

        Raises :class:`~otelbridge.core.errors.ConfigError` listing every invalid variable.
        """
        problems: list[str] = []
        raw = environ.get("OTEL_METRICS_EXPORTER", "").strip()
        names: list[str] = []
        for item in raw.split(",") if raw else DEFAULT_METRICS_EXPORTERS:
            name = item.strip().lower()
            if name and name not in names:
                names.append(name)
        unknown = [n for n in names if n not in METRICS_EXPORTER_NAMES]
        if unknown:
            problems.append(
                f"OTEL_METRICS_EXPORTER: unknown exporter(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(METRICS_EXPORTER_NAMES)}"
            )
        if "none" in names and len(names) > 1:
            problems.append("OTEL_METRICS_EXPORTER: 'none' cannot be combined with others")
        exporters = tuple(n for n in names if n in ("otlp", "prometheus"))
        if not names:
            exporters = DEFAULT_METRICS_EXPORTERS
        interval_s = _millis(environ, "OTEL_METRIC_EXPORT_INTERVAL", 60.0, problems)
        export_timeout_s = _millis(environ, "OTEL_METRIC_EXPORT_TIMEOUT", 30.0, problems)
        otlp = OtlpConfig()
        try:
            otlp = OtlpConfig.from_env(environ, "METRICS", protocols=_PROTOCOLS)
        except ConfigError as exc:
            problems.extend(exc.problems)
        if problems:
            raise ConfigError(problems)
        return cls(exporters, interval_s, export_timeout_s, otlp)


def _millis(environ: Mapping[str, str], name: str, default_s: float, problems: list[str]) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default_s
    try:
        value = float(raw) / 1000.0
    except ValueError:
        problems.append(f"{name}: {raw!r} is not a number of milliseconds")
        return default_s
    if not math.isfinite(value) or value <= 0:
        problems.append(f"{name}: {raw!r}: must be a positive duration")
        return default_s
    return value


def _otlp_exporter(metrics: MetricsConfig) -> MetricExporter:
    """The SDK's OTLP metric exporter for ``metrics``, every setting passed explicitly."""
    config = metrics.otlp
    if config.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (  # noqa: PLC0415
            OTLPMetricExporter as GrpcMetricExporter,
        )

        scheme = config.endpoint.split("://", 1)[0] if "://" in config.endpoint else ""
        insecure = scheme == "http" or (not scheme and config.insecure)
        credentials = None
        if not insecure:
            root = None
            if config.certificate is not None:
                with open(config.certificate, "rb") as f:
                    root = f.read()
            credentials = grpc.ssl_channel_credentials(root_certificates=root)
        return GrpcMetricExporter(
            endpoint=config.endpoint,
            insecure=insecure,
            credentials=credentials,
            headers={k.lower(): v for k, v in config.headers.items()},
            timeout=config.timeout_s,
            compression=(
                grpc.Compression.Gzip
                if config.compression == "gzip"
                else grpc.Compression.NoCompression
            ),
            preferred_temporality=_CUMULATIVE,
        )
    from opentelemetry.exporter.otlp.proto.http import Compression  # noqa: PLC0415
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (  # noqa: PLC0415
        OTLPMetricExporter as HttpMetricExporter,
    )

    return HttpMetricExporter(
        endpoint=config.endpoint,
        certificate_file=config.certificate,
        headers=dict(config.headers),
        timeout=config.timeout_s,
        compression=Compression.Gzip if config.compression == "gzip" else Compression.NoCompression,
        preferred_temporality=_CUMULATIVE,
    )


# -- quiet export logs ----------------------------------------------------------------------
class _ThrottleExportLogs(logging.Filter):
    """Per logger and message template, lets the first WARNING-or-worse record through,
    then at most one per interval, noting how many were held back (module docstring)."""

    def __init__(self, interval_s: float = EXPORT_LOG_INTERVAL_S) -> None:
        super().__init__()
        self._interval_s = interval_s
        self._throttles: dict[tuple[str, str], LogThrottle] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, str(record.msg))
        with self._lock:
            throttle = self._throttles.get(key)
            if throttle is None:
                throttle = self._throttles[key] = LogThrottle(self._interval_s)
        n = throttle.ready()
        if n is None:
            return False
        if n > 1:
            # no '%' added: the record's own args still format the message
            record.msg = f"{record.msg} ({n - 1} similar messages held back)"
        return True


_export_log_filter = _ThrottleExportLogs()
_filter_lock = threading.Lock()


def _quiet_export_logs() -> None:
    """Installs the throttling filter on the SDK's export loggers, once per process."""
    with _filter_lock:
        for name in _EXPORT_LOGGERS:
            logger = logging.getLogger(name)
            if _export_log_filter not in logger.filters:
                logger.addFilter(_export_log_filter)


# -- the metrics stage ----------------------------------------------------------------------
class BridgeMetrics:
    """The bridge's meter provider, instruments and readers (see the module docstring).

    Usage (app.py)::

        metrics = BridgeMetrics(config, counters, pipeline.sla.snapshot, environ=env,
                                resource=resource)
        Pipeline(..., on_measured=metrics.record_startup)
        StatusServer(..., routes={"/metrics": metrics.prometheus_route})
        ...
        metrics.shutdown()    # after the pipeline stopped: the last export has everything
    """

    def __init__(
        self,
        config: Config,
        counters: Counters,
        sla_snapshot: Callable[[], Mapping[str, Any]],
        *,
        environ: Mapping[str, str] | None = None,
        resource: Resource | None = None,
        resource_attributes: Mapping[str, str] | None = None,
        metrics_config: MetricsConfig | None = None,
    ) -> None:
        """Builds the provider and starts its readers (the OTLP one exports from a thread
        of its own from now on).

        ``sla_snapshot`` returns the ``/v1/sla`` document (:meth:`otelbridge.sla.
        SlaTracker.snapshot`); it is called at each collection, from the collecting
        thread. The resource is, by precedence: ``resource_attributes``; else the
        attributes of ``resource`` (the spans' protobuf ``Resource``, so metrics and spans
        share one); else :func:`otelbridge.export.factory.build_resource` of ``environ``
        (``service.name`` = ``containerd`` unless ``OTEL_SERVICE_NAME``, ``host.name``,
        ``OTEL_RESOURCE_ATTRIBUTES``). ``metrics_config`` overrides what ``environ``
        (default ``os.environ``) says. Raises :class:`~otelbridge.core.errors.ConfigError`
        listing every problem of either.
        """
        env = os.environ if environ is None else environ
        cfg = MetricsConfig.from_env(env) if metrics_config is None else metrics_config
        problems = cfg.validate()
        if problems:
            raise ConfigError(problems)
        self.config = cfg
        self._counters = counters
        self._sla_snapshot = sla_snapshot
        limits = sla.budgets(config.sla)
        self.boundaries: dict[str, tuple[float, ...]] = {
            h.name: h.boundaries(limits[h.budget]) for h in semconv.HISTOGRAMS
        }
        """Bucket boundaries of each histogram, by metric name (budgets of ``config``)."""
        self._lock = threading.Lock()
        self._closed = False
        self._prometheus: InMemoryMetricReader | None = None
        self._provider: MeterProvider | None = None
        self._histograms: dict[str, HistogramInstrument] = {}  # by sla duration name
        if not cfg.exporters:
            return

        # before any reader starts a thread: OTEL_RESOURCE_ATTRIBUTES may be malformed
        attributes = (
            dict(resource_attributes)
            if resource_attributes is not None
            else _attributes_of(resource if resource is not None else _default_resource(env))
        )
        readers: list[MetricReader] = []
        if "prometheus" in cfg.exporters:
            # first: at shutdown it takes no time, the OTLP reader may take its timeout
            self._prometheus = InMemoryMetricReader(preferred_temporality=_CUMULATIVE)
            readers.append(self._prometheus)
        if "otlp" in cfg.exporters:
            _quiet_export_logs()
            readers.append(
                PeriodicExportingMetricReader(
                    _otlp_exporter(cfg),
                    export_interval_millis=cfg.export_interval_s * 1000.0,
                    export_timeout_millis=cfg.export_timeout_s * 1000.0,
                )
            )
        self._provider = MeterProvider(
            metric_readers=readers,
            resource=SdkResource(attributes),
            shutdown_on_exit=False,  # shutdown() is the owner's job; no atexit surprises
        )
        meter = self._provider.get_meter(semconv.INSTRUMENTATION_SCOPE, __version__)
        for decl in semconv.HISTOGRAMS:
            self._histograms[decl.budget] = meter.create_histogram(
                decl.name,
                unit=decl.unit,
                description=decl.description,
                explicit_bucket_boundaries_advisory=self.boundaries[decl.name],
            )
        for counter in semconv.COUNTERS:
            meter.create_observable_counter(
                counter.name,
                callbacks=[self._counter_callback(counter)],
                unit=counter.unit,
                description=counter.description,
            )
        meter.create_observable_gauge(
            semconv.SLA_COVERAGE.name,
            callbacks=[self._observe_coverage],
            unit=semconv.SLA_COVERAGE.unit,
            description=semconv.SLA_COVERAGE.description,
        )
        meter.create_observable_gauge(
            semconv.SLA_VERDICT.name,
            callbacks=[self._observe_verdicts],
            unit=semconv.SLA_VERDICT.unit,
            description=semconv.SLA_VERDICT.description,
        )

    # -- the event thread ---------------------------------------------------------------
    def record_startup(self, record: StartupRecord, measured: Mapping[str, float]) -> None:
        """Records one completed startup's durations (``{sla duration name: seconds}``,
        :func:`otelbridge.sla.durations`) in the histograms, with the record's
        ``containerd.namespace`` and, for a pod's container, ``k8s.namespace.name``.

        The pipeline's ``on_measured`` hook: called on the event thread, cheap (one SDK
        histogram update per duration), never raises (a failure is logged, throttled, and
        counted in ``otelbridge.pipeline.errors``). Negative or non-finite durations (clock
        trouble) are skipped. Does nothing after :meth:`shutdown` or with no readers."""
        if not self._histograms or self._closed:
            return
        try:
            attributes = {semconv.CONTAINERD_NAMESPACE: record.key.namespace}
            info = record.info
            if info is not None:
                k8s_namespace = (
                    info.pod.k8s_namespace
                    if info.pod is not None
                    else info.cri.pod_namespace
                    if info.cri is not None
                    else ""
                )
                if k8s_namespace:
                    attributes[semconv.K8S_NAMESPACE_NAME] = k8s_namespace
            for name, seconds in measured.items():
                histogram = self._histograms.get(name)
                if histogram is not None and 0.0 <= seconds < math.inf:
                    histogram.record(seconds, attributes)
        except Exception:
            self._counters.inc(semconv.PIPELINE_ERRORS)
            _tlog.log(
                logging.ERROR,
                "record",
                "%s: could not record its metrics",
                getattr(record, "key", record),
                exc_info=True,
            )

    # -- observable callbacks (the collecting thread) ---------------------------------------
    def _counter_callback(
        self, counter: semconv.MetricDecl
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(self._counters.get(counter))]

        return observe

    def _namespaces(self) -> Mapping[str, Any]:
        try:
            namespaces = self._sla_snapshot().get("namespaces", {})
        except Exception:
            _tlog.log(logging.ERROR, "sla", "SLA snapshot for the metrics failed", exc_info=True)
            return {}
        return namespaces if isinstance(namespaces, Mapping) else {}

    def _observe_coverage(self, options: CallbackOptions) -> Iterable[Observation]:
        out = []
        for namespace, figures in self._namespaces().items():
            coverage = figures.get("coverage") if isinstance(figures, Mapping) else None
            if isinstance(coverage, int | float):
                out.append(Observation(coverage, {semconv.CONTAINERD_NAMESPACE: namespace}))
        return out

    def _observe_verdicts(self, options: CallbackOptions) -> Iterable[Observation]:
        out = []
        for namespace, figures in self._namespaces().items():
            if not isinstance(figures, Mapping):
                continue
            verdicts: list[tuple[str, object]] = [
                (budget, judged.get("verdict"))
                for budget, judged in (figures.get("budgets") or {}).items()
                if isinstance(judged, Mapping)
            ]
            verdicts.append((sla.COVERAGE, figures.get("coverage_verdict")))
            for budget, verdict in verdicts:
                code = semconv.SLA_VERDICT_VALUES.get(verdict) if isinstance(verdict, str) else None
                if code is not None:
                    attributes = {
                        semconv.CONTAINERD_NAMESPACE: namespace,
                        semconv.OB_SLA_BUDGET: budget,
                    }
                    out.append(Observation(code, attributes))
        return out

    # -- the status API -----------------------------------------------------------------
    def prometheus_route(self) -> tuple[int, bytes, str]:
        """The ``/metrics`` answer: ``(200, text exposition, content type)``; 404 when
        ``prometheus`` is not among the readers, 503 after :meth:`shutdown`. Collects on
        the calling thread (a status API thread); concurrent calls take turns. Never
        raises."""
        if self._prometheus is None:
            return _text(404, "the prometheus metrics reader is off (OTEL_METRICS_EXPORTER)")
        if self._closed:
            return _text(503, "metrics are shut down")
        try:
            data = self._prometheus.get_metrics_data()
            return 200, render_prometheus(data), PROMETHEUS_CONTENT_TYPE
        except Exception:
            _tlog.log(logging.ERROR, "scrape", "rendering /metrics failed", exc_info=True)
            return _text(500, "internal error")

    # -- lifecycle ----------------------------------------------------------------------
    def force_flush(self, timeout_s: float = 10.0) -> bool:
        """Collects now and hands the result to the OTLP exporter, on the calling thread.
        True when every reader collected; False when one failed or took longer than
        ``timeout_s``, with no readers, or after :meth:`shutdown`. An export that fails is
        logged by the SDK's exporter, not reported here; its own timeout
        (``OTEL_EXPORTER_OTLP_TIMEOUT``, retries included) bounds it. Never raises."""
        if self._provider is None or self._closed:
            return False
        try:
            return self._provider.force_flush(timeout_millis=timeout_s * 1000.0)
        except Exception as exc:
            log.warning("metrics flush failed: %s", exc)
            return False

    def shutdown(self, timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S) -> None:
        """Exports the last collection over OTLP (at most ``timeout_s``, after which a
        running export is cancelled) and stops every reader. Idempotent; never raises.
        Afterwards :meth:`record_startup` does nothing and ``/metrics`` answers 503."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._provider is None:
            return
        try:
            self._provider.shutdown(timeout_millis=timeout_s * 1000.0)
        except Exception as exc:
            log.warning("metrics shutdown: %s", exc)


def _text(code: int, body: str) -> tuple[int, bytes, str]:
    return code, (body + "\n").encode(), "text/plain; charset=utf-8"


def _default_resource(environ: Mapping[str, str]) -> Resource:
    # imported here: export.factory pulls every span exporter in
    from otelbridge.export.factory import build_resource  # noqa: PLC0415

    return build_resource(environ)


def _attributes_of(resource: Resource) -> dict[str, str]:
    """The string attributes of a protobuf ``Resource`` (all of otelbridge's are)."""
    return {kv.key: kv.value.string_value for kv in resource.attributes}
