"""Kubernetes pods: admission (PodContext), PodDirectory, PodTracker and the pod's spans.

Records are the realistic CRI ones of tests/unit/containerd/test_cri_records.py, read by
``container_info`` as the bridge reads containerd's. Time is a FakeClock: nothing sleeps.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from otelbridge.containerd.records import container_info
from otelbridge.core import ids, semconv
from otelbridge.core.clock import FakeClock
from otelbridge.core.config import EnrichConfig
from otelbridge.core.counters import Counters
from otelbridge.core.ids import pod_parent
from otelbridge.core.model import (
    ContainerInfo,
    ContainerKey,
    Outcome,
    PodContext,
    StartupRecord,
)
from otelbridge.core.tracecontext import NOT_FOUND, TraceContext
from otelbridge.correlate.pods import PodDirectory, PodTracker
from otelbridge.emit.spans import build_pod_span, build_startup_spans
from otelbridge.enrich.stage import Enricher
from tests.unit.containerd.test_cri_records import (
    APP_ID,
    NS,
    PARENT_ID,
    POD_ANNOTATIONS,
    POD_NAME,
    POD_NAMESPACE,
    POD_UID,
    SANDBOX_ID,
    SIDECAR_ID,
    TRACE_ID,
    app_record,
    pod_labels,
    sandbox_metadata,
    sandbox_record,
)

S = 1_000_000_000
MS = 1_000_000
T0 = 1_764_330_123_171_353_122
SANDBOX_KEY = ContainerKey(NS, SANDBOX_ID)
HAS_IS_REMOTE = 0x100  # SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
IS_REMOTE = 0x200  # SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
TP_KEY = "tracing.k8s.io/traceparent"


def tp(parent_id: str, flags: str = "01") -> str:
    return f"00-{TRACE_ID}-{parent_id}-{flags}"


def make_enricher(counters: Counters | None = None, **config: Any) -> Enricher:
    return Enricher(EnrichConfig(**config), counters or Counters())


def sandbox_info(**kw: Any) -> ContainerInfo:
    return container_info(NS, sandbox_record(**kw))


def app_info(container_id: str = APP_ID, name: str = "app", **kw: Any) -> ContainerInfo:
    return container_info(NS, app_record(container_id, name, **kw))


def admitted_pod(enricher: Enricher | None = None, **kw: Any) -> tuple[ContainerInfo, PodContext]:
    sandbox = (enricher or make_enricher()).admit(sandbox_info(**kw))
    assert sandbox.pod is not None
    return sandbox, sandbox.pod


def startup(
    info: ContainerInfo | None,
    *,
    start_ns: int,
    end_ns: int,
    outcome: Outcome = Outcome.READY,
    partial: bool = False,
    attempt: int = 1,
) -> StartupRecord:
    """A completed startup (create -> task create -> task start = ready)."""
    key = info.key if info is not None else ContainerKey(NS, "x")
    ready = outcome is Outcome.READY
    return StartupRecord(
        key=key,
        incarnation_ns=start_ns,
        attempt=attempt,
        snapshot_prepare_ns=None if partial else start_ns,
        container_create_ns=None if partial else start_ns + MS,
        task_create_ns=start_ns + 2 * MS,
        task_start_ns=end_ns if ready else None,
        ready_ns=end_ns if ready else None,
        end_ns=end_ns,
        outcome=outcome,
        partial=partial,
        pid=4242,
        info=info,
    )


def attrs(span: Span) -> dict[str, object]:
    out: dict[str, object] = {}
    for a in span.attributes:
        kind = a.value.WhichOneof("value")
        assert kind is not None
        value = getattr(a.value, kind)
        out[a.key] = list(value.values) if kind == "array_value" else value
    return out


# -- admission: a sandbox's record yields its pod ---------------------------------------------


def test_admitting_a_sandbox_builds_its_pod_from_the_pod_annotation() -> None:
    sandbox, pod = admitted_pod()
    assert pod == PodContext(
        namespace=NS,
        sandbox_id=SANDBOX_ID,
        name=POD_NAME,
        k8s_namespace=POD_NAMESPACE,
        uid=POD_UID,
        identity_ns=T0,
        trace=pod.trace,
    )
    assert pod.key == SANDBOX_KEY
    assert pod.trace.source == f"pod_annotation:{TP_KEY}"
    assert pod.trace.invalid_reason is None
    assert pod.trace.context == TraceContext(bytes.fromhex(TRACE_ID), bytes.fromhex(PARENT_ID), 1)
    assert sandbox.trace == pod.trace


def test_admitted_sandbox_keeps_no_raw_annotations() -> None:
    sandbox, _ = admitted_pod()
    assert sandbox.cri is not None
    assert (dict(sandbox.cri.annotations), dict(sandbox.cri.pod_annotations)) == ({}, {})
    assert (dict(sandbox.annotations), dict(sandbox.env)) == ({}, {})
    assert (sandbox.cri.kind, sandbox.cri.pod_name, sandbox.cri.pod_uid) == (
        "sandbox",
        POD_NAME,
        POD_UID,
    )


def test_pod_tracestate_comes_with_the_pod_traceparent() -> None:
    annotations = {**POD_ANNOTATIONS, "tracing.k8s.io/tracestate": "rollout=web-v42"}
    _, pod = admitted_pod(metadata=sandbox_metadata(annotations=annotations))
    assert pod.trace.context is not None
    assert pod.trace.context.trace_state == "rollout=web-v42"


PID_POD, PID_LABEL, PID_OCI, PID_ENV = (
    "1111111111111111",
    "2222222222222222",
    "3333333333333333",
    "4444444444444444",
)


def _carriers(where: set[str]) -> dict[str, Any]:
    """sandbox_record arguments carrying a traceparent in the carriers ``where``."""
    kw: dict[str, Any] = {
        "metadata": sandbox_metadata(
            annotations={"other": "x", **({TP_KEY: tp(PID_POD)} if "pod" in where else {})}
        ),
        "labels": {
            **pod_labels("sandbox"),
            **({TP_KEY: tp(PID_LABEL)} if "label" in where else {}),
        },
    }
    if "oci" in where:
        kw["oci_annotations"] = {TP_KEY: tp(PID_OCI)}
    if "env" in where:
        kw["env"] = (f"TRACEPARENT={tp(PID_ENV, '00')}",)
    return kw


@pytest.mark.parametrize(
    ("where", "source", "parent_id"),
    [
        ({"pod", "label", "oci", "env"}, f"pod_annotation:{TP_KEY}", PID_POD),
        ({"label", "oci", "env"}, f"label:{TP_KEY}", PID_LABEL),
        ({"oci", "env"}, f"annotation:{TP_KEY}", PID_OCI),
        ({"env"}, "env:TRACEPARENT", PID_ENV),
        ({"pod", "env"}, f"pod_annotation:{TP_KEY}", PID_POD),
        ({"label", "env"}, f"label:{TP_KEY}", PID_LABEL),
    ],
    ids=lambda v: "+".join(sorted(v)) if isinstance(v, set) else None,
)
def test_pod_trace_lookup_order(where: set[str], source: str, parent_id: str) -> None:
    _, pod = admitted_pod(**_carriers(where))
    assert pod.trace.source == source
    assert pod.trace.context is not None
    assert pod.trace.context.span_id.hex() == parent_id


def test_pod_without_any_traceparent_has_none() -> None:
    _, pod = admitted_pod(**_carriers(set()))
    assert pod.trace == NOT_FOUND


def test_pod_annotation_under_the_second_key_beats_a_sandbox_label_under_the_first() -> None:
    # carrier-major: where a value comes from matters more than its spelling
    _, pod = admitted_pod(
        metadata=sandbox_metadata(annotations={"traceparent": tp(PID_POD)}),
        labels={**pod_labels("sandbox"), TP_KEY: tp(PID_LABEL)},
    )
    assert pod.trace.source == "pod_annotation:traceparent"
    assert pod.trace.context is not None and pod.trace.context.span_id.hex() == PID_POD


def test_invalid_pod_annotation_wins_and_makes_the_pod_its_own_trace() -> None:
    counters = Counters()
    enricher = make_enricher(counters)
    _, pod = admitted_pod(
        enricher,
        metadata=sandbox_metadata(annotations={TP_KEY: tp(PID_POD).upper()}),
        labels={**pod_labels("sandbox"), TP_KEY: tp(PID_LABEL)},
    )
    assert (pod.trace.source, pod.trace.invalid_reason) == (
        f"pod_annotation:{TP_KEY}",
        "trace_id_format",
    )
    assert pod.trace.context is None
    a = dict(enricher.pod_attributes(pod, outcome="ready", containers=1, partial=False))
    assert a[semconv.OB_TRACEPARENT_INVALID] == "trace_id_format"
    assert counters.get(semconv.TRACEPARENT_INVALID) == 1
    me = pod_parent(pod, "parent")
    assert me.trace_id == ids.trace_id(ids.pod_identity(SANDBOX_KEY, T0))


def test_link_policy_keeps_the_pod_trace_context() -> None:
    _, pod = admitted_pod(make_enricher(link_policy="link"))
    assert pod.trace.context is not None
    assert pod.trace.context.trace_id.hex() == TRACE_ID


def test_ignore_policy_of_the_namespace_still_builds_the_pod_without_a_trace() -> None:
    enricher = make_enricher(namespace_link_policy={NS: "ignore"})
    _, pod = admitted_pod(enricher)
    assert (pod.name, pod.uid, pod.identity_ns) == (POD_NAME, POD_UID, T0)
    assert pod.trace == NOT_FOUND


def test_admitting_a_plain_container_gives_no_pod() -> None:
    info = make_enricher().admit(
        ContainerInfo("default", "web", labels={"traceparent": tp("1" * 16)})
    )
    assert info.pod is None and info.cri is None


# -- admission: app containers follow their pod ------------------------------------------------


def test_app_container_admitted_with_its_pod_takes_the_pod_trace() -> None:
    enricher = make_enricher()
    _, pod = admitted_pod(enricher)
    # containerd copies pod annotations matching pod_annotations globs to the container's
    # OCI annotations, and an image may set TRACEPARENT: neither is the pod's context
    app = enricher.admit(
        app_info(oci_annotations={TP_KEY: tp(PID_OCI)}, env=(f"TRACEPARENT={tp(PID_ENV)}",)),
        pod,
    )
    assert app.pod == pod
    assert app.trace == pod.trace
    assert app.cri is not None
    assert (app.cri.container_name, dict(app.cri.annotations)) == ("app", {})


def test_app_container_of_a_pod_without_a_trace_does_not_use_its_own() -> None:
    enricher = make_enricher()
    _, pod = admitted_pod(enricher, **_carriers(set()))
    app = enricher.admit(app_info(oci_annotations={TP_KEY: tp(PID_OCI)}), pod)
    assert app.trace == NOT_FOUND


def test_app_container_admitted_without_its_pod_has_none() -> None:
    app = make_enricher().admit(app_info())
    assert app.pod is None
    assert app.trace == NOT_FOUND


@pytest.mark.parametrize("which", ["sandbox", "app"])
def test_admitting_twice_changes_nothing(which: str) -> None:
    counters = Counters()
    enricher = make_enricher(
        counters, label_attributes=("io.kubernetes.*",), max_attribute_length=16
    )
    _, pod = admitted_pod(enricher)
    once = (
        enricher.admit(sandbox_info())
        if which == "sandbox"
        else enricher.admit(app_info(attempt=2), pod)
    )
    dropped = counters.get(semconv.ATTRIBUTES_DROPPED)
    assert once.dropped > 0  # the uid label was cut: the second admission must not recount
    assert enricher.admit(once) == once
    assert enricher.admit(once, pod) == once
    assert counters.get(semconv.ATTRIBUTES_DROPPED) == dropped


# -- PodDirectory -------------------------------------------------------------------------------


def pod_named(i: int) -> PodContext:
    return PodContext(NS, f"sandbox-{i}", f"pod-{i}", "shop", f"uid-{i}", T0 + i, NOT_FOUND)


def test_directory_gives_what_was_put() -> None:
    directory = PodDirectory()
    assert directory.get(SANDBOX_KEY) is None
    _, pod = admitted_pod()
    directory.put(pod)
    assert directory.get(SANDBOX_KEY) == pod
    assert directory.get(ContainerKey("default", SANDBOX_ID)) is None


def test_directory_forgets_the_oldest_beyond_its_limit() -> None:
    directory = PodDirectory(limit=3)
    for i in range(4):
        directory.put(pod_named(i))
    assert directory.get(pod_named(0).key) is None
    assert [directory.get(pod_named(i).key) for i in (1, 2, 3)] == [pod_named(i) for i in (1, 2, 3)]


def test_directory_put_again_makes_a_pod_the_newest() -> None:
    directory = PodDirectory(limit=3)
    for i in range(3):
        directory.put(pod_named(i))
    directory.put(pod_named(0))
    directory.put(pod_named(3))
    assert directory.get(pod_named(0).key) == pod_named(0)
    assert directory.get(pod_named(1).key) is None


def test_directory_used_from_many_threads_keeps_its_bound() -> None:
    directory = PodDirectory(limit=100)
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work(t: int) -> None:
        try:
            start.wait()
            for i in range(t * 1000, t * 1000 + 500):
                directory.put(pod_named(i))
                directory.get(pod_named(i - 1).key)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert errors == []
    found = [i for t in range(8) for i in range(t * 1000, t * 1000 + 500)]
    assert sum(directory.get(pod_named(i).key) is not None for i in found) == 100


# -- PodTracker ---------------------------------------------------------------------------------

SETTLE_S, TIMEOUT_S, IDLE_S = 3.0, 300.0, 900.0


class Pod:
    """A tracker on a FakeClock, with the admitted sandbox and app containers of one pod."""

    def __init__(self) -> None:
        self.clock = FakeClock(T0)
        self.tracker = PodTracker(self.clock, settle_s=SETTLE_S, timeout_s=TIMEOUT_S, idle_s=IDLE_S)
        enricher = make_enricher()
        self.sandbox, self.pod = admitted_pod(enricher)
        self.app = enricher.admit(app_info(), self.pod)
        self.sidecar = enricher.admit(app_info(SIDECAR_ID, "sidecar"), self.pod)

    def sandbox_done(self, outcome: Outcome = Outcome.READY, *, at_ns: int = T0) -> None:
        self.clock.set(max(self.clock.now_ns(), at_ns + 60 * MS))
        end = at_ns + 60 * MS
        self.tracker.observe(startup(self.sandbox, start_ns=at_ns, end_ns=end, outcome=outcome))

    def app_done(
        self, info: ContainerInfo, *, after_s: float = 0.0, outcome: Outcome = Outcome.READY
    ) -> int:
        """The app container completes ``after_s`` from now; returns its end."""
        now = self.clock.advance(after_s)
        self.tracker.observe(startup(info, start_ns=now - 50 * MS, end_ns=now, outcome=outcome))
        return now


def test_pod_is_over_once_no_container_completed_for_the_settle_time() -> None:
    p = Pod()
    p.sandbox_done()
    end = p.app_done(p.app, after_s=0.2)
    p.clock.advance(SETTLE_S, ns=-1)
    assert p.tracker.expire() == []
    p.clock.advance(ns=1)
    (done,) = p.tracker.expire()
    assert done.pod == p.pod
    assert (done.start_ns, done.end_ns, done.containers, done.failed) == (T0, end, 1, 0)
    assert (done.outcome, done.partial) == ("ready", False)
    assert p.tracker.expire() == []


def test_each_container_extends_the_pod_and_the_last_one_ends_it() -> None:
    p = Pod()
    p.sandbox_done()
    p.app_done(p.app, after_s=0.1)
    p.clock.advance(SETTLE_S - 0.5)
    assert p.tracker.expire() == []
    end = p.app_done(p.sidecar, after_s=0.4)  # within the settle time of the first
    p.clock.advance(SETTLE_S - 0.1)
    assert p.tracker.expire() == []
    p.clock.advance(0.1)
    (done,) = p.tracker.expire()
    assert (done.end_ns, done.containers, done.outcome) == (end, 2, "ready")


def test_a_container_that_ended_earlier_does_not_move_the_end_back() -> None:
    p = Pod()
    p.sandbox_done()
    end = p.app_done(p.app, after_s=1.0)
    p.tracker.observe(startup(p.sidecar, start_ns=end - 900 * MS, end_ns=end - 500 * MS))
    (done,) = p.tracker.flush()
    assert (done.end_ns, done.containers) == (end, 2)


@pytest.mark.parametrize(
    "outcome", [Outcome.EXITED, Outcome.DELETED, Outcome.TIMEOUT], ids=lambda o: o.value
)
def test_a_container_that_did_not_become_ready_fails_the_pod(outcome: Outcome) -> None:
    p = Pod()
    p.sandbox_done()
    p.app_done(p.app, after_s=0.1)
    p.app_done(p.sidecar, after_s=0.1, outcome=outcome)
    p.clock.advance(SETTLE_S)
    (done,) = p.tracker.expire()
    assert (done.outcome, done.containers, done.failed) == ("failed", 2, 1)


def test_a_failed_sandbox_ends_the_pod_at_once() -> None:
    p = Pod()
    p.sandbox_done(Outcome.EXITED)
    p.clock.advance(0.1)
    assert len(p.tracker.expire()) == 1  # not after the 300 s startup timeout


def test_a_failed_sandbox_fails_the_pod() -> None:
    p = Pod()
    p.sandbox_done(Outcome.EXITED)
    (done,) = p.tracker.flush()
    assert done.outcome == "failed"


def test_a_sandbox_failing_after_an_app_container_ends_the_pod_at_once() -> None:
    p = Pod()
    p.app_done(p.app)
    p.sandbox_done(Outcome.EXITED, at_ns=p.clock.now_ns())
    assert len(p.tracker.expire()) == 1


def test_a_pod_whose_sandbox_was_missed_is_partial_from_its_creation_time() -> None:
    p = Pod()
    end = p.app_done(p.app, after_s=30.0)
    p.clock.advance(SETTLE_S)
    (done,) = p.tracker.expire()
    assert (done.start_ns, done.end_ns, done.partial) == (p.pod.identity_ns, end, True)
    assert done.outcome == "ready"


def test_a_sandbox_seen_after_an_app_container_gives_the_pod_its_start() -> None:
    p = Pod()
    p.clock.set(T0 + S)
    p.app_done(p.app)
    p.tracker.observe(startup(p.sandbox, start_ns=T0 - 5 * MS, end_ns=T0 + 60 * MS))
    (done,) = p.tracker.flush()
    assert (done.start_ns, done.partial) == (T0 - 5 * MS, False)


def test_containers_completed_after_the_pod_was_reported_are_ignored() -> None:
    p = Pod()
    p.sandbox_done()
    end = p.app_done(p.app, after_s=0.1)
    p.clock.advance(SETTLE_S)
    (done,) = p.tracker.expire()
    p.app_done(p.sidecar, after_s=1.0)
    restarted = dataclasses.replace(startup(p.app, start_ns=end, end_ns=end + S), attempt=2)
    p.tracker.observe(restarted)
    p.clock.advance(SETTLE_S)
    assert p.tracker.expire() == []
    assert p.tracker.flush() == []
    assert (done.end_ns, done.containers) == (end, 1)


def test_a_pod_without_an_app_container_times_out() -> None:
    p = Pod()
    p.sandbox_done()
    p.clock.advance(TIMEOUT_S, ns=-1)
    assert p.tracker.expire() == []
    p.clock.advance(ns=1)
    (done,) = p.tracker.expire()
    # it lasted (at least) until the bridge gave up on it, and encloses its sandbox
    timed_out_at = T0 + int(TIMEOUT_S * 1e9)
    assert (done.outcome, done.containers, done.start_ns, done.end_ns) == (
        "timeout",
        0,
        T0,
        timed_out_at,
    )
    assert done.error == "no app container was ready within the startup timeout"


def test_reported_pods_are_forgotten_after_the_idle_time() -> None:
    p = Pod()
    p.sandbox_done()
    p.app_done(p.app)
    p.clock.advance(SETTLE_S)
    assert len(p.tracker.expire()) == 1
    p.clock.advance(IDLE_S - 1)
    p.tracker.expire()
    assert len(p.tracker._pods) == 1  # no public size (unlike Correlator.tracked)
    p.clock.advance(1)
    p.tracker.expire()
    assert len(p.tracker._pods) == 0


def test_a_restart_after_the_pod_was_forgotten_reports_no_second_pod() -> None:
    p = Pod()
    p.sandbox_done()
    end = p.app_done(p.app)
    p.clock.advance(SETTLE_S)
    assert len(p.tracker.expire()) == 1
    p.clock.advance(IDLE_S)
    p.tracker.expire()
    now = p.clock.advance(60)
    restart = dataclasses.replace(startup(p.app, start_ns=now - S, end_ns=now), attempt=2)
    p.tracker.observe(restart)
    p.clock.advance(SETTLE_S)
    assert p.tracker.expire() == []
    assert p.tracker.flush() == []
    assert end < now


def test_flush_reports_every_pod_not_reported_yet_once() -> None:
    p = Pod()
    p.sandbox_done()
    other = PodContext(NS, "other", "db", "shop", "uid-db", T0, NOT_FOUND)
    other_app = dataclasses.replace(p.app, id="db-app", pod=other)
    p.app_done(other_app, after_s=1.0)
    p.clock.advance(SETTLE_S)
    (reported,) = p.tracker.expire()
    assert reported.pod == other
    (flushed,) = p.tracker.flush()
    # the input ended: cut short, not timed out, and not an error
    assert (flushed.pod, flushed.outcome, flushed.containers) == (p.pod, "incomplete", 0)
    assert flushed.error is None
    assert p.tracker.flush() == []
    assert p.tracker.expire() == []


def test_startups_without_a_pod_are_not_tracked() -> None:
    p = Pod()
    plain = ContainerInfo("default", "web")
    for info in (
        None,
        plain,
        dataclasses.replace(p.app, pod=None),
        dataclasses.replace(p.app, cri=None),
    ):
        p.tracker.observe(startup(info, start_ns=T0, end_ns=T0 + S))
    assert p.tracker.flush() == []


# -- pod.startup ------------------------------------------------------------------------------


def pod_span(pod: PodContext, policy: str = "parent", **kw: Any) -> Span:
    args: dict[str, Any] = {
        "start_ns": T0,
        "end_ns": T0 + 2 * S,
        "attributes": [(semconv.K8S_POD_NAME, pod.name)],
    }
    args.update(kw)
    return build_pod_span(pod, policy, **args)


def test_pod_ids_are_deterministic_and_derive_from_the_sandbox() -> None:
    _, pod = admitted_pod()
    identity = ids.pod_identity(SANDBOX_KEY, T0)
    assert pod_parent(pod, "parent") == pod_parent(pod, "parent")
    assert pod_span(pod) == pod_span(pod)
    assert pod_span(pod).span_id == ids.span_id(identity, semconv.SPAN_POD_STARTUP)
    _, again = admitted_pod()  # the same record read again
    assert pod_span(again) == pod_span(pod)
    # a sandbox id reused later is another pod
    _, reused = admitted_pod(created_at_ns=T0 + 3600 * S)
    assert pod_span(reused).span_id != pod_span(pod).span_id


def test_pod_span_ids_differ_from_the_sandbox_startup_ids() -> None:
    sandbox, pod = admitted_pod()
    startup_identity = ids.startup_identity(SANDBOX_KEY, sandbox.created_at_ns, 1)
    own = pod_span(pod, "ignore")
    assert own.span_id != ids.span_id(startup_identity, semconv.SPAN_CONTAINER_STARTUP)
    assert own.trace_id != ids.trace_id(startup_identity)


def test_pod_span_is_a_child_of_the_provisioning_span_named_by_its_annotation() -> None:
    annotations = {**POD_ANNOTATIONS, "tracing.k8s.io/tracestate": "rollout=web-v42"}
    _, pod = admitted_pod(metadata=sandbox_metadata(annotations=annotations))
    span = pod_span(pod)
    assert span.name == semconv.SPAN_POD_STARTUP
    assert (span.trace_id.hex(), span.parent_span_id.hex()) == (TRACE_ID, PARENT_ID)
    assert span.flags == 0x01 | HAS_IS_REMOTE | IS_REMOTE
    assert span.trace_state == "rollout=web-v42"
    assert span.kind == Span.SpanKind.SPAN_KIND_INTERNAL
    assert (span.start_time_unix_nano, span.end_time_unix_nano) == (T0, T0 + 2 * S)
    assert list(span.links) == []
    assert attrs(span) == {semconv.K8S_POD_NAME: POD_NAME}
    assert pod_parent(pod, "parent") == TraceContext(
        bytes.fromhex(TRACE_ID), span.span_id, 0x01, "rollout=web-v42"
    )


def test_pod_span_passes_an_unsampled_flag_on() -> None:
    _, pod = admitted_pod(metadata=sandbox_metadata(annotations={TP_KEY: tp(PARENT_ID, "00")}))
    span = pod_span(pod)
    assert span.trace_id.hex() == TRACE_ID
    assert span.flags == HAS_IS_REMOTE | IS_REMOTE


@pytest.mark.parametrize("case", ["no_context", "invalid", "ignore"])
def test_pod_span_is_its_own_sampled_trace_without_a_usable_context(case: str) -> None:
    if case == "no_context":
        _, pod = admitted_pod(**_carriers(set()))
    elif case == "invalid":
        _, pod = admitted_pod(metadata=sandbox_metadata(annotations={TP_KEY: "00-nope"}))
    else:
        _, pod = admitted_pod()
    span = pod_span(pod, "ignore" if case == "ignore" else "parent")
    identity = ids.pod_identity(SANDBOX_KEY, T0)
    assert span.trace_id == ids.trace_id(identity)
    assert span.parent_span_id == b""
    assert span.flags == 0x01 | HAS_IS_REMOTE
    assert list(span.links) == []


def test_link_policy_makes_the_pod_its_own_trace_linked_to_the_provisioning_span() -> None:
    _, pod = admitted_pod(make_enricher(link_policy="link"))
    span = pod_span(pod, "link")
    assert span.trace_id == ids.trace_id(ids.pod_identity(SANDBOX_KEY, T0))
    assert span.parent_span_id == b""
    assert span.flags == 0x01 | HAS_IS_REMOTE
    (link,) = span.links
    assert (link.trace_id.hex(), link.span_id.hex()) == (TRACE_ID, PARENT_ID)
    assert link.flags == 0x01 | HAS_IS_REMOTE | IS_REMOTE


def test_failed_pod_span_has_status_error_with_the_message() -> None:
    _, pod = admitted_pod()
    span = pod_span(pod, error="1 of 2 containers did not become ready")
    assert span.status.code == Status.StatusCode.STATUS_CODE_ERROR
    assert span.status.message == "1 of 2 containers did not become ready"
    assert pod_span(pod).status.code == Status.StatusCode.STATUS_CODE_UNSET


def test_pod_span_never_ends_before_it_starts() -> None:
    _, pod = admitted_pod()
    span = pod_span(pod, end_ns=T0 - 1)
    assert span.end_time_unix_nano == span.start_time_unix_nano == T0


def test_pod_attributes() -> None:
    enricher = make_enricher()
    _, pod = admitted_pod(enricher)
    assert dict(enricher.pod_attributes(pod, outcome="ready", containers=2, partial=False)) == {
        semconv.K8S_POD_NAME: POD_NAME,
        semconv.K8S_POD_UID: POD_UID,
        semconv.K8S_NAMESPACE_NAME: POD_NAMESPACE,
        semconv.CONTAINERD_NAMESPACE: NS,
        semconv.OB_POD_CONTAINERS: 2,
        semconv.OB_STARTUP_OUTCOME: "ready",
        semconv.OB_PARTIAL: False,
        semconv.OB_TRACE_CONTEXT_SOURCE: f"pod_annotation:{TP_KEY}",
        semconv.OB_LINK_POLICY: "parent",
    }


# -- the container spans of a pod --------------------------------------------------------------


def container_spans(enricher: Enricher, info: ContainerInfo, *, attempt: int = 1) -> list[Span]:
    rec = startup(info, start_ns=T0, end_ns=T0 + 60 * MS, attempt=attempt)
    return build_startup_spans(rec, enricher.enrich(rec))


@pytest.mark.parametrize("which", ["sandbox", "app"])
def test_container_spans_of_a_pod_are_children_of_pod_startup(which: str) -> None:
    enricher = make_enricher()
    sandbox, pod = admitted_pod(enricher)
    info = sandbox if which == "sandbox" else enricher.admit(app_info(), pod)
    root, *phases = container_spans(enricher, info)
    me = pod_span(pod)
    assert root.name == semconv.SPAN_CONTAINER_STARTUP
    assert root.trace_id == me.trace_id
    assert root.trace_id.hex() == TRACE_ID
    assert root.parent_span_id == me.span_id
    assert root.flags & IS_REMOTE == 0  # pod.startup is ours, not a remote parent
    assert root.flags & HAS_IS_REMOTE
    assert root.flags & 0xFF == 0x01
    assert len(phases) == 4
    assert {s.trace_id for s in phases} == {me.trace_id}
    assert {s.parent_span_id for s in phases} == {root.span_id}
    assert all(s.flags & IS_REMOTE == 0 and s.flags & HAS_IS_REMOTE for s in phases)


def test_container_spans_of_a_linked_pod_are_in_the_pod_own_trace_without_a_link() -> None:
    enricher = make_enricher(link_policy="link")
    _, pod = admitted_pod(enricher)
    root, *_ = container_spans(enricher, enricher.admit(app_info(), pod))
    me = pod_span(pod, "link")
    assert (root.trace_id, root.parent_span_id) == (me.trace_id, me.span_id)
    assert list(root.links) == []
    assert root.flags & IS_REMOTE == 0


def test_app_container_span_has_the_k8s_attributes() -> None:
    enricher = make_enricher()
    _, pod = admitted_pod(enricher)
    root, *_ = container_spans(enricher, enricher.admit(app_info(attempt=2), pod))
    a = attrs(root)
    assert a[semconv.CONTAINER_ID] == APP_ID
    assert a[semconv.CONTAINER_NAME] == "app"
    assert a[semconv.K8S_CONTAINER_NAME] == "app"
    assert a[semconv.K8S_CONTAINER_RESTART_COUNT] == 2
    assert a[semconv.K8S_POD_NAME] == POD_NAME
    assert a[semconv.K8S_POD_UID] == POD_UID
    assert a[semconv.K8S_NAMESPACE_NAME] == POD_NAMESPACE
    assert a[semconv.OB_CONTAINER_KIND] == "container"
    assert semconv.OB_TRACE_CONTEXT_SOURCE not in a  # that belongs to pod.startup


def test_sandbox_span_has_the_pod_attributes_and_its_id_as_name() -> None:
    enricher = make_enricher()
    sandbox, _ = admitted_pod(enricher)
    root, *_ = container_spans(enricher, sandbox)
    a = attrs(root)
    assert a[semconv.CONTAINER_NAME] == SANDBOX_ID
    assert a[semconv.OB_CONTAINER_KIND] == "sandbox"
    assert a[semconv.K8S_POD_UID] == POD_UID
    assert semconv.K8S_CONTAINER_NAME not in a
    assert semconv.K8S_CONTAINER_RESTART_COUNT not in a
