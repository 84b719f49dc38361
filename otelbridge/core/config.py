"""Configuration: one frozen dataclass per stage, defaults in one place.

A config file is TOML with one table per stage (``[source]``, ``[correlate]``,
``[enrich]``); every key is optional and snake_case. :func:`load_config` reports every
problem of a file at once (unknown keys included) as one :class:`ConfigError`. Command
line flags and environment variables (``CONTAINERD_ADDRESS``) override the file.
Exporters are configured by the standard ``OTEL_*`` variables (see
:mod:`otelbridge.export.factory`). ``examples/otelbridge.toml`` shows every key.
"""

from __future__ import annotations

import math
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final

from otelbridge.core.errors import ConfigError
from otelbridge.core.tracecontext import ENV_TRACEPARENT

DEFAULT_ADDRESS = "/run/containerd/containerd.sock"
LINK_POLICIES = ("parent", "link", "ignore")


@dataclass(frozen=True)
class SourceConfig:
    """How the bridge listens to containerd."""

    address: str = DEFAULT_ADDRESS
    """containerd's gRPC socket (``CONTAINERD_ADDRESS`` / ``--address`` override it)."""

    namespaces: tuple[str, ...] = ()
    """containerd namespaces to follow; empty follows all of them."""

    connect_timeout_s: float = 5.0
    """How long one connection attempt (and each listing call) may take."""

    reconnect_initial_s: float = 0.2
    """First delay before re-subscribing after the stream ended; doubles up to the cap."""

    reconnect_max_s: float = 2.0
    """Cap of the re-subscription delay."""

    initial_lookback_s: float = 300.0
    """At the first connection, containers created this recently that the bridge has not
    seen are reported as partial startups; older ones are taken as already running."""

    subscribe_settle_s: float = 0.05
    """Pause between subscribing and listing containers, so the subscription is active
    at containerd before the listing is taken (the listing must not miss a container
    that the stream also misses)."""

    queue_size: int = 65536
    """Envelopes buffered between the source and the pipeline; overflow is dropped and
    counted (``otelbridge.events.dropped``)."""

    relist_interval_s: float = 60.0
    """Every this many seconds containerd is listed again, as a safety net for events
    lost on the way (containers found unknown are reported as partial); 0 disables."""

    batch_window_s: float = 0.1
    """After reading events, the event thread leaves the stream alone this long, then
    reads what came meanwhile in one go: one wake-up for many events (each costs far more
    than its work on a small node). Spans and verdicts come up to this much later; span
    times are containerd's, unaffected. 0 reads each event as it comes; the probe
    readiness source always does, so a probe starts at ``/tasks/start``."""

    def validate(self) -> list[str]:
        problems = []
        if not self.address:
            problems.append("source.address must not be empty")
        for name in ("connect_timeout_s", "reconnect_initial_s", "reconnect_max_s"):
            if getattr(self, name) <= 0:
                problems.append(f"source.{name} must be > 0")
        if self.reconnect_max_s < self.reconnect_initial_s:
            problems.append("source.reconnect_max_s must be >= source.reconnect_initial_s")
        if self.initial_lookback_s < 0:
            problems.append("source.initial_lookback_s must be >= 0")
        if self.subscribe_settle_s < 0:
            problems.append("source.subscribe_settle_s must be >= 0")
        if self.queue_size < 1:
            problems.append("source.queue_size must be >= 1")
        if self.relist_interval_s < 0:
            problems.append("source.relist_interval_s must be >= 0")
        if not 0 <= self.batch_window_s <= 5:
            problems.append("source.batch_window_s must be between 0 and 5")
        return problems


@dataclass(frozen=True)
class CorrelateConfig:
    """How per-container state is kept and when a startup is given up on."""

    startup_timeout_s: float = 300.0
    """A startup not ready this long after it was first seen is emitted with outcome
    ``timeout`` (status ERROR)."""

    idle_timeout_s: float = 900.0
    """State kept for a started container (to recognise restarts and late events) is
    evicted, and counted, after this long without an event."""

    max_tracked: int = 100_000
    """Upper bound of containers tracked at once; beyond it the oldest are evicted and
    counted (an in-flight startup evicted this way is emitted as ``timeout``)."""

    snapshot_ttl_s: float = 60.0
    """How long a ``/snapshot/prepare`` waits for the container that will claim it."""

    max_pending_snapshots: int = 10_000
    """Upper bound of unclaimed snapshot prepares kept."""

    reconcile_grace_s: float = 2.0
    """After a (re)connect listing, how long to wait for the live events of a container
    before concluding they were missed and emitting it as partial."""

    pod_settle_s: float = 3.0
    """A Kubernetes pod's startup ends this long after its last app container completed
    without another one completing (containerd does not say how many a pod has)."""

    def validate(self) -> list[str]:
        problems = []
        for name in ("startup_timeout_s", "idle_timeout_s", "snapshot_ttl_s"):
            if getattr(self, name) <= 0:
                problems.append(f"correlate.{name} must be > 0")
        if self.reconcile_grace_s < 0:
            problems.append("correlate.reconcile_grace_s must be >= 0")
        if self.pod_settle_s < 0:
            problems.append("correlate.pod_settle_s must be >= 0")
        if self.max_tracked < 1:
            problems.append("correlate.max_tracked must be >= 1")
        if self.max_pending_snapshots < 1:
            problems.append("correlate.max_pending_snapshots must be >= 1")
        return problems


@dataclass(frozen=True)
class EnrichConfig:
    """Where trace context and attributes come from, and their limits."""

    traceparent_keys: tuple[str, ...] = ("tracing.k8s.io/traceparent", "traceparent")
    """Label and OCI-annotation keys holding a W3C traceparent, in order of preference.
    The tracestate is read from the same key with ``traceparent`` replaced by
    ``tracestate``."""

    env_traceparent: str = ENV_TRACEPARENT
    """Process environment variable holding a traceparent (looked at after labels and
    annotations); the tracestate is the same name with ``PARENT`` replaced by ``STATE``
    (``TRACESTATE``). Empty disables the lookup."""

    link_policy: str = "parent"
    """Default link to the provisioning trace: ``parent`` (the startup is a child of the
    provisioning span), ``link`` (a new trace with a span link) or ``ignore``."""

    namespace_link_policy: Mapping[str, str] = field(default_factory=dict)
    """Per containerd namespace overrides of ``link_policy``."""

    label_attributes: tuple[str, ...] = ()
    """Container label keys (fnmatch globs) copied to spans as ``container.label.<key>``."""

    max_label_attributes: int = 32
    """At most this many label attributes per startup; the rest are dropped and counted."""

    max_attribute_length: int = 256
    """Tenant-controlled string values (labels, image names) are truncated to this many
    characters; truncations are counted."""

    metadata_timeout_s: float = 2.0
    """How long a completed startup waits for its container record before it is emitted
    without it (counted as ``otelbridge.metadata.late``)."""

    lookup_workers: int = 4
    """Threads looking up container records concurrently."""

    node_name: str = ""
    """``k8s.node.name`` resource attribute; empty takes ``NODE_NAME`` from the environment
    when set."""

    @property
    def env_keys(self) -> tuple[tuple[str, str], ...]:
        """The (traceparent, tracestate) environment variable names looked for."""
        name = self.env_traceparent
        return ((name, name.replace("PARENT", "STATE")),) if name else ()

    def policy_for(self, namespace: str) -> str:
        return self.namespace_link_policy.get(namespace, self.link_policy)

    def validate(self) -> list[str]:
        problems = []
        if self.link_policy not in LINK_POLICIES:
            problems.append(f"enrich.link_policy must be one of {LINK_POLICIES}")
        for ns, policy in self.namespace_link_policy.items():
            if policy not in LINK_POLICIES:
                problems.append(
                    f"enrich.namespace_link_policy[{ns!r}] must be one of {LINK_POLICIES}"
                )
        for key in self.traceparent_keys:
            if "traceparent" not in key:
                problems.append(f"enrich.traceparent_keys: {key!r} does not contain 'traceparent'")
        if self.env_traceparent and "PARENT" not in self.env_traceparent:
            # its TRACESTATE partner is the same name with PARENT replaced by STATE
            problems.append(
                f"enrich.env_traceparent: {self.env_traceparent!r} does not contain 'PARENT'"
            )
        if self.max_label_attributes < 0:
            problems.append("enrich.max_label_attributes must be >= 0")
        if self.max_attribute_length < 16:
            problems.append("enrich.max_attribute_length must be >= 16")
        if self.metadata_timeout_s < 0:
            problems.append("enrich.metadata_timeout_s must be >= 0")
        if self.lookup_workers < 1:
            problems.append("enrich.lookup_workers must be >= 1")
        return problems


READINESS_LABEL = "otelbridge.io/readiness"


@dataclass(frozen=True)
class ReadinessConfig:
    """When a started container counts as ready (PRODUCT.md section 5)."""

    kubernetes: bool = False
    """Watch this node's pods in the Kubernetes API and take the moment the kubelet marks
    a container ready (needs RBAC: get, list and watch pods; docs/kubernetes.md)."""

    kubeconfig: str = ""
    """Kubeconfig file for the ``kubernetes`` source; empty: the in-cluster config."""

    probe: bool = True
    """Probe the target a container names in its ``label`` (label, OCI annotation or
    CRI container annotation): ``tcp://HOST:PORT`` or ``http://HOST:PORT/PATH``."""

    label: str = READINESS_LABEL
    """The label/annotation key holding a container's probe target."""

    probe_interval_s: float = 0.05
    """Time between two attempts of one probe (the error of the measured moment)."""

    probe_timeout_s: float = 1.0
    """How long one attempt may take."""

    probe_deadline_s: float = 120.0
    """A probe that has not succeeded this long after the task started gives up: the
    startup ends ``not_ready`` (status ERROR)."""

    max_concurrent_probes: int = 32
    """Probe attempts in flight at once, so a burst of pods cannot flood the node."""

    def validate(self) -> list[str]:
        problems = []
        for name in ("probe_interval_s", "probe_timeout_s", "probe_deadline_s"):
            if getattr(self, name) <= 0:
                problems.append(f"readiness.{name} must be > 0")
        if self.max_concurrent_probes < 1:
            problems.append("readiness.max_concurrent_probes must be >= 1")
        if not self.label:
            problems.append("readiness.label must not be empty")
        return problems


@dataclass(frozen=True)
class SlaConfig:
    """The contract (PRODUCT.md section 2): startup budgets, coverage, GC budget."""

    startup_duration_p99_s: float = 4.0
    """Budget of the p99 of ``startup_duration`` (first event -> ready), per namespace."""

    shim_launch_s: float = 2.0
    """Budget of ``shim_launch_time`` (``/containers/create`` -> ``/tasks/create``)."""

    task_create_to_ready_s: float = 1.0
    """Budget of ``task_create_to_ready`` (``/tasks/create`` -> ready)."""

    coverage_min: float = 0.90
    """Share of startups that must be fully traced (not partial), per namespace."""

    window_s: float = 300.0
    """Verdicts look at the startups completed in this rolling window (as the
    Kubernetes pod-startup SLI does)."""

    min_samples: int = 20
    """Fewer startups than this in the window give ``insufficient``, never ``pass``."""

    gc_reclaim_max_s: float = 2.0
    """A snapshot reclaim (container deletion -> ``/snapshot/remove``) slower than this
    counts as degraded (``gc_degraded``)."""

    gc_leak_ttl_s: float = 600.0
    """A container's snapshot still there this long after the container exited is
    reported as leaked."""

    def validate(self) -> list[str]:
        problems = []
        for name in (
            "startup_duration_p99_s",
            "shim_launch_s",
            "task_create_to_ready_s",
            "window_s",
            "gc_reclaim_max_s",
            "gc_leak_ttl_s",
        ):
            if getattr(self, name) <= 0:
                problems.append(f"sla.{name} must be > 0")
        if not 0 <= self.coverage_min <= 1:
            problems.append("sla.coverage_min must be between 0 and 1")
        if self.min_samples < 1:
            problems.append("sla.min_samples must be >= 1")
        return problems


DEFAULT_STATE_DIR = "/var/lib/otelbridge"


@dataclass(frozen=True)
class StateConfig:
    """What survives a restart: the span spool and the checkpoint (``otelbridge run``)."""

    dir: str = DEFAULT_STATE_DIR
    """Directory of the state database (``--state-dir`` / ``OTELBRIDGE_STATE_DIR``
    override it); empty keeps nothing on disk (spans are then held in memory only)."""

    max_spool_mb: float = 256.0
    """Disk budget of spans waiting for the collector; beyond it the oldest are dropped,
    logged and counted."""

    commit_interval_s: float = 0.05
    """State and spans are committed together at most this often: a ``kill -9`` loses at
    most this much of the event stream (found again by listing containerd)."""

    shutdown_grace_s: float = 10.0
    """On SIGTERM, how long to keep sending spooled spans before exiting; the rest stays
    on disk for the next start."""

    export_max_backoff_s: float = 30.0
    """Cap of the delay between attempts while the collector is unavailable (retried
    until it answers)."""

    def validate(self) -> list[str]:
        problems = []
        if self.max_spool_mb <= 0:
            problems.append("state.max_spool_mb must be > 0")
        for name in ("commit_interval_s", "export_max_backoff_s"):
            if getattr(self, name) <= 0:
                problems.append(f"state.{name} must be > 0")
        if self.shutdown_grace_s < 0:
            problems.append("state.shutdown_grace_s must be >= 0")
        return problems


@dataclass(frozen=True)
class GateConfig:
    """What halts a rollout (``otelbridge processor``, ``otelbridge gate``). The budgets
    are ``[sla]``'s; these are the rules applied to one rollout's startups."""

    max_failed_ratio: float = 0.0
    """Startups that failed (outcome exited, timeout or not_ready) over this share of the
    rollout's startups halt it; 0: a single container that crashes before ready halts."""

    min_startups: int = 5
    """Fewer startups than this (or than the gate's ``--expect``) give ``insufficient``,
    never ``pass``."""

    slowest: int = 5
    """How many of the slowest startups a verdict lists, with their dominant phase."""

    def validate(self) -> list[str]:
        problems = []
        if not 0 <= self.max_failed_ratio <= 1:
            problems.append("gate.max_failed_ratio must be between 0 and 1")
        if self.min_startups < 1:
            problems.append("gate.min_startups must be >= 1")
        if not 0 <= self.slowest <= 100:
            problems.append("gate.slowest must be between 0 and 100")
        return problems


@dataclass(frozen=True)
class ProcessorConfig:
    """The collector-side processor's bounds (``otelbridge processor``)."""

    rollout_ttl_s: float = 86400.0
    """A rollout no span arrived for this long is forgotten (counted)."""

    max_rollouts: int = 10_000
    """Rollouts (trace IDs) kept at most; beyond it the one idle longest is evicted and
    counted."""

    max_startups_per_rollout: int = 100_000
    """Startups remembered per rollout (duplicates are told apart by span ID); beyond it
    further startups of that rollout are counted and dropped."""

    max_request_bytes: int = 8 * 1024 * 1024
    """An OTLP request larger than this, compressed or not, is refused (HTTP 413, gRPC
    RESOURCE_EXHAUSTED)."""

    pending_ttl_s: float = 600.0
    """A phase span whose startup's other spans never arrive is forgotten after this."""

    def validate(self) -> list[str]:
        problems = []
        for name in ("rollout_ttl_s", "pending_ttl_s"):
            if getattr(self, name) <= 0:
                problems.append(f"processor.{name} must be > 0")
        for name in ("max_rollouts", "max_startups_per_rollout"):
            if getattr(self, name) < 1:
                problems.append(f"processor.{name} must be >= 1")
        if self.max_request_bytes < 1024:
            problems.append("processor.max_request_bytes must be >= 1024")
        return problems


@dataclass(frozen=True)
class ValidateConfig:
    """What `otelbridge validate` requires of a rollout's containers before they run."""

    require_trace_context: tuple[str, ...] = ()
    """Namespaces (fnmatch globs; containerd namespaces for bundles and live containers,
    Kubernetes namespaces for manifests; ``*``: all) whose containers must carry a
    traceparent; elsewhere a missing one is fine and only an invalid one is an error."""

    require_readiness: bool = False
    """A pod template whose containers declare no readiness probe is an error, not a
    warning."""

    def validate(self) -> list[str]:
        problems = []
        if any(not pattern for pattern in self.require_trace_context):
            problems.append("validate.require_trace_context: a pattern is empty")
        return problems


@dataclass(frozen=True)
class RuntimeConfig:
    """Runtime-internal phases recorded on the runtime side (`otelbridge hook`)."""

    hook_spool: str = ""
    """Directory where the runtime-side recorder writes each container's moments (shim
    started, runc create, hooks, runc start); ``--hook-spool`` overrides it; empty: not
    read (startups have no runtime-internal spans)."""

    def validate(self) -> list[str]:
        problems = []
        if self.hook_spool and not self.hook_spool.startswith("/"):
            problems.append(f"runtime.hook_spool must be an absolute path, got {self.hook_spool!r}")
        return problems


@dataclass(frozen=True)
class Config:
    """The whole bridge configuration."""

    source: SourceConfig = field(default_factory=SourceConfig)
    correlate: CorrelateConfig = field(default_factory=CorrelateConfig)
    enrich: EnrichConfig = field(default_factory=EnrichConfig)
    readiness: ReadinessConfig = field(default_factory=ReadinessConfig)
    sla: SlaConfig = field(default_factory=SlaConfig)
    state: StateConfig = field(default_factory=StateConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    processor: ProcessorConfig = field(default_factory=ProcessorConfig)
    validate_: ValidateConfig = field(default_factory=ValidateConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def validate(self) -> list[str]:
        problems = []
        for section in fields(self):
            stage = getattr(self, section.name)
            for f in fields(stage):
                value = getattr(stage, f.name)
                # nan passes every comparison in the stages' validate(): reject it here
                if isinstance(value, float) and not math.isfinite(value):
                    problems.append(
                        f"{section_name(section.name)}.{f.name} must be a finite number"
                    )
        if problems:
            return problems
        return (
            self.source.validate()
            + self.correlate.validate()
            + self.enrich.validate()
            + self.readiness.validate()
            + self.sla.validate()
            + self.state.validate()
            + self.gate.validate()
            + self.processor.validate()
            + self.validate_.validate()
            + self.runtime.validate()
        )

    def checked(self) -> Config:
        """Returns self, or raises :class:`ConfigError` listing every problem."""
        problems = self.validate()
        if problems:
            raise ConfigError(problems)
        return self


def _coerce(value: Any, hint: Any, where: str, problems: list[str]) -> Any:
    """Checks a TOML value against a field's type; converts lists to tuples."""
    origin = typing.get_origin(hint)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(f"{where}: expected a number, got {value!r}")
            return None
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            problems.append(f"{where}: expected a finite number, got {value!r}")
            return None
        return number
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{where}: expected an integer, got {value!r}")
            return None
        return value
    if hint is str:
        if not isinstance(value, str):
            problems.append(f"{where}: expected a string, got {value!r}")
            return None
        return value
    if hint is bool:
        if not isinstance(value, bool):
            problems.append(f"{where}: expected true or false, got {value!r}")
            return None
        return value
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            problems.append(f"{where}: expected a list of strings, got {value!r}")
            return None
        return tuple(value)
    if origin in (Mapping, dict) or (isinstance(origin, type) and issubclass(origin, Mapping)):
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            problems.append(f"{where}: expected a table of strings, got {value!r}")
            return None
        return dict(value)
    raise TypeError(f"unsupported config type {hint!r} at {where}")  # a bug, not bad input


def _section(cls: type[Any], data: Any, name: str, problems: list[str]) -> Any:
    if not isinstance(data, dict):
        problems.append(f"[{name}] must be a table")
        return cls()
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in known:
            problems.append(f"{name}.{key}: unknown key")
            continue
        coerced = _coerce(value, hints[key], f"{name}.{key}", problems)
        if coerced is not None:
            kwargs[key] = coerced
    return cls(**kwargs)


#: TOML section names that are not their field's name (``validate`` is Config's method)
_FIELD_OF_SECTION: Final = {"validate": "validate_"}


def section_name(field_name: str) -> str:
    """The TOML section of a :class:`Config` field (``validate_`` -> ``validate``)."""
    return {v: k for k, v in _FIELD_OF_SECTION.items()}.get(field_name, field_name)


def config_from_mapping(data: Mapping[str, Any]) -> Config:
    """Builds a :class:`Config` from parsed TOML; raises ConfigError with every problem."""
    problems: list[str] = []
    sections: dict[str, Any] = {}
    known = {section_name(f.name): f for f in fields(Config)}
    for name, value in data.items():
        if name not in known:
            problems.append(f"[{name}]: unknown section")
            continue
        field_name = known[name].name
        section_type = typing.get_type_hints(Config)[field_name]
        sections[field_name] = _section(section_type, value, name, problems)
    cfg = Config(**sections)
    problems.extend(cfg.validate())
    if problems:
        raise ConfigError(problems)
    return cfg


def load_config(path: Path | None) -> Config:
    """Reads a TOML config file (``None``: the defaults)."""
    if path is None:
        return Config()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read ({exc.strerror})"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML ({exc})"]) from exc
    return config_from_mapping(data)


__all__ = [
    "DEFAULT_ADDRESS",
    "LINK_POLICIES",
    "Config",
    "CorrelateConfig",
    "EnrichConfig",
    "GateConfig",
    "ProcessorConfig",
    "ReadinessConfig",
    "RuntimeConfig",
    "SlaConfig",
    "SourceConfig",
    "StateConfig",
    "ValidateConfig",
    "config_from_mapping",
    "load_config",
]
