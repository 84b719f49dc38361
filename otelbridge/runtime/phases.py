"""Runtime-internal phases: a startup's spool moments -> child spans of its phases.

::

    shim.launch        /containers/create -> /tasks/create      (otelbridge.shim.reused,
    │                                                            containerd.shim.pid)
    ├── shim.prepare   /containers/create -> runc create invoked
    └── runc.create    runc create invoked -> runc create exited
    task.start         /tasks/create -> /tasks/start
    └── runc.start     runc start invoked -> runc start exited

Contracts (:func:`build_runtime_spans`, pure):

* A moment belongs to the startup when it lies within its phase (``create.*`` in
  ``shim.launch``, ``start.*`` in ``task.start``), or at most :data:`SLACK_NS` outside it
  (a wall clock that stepped): such a span is clamped into its parent and counted. Moments
  further out, of a phase the startup does not have (a restart has no ``shim.launch``),
  an end without its begin, and duplicates are unmatched (counted, no span).
* Spans are ordered as above, each inside its parent's time range, in the parent's
  trace, with the parent's attributes; IDs are deterministic (the startup's identity and
  the span's name, :mod:`otelbridge.core.ids`). A runc that exited non-zero, or whose exit
  was not recorded, gives a span with status ERROR.
* ``shim=reused`` (an earlier container's runc create ran under the same shim process:
  CRI's one shim per pod) sets ``otelbridge.shim.reused=true`` on ``shim.launch``; no
  launch is invented: ``shim.prepare`` then covers reaching the running shim.

:class:`RuntimePhases` is the emitter's hook (``Emitter.on_spans``): it takes the
startup's moments from the :class:`~otelbridge.runtime.spool.Spool` when the startup is
emitted (nothing is held per in-flight container) and never raises.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from otelbridge.core import ids, semconv
from otelbridge.core.counters import Counters
from otelbridge.core.logutil import ThrottledLogger
from otelbridge.core.model import StartupRecord
from otelbridge.runtime.spool import (
    CREATE_BEGIN,
    CREATE_END,
    START_BEGIN,
    START_END,
    Moment,
    Spool,
)

_tlog = ThrottledLogger(logging.getLogger(__name__))
_INTERNAL = Span.SpanKind.SPAN_KIND_INTERNAL
_ERROR = Status.StatusCode.STATUS_CODE_ERROR

SLACK_NS = 100_000_000
"""How far outside its phase a moment may lie and still be the startup's (then clamped)."""


@dataclass(slots=True)
class Built:
    """What :func:`build_runtime_spans` made: the spans, and the moments it could not use
    (``unmatched``) and the spans it had to move inside their parent (``clamped``)."""

    spans: list[Span] = field(default_factory=list)
    unmatched: int = 0
    clamped: int = 0


def _find(spans: Sequence[Span], name: str) -> Span | None:
    for span in spans:
        if span.name == name:
            return span
    return None


def _pick(
    moments: Sequence[Moment], kind: str, parent: Span, used: set[int], after_ns: int = 0
) -> int | None:
    """The index of the moment of ``kind`` for ``parent``: the latest begin, or the
    earliest end not before ``after_ns``, within the parent's range widened by the slack."""
    lo = max(parent.start_time_unix_nano - SLACK_NS, after_ns)
    hi = parent.end_time_unix_nano + SLACK_NS
    found: int | None = None
    for i, m in enumerate(moments):
        if i in used or m.kind != kind or not lo <= m.time_ns <= hi:
            continue
        if found is None:
            found = i
            continue
        later = m.time_ns >= moments[found].time_ns
        if later == kind.endswith(".begin"):  # begins: the latest; ends: the earliest
            found = i
    if found is not None:
        used.add(found)
    return found


class _Maker:
    """Builds the child spans of one parent, clamped into it."""

    def __init__(self, identity: str, parent: Span, built: Built) -> None:
        self._identity = identity
        self._parent = parent
        self._built = built
        self._attributes = list(parent.attributes)

    def span(self, name: str, begin: int, end: int, error: str | None = None) -> None:
        lo, hi = self._parent.start_time_unix_nano, self._parent.end_time_unix_nano
        start = min(max(begin, lo), hi)
        finish = min(max(end, start), hi)
        if (start, finish) != (begin, end):
            self._built.clamped += 1
        parent = self._parent
        self._built.spans.append(
            Span(
                trace_id=parent.trace_id,
                span_id=ids.span_id(self._identity, name),
                parent_span_id=parent.span_id,
                trace_state=parent.trace_state,
                flags=parent.flags,
                name=name,
                kind=_INTERNAL,
                start_time_unix_nano=start,
                end_time_unix_nano=finish,
                attributes=self._attributes,
                status=Status(code=_ERROR, message=error) if error else None,
            )
        )


def _runc_span(
    maker: _Maker, name: str, *, command: str, begin: Moment, end: Moment | None, parent: Span
) -> None:
    """A runc command's span: from its start to its exit (to the parent's end, ERROR,
    when the exit was not recorded); ERROR when runc exited non-zero."""
    start = begin.time_ns
    if end is None:
        maker.span(name, start, parent.end_time_unix_nano, f"{command}: its exit was not recorded")
        return
    status = end.status
    error = f"{command} exited with status {status}" if status else None
    maker.span(name, start, end.time_ns, error)


def build_runtime_spans(
    rec: StartupRecord, spans: Sequence[Span], moments: Sequence[Moment]
) -> Built:
    """The runtime spans of one startup whose phase spans are ``spans`` (see the module
    docstring). Sets the shim attributes on ``shim.launch``; pure otherwise."""
    built = Built()
    used: set[int] = set()
    identity = ids.startup_identity(rec.key, rec.incarnation_ns, rec.attempt)
    launch = _find(spans, semconv.SPAN_SHIM_LAUNCH)
    if launch is not None:
        begin = _pick(moments, CREATE_BEGIN, launch, used)
        if begin is not None:
            created = moments[begin]
            end = _pick(moments, CREATE_END, launch, used, after_ns=created.time_ns)
            maker = _Maker(identity, launch, built)
            maker.span(semconv.SPAN_SHIM_PREPARE, launch.start_time_unix_nano, created.time_ns)
            _runc_span(
                maker,
                semconv.SPAN_RUNC_CREATE,
                command="runc create",
                begin=created,
                end=None if end is None else moments[end],
                parent=launch,
            )
            if created.shim in ("new", "reused"):
                launch.attributes.append(
                    KeyValue(
                        key=semconv.OB_SHIM_REUSED,
                        value=AnyValue(bool_value=created.shim == "reused"),
                    )
                )
            if created.shim_pid:
                launch.attributes.append(
                    KeyValue(
                        key=semconv.CONTAINERD_SHIM_PID,
                        value=AnyValue(int_value=created.shim_pid),
                    )
                )
    start = _find(spans, semconv.SPAN_TASK_START)
    if start is not None:
        begin = _pick(moments, START_BEGIN, start, used)
        if begin is not None:
            end = _pick(moments, START_END, start, used, after_ns=moments[begin].time_ns)
            maker = _Maker(identity, start, built)
            _runc_span(
                maker,
                semconv.SPAN_RUNC_START,
                command="runc start",
                begin=moments[begin],
                end=None if end is None else moments[end],
                parent=start,
            )
    built.unmatched = len(moments) - len(used)
    return built


class RuntimePhases:
    """The emitter's hook: adds a startup's runtime spans to its span tree (see the
    module docstring). Event thread only."""

    def __init__(self, spool: Spool, counters: Counters) -> None:
        self.spool = spool
        self._counters = counters

    def attach(self, rec: StartupRecord, spans: list[Span]) -> None:
        """Takes ``rec``'s moments from the spool and appends its runtime spans to
        ``spans``; counts what did not fit. Never raises: a bug costs the runtime spans
        of one startup (counted in ``otelbridge.pipeline.errors``), not the startup."""
        try:
            moments = self.spool.take(rec.key)
            if not moments:
                return
            built = build_runtime_spans(rec, spans, moments)
            spans.extend(built.spans)
            if built.unmatched:
                self._counters.inc(semconv.RUNTIME_UNMATCHED, built.unmatched)
            if built.clamped:
                self._counters.inc(semconv.RUNTIME_CLAMPED, built.clamped)
        except Exception:
            self._counters.inc(semconv.PIPELINE_ERRORS)
            _tlog.log(
                logging.ERROR, "bug", "%s: could not add its runtime spans", rec.key, exc_info=True
            )


__all__ = ["SLACK_NS", "Built", "RuntimePhases", "build_runtime_spans"]
