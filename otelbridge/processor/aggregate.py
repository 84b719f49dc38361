"""Startup spans in, per rollout and per namespace aggregates out.

:class:`Aggregator` walks each OTLP ``ExportTraceServiceRequest`` and keeps only the spans
a verdict needs: ``container.startup`` (a startup: its outcome, partial flag, namespace,
container, pod), its phases ``container.create``, ``shim.launch``, ``task.start``,
``readiness.wait`` (children whose ``parent_span_id`` is the startup's span ID),
``pod.startup`` (counted as pods) and ``rollout`` (its ``otelbridge.rollout.name`` names
the rollout). Every other span is counted ``ignored`` and creates nothing.

* A rollout is a trace ID. Spans arrive in any order and more than once: a span counts
  once per (trace ID, span ID) (in the role it was accepted in: a startup, one phase of
  a startup, a pod, a rollout span), a duplicate is counted and changes nothing. The pieces of
  one startup are held together under (trace ID, startup span ID) until its durations
  can be measured (:mod:`otelbridge.sla`'s definitions, as docs/telemetry.md emits them):
  ``startup_duration`` = container.startup's own span, when ready and not partial;
  ``shim_launch_time`` = shim.launch, when it completed (its status is not ERROR);
  ``task_create_to_ready`` = task.start's start to readiness.wait's end, when ready.
  A startup counts once its ``container.startup`` arrived; phases waiting for it are
  forgotten after ``processor.pending_ttl_s`` (counted ``pending.expired``).
* Per rollout and per namespace (``containerd.namespace``, and ``k8s.namespace.name``
  where set, as a namespace of its own) it keeps counts, a
  :class:`~otelbridge.processor.sketch.Durations` and the slowest ``gate.slowest``
  startups. A namespace is over every rollout held: an evicted rollout's startups leave it.
* Bounds, each counted: ``processor.max_startups_per_rollout`` startups (pending ones
  included) per rollout, further ones dropped (``startups.dropped``; their phase spans,
  which could never be held, ``pending.expired`` at once); ``processor.rollout_ttl_s``
  of idleness and ``processor.max_rollouts`` (the idlest evicted: ``rollouts.evicted``).
  "Now" is the injected clock's; a rollout's idleness counts from its last span accepted
  (duplicates do not refresh it). Strings kept per startup are cut to 256 characters.
* Counters: :meth:`Aggregator.ingest` counts ``spans.received`` (every span of the
  request), ``spans.ignored`` (other names, malformed IDs or times, a second span of one
  phase), ``spans.duplicate``, ``startups``, ``startups.dropped``, ``pending.expired``;
  only when the request was accepted. The receivers count ``requests.refused`` only.
* With a :class:`~otelbridge.processor.store.RolloutStore`, what a request adds is
  committed **before** :meth:`Aggregator.ingest` returns and applied to memory only
  after: a failed write raises StateError with memory unchanged. Evictions are deleted
  from the store before they leave memory. At start the store's log is replayed, so a
  restart gives the same documents, dedup state and pending phases (:mod:`.store`).

Thread-safe: one lock guards everything (ingest, queries, expiry).
"""

from __future__ import annotations

import bisect
import heapq
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any, Final

from otelbridge import sla
from otelbridge.core import semconv
from otelbridge.core.clock import Clock, SystemClock
from otelbridge.core.config import Config
from otelbridge.core.counters import Counters
from otelbridge.core.errors import StateError
from otelbridge.core.logutil import ThrottledLogger
from otelbridge.core.semconv import MetricDecl
from otelbridge.processor.holdings import (
    CD_NS,
    K8S_NS,
    KINDS,
    PHASES,
    POD,
    STARTUP,
    Agg,
    NsKey,
    Order,
    Overlay,
    Rollout,
    Slowest,
    Startup,
    ns_keys_of,
)
from otelbridge.processor.sketch import key_of
from otelbridge.processor.store import Fact, RolloutStore
from otelbridge.processor.verdict import FAILED_OUTCOMES, judge

_log = logging.getLogger(__name__)
_tlog = ThrottledLogger(_log)

_ERROR: Final = 2  # Status.STATUS_CODE_ERROR
_ATTRS: Final = {  # what the verdict reads of a container.startup, pod.startup, rollout
    semconv.CONTAINER_ID: 0,
    CD_NS: 1,
    K8S_NS: 2,
    semconv.K8S_POD_NAME: 3,
    semconv.OB_STARTUP_OUTCOME: 4,
    semconv.OB_PARTIAL: 5,
    semconv.OB_ROLLOUT_NAME: 6,
}
_MAX_TEXT: Final = 256  # tenant strings kept per startup: bounds memory under hostile input
_MAX_NS: Final = 2**63 - 1  # SQLite's INTEGER; OTLP's fixed64 may be larger
_NS: Final = 1e9
_ZERO8: Final = bytes(8)
_ZERO16: Final = bytes(16)


class Aggregator:
    """Per rollout and per namespace startup aggregates (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        counters: Counters,
        *,
        clock: Clock | None = None,
        store: RolloutStore | None = None,
    ) -> None:
        self._cfg = config
        self._counters = counters
        self._clock = clock or SystemClock()
        self._store = store
        self._limits = sla.budgets(config.sla)
        self._budget = tuple(self._limits[d] for d in sla.DURATIONS)
        self._max_startups = config.processor.max_startups_per_rollout
        self._top = config.gate.slowest
        self._lock = threading.Lock()
        self._rollouts: OrderedDict[bytes, Rollout] = OrderedDict()  # idlest first
        self._ns: dict[NsKey, Agg] = {}
        self._pending: OrderedDict[tuple[bytes, bytes], int] = OrderedDict()  # -> first seen
        self._intern: dict[str, str] = {}
        self._closed = False
        if store is not None:
            self._replay(store)

    # -- ingest -----------------------------------------------------------------------------
    def ingest(self, request: Any) -> None:
        """Takes the startup spans of an ``ExportTraceServiceRequest``. Never raises on
        content (what is not used is counted); with a store, what it accepted is committed
        before it returns, and StateError (memory unchanged, nothing counted) when it
        cannot be written."""
        with self._lock:
            now = self._clock.now_ns()
            facts, touched, tally = self._plan(request, now)
            if facts and self._store is not None:
                self._store.commit(facts, touched)
            self._apply(facts, replay=False)
            received, ignored, duplicate, dropped, expired = tally
            c, p = self._counters, semconv
            c.inc(p.PROCESSOR_SPANS_RECEIVED, received)
            for metric, n in (
                (p.PROCESSOR_SPANS_IGNORED, ignored),
                (p.PROCESSOR_SPANS_DUPLICATE, duplicate),
                (p.PROCESSOR_STARTUPS, sum(1 for f in facts if f.kind == STARTUP)),
                (p.PROCESSOR_STARTUPS_DROPPED, dropped),
                (p.PROCESSOR_PENDING_EXPIRED, expired),
            ):
                if n:
                    c.inc(metric, n)
            self._trim()

    def _plan(
        self, request: Any, now: int
    ) -> tuple[list[Fact], dict[bytes, int], tuple[int, int, int, int, int]]:
        """The facts a request adds, decided against memory without changing it: dedup,
        the per-rollout bound, phases of startups a full rollout cannot hold."""
        kinds, rollouts, limit = KINDS, self._rollouts, self._max_startups
        facts: list[Fact] = []
        touched: dict[bytes, int] = {}
        overlays: dict[bytes, Overlay] = {}
        received = ignored = duplicate = dropped = expired = 0
        last_trace = last_touched = b""
        r: Rollout | None = None
        ov = Overlay()
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received += 1
                    kind = kinds.get(span.name)
                    if kind is None:
                        ignored += 1
                        continue
                    trace = span.trace_id
                    if trace != last_trace:
                        if len(trace) != 16 or trace == _ZERO16:
                            ignored += 1
                            continue
                        r = rollouts.get(trace)
                        ov = overlays.setdefault(trace, Overlay())
                        last_trace = trace
                    sid = span.span_id
                    if len(sid) != 8 or sid == _ZERO8:
                        ignored += 1
                        continue
                    # dedup per role: the span a root, a phase, a pod or a rollout span was
                    # accepted as (a span ID is unique in its trace; two spans of different
                    # names under one ID are malformed input, and each counts once)
                    if kind == STARTUP:
                        st = r.startups.get(sid) if r is not None else None
                        if (st is not None and st.rooted) or sid in ov.roots:
                            duplicate += 1
                            continue
                    elif kind <= len(PHASES):
                        parent = span.parent_span_id
                        if len(parent) != 8 or parent == _ZERO8:
                            ignored += 1
                            continue
                        st = r.startups.get(parent) if r is not None else None
                        i = kind - 1
                        held = st.ph[i] if st is not None else None
                        other = held[0] if held is not None else ov.phases.get((parent, i))
                        if other is not None:
                            if other == sid:
                                duplicate += 1
                            else:
                                ignored += 1  # a second span of one phase: not ours to judge
                            continue
                    elif sid in ov.others or (
                        r is not None and (sid in r.pods or sid in r.rollout_spans)
                    ):
                        duplicate += 1
                        continue
                    start, end = span.start_time_unix_nano, span.end_time_unix_nano
                    if not (0 < start <= _MAX_NS and 0 < end <= _MAX_NS):
                        ignored += 1  # a span without times measures nothing
                        continue
                    if kind == STARTUP:
                        if st is None and sid not in ov.startups:
                            if len(ov.startups) + (len(r.startups) if r else 0) >= limit:
                                dropped += 1
                                continue
                            ov.startups.add(sid)
                        ov.roots.add(sid)
                        fact = Fact(trace, sid, kind, b"", start, end, now, *self._attributes(span))
                    elif kind <= len(PHASES):
                        if st is None and parent not in ov.startups:
                            if len(ov.startups) + (len(r.startups) if r else 0) >= limit:
                                expired += 1  # its startup could never be held
                                continue
                            ov.startups.add(parent)
                        ov.phases[(parent, i)] = sid
                        failed = int(span.status.code == _ERROR)
                        fact = Fact(trace, sid, kind, parent, start, end, now, failed)
                    else:
                        ov.others.add(sid)
                        fact = Fact(trace, sid, kind, b"", start, end, now, *self._attributes(span))
                    facts.append(fact)
                    if trace != last_touched:  # keep `touched` in order of the last touch
                        touched.pop(trace, None)
                        touched[trace] = now
                        last_touched = trace
        return facts, touched, (received, ignored, duplicate, dropped, expired)

    def _attributes(
        self, span: Any
    ) -> tuple[int, str | None, str | None, str | None, str | None, str | None, str | None]:
        """What the verdict reads of a container.startup, pod.startup or rollout span, in
        one pass over its attributes: the Fact's fields from ``flag`` (partial) on."""
        got: list[str | None] = [None] * 7
        partial = 0
        for kv in span.attributes:
            slot = _ATTRS.get(kv.key)
            if slot is None:
                continue
            value = kv.value
            if slot == 5:
                partial = int(value.bool_value or value.string_value == "true")
                continue
            text = value.string_value
            if text:
                got[slot] = self._text(text) if slot != 0 else text[:_MAX_TEXT]
        cid, ns, k8s_ns, pod, outcome, _, name = got
        return partial, outcome, cid, ns, k8s_ns, pod, name

    def _text(self, text: str) -> str:
        """A repeated value (namespace, outcome, pod, name), shared, cut to _MAX_TEXT."""
        found = self._intern.get(text)
        if found is None:
            if len(self._intern) >= 4096:
                self._intern.clear()
            found = self._intern[text] = text[:_MAX_TEXT]
        return found

    # -- applying facts (the only place memory changes, live and at replay) -------------------
    def _apply(self, facts: Iterable[Fact], *, replay: bool) -> None:
        """Applies accepted facts in order. Live, each makes its rollout the latest
        touched; at replay, the idleness order is restored afterwards (:meth:`_replay`)."""
        rollouts, pending = self._rollouts, self._pending
        last = b""
        r = Rollout(b"")
        for f in facts:
            trace, span, kind, parent, start, end, at, flag = f[:8]
            if trace != last:
                found = rollouts.get(trace)
                if found is None:
                    found = rollouts[trace] = Rollout(trace)
                elif not replay:
                    rollouts.move_to_end(trace)
                r, last = found, trace
            r.last_ns = max(r.last_ns, at) if replay else at
            if kind == STARTUP:
                self._apply_startup(r, f)
            elif kind <= len(PHASES):
                st = r.startups.get(parent)
                if st is None:
                    st = r.startups[parent] = Startup(trace, parent)
                    pending[(trace, parent)] = at
                st.ph[kind - 1] = (span, start, end, not flag)
                if st.rooted and kind > 1:  # container.create measures nothing
                    aggs = [r.agg, *(self._ns[k] for k in st.ns_keys())]
                    self._measure(st, aggs, 0b010 if kind == 2 else 0b100)
            elif kind == POD:
                keys = ns_keys_of(f.ns, f.k8s_ns)
                r.pods[span] = keys
                r.agg.pods += 1
                for key in keys:
                    agg = self._ns_agg(key)
                    agg.pods += 1
                    agg.version += 1
            else:
                r.rollout_spans.append(span)
                r.name = r.name or f.name

    def _apply_startup(self, r: Rollout, f: Fact) -> None:
        st = r.startups.get(f.span)
        if st is None:
            st = r.startups[f.span] = Startup(f.trace, f.span)
        else:
            self._pending.pop((f.trace, f.span), None)
        st.rooted = True
        st.start, st.end, st.partial = f.start_ns, f.end_ns, bool(f.flag)
        st.outcome, st.cid, st.ns, st.k8s, st.pod = f.outcome, f.container, f.ns, f.k8s_ns, f.pod
        failed = st.outcome in FAILED_OUTCOMES
        keys = st.ns_keys()
        aggs = [r.agg, *(self._ns_agg(k) for k in keys)]
        for agg in aggs:
            agg.startups += 1
            agg.failed += failed
            agg.partial += st.partial
            agg.version += 1
        if self._top:
            lists = [agg.slowest for agg in aggs]
            lists += [r.slow_ns.setdefault(k, []) for k in keys]
            self._rank(lists, st)
        self._measure(st, aggs, 0b111)

    def _rank(self, lists: list[Slowest], st: Startup) -> None:
        """Enters ``st`` into each of the slowest lists it belongs in."""
        top, slowest = self._top, -st.seconds()
        order: Order | None = None  # built only for a list it may enter (it has a hex)
        for lst in lists:
            if len(lst) < top or slowest <= lst[-1][0][0]:
                order = order or st.order()
                if len(lst) < top or order < lst[-1][0]:
                    bisect.insort(lst, (order, st), key=lambda e: e[0])
                    del lst[top:]

    def _measure(self, st: Startup, aggs: list[Agg], which: int) -> None:
        """Adds the durations of ``st`` in ``which`` (bit i: sla.DURATIONS[i]) that are
        measurable and not added yet, to each of ``aggs`` (its rollout's, namespaces')."""
        todo = which & ~st.added
        if not todo:
            return
        for i, value in enumerate(st.values()):
            if value is None or not todo & (1 << i):
                continue
            st.added |= 1 << i
            key, breach, name = key_of(value), value > self._budget[i], sla.DURATIONS[i]
            for agg in aggs:
                agg.durations.add_key(name, key, breach)
                agg.version += 1

    def _ns_agg(self, key: NsKey) -> Agg:
        agg = self._ns.get(key)
        if agg is None:
            agg = self._ns[key] = Agg()
        return agg

    # -- forgetting -------------------------------------------------------------------------
    def expire(self) -> None:
        """Forgets rollouts idle past ``processor.rollout_ttl_s`` and phase spans whose
        startup did not arrive within ``processor.pending_ttl_s`` (both counted); the
        server calls it every second. A store that cannot delete is logged and the
        forgetting retried on the next call (memory unchanged meanwhile)."""
        with self._lock:
            now = self._clock.now_ns()
            cutoff = now - int(self._cfg.processor.rollout_ttl_s * _NS)
            idle = []
            for trace, r in self._rollouts.items():
                if r.last_ns > cutoff:
                    break
                idle.append(trace)
            self._evict(idle)
            self._expire_pending(now - int(self._cfg.processor.pending_ttl_s * _NS))
            self._trim()

    def _expire_pending(self, cutoff: int) -> None:
        victims: dict[bytes, list[bytes]] = {}
        for (trace, sid), first in self._pending.items():
            if first > cutoff:
                break
            victims.setdefault(trace, []).append(sid)
        if not victims:
            return
        gone = []  # traces of nothing but forgotten phase spans: never a rollout
        for trace, sids in victims.items():
            r = self._rollouts[trace]
            if len(sids) == len(r.startups) and not r.pods and not r.rollout_spans:
                gone.append(trace)
        if not self._forget(gone, {t: v for t, v in victims.items() if t not in gone}):
            return
        spans = sum(self._drop_pending(t, sid) for t, sids in victims.items() for sid in sids)
        for trace in gone:
            del self._rollouts[trace]
        self._counters.inc(semconv.PROCESSOR_PENDING_EXPIRED, spans)

    def _drop_pending(self, trace: bytes, sid: bytes) -> int:
        """Forgets a pending startup (its phase spans); returns how many spans it had."""
        st = self._rollouts[trace].startups.pop(sid)
        self._pending.pop((trace, sid), None)
        return sum(1 for p in st.ph if p is not None)

    def _trim(self) -> None:
        """Evicts the idlest rollouts beyond ``processor.max_rollouts``."""
        excess = len(self._rollouts) - self._cfg.processor.max_rollouts
        if excess > 0:
            idlest = iter(self._rollouts)
            self._evict([next(idlest) for _ in range(excess)])

    def _evict(self, traces: Sequence[bytes]) -> None:
        if not traces or not self._forget(traces, {}):
            return
        for trace in traces:
            self._remove(self._rollouts.pop(trace))
        self._counters.inc(semconv.PROCESSOR_ROLLOUTS_EVICTED, len(traces))

    def _forget(self, traces: Sequence[bytes], pending: dict[bytes, list[bytes]]) -> bool:
        """Deletes from the store first (memory follows only when that worked)."""
        if self._store is None:
            return True
        try:
            self._store.forget(traces, pending)
        except StateError as exc:
            _tlog.warning("forget", "%s; eviction retried later", exc)
            return False
        return True

    def _remove(self, r: Rollout) -> None:
        """Takes an evicted rollout's startups out of the namespaces."""
        touched: set[NsKey] = set()
        for sid, st in r.startups.items():
            if not st.rooted:
                self._pending.pop((r.trace, sid), None)
                continue
            values = st.values()
            failed = st.outcome in FAILED_OUTCOMES
            for key in st.ns_keys():
                agg = self._ns[key]
                touched.add(key)
                agg.startups -= 1
                agg.failed -= failed
                agg.partial -= st.partial
                for i, value in enumerate(values):
                    if value is not None and st.added & (1 << i):
                        agg.durations.remove_key(
                            sla.DURATIONS[i], key_of(value), value > self._budget[i]
                        )
        for keys in r.pods.values():
            for key in keys:
                self._ns[key].pods -= 1
                touched.add(key)
        for key in touched:
            agg = self._ns[key]
            if agg.startups == 0 and agg.pods == 0:
                del self._ns[key]
            else:
                agg.version += 1
                agg.dirty = agg.dirty or any(e[1].trace == r.trace for e in agg.slowest)

    # -- reading ----------------------------------------------------------------------------
    def rollout(
        self, trace_id: bytes, *, expect: int | None = None, sketches: bool = False
    ) -> dict[str, Any]:
        """The verdict document of a rollout (unknown: insufficient, 0 startups)."""
        with self._lock:
            r = self._rollouts.get(trace_id)
            agg = r.agg if r is not None else Agg()
            return judge(
                counts=agg.counts(),
                durations=agg.durations,
                slowest=[st.item() for _, st in agg.slowest],
                config=self._cfg,
                expect=expect,
                trace_id=trace_id.hex(),
                name=r.name if r is not None else None,
                sketches=sketches,
            )

    def namespace(
        self, name: str, *, sketches: bool = False, attribute: str | None = None
    ) -> dict[str, Any]:
        """The verdict document of a namespace over every rollout held (``trace_id`` null,
        ``namespace`` set). ``attribute`` picks ``containerd.namespace`` or
        ``k8s.namespace.name``; None: the containerd namespace of that name if one is
        known, else the Kubernetes one."""
        with self._lock:
            if attribute is None:
                attribute = CD_NS if (CD_NS, name) in self._ns else K8S_NS
            key = (attribute, name)
            agg = self._ns.get(key) or Agg()
            if agg.dirty:
                lists = (r.slow_ns.get(key, ()) for r in self._rollouts.values())
                agg.slowest = heapq.nsmallest(
                    self._top, (e for lst in lists for e in lst), key=lambda e: e[0]
                )
                agg.dirty = False
            doc = judge(
                counts=agg.counts(),
                durations=agg.durations,
                slowest=[st.item() for _, st in agg.slowest],
                config=self._cfg,
                expect=None,
                namespace=name,
                sketches=sketches,
            )
            doc["namespace_attribute"] = attribute
            return doc

    def gauges(self) -> list[tuple[MetricDecl, dict[str, str], float]]:
        """The points of ``semconv.PROCESSOR_GAUGES`` now: per rollout (with startups or
        a name) its verdict, startups and the p99 of each duration measured; per namespace
        its verdict. Labels are attribute keys (``otelbridge.rollout.trace_id``, ...)."""
        values = semconv.ROLLOUT_VERDICT_VALUES
        out: list[tuple[MetricDecl, dict[str, str], float]] = []
        with self._lock:
            for r in self._rollouts.values():
                if not (r.agg.startups or r.agg.pods or r.name):
                    continue  # phase spans waiting for their startup: not a rollout yet
                _, verdict, p99s = self._summary(r)
                labels = {semconv.OB_ROLLOUT_TRACE_ID: r.trace.hex()}
                labels[semconv.OB_ROLLOUT_NAME] = r.name or ""
                out.append((semconv.ROLLOUT_VERDICT, labels, float(values[verdict])))
                out.append((semconv.ROLLOUT_STARTUPS, labels, float(r.agg.startups)))
                for duration, p99 in zip(sla.DURATIONS, p99s, strict=True):
                    if p99 is not None:
                        point = {**labels, semconv.OB_SLA_BUDGET: duration}
                        out.append((semconv.ROLLOUT_P99, point, p99))
            for (attribute, name), agg in self._ns.items():
                verdict = self._judge_counts(agg)["verdict"]
                out.append((semconv.NAMESPACE_VERDICT, {attribute: name}, float(values[verdict])))
        return out

    def _summary(self, r: Rollout) -> tuple[int, str, list[float | None]]:
        """(version, verdict, p99s) of a rollout, judged again only when it changed."""
        if r.summary is None or r.summary[0] != r.agg.version:
            doc = self._judge_counts(r.agg)
            p99s = [doc["budgets"][d]["p99_s"] for d in sla.DURATIONS]
            r.summary = (r.agg.version, doc["verdict"], p99s)
        return r.summary

    def _judge_counts(self, agg: Agg) -> dict[str, Any]:
        return judge(
            counts=agg.counts(), durations=agg.durations, slowest=(), config=self._cfg, expect=None
        )

    # -- lifecycle --------------------------------------------------------------------------
    def _replay(self, store: RolloutStore) -> None:
        """Rebuilds memory from the store's log, then the rollouts' idleness order."""
        order, records = store.load()
        for trace, facts, forgotten in records:
            self._apply(facts, replay=True)
            for sid in forgotten:
                r = self._rollouts.get(trace)
                if r is not None and sid in r.startups and not r.startups[sid].rooted:
                    self._drop_pending(trace, sid)
                    if r.empty():
                        del self._rollouts[trace]
        replayed, self._rollouts = self._rollouts, OrderedDict()
        for trace, last_ns in order:
            r = replayed.pop(trace, None)
            if r is not None:
                r.last_ns = last_ns
                self._rollouts[trace] = r
        self._rollouts.update(replayed)  # rows without a rollouts row (none expected)
        self._trim()  # max_rollouts may have been lowered since

    def close(self) -> None:
        """Closes the store; idempotent (the store's owner may close it as well)."""
        with self._lock:
            if not self._closed and self._store is not None:
                self._store.close()
            self._closed = True


__all__ = ["Aggregator"]
