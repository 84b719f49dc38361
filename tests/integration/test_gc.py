"""The GC budget on a real containerd: a live bridge (in-process) exporting to a real
OTLP receiver.

* containers run with ``--rm`` give ``snapshot.reclaim`` spans from their
  ``/tasks/delete`` to their ``/snapshot/remove``, to the nanosecond of the envelopes
  ``ctr events`` saw;
* a container deleted while its snapshot is kept is reported leaked once the TTL has
  passed: a 1 s TTL from the config, not a 10-minute sleep. ``ctr containers delete
  --keep-snapshot`` alone does not keep it: containerd's garbage collector removes a
  snapshot nothing references (without publishing ``/snapshot/remove``), so the test
  first labels the snapshot ``containerd.io/gc.root``, as a tool holding on to it would.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from otelbridge.app import Bridge, build_live_bridge
from otelbridge.core import semconv
from otelbridge.core.config import Config, CorrelateConfig, SlaConfig, SourceConfig, StateConfig
from otelbridge.testing.otlp import OtlpReceiver, ReceivedSpan
from tests.conftest import CtrEvents, Namespace
from tests.integration.test_live_bridge import envelope_times

pytestmark = pytest.mark.containerd


def start_gc_bridge(
    namespace: Namespace, receiver: OtlpReceiver, state_dir: Path, sla: SlaConfig
) -> Bridge:
    config = Config(
        state=StateConfig(dir=str(state_dir)),
        source=SourceConfig(address=namespace.cd.address, namespaces=(namespace.name,)),
        correlate=CorrelateConfig(reconcile_grace_s=0.5),
        sla=sla,
    )
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    bridge = build_live_bridge(config, environ=environ)
    bridge.start()
    assert bridge.pipeline.connected.wait(10), "bridge did not subscribe"
    return bridge


def reclaims_of(ids: set[str]) -> Callable[[ReceivedSpan], bool]:
    def match(s: ReceivedSpan) -> bool:
        return (
            s.name == semconv.SPAN_SNAPSHOT_RECLAIM
            and s.attributes.get(semconv.CONTAINER_ID) in ids
        )

    return match


def gc_figures(bridge: Bridge, namespace: str) -> dict[str, Any]:
    """The ``gc`` object of the namespace in the ``/v1/sla`` answer."""
    figures: dict[str, Any] = bridge.pipeline.sla.snapshot()["namespaces"][namespace]["gc"]
    return figures


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def snapshot_keys(namespace: Namespace) -> list[str]:
    """What ``ctr snapshots ls`` lists: the independent word on what still exists."""
    out = namespace.cd.ctr("snapshots", "ls", namespace=namespace.name).stdout
    return [line.split()[0] for line in out.splitlines()[1:] if line.strip()]


def test_removed_containers_give_reclaim_spans_from_task_delete_to_snapshot_remove(
    namespace: Namespace, receiver: OtlpReceiver, ctr_events: CtrEvents, tmp_path: Path
) -> None:
    bridge = start_gc_bridge(namespace, receiver, tmp_path / "state", SlaConfig())
    try:
        plan = {f"rm-{i}-{uuid.uuid4().hex[:6]}" for i in range(4)}
        for cid in sorted(plan):
            # alive 0.2 s: its startup is emitted (with its container record) before the
            # reclaim, so the reclaim can link to it
            namespace.run(cid, "/bin/sleep", "0.2")
        reclaims = receiver.wait_for_spans(reclaims_of(plan), count=len(plan), timeout_s=20)
        startups = receiver.wait_for_spans(
            lambda s: (
                s.name == semconv.SPAN_CONTAINER_STARTUP
                and s.attributes.get(semconv.CONTAINER_ID) in plan
            ),
            count=len(plan),
            timeout_s=20,
        )
        wait_until(
            lambda: gc_figures(bridge, namespace.name)["reclaims"] == len(plan), 5, "figures"
        )
        figures = gc_figures(bridge, namespace.name)
    finally:
        bridge.shutdown()

    assert len(reclaims) == len(plan)  # one per container, no duplicate
    times = envelope_times(ctr_events.lines, namespace.name)
    root_of = {s.attributes[semconv.CONTAINER_ID]: s.span for s in startups}
    for r in reclaims:
        cid = r.attributes[semconv.CONTAINER_ID]
        # to the nanosecond: the envelopes' own times
        assert r.span.start_time_unix_nano == times[(cid, "/tasks/delete")], cid
        assert r.span.end_time_unix_nano == times[(cid, "/snapshot/remove")], cid
        assert r.attributes[semconv.CONTAINERD_NAMESPACE] == namespace.name
        assert r.attributes[semconv.OB_GC_SNAPSHOT_KEY] == cid
        assert r.attributes[semconv.CONTAINERD_SNAPSHOTTER] == "overlayfs"  # the record's
        assert r.attributes[semconv.OB_GC_DEGRADED] is False
        assert r.span.parent_span_id == b""
        root = root_of[cid]
        assert r.span.trace_id != root.trace_id  # a trace of its own ...
        [link] = r.span.links  # ... linked to the container's startup
        assert (link.trace_id, link.span_id) == (root.trace_id, root.span_id)
        assert r.resource_attributes[semconv.SERVICE_NAME] == "containerd"
    assert bridge.counters.get(semconv.GC_RECLAIMS) == len(plan)
    assert bridge.counters.get(semconv.GC_DEGRADED) == 0
    assert bridge.counters.get(semconv.GC_LEAKED) == 0
    assert figures["reclaims"] == len(plan)
    assert figures["degraded"] == 0
    assert 0 < figures["reclaim_p99_s"] < 2.0
    assert figures["leaked_now"] == []


def test_a_container_deleted_with_its_snapshot_kept_is_reported_leaked_after_the_ttl(
    namespace: Namespace, receiver: OtlpReceiver, tmp_path: Path
) -> None:
    ns = namespace.name
    cd = namespace.cd
    bridge = start_gc_bridge(namespace, receiver, tmp_path / "state", SlaConfig(gc_leak_ttl_s=1))
    kept = f"kept-{uuid.uuid4().hex[:6]}"
    removed = f"rm-{uuid.uuid4().hex[:6]}"
    try:
        namespace.run(removed, "/bin/true")  # a control: reclaimed in milliseconds
        namespace.run(kept, "/bin/true", rm=False)  # task exited and deleted, container kept
        exited = time.monotonic()
        # hold on to the snapshot (else containerd's GC collects it, silently), then
        # delete the container without its snapshot
        cd.ctr("snapshots", "label", kept, "containerd.io/gc.root=otelbridge-test", namespace=ns)
        cd.ctr("containers", "delete", "--keep-snapshot", kept, namespace=ns)
        assert kept in snapshot_keys(namespace)
        assert bridge.counters.get(semconv.GC_LEAKED) == 0  # not before the TTL

        wait_until(lambda: bridge.counters.get(semconv.GC_LEAKED) >= 1, 10, "no leak reported")
        assert time.monotonic() - exited >= 0.9  # the TTL ran from the exit
        assert kept in snapshot_keys(namespace)  # it really is still there
        figures = gc_figures(bridge, ns)
        assert figures["leaked_now"] == [kept]
        assert figures["leaked"] == 1
        time.sleep(0.5)  # a few more deadline checks: still counted once
        assert bridge.counters.get(semconv.GC_LEAKED) == 1

        # removed at last: the leak is cleared and the late reclaim is a span
        cd.ctr("snapshots", "rm", kept, namespace=ns)
        [late] = receiver.wait_for_spans(reclaims_of({kept}), timeout_s=10)
        wait_until(lambda: gc_figures(bridge, ns)["leaked_now"] == [], 5, "leak not cleared")
        [control] = receiver.wait_for_spans(reclaims_of({removed}), timeout_s=10)
    finally:
        bridge.shutdown()
        cd.ctr("snapshots", "rm", kept, namespace=ns, check=False)

    assert late.attributes[semconv.OB_GC_LEAKED] is True
    assert late.span.status.code == 2  # STATUS_CODE_ERROR
    assert semconv.OB_GC_LEAKED not in control.attributes
    assert bridge.counters.get(semconv.GC_LEAKED) == 1  # the removed control never leaked
    assert bridge.counters.get(semconv.GC_DEGRADED) == 0  # the leak was counted as a leak
    assert bridge.counters.get(semconv.GC_RECLAIMS) == 2
