"""Emit: a reclaimed snapshot -> a ``snapshot.reclaim`` span.

One span per container snapshot reclaimed (:class:`~otelbridge.core.model.ReclaimRecord`): from
the container's deletion to ``/snapshot/remove``, both envelope times. It is a trace of
its own (PRODUCT.md section 4), with deterministic IDs derived from the namespace, the
container id, the snapshot key and the deletion time, so a replay gives the same span.
When the tracker knows the container's ``container.startup`` span for certain, the span
links to it. Status ERROR when the reclaim was degraded (slower than
``sla.gc_reclaim_max_s``) or the snapshot had been reported leaked.
"""

from __future__ import annotations

from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from otelbridge.core import ids, semconv
from otelbridge.core.model import ReclaimRecord
from otelbridge.emit import wire

_SAMPLED = 0x01
_HAS_IS_REMOTE = 0x100  # SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK (and "not remote")
_ERROR = Status.StatusCode.STATUS_CODE_ERROR


def reclaim_identity(reclaim: ReclaimRecord) -> str:
    """The string the span's IDs derive from."""
    key = reclaim.key
    return f"{key.namespace}\x00{key.id}\x00{reclaim.snapshot_key}\x00{reclaim.start_ns}\x00gc"


def build_reclaim_span(reclaim: ReclaimRecord) -> Span:
    """The ``snapshot.reclaim`` span of one reclaim. Pure: the same record always gives
    the same span, IDs included."""
    identity = reclaim_identity(reclaim)
    attrs = (
        wire.attribute(semconv.CONTAINER_ID, reclaim.key.id)
        + wire.cached_attribute(semconv.CONTAINERD_NAMESPACE, reclaim.key.namespace)
        + wire.attribute(semconv.OB_GC_SNAPSHOT_KEY, reclaim.snapshot_key)  # unique
        + wire.cached_attribute(semconv.OB_GC_DEGRADED, reclaim.degraded)
    )
    if reclaim.leaked:  # rare: set only when true, like otelbridge.gc.overlap
        attrs += wire.cached_attribute(semconv.OB_GC_LEAKED, True)
    if reclaim.snapshotter:
        attrs += wire.cached_attribute(semconv.CONTAINERD_SNAPSHOTTER, reclaim.snapshotter)
    span = Span.FromString(
        wire.span(
            wire.trace_fields(ids.trace_id(identity), "", _SAMPLED | _HAS_IS_REMOTE),
            span_id=ids.span_id(identity, semconv.SPAN_SNAPSHOT_RECLAIM),
            parent_span_id=b"",
            name=semconv.SPAN_SNAPSHOT_RECLAIM,
            start_ns=reclaim.start_ns,
            end_ns=max(reclaim.end_ns, reclaim.start_ns),
            attributes=attrs,
        )
    )
    if reclaim.leaked:
        span.status.code = _ERROR
        span.status.message = (
            f"the snapshot was reported leaked; removed {reclaim.duration_s:.3f} s "
            "after the container's deletion"
        )
    elif reclaim.degraded:
        span.status.code = _ERROR
        span.status.message = (
            f"snapshot reclaim took {reclaim.duration_s:.3f} s, over the GC budget"
        )
    startup = reclaim.startup
    if startup is not None:
        # the container's own startup trace: always recorded, hence sampled; ours, so
        # not remote
        span.links.append(
            Span.Link(
                trace_id=startup.trace_id,
                span_id=startup.span_id,
                flags=_SAMPLED | _HAS_IS_REMOTE,
            )
        )
    return span


__all__ = ["build_reclaim_span", "reclaim_identity"]
