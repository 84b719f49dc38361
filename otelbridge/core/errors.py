"""The errors otelbridge raises, in one tree.

::

    OtelbridgeError
    ├── ConfigError              bad configuration; carries every problem found
    ├── ContainerdError          a containerd call failed (translated from grpc.RpcError)
    │   ├── ContainerdUnavailable    socket missing, daemon down or restarting: retry
    │   ├── ContainerdMisconfigured  permission denied, not containerd: retrying cannot heal
    │   ├── NotFound                 the object is gone (a short-lived container): skip
    │   └── MethodNotAllowed         the read-only allow-list refused a call: a bug
    ├── DecodeError              an envelope or recording line could not be decoded: skip
    ├── ExportError              an exporter failed
    │   └── RetryableExportError     the collector asked to retry (UNAVAILABLE, 503, ...)
    ├── StateError               the state directory or database cannot be used
    ├── ReportError              `otelbridge sla` cannot use its source or write its report
    └── EnvironmentProblem       the machine lacks something a command needs (demo)

The hot path (decode, correlate, enrich, emit) does not raise these to its callers: it
logs, counts and skips. They exist for the edges, where a foreign exception (grpc,
protobuf, OSError) is translated with ``raise ... from exc``.
"""

from __future__ import annotations

from collections.abc import Sequence


class OtelbridgeError(Exception):
    """Base of every error otelbridge raises on purpose."""


class ConfigError(OtelbridgeError):
    """The configuration is invalid. ``problems`` lists every problem, not only the first."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration:\n  - " + "\n  - ".join(self.problems))


class ContainerdError(OtelbridgeError):
    """A call to containerd failed."""


class ContainerdUnavailable(ContainerdError):
    """containerd cannot be reached right now; retrying later may succeed."""


class ContainerdMisconfigured(ContainerdError):
    """containerd cannot be used at this address and waiting will not change that
    (permission denied, the socket is not containerd's): the message says what to do."""


class NotFound(ContainerdError):
    """The object asked for does not exist (any more)."""


class MethodNotAllowed(ContainerdError):
    """A call outside the read-only allow-list was attempted and refused."""


class DecodeError(OtelbridgeError):
    """Input (an envelope, a recording line) could not be decoded."""


class ExportError(OtelbridgeError):
    """An exporter could not deliver spans."""


class RetryableExportError(ExportError):
    """The receiver signalled a temporary failure; the same batch may be sent again."""


class StateError(OtelbridgeError):
    """The state directory or its database cannot be used; the message names the knob."""


class EnvironmentProblem(OtelbridgeError):
    """The machine lacks something the command needs; the message says what to do."""
