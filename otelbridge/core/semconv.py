"""Every name otelbridge emits, declared once.

Span names, attribute keys, attribute values with a fixed vocabulary, and the bridge's
own counters. ``docs/telemetry.md`` documents each of them; ``tests/unit/emit/
test_semconv_docs.py`` fails when this module and the document drift apart.

Keys follow the OpenTelemetry semantic conventions where one exists (``container.*``,
``k8s.*``, ``process.*``, ``host.name``); containerd specifics live under
``containerd.*`` and the bridge's own under ``otelbridge.*``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

INSTRUMENTATION_SCOPE: Final = "otelbridge"

# -- span names ---------------------------------------------------------------------------
SPAN_CONTAINER_STARTUP: Final = "container.startup"
SPAN_CONTAINER_CREATE: Final = "container.create"
SPAN_SHIM_LAUNCH: Final = "shim.launch"
SPAN_TASK_START: Final = "task.start"
SPAN_READINESS_WAIT: Final = "readiness.wait"
SPAN_ROLLOUT: Final = "rollout"
SPAN_POD_STARTUP: Final = "pod.startup"
SPAN_SNAPSHOT_RECLAIM: Final = "snapshot.reclaim"
# runtime-internal phases (otelbridge.runtime, from the hook spool): children of
# shim.launch (shim.prepare, runc.create) and task.start (runc.start)
SPAN_SHIM_PREPARE: Final = "shim.prepare"
SPAN_RUNC_CREATE: Final = "runc.create"
SPAN_RUNC_START: Final = "runc.start"

SPAN_NAMES: Final = (
    SPAN_POD_STARTUP,
    SPAN_CONTAINER_STARTUP,
    SPAN_CONTAINER_CREATE,
    SPAN_SHIM_LAUNCH,
    SPAN_TASK_START,
    SPAN_READINESS_WAIT,
    SPAN_ROLLOUT,
    SPAN_SNAPSHOT_RECLAIM,
    SPAN_SHIM_PREPARE,
    SPAN_RUNC_CREATE,
    SPAN_RUNC_START,
)

# -- span event names -----------------------------------------------------------------------
EVENT_OOM: Final = "container.oom"
EVENT_NAMES: Final = (EVENT_OOM,)

# -- resource attributes ----------------------------------------------------------------------
SERVICE_NAME: Final = "service.name"
HOST_NAME: Final = "host.name"
K8S_NODE_NAME: Final = "k8s.node.name"
K8S_CLUSTER_NAME: Final = "k8s.cluster.name"  # read from resources, never set by us
DEFAULT_SERVICE_NAME: Final = "containerd"

# -- span attributes: semantic conventions ------------------------------------------------------
CONTAINER_ID: Final = "container.id"
CONTAINER_NAME: Final = "container.name"
CONTAINER_IMAGE_NAME: Final = "container.image.name"
CONTAINER_IMAGE_TAGS: Final = "container.image.tags"
CONTAINER_RUNTIME_NAME: Final = "container.runtime.name"
PROCESS_PID: Final = "process.pid"
PROCESS_EXIT_CODE: Final = "process.exit.code"
PROCESS_COMMAND: Final = "process.command"
K8S_POD_NAME: Final = "k8s.pod.name"
K8S_POD_UID: Final = "k8s.pod.uid"
K8S_NAMESPACE_NAME: Final = "k8s.namespace.name"
K8S_CONTAINER_NAME: Final = "k8s.container.name"
K8S_CONTAINER_RESTART_COUNT: Final = "k8s.container.restart_count"

# -- span attributes: containerd ----------------------------------------------------------------
CONTAINERD_NAMESPACE: Final = "containerd.namespace"
CONTAINERD_RUNTIME_NAME: Final = "containerd.runtime.name"
CONTAINERD_SNAPSHOTTER: Final = "containerd.snapshotter"
CONTAINERD_SHIM_PID: Final = "containerd.shim.pid"  # runtime phases: on shim.launch

# -- span attributes: otelbridge ----------------------------------------------------------------
OB_PARTIAL: Final = "otelbridge.partial"
OB_STARTUP_OUTCOME: Final = "otelbridge.startup.outcome"
OB_STARTUP_ATTEMPT: Final = "otelbridge.startup.attempt"
OB_READINESS_SOURCE: Final = "otelbridge.readiness.source"
OB_TRACE_CONTEXT_SOURCE: Final = "otelbridge.trace_context.source"
OB_TRACEPARENT_INVALID: Final = "otelbridge.traceparent.invalid"
OB_TRACESTATE_INVALID: Final = "otelbridge.tracestate.invalid"
OB_LINK_POLICY: Final = "otelbridge.link.policy"
OB_MISSING_PHASES: Final = "otelbridge.phases.missing"
OB_ATTRIBUTES_DROPPED: Final = "otelbridge.attributes.dropped"
OB_ROLLOUT_NAME: Final = "otelbridge.rollout.name"
OB_CONTAINER_KIND: Final = "otelbridge.container.kind"
OB_SLA_BREACHED: Final = "otelbridge.sla.breached"
OB_GC_OVERLAP: Final = "otelbridge.gc.overlap"
OB_GC_SNAPSHOT_KEY: Final = "otelbridge.gc.snapshot_key"
OB_GC_DEGRADED: Final = "otelbridge.gc.degraded"
OB_GC_LEAKED: Final = "otelbridge.gc.leaked"
OB_POD_CONTAINERS: Final = "otelbridge.pod.containers"
OB_SHIM_REUSED: Final = "otelbridge.shim.reused"  # runtime phases: on shim.launch

CONTAINER_RUNTIME_VALUE: Final = "containerd"

#: Readiness sources (values of ``otelbridge.readiness.source``).
READINESS_STARTED: Final = "started"

SPAN_ATTRIBUTES: Final = (
    CONTAINER_ID,
    CONTAINER_NAME,
    CONTAINER_IMAGE_NAME,
    CONTAINER_IMAGE_TAGS,
    CONTAINER_RUNTIME_NAME,
    PROCESS_PID,
    PROCESS_EXIT_CODE,
    PROCESS_COMMAND,
    K8S_POD_NAME,
    K8S_POD_UID,
    K8S_NAMESPACE_NAME,
    K8S_CONTAINER_NAME,
    K8S_CONTAINER_RESTART_COUNT,
    CONTAINERD_NAMESPACE,
    CONTAINERD_RUNTIME_NAME,
    CONTAINERD_SNAPSHOTTER,
    OB_PARTIAL,
    OB_STARTUP_OUTCOME,
    OB_STARTUP_ATTEMPT,
    OB_READINESS_SOURCE,
    OB_TRACE_CONTEXT_SOURCE,
    OB_TRACEPARENT_INVALID,
    OB_TRACESTATE_INVALID,
    OB_LINK_POLICY,
    OB_MISSING_PHASES,
    OB_ATTRIBUTES_DROPPED,
    OB_ROLLOUT_NAME,
    OB_CONTAINER_KIND,
    OB_POD_CONTAINERS,
    OB_SLA_BREACHED,
    OB_GC_OVERLAP,
    OB_GC_SNAPSHOT_KEY,
    OB_GC_DEGRADED,
    OB_GC_LEAKED,
    CONTAINERD_SHIM_PID,
    OB_SHIM_REUSED,
)
RESOURCE_ATTRIBUTES: Final = (SERVICE_NAME, HOST_NAME, K8S_NODE_NAME)


# -- the bridge's own counters ------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class MetricDecl:
    """A self-metric: its name, unit (UCUM) and what one increment means."""

    name: str
    unit: str
    description: str


def _counter(name: str, description: str, unit: str = "{event}") -> MetricDecl:
    return MetricDecl(name, unit, description)


EVENTS_RECEIVED = _counter("otelbridge.events.received", "envelopes read from the source")
EVENTS_DECODED = _counter("otelbridge.events.decoded", "envelopes decoded into lifecycle events")
EVENTS_IGNORED = _counter(
    "otelbridge.events.ignored", "envelopes of known topics that do not concern startups"
)
EVENTS_UNKNOWN = _counter(
    "otelbridge.events.unknown", "envelopes of a topic otelbridge does not know"
)
EVENTS_MALFORMED = _counter(
    "otelbridge.events.malformed", "envelopes or recording lines that could not be decoded"
)
EVENTS_DROPPED = _counter(
    "otelbridge.events.dropped", "envelopes dropped because the event queue was full"
)
EVENTS_UNMATCHED = _counter(
    "otelbridge.events.unmatched",
    "events about a container the correlator does not track (late, duplicate, or after delete)",
)
STARTUPS_COMPLETED = _counter(
    "otelbridge.startups.completed", "startup records completed (any outcome)", "{startup}"
)
STARTUPS_PARTIAL = _counter(
    "otelbridge.startups.partial", "startup records missing their first events", "{startup}"
)
STARTUPS_RECONCILED = _counter(
    "otelbridge.startups.reconciled",
    "startups found by listing containerd after their events were missed",
    "{startup}",
)
STATE_EVICTED = _counter(
    "otelbridge.state.evicted",
    "per-container states evicted (idle timeout or the tracked-container limit)",
    "{container}",
)
SNAPSHOTS_UNMATCHED = _counter(
    "otelbridge.snapshots.unmatched",
    "snapshot prepares never claimed by a container (image unpack, other clients)",
    "{snapshot}",
)
METADATA_LOOKUPS = _counter(
    "otelbridge.metadata.lookups", "container record lookups (Containers/Get)", "{lookup}"
)
METADATA_FAILED = _counter(
    "otelbridge.metadata.failed",
    "container record lookups that failed or found the container gone",
    "{lookup}",
)
METADATA_MALFORMED = _counter(
    "otelbridge.metadata.malformed",
    "container records containerd returned undecodable (invalid UTF-8, ...): read leniently "
    "or skipped, and named in the log",
    "{record}",
)
METADATA_LATE = _counter(
    "otelbridge.metadata.late",
    "startups emitted without their container record because the lookup took too long",
    "{startup}",
)
TRACEPARENT_INVALID = _counter(
    "otelbridge.traceparent.invalid", "trace contexts found but rejected by W3C parsing", "{value}"
)
TRACESTATE_INVALID = _counter(
    "otelbridge.tracestate.invalid", "tracestate values dropped as invalid", "{value}"
)
ATTRIBUTES_DROPPED = _counter(
    "otelbridge.attributes.dropped",
    "tenant-controlled attributes dropped or truncated by the count/length limits",
    "{attribute}",
)
ATTRIBUTES_SANITIZED = _counter(
    "otelbridge.attributes.sanitized",
    "tenant-controlled values (labels, image names) whose control characters were escaped",
    "{attribute}",
)
SPANS_EMITTED = _counter("otelbridge.spans.emitted", "spans handed to the exporters", "{span}")
SPANS_EXPORTED = _counter("otelbridge.spans.exported", "spans the receiver accepted", "{span}")
SPANS_DROPPED = _counter(
    "otelbridge.spans.dropped",
    "spans dropped: export queue full, retries exhausted, or rejected by the receiver",
    "{span}",
)
EXPORT_RETRIES = _counter(
    "otelbridge.export.retries", "export attempts retried after a temporary failure", "{attempt}"
)
EXPORT_ERRORS = _counter(
    "otelbridge.export.errors",
    "export attempts that raised instead of answering (an exporter's bug): counted, retried",
    "{attempt}",
)
STATE_ERRORS = _counter(
    "otelbridge.state.errors",
    "writes of the state database that failed (disk full, I/O error): retried, state kept",
    "{write}",
)
PODS_COMPLETED = _counter(
    "otelbridge.pods.completed", "pod.startup spans emitted (Kubernetes pods)", "{pod}"
)
PIPELINE_ERRORS = _counter(
    "otelbridge.pipeline.errors",
    "items whose processing raised (a bug): logged with its traceback and skipped",
    "{item}",
)
SOURCE_RECONNECTS = _counter(
    "otelbridge.source.reconnects", "re-subscriptions after the event stream ended", "{connect}"
)
SOURCE_CONNECT_FAILURES = _counter(
    "otelbridge.source.connect_failures",
    "attempts to subscribe to containerd that failed (socket missing, refused, not containerd)",
    "{attempt}",
)
KUBERNETES_WATCH_RESTARTS = _counter(
    "otelbridge.kubernetes.watch_restarts",
    "pod list/watch cycles restarted after a failure, a dropped stream or 410 Gone",
    "{restart}",
)
KUBERNETES_RELISTS = _counter(
    "otelbridge.kubernetes.relists",
    "pod listings after the first: the watch's resourceVersion expired (410 Gone)",
    "{list}",
)
KUBERNETES_READY_LATE = _counter(
    "otelbridge.kubernetes.ready_late",
    "containers found ready by a relisting (the watch was down): timed at the relisting",
    "{container}",
)
KUBERNETES_API_ERRORS = _counter(
    "otelbridge.kubernetes.api_errors",
    "pod list/watch requests that failed (connection, HTTP error such as 403); retried",
    "{error}",
)
READINESS_PROBES = _counter(
    "otelbridge.readiness.probes",
    "readiness probe attempts made (tcp connects and http GETs), successful or not",
    "{attempt}",
)
READINESS_INVALID_TARGET = _counter(
    "otelbridge.readiness.invalid_target",
    "readiness targets ignored as malformed (not tcp://HOST:PORT or http://HOST:PORT/PATH)",
    "{target}",
)
GC_RECLAIMS = _counter(
    "otelbridge.gc.reclaims",
    "container snapshots reclaimed: snapshot.reclaim spans (deletion -> /snapshot/remove)",
    "{snapshot}",
)
GC_DEGRADED = _counter(
    "otelbridge.gc.degraded",
    "snapshot reclaims slower than sla.gc_reclaim_max_s (gc_degraded; a leak counts as leaked)",
    "{snapshot}",
)
GC_LEAKED = _counter(
    "otelbridge.gc.leaked",
    "container snapshots not removed sla.gc_leak_ttl_s after the container exited; once each",
    "{snapshot}",
)
GC_EVICTED = _counter(
    "otelbridge.gc.evicted",
    "container snapshots no longer followed for the GC budget: the tracked-container limit",
    "{snapshot}",
)
# runtime-internal phases (otelbridge.runtime)
RUNTIME_UNMATCHED = _counter(
    "otelbridge.runtime.unmatched",
    "hook spool entries that matched no startup phase (outside its times, no phase to hold "
    "them, a duplicate) or that no startup took before they grew old",
    "{entry}",
)
RUNTIME_MALFORMED = _counter(
    "otelbridge.runtime.malformed",
    "hook spool lines or files that could not be parsed (skipped)",
    "{entry}",
)
RUNTIME_CLAMPED = _counter(
    "otelbridge.runtime.clamped",
    "runtime phase spans moved inside their parent phase's time range",
    "{span}",
)

COUNTERS: Final = (
    EVENTS_RECEIVED,
    EVENTS_DECODED,
    EVENTS_IGNORED,
    EVENTS_UNKNOWN,
    EVENTS_MALFORMED,
    EVENTS_DROPPED,
    EVENTS_UNMATCHED,
    STARTUPS_COMPLETED,
    STARTUPS_PARTIAL,
    STARTUPS_RECONCILED,
    STATE_EVICTED,
    SNAPSHOTS_UNMATCHED,
    METADATA_LOOKUPS,
    METADATA_FAILED,
    METADATA_MALFORMED,
    METADATA_LATE,
    TRACEPARENT_INVALID,
    TRACESTATE_INVALID,
    ATTRIBUTES_DROPPED,
    ATTRIBUTES_SANITIZED,
    SPANS_EMITTED,
    SPANS_EXPORTED,
    SPANS_DROPPED,
    EXPORT_RETRIES,
    EXPORT_ERRORS,
    STATE_ERRORS,
    PODS_COMPLETED,
    PIPELINE_ERRORS,
    SOURCE_RECONNECTS,
    SOURCE_CONNECT_FAILURES,
    KUBERNETES_WATCH_RESTARTS,
    KUBERNETES_RELISTS,
    KUBERNETES_READY_LATE,
    KUBERNETES_API_ERRORS,
    READINESS_PROBES,
    READINESS_INVALID_TARGET,
    GC_RECLAIMS,
    GC_DEGRADED,
    GC_LEAKED,
    GC_EVICTED,
    RUNTIME_UNMATCHED,
    RUNTIME_MALFORMED,
    RUNTIME_CLAMPED,
)


# -- metrics (otelbridge.emit.metrics) ----------------------------------------------------------
# Every counter above is also an OpenTelemetry observable counter of the same name and unit.
# The instruments below exist only as metrics.

#: Metric attribute: which budget an ``otelbridge.sla.verdict`` point is about (a duration
#: budget of :data:`otelbridge.sla.DURATIONS`, or ``coverage``).
OB_SLA_BUDGET: Final = "otelbridge.sla.budget"

#: Attribute keys metric points carry. Never pod or container names: one time series per
#: namespace (and budget) keeps the cardinality bounded.
METRIC_ATTRIBUTES: Final = (CONTAINERD_NAMESPACE, K8S_NAMESPACE_NAME, OB_SLA_BUDGET)

#: Bucket boundaries of a duration histogram as multiples of its budget: the budget itself
#: (1) is always a boundary, with resolution around it (0.5, 0.75, 1.5, 2), room for
#: startups 10x too slow, and down to 1/200 of it for the fast ones (a 4 s startup budget
#: still resolves 20 ms startups; a 1 s task_create_to_ready budget, 5 ms).
BUDGET_BUCKET_FACTORS: Final = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    5.0,
    10.0,
)


@dataclass(frozen=True, slots=True)
class HistogramDecl:
    """A duration histogram: name, unit (UCUM), what one sample is, and the budget
    (a name of :data:`otelbridge.sla.DURATIONS`) its buckets are placed around."""

    name: str
    unit: str
    description: str
    budget: str
    factors: tuple[float, ...] = BUDGET_BUCKET_FACTORS

    def boundaries(self, budget_s: float) -> tuple[float, ...]:
        """The explicit bucket boundaries for a budget of ``budget_s`` seconds (> 0):
        ``budget_s`` times each factor, rounded to 6 significant digits, ascending."""
        return tuple(sorted({float(f"{budget_s * f:.6g}") for f in self.factors}))


STARTUP_DURATION_HISTOGRAM = HistogramDecl(
    "otelbridge.startup.duration",
    "s",
    "startup_duration of each ready startup whose first events were seen: first event -> ready",
    "startup_duration",
)
SHIM_LAUNCH_HISTOGRAM = HistogramDecl(
    "otelbridge.shim_launch.duration",
    "s",
    "shim_launch_time of each startup: /containers/create -> /tasks/create",
    "shim_launch_time",
)
TASK_CREATE_TO_READY_HISTOGRAM = HistogramDecl(
    "otelbridge.task_create_to_ready.duration",
    "s",
    "task_create_to_ready of each ready startup: /tasks/create -> ready",
    "task_create_to_ready",
)
HISTOGRAMS: Final = (
    STARTUP_DURATION_HISTOGRAM,
    SHIM_LAUNCH_HISTOGRAM,
    TASK_CREATE_TO_READY_HISTOGRAM,
)

#: Values of ``otelbridge.sla.verdict`` (a verdict of :class:`otelbridge.sla.Verdict`).
SLA_VERDICT_VALUES: Final = {"pass": 0, "breach": 1, "insufficient": 2}

SLA_COVERAGE = MetricDecl(
    "otelbridge.sla.coverage",
    "1",
    "startups fully traced / startups seen in the SLA window, per containerd namespace",
)
SLA_VERDICT = MetricDecl(
    "otelbridge.sla.verdict",
    "{verdict}",
    "SLA verdict per containerd namespace and budget over the window: "
    "0 pass, 1 breach, 2 insufficient (too few samples)",
)
GAUGES: Final = (SLA_COVERAGE, SLA_VERDICT)


# -- the collector-side processor (otelbridge processor) ----------------------------------------
#: Metric attribute: the rollout (trace ID, 32 hex digits) a point is about.
OB_ROLLOUT_TRACE_ID: Final = "otelbridge.rollout.trace_id"

PROCESSOR_SPANS_RECEIVED = _counter(
    "otelbridge.processor.spans.received", "spans received over OTLP (gRPC and HTTP)", "{span}"
)
PROCESSOR_SPANS_IGNORED = _counter(
    "otelbridge.processor.spans.ignored",
    "spans received that are not startup spans (other names, no trace, malformed IDs or "
    "times, a second span of one phase)",
    "{span}",
)
PROCESSOR_SPANS_DUPLICATE = _counter(
    "otelbridge.processor.spans.duplicate",
    "startup spans received again (same trace and span ID): counted once",
    "{span}",
)
PROCESSOR_STARTUPS = _counter(
    "otelbridge.processor.startups",
    "container startups recorded (a container.startup span seen for the first time)",
    "{startup}",
)
PROCESSOR_STARTUPS_DROPPED = _counter(
    "otelbridge.processor.startups.dropped",
    "startups not recorded: their rollout holds processor.max_startups_per_rollout already",
    "{startup}",
)
PROCESSOR_PENDING_EXPIRED = _counter(
    "otelbridge.processor.pending.expired",
    "phase spans forgotten: their container.startup never arrived (processor.pending_ttl_s), "
    "or their rollout is full",
    "{span}",
)
PROCESSOR_ROLLOUTS_EVICTED = _counter(
    "otelbridge.processor.rollouts.evicted",
    "rollouts forgotten: idle past processor.rollout_ttl_s, or beyond processor.max_rollouts",
    "{rollout}",
)
PROCESSOR_REQUESTS_REFUSED = _counter(
    "otelbridge.processor.requests.refused",
    "OTLP and API requests refused: no or a wrong token, too large, malformed",
    "{request}",
)
PROCESSOR_COUNTERS: Final = (
    PROCESSOR_SPANS_RECEIVED,
    PROCESSOR_SPANS_IGNORED,
    PROCESSOR_SPANS_DUPLICATE,
    PROCESSOR_STARTUPS,
    PROCESSOR_STARTUPS_DROPPED,
    PROCESSOR_PENDING_EXPIRED,
    PROCESSOR_ROLLOUTS_EVICTED,
    PROCESSOR_REQUESTS_REFUSED,
    STATE_ERRORS,
)

#: Values of ``otelbridge.rollout.verdict`` (a rollout's gate verdict).
ROLLOUT_VERDICT_VALUES: Final = {"pass": 0, "halt": 1, "insufficient": 2}

ROLLOUT_VERDICT = MetricDecl(
    "otelbridge.rollout.verdict",
    "{verdict}",
    "gate verdict of a rollout (otelbridge.rollout.trace_id, otelbridge.rollout.name): "
    "0 pass, 1 halt, 2 insufficient",
)
ROLLOUT_P99 = MetricDecl(
    "otelbridge.rollout.p99",
    "s",
    "p99 of a duration (otelbridge.sla.budget) over a rollout's startups, from its sketch",
)
ROLLOUT_STARTUPS = MetricDecl(
    "otelbridge.rollout.startups", "{startup}", "startups recorded for a rollout"
)
NAMESPACE_VERDICT = MetricDecl(
    "otelbridge.namespace.verdict",
    "{verdict}",
    "gate verdict over every rollout's startups in a namespace (containerd.namespace): "
    "0 pass, 1 halt, 2 insufficient",
)
PROCESSOR_GAUGES: Final = (ROLLOUT_VERDICT, ROLLOUT_P99, ROLLOUT_STARTUPS, NAMESPACE_VERDICT)
