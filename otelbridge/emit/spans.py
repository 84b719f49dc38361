"""Emit: a completed startup record -> OTLP ``Span`` messages.

The span tree of one container startup (PRODUCT.md section 4)::

    container.startup      first event -> ready (or the end of the attempt)
    ├── container.create   /snapshot/prepare -> /containers/create
    ├── shim.launch        /containers/create -> /tasks/create
    ├── task.start         /tasks/create -> /tasks/start
    └── readiness.wait     /tasks/start -> ready

Every start and end time is an envelope time from the record. A phase whose boundary
events were not observed (missed by the bridge) is left out and named in
``otelbridge.phases.missing``. A phase that began but never finished (the task exited, the
container was deleted, the startup timed out) ends with the startup and has status ERROR,
so the waterfall shows where it got stuck; the phases after it never began and are
simply absent.

Spans are built as OTLP protobuf messages, not SDK span objects: those cost several
times more per span than the replay budget allows (docs/design.md). The spans of every
startup are encoded as bytes and parsed once (:mod:`otelbridge.emit.wire`), which costs
about half of setting a message's fields one by one.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from otelbridge.core import ids, semconv
from otelbridge.core.ids import pod_parent
from otelbridge.core.model import (
    AttrValue,
    Enrichment,
    Outcome,
    PhaseBound,
    PodContext,
    StartupRecord,
)
from otelbridge.core.tracecontext import TraceContext
from otelbridge.emit import wire
from otelbridge.emit.wire import any_value

_HAS_IS_REMOTE = 0x100  # SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
_IS_REMOTE = 0x200  # SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
_SAMPLED = 0x01
_INTERNAL = Span.SpanKind.SPAN_KIND_INTERNAL
_ERROR = Status.StatusCode.STATUS_CODE_ERROR

_OUTCOME_ERRORS = {
    Outcome.EXITED: "the task exited before the container was ready",
    Outcome.DELETED: "the container was deleted before its task started",
    Outcome.TIMEOUT: "the container was not ready within the startup timeout",
    Outcome.NOT_READY: "the readiness source gave up before the container was ready",
}


def kv(key: str, value: AttrValue) -> KeyValue:
    """One OTLP attribute as a message (the hot spans encode theirs: :mod:`.wire`)."""
    return KeyValue(key=key, value=any_value(value))


def build_startup_spans(
    rec: StartupRecord,
    enrichment: Enrichment,
    bounds: tuple[list[PhaseBound], list[str]] | None = None,
) -> list[Span]:
    """The spans of one completed startup: ``container.startup`` first, then its phases;
    ``bounds`` is ``rec.phase_bounds()`` when the caller has it already.

    Pure: the same record and enrichment always give the same spans, IDs included.
    """
    identity = ids.startup_identity(rec.key, rec.incarnation_ns, rec.attempt)
    root_id = ids.span_id(identity, semconv.SPAN_CONTAINER_STARTUP)
    parent = enrichment.parent
    if parent is not None:
        trace_id = parent.trace_id
        parent_span_id = parent.span_id
        trace_flags = parent.trace_flags
        trace_state = parent.trace_state
        root_flags = (
            trace_flags | _HAS_IS_REMOTE | (_IS_REMOTE if enrichment.parent_is_remote else 0)
        )
    else:
        trace_id = ids.trace_id(identity)
        parent_span_id = b""
        # startups are always recorded (coverage is part of the contract): a trace of
        # our own is sampled; a provisioning context's flag is passed on unchanged
        trace_flags = _SAMPLED
        trace_state = ""
        root_flags = trace_flags | _HAS_IS_REMOTE
    child_flags = trace_flags | _HAS_IS_REMOTE
    end_ns = rec.end_ns if rec.end_ns is not None else rec.start_ns
    start_ns = rec.start_ns

    phases, missing = bounds if bounds is not None else rec.phase_bounds()
    attrs = wire.attributes(enrichment.attributes)
    if missing:
        attrs += wire.attribute(semconv.OB_MISSING_PHASES, missing)
    encoded = [
        wire.span(
            wire.trace_fields(trace_id, trace_state, root_flags),
            span_id=root_id,
            parent_span_id=parent_span_id,
            name=semconv.SPAN_CONTAINER_STARTUP,
            start_ns=start_ns,
            end_ns=end_ns,
            attributes=attrs,
        )
    ]
    shared = wire.trace_fields(trace_id, trace_state, child_flags)
    phase_attrs = wire.attributes(enrichment.phase_attributes)
    for phase in phases:
        encoded.append(
            wire.span(
                shared,
                span_id=ids.span_id(identity, phase.name),
                parent_span_id=root_id,
                name=phase.name,
                start_ns=phase.begin_ns,
                end_ns=phase.end_ns,
                attributes=phase_attrs,
            )
        )
    spans = wire.parse(encoded)
    for phase, child in zip(phases, spans[1:], strict=True):
        if not phase.complete:
            child.status.code = _ERROR
            child.status.message = f"{phase.name} did not complete"

    root = spans[0]
    message = _OUTCOME_ERRORS.get(rec.outcome) if rec.outcome is not None else None
    if rec.outcome is Outcome.EXITED and rec.exit_status is not None:
        message = f"{message} (exit status {rec.exit_status})"
    elif rec.outcome is Outcome.NOT_READY and rec.failure:
        message = f"{message}: {rec.failure}"
    if message:
        root.status.code = _ERROR
        root.status.message = message
    if rec.oom_ns:
        root.events.extend(Span.Event(time_unix_nano=t, name=semconv.EVENT_OOM) for t in rec.oom_ns)
    link = enrichment.link
    if link is not None:
        root.links.append(
            Span.Link(
                trace_id=link.trace_id,
                span_id=link.span_id,
                trace_state=link.trace_state,
                flags=link.trace_flags | _HAS_IS_REMOTE | _IS_REMOTE,
            )
        )
    return spans


def build_pod_span(
    pod: PodContext,
    policy: str,
    *,
    start_ns: int,
    end_ns: int,
    attributes: Sequence[tuple[str, AttrValue]],
    error: str | None = None,
) -> Span:
    """The ``pod.startup`` span: the sandbox's first event to the pod's last container
    ready; a child of the provisioning span (policy ``parent``) or linked to it
    (``link``)."""
    me = pod_parent(pod, policy)
    ctx = pod.trace.context if policy != "ignore" else None
    remote_parent = ctx is not None and policy == "parent"
    span = Span(
        trace_id=me.trace_id,
        span_id=me.span_id,
        parent_span_id=ctx.span_id if remote_parent and ctx is not None else b"",
        trace_state=me.trace_state,
        flags=me.trace_flags | _HAS_IS_REMOTE | (_IS_REMOTE if remote_parent else 0),
        name=semconv.SPAN_POD_STARTUP,
        kind=_INTERNAL,
        start_time_unix_nano=start_ns,
        end_time_unix_nano=max(end_ns, start_ns),
        attributes=[kv(k, v) for k, v in attributes],
        status=Status(code=_ERROR, message=error) if error else None,
    )
    if ctx is not None and policy == "link":
        span.links.append(
            Span.Link(
                trace_id=ctx.trace_id,
                span_id=ctx.span_id,
                trace_state=ctx.trace_state,
                flags=ctx.trace_flags | _HAS_IS_REMOTE | _IS_REMOTE,
            )
        )
    return span


def provisioning_span(
    ctx: TraceContext,
    *,
    name: str,
    start_ns: int,
    end_ns: int,
    attributes: Sequence[tuple[str, AttrValue]] = (),
    error: str | None = None,
) -> Span:
    """The root span of a rollout that ``ctx`` names (``otelbridge rollout``, the demo)."""
    return Span(
        trace_id=ctx.trace_id,
        span_id=ctx.span_id,
        trace_state=ctx.trace_state,
        flags=ctx.trace_flags | _HAS_IS_REMOTE,
        name=name,
        kind=Span.SpanKind.SPAN_KIND_INTERNAL,
        start_time_unix_nano=start_ns,
        end_time_unix_nano=end_ns,
        attributes=[kv(k, v) for k, v in attributes],
        status=Status(code=_ERROR, message=error) if error else None,
    )
