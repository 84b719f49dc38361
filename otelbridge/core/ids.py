"""Deterministic trace and span IDs.

Processing the same events twice (a replay, a restart, a resend) must give the same
spans, so IDs are hashes of what identifies a startup: the container's namespace and id,
its incarnation (see :class:`~otelbridge.core.model.StartupRecord`), the attempt, and the span's
role. BLAKE2b is in the standard library, fast, and keyed hashing is not needed here.
"""

from __future__ import annotations

from hashlib import blake2b

from otelbridge.core import semconv
from otelbridge.core.model import ContainerKey, PodContext
from otelbridge.core.tracecontext import TraceContext

_ZERO8 = bytes(8)
_ZERO16 = bytes(16)


def _digest(parts: str, size: int) -> bytes:
    return blake2b(parts.encode("utf-8", "surrogatepass"), digest_size=size).digest()


def startup_identity(key: ContainerKey, incarnation_ns: int, attempt: int) -> str:
    """The string every ID of one startup derives from."""
    return f"{key.namespace}\x00{key.id}\x00{incarnation_ns}\x00{attempt}"


def pod_identity(key: ContainerKey, identity_ns: int) -> str:
    """The string a pod's IDs derive from: its sandbox's key and creation time."""
    return f"{key.namespace}\x00{key.id}\x00{identity_ns}\x00pod"


def span_id(identity: str, role: str) -> bytes:
    """8 bytes, never all zero (an all-zero span id is invalid in W3C and OTLP)."""
    sid = _digest(identity + "\x00" + role, 8)
    return sid if sid != _ZERO8 else b"\x00" * 7 + b"\x01"


def trace_id(identity: str) -> bytes:
    """16 bytes for a startup that starts its own trace; never all zero."""
    tid = _digest(identity + "\x00trace", 16)
    return tid if tid != _ZERO16 else b"\x00" * 15 + b"\x01"


_SAMPLED = 0x01


def pod_parent(pod: PodContext, policy: str) -> TraceContext:
    """The ``pod.startup`` span of ``pod`` as the parent its containers' spans name.

    Its trace is the provisioning trace the pod's annotations name when the link policy
    is ``parent`` and the context is valid, else the pod's own (deterministic) trace.
    """
    identity = pod_identity(pod.key, pod.identity_ns)
    span = span_id(identity, semconv.SPAN_POD_STARTUP)
    ctx = pod.trace.context if policy == "parent" else None
    if ctx is not None:
        return TraceContext(ctx.trace_id, span, ctx.trace_flags, ctx.trace_state)
    return TraceContext(trace_id(identity), span, _SAMPLED)
