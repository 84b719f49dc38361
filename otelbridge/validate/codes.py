"""Every check `otelbridge validate` makes, declared once: its code, severity and meaning.

``docs/validate.md`` lists each of them (``tests/unit/validate/test_docs.py`` fails when
this module and the document drift apart). A code is a stable interface: CD tools match on
it in the ``--json`` output, so a code is never renamed, only added.

The W3C codes are generated: ``traceparent.<reason>`` and ``tracestate.<reason>`` for every
reason :mod:`otelbridge.core.tracecontext` returns (the same values as the span attributes
``otelbridge.traceparent.invalid`` / ``otelbridge.tracestate.invalid``).

Severity: ``error`` means the rollout breaks the contract (a runtime or the API server would
refuse the container, or the bridge cannot link or measure it as asked) and makes the
command exit 1; ``warning`` is reported and does not change the exit code. One check has a
configurable severity: ``readiness.probe_missing`` is an error under
``[validate] require_readiness``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from otelbridge.core.tracecontext import TRACEPARENT_INVALID_REASONS, TRACESTATE_INVALID_REASONS

__all__ = ["CHECKS", "ERROR", "WARNING", "Check", "Severity", "check"]

Severity: TypeAlias = Literal["error", "warning"]
ERROR: Final[Severity] = "error"
WARNING: Final[Severity] = "warning"


@dataclass(frozen=True, slots=True)
class Check:
    """One check: ``code`` (stable), its default ``severity``, what it means, and which
    inputs it applies to (``bundle``, ``manifest``, ``live``)."""

    code: str
    severity: Severity
    meaning: str
    applies_to: tuple[str, ...]


_B, _M, _L = "bundle", "manifest", "live"
_ALL = (_B, _M, _L)


def _c(code: str, severity: Severity, meaning: str, *applies_to: str) -> Check:
    return Check(code, severity, meaning, applies_to or _ALL)


_STATIC: Final = (
    # -- the inputs -------------------------------------------------------------------------
    _c(
        "input.unreadable",
        ERROR,
        "the input could not be read (missing, not UTF-8, not JSON or YAML, too large, "
        "containerd unreachable): the check is incomplete, exit code 2",
    ),
    # -- the OCI runtime-spec (config.md, config-linux.md and its JSON schema) ---------------
    _c("oci.not_an_object", ERROR, "config.json is not a JSON object", _B),
    _c("oci.version_missing", ERROR, "`ociVersion` is absent (REQUIRED)", _B),
    _c("oci.version_type", ERROR, "`ociVersion` is not a string", _B),
    _c("oci.version_format", ERROR, "`ociVersion` is not a SemVer 2.0.0 version", _B),
    _c("oci.root_missing", ERROR, "`root` is absent (REQUIRED on every platform but Windows)", _B),
    _c("oci.root_path", ERROR, "`root.path` is absent, not a string, or empty", _B),
    _c(
        "oci.root_path_not_found",
        WARNING,
        "`root.path` names no directory in the bundle (only checked for a bundle directory)",
        _B,
    ),
    _c("oci.process_missing", WARNING, "no `process`: the container cannot be started", _B),
    _c("oci.args_missing", ERROR, "`process.args` is absent (REQUIRED but on Windows)", _B),
    _c("oci.args_type", ERROR, "`process.args` is not an array of strings", _B),
    _c("oci.args_empty", ERROR, "`process.args` is empty (at least one entry is REQUIRED)", _B),
    _c("oci.cwd_missing", ERROR, "`process.cwd` is absent or not a string (REQUIRED)", _B),
    _c("oci.cwd_relative", ERROR, "`process.cwd` is not an absolute path", _B),
    _c("oci.env_type", ERROR, "`process.env` or a hook's `env` is not an array of strings", _B),
    _c(
        "oci.env_format",
        ERROR,
        "a `process.env` entry has no `=`, an empty name or a NUL (runc refuses it)",
        _B,
    ),
    _c("oci.rlimit_duplicate", ERROR, "two `process.rlimits` entries of the same `type`", _B),
    _c(
        "oci.field_type",
        ERROR,
        "a field has the wrong JSON type (an object, boolean, string or unsigned integer "
        "where the spec says so); a runtime cannot decode the config",
        _B,
    ),
    _c("oci.mount_destination_missing", ERROR, "a mount without a string `destination`", _B),
    _c(
        "oci.mount_destination_relative",
        WARNING,
        "a mount `destination` is relative: deprecated on Linux (read as relative to `/`)",
        _B,
    ),
    _c("oci.hook_stage_unknown", WARNING, "a `hooks` key that is no hook stage: never run", _B),
    _c("oci.hook_prestart_deprecated", WARNING, "`prestart` hooks are deprecated", _B),
    _c("oci.hook_path_missing", ERROR, "a hook without a string `path` (REQUIRED)", _B),
    _c("oci.hook_path_relative", ERROR, "a hook `path` is not absolute (MUST be)", _B),
    _c("oci.hook_args_type", ERROR, "a hook's `args` is not an array of strings", _B),
    _c("oci.hook_timeout", ERROR, "a hook `timeout` is set and not an integer >= 1", _B),
    _c("oci.annotations_type", ERROR, "`annotations` is not an object", _B),
    _c("oci.annotation_key_empty", ERROR, "an annotation key is empty (MUST NOT be)", _B),
    _c("oci.annotation_value_type", ERROR, "an annotation value is not a string", _B),
    _c("oci.namespace_type", ERROR, "a `linux.namespaces` entry of no known type", _B),
    _c("oci.namespace_duplicate", ERROR, "two `linux.namespaces` entries of one type", _B),
    _c("oci.namespace_path_relative", ERROR, "a namespace `path` is not absolute", _B),
    # -- Kubernetes manifests -----------------------------------------------------------------
    _c("k8s.not_an_object", ERROR, "a YAML document that is not an object with a `kind`", _M),
    _c("k8s.pod_template_missing", ERROR, "a workload without its pod template or pod spec", _M),
    _c(
        "k8s.workload_ref",
        WARNING,
        "an Argo Rollout whose pod template is referenced (`workloadRef`): not checked here",
        _M,
    ),
    _c("k8s.containers_missing", ERROR, "a pod spec without a non-empty `containers` list", _M),
    _c(
        "k8s.metadata_type",
        ERROR,
        "labels or annotations that are not a map of strings, or a container or env entry "
        "that is not an object (the API server refuses them)",
        _M,
    ),
    # -- the trace contract (PRODUCT.md section 5) ------------------------------------------
    _c(
        "trace.missing",
        ERROR,
        "no traceparent where `[validate] require_trace_context` matches the namespace",
    ),
    _c(
        "trace.tracestate_alone",
        WARNING,
        "a tracestate without the traceparent of its pair in the same place: ignored",
    ),
    _c(
        "trace.shadowed",
        WARNING,
        "a second traceparent, different from the one the bridge reads first: not used",
    ),
    _c(
        "trace.not_on_pod",
        WARNING,
        "a traceparent on a pod's container or on the workload object: the bridge reads the "
        "pod template's annotations and labels",
        _M,
    ),
    _c(
        "trace.env_duplicate",
        WARNING,
        "a trace-context variable defined twice in `process.env` with different values: the "
        "bridge reads the first, runc gives the process the last",
        _B,
    ),
    # -- readiness (PRODUCT.md section 5) ---------------------------------------------------
    _c(
        "readiness.target_too_long",
        ERROR,
        "an `otelbridge.io/readiness` target longer than 512 characters: the bridge ignores it",
    ),
    _c(
        "readiness.target_invalid",
        ERROR,
        "an `otelbridge.io/readiness` target that is not `tcp://HOST:PORT` or "
        "`http://HOST:PORT/PATH`",
    ),
    _c(
        "readiness.probe_missing",
        WARNING,
        "a pod template's container declares no `readinessProbe` (an error with "
        "`[validate] require_readiness`)",
        _M,
    ),
    _c(
        "readiness.probe_handler",
        ERROR,
        "a `readinessProbe` with no handler or more than one (exec, httpGet, tcpSocket, grpc)",
        _M,
    ),
    # -- tenant limits the bridge applies (docs/telemetry.md) ----------------------------------
    _c(
        "limits.control_characters",
        WARNING,
        "a label or annotation key or value holds control characters: escaped in telemetry",
    ),
    _c(
        "limits.label_key",
        WARNING,
        "a label `enrich.label_attributes` selects has a key the bridge drops (empty, over "
        "128 characters, not printable ASCII)",
    ),
    _c(
        "limits.label_count",
        WARNING,
        "more labels selected than `enrich.max_label_attributes`: the rest are dropped",
    ),
    _c(
        "limits.value_length",
        WARNING,
        "a selected label's value is longer than `enrich.max_attribute_length`: it is cut",
    ),
)

_W3C: Final = tuple(
    _c(f"traceparent.{reason}", ERROR, f"an invalid traceparent: `{reason}`")
    for reason in TRACEPARENT_INVALID_REASONS
) + tuple(
    _c(f"tracestate.{reason}", ERROR, f"an invalid tracestate (the bridge drops it): `{reason}`")
    for reason in TRACESTATE_INVALID_REASONS
)

#: Every check, by code.
CHECKS: Final[dict[str, Check]] = {c.code: c for c in (*_STATIC, *_W3C)}


def check(code: str) -> Check:
    """The declared check of ``code``; ``KeyError`` for an undeclared one (a bug)."""
    return CHECKS[code]
