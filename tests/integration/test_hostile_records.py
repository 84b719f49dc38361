"""One tenant's records never blind the bridge (a real, private containerd).

containerd stores whatever bytes a client gives it: a label that is not UTF-8 makes
protobuf refuse the record, and a namespace's records may add up to more than the 16 MiB
containerd sends in one message. Either used to fail every listing of the namespace, so
the bridge never connected and traced nothing, in any namespace.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from otelbridge.app import Bridge, build_live_bridge
from otelbridge.containerd.client import M_CONTAINER_LIST, ContainerdClient
from otelbridge.core import semconv
from otelbridge.core.config import (
    Config,
    CorrelateConfig,
    EnrichConfig,
    SourceConfig,
    StateConfig,
)
from otelbridge.core.counters import Counters
from otelbridge.core.model import ReconcileSnapshot, SourceItem
from otelbridge.source.live import LiveSource
from otelbridge.testing.containerd import PrivateContainerd
from otelbridge.testing.image import BUSYBOX_BASE_NAME, import_image
from otelbridge.testing.otlp import OtlpReceiver, ReceivedSpan
from tests.conftest import Namespace

pytestmark = pytest.mark.containerd

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
# str arguments reach ctr through os.fsencode, which turns the surrogate into byte 0xff:
# the label containerd stores is b"\xff", not UTF-8
INVALID_UTF8 = "\udcff"
ESCAPED = "\\xff"
# containerd refuses a label pair over 4096 bytes, and a message over 16 MiB
LABEL_VALUE = "x" * 4000
LABELS_PER_CONTAINER = 200
BIG_CONTAINERS = 22  # about 35 MiB of records as containerd 1.6 stores them
SERVER_SEND_LIMIT = 16 * 1024 * 1024


@pytest.fixture
def other(containerd: PrivateContainerd, image_tar: Path) -> Namespace:
    """A second tenant's namespace."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    return Namespace(containerd, name, import_image(containerd, image_tar, BUSYBOX_BASE_NAME, name))


def delete_containers(ns: Namespace, *ids: str) -> None:
    # the session's containerd is shared: leave no hostile record to later tests
    ns.cd.ctr("containers", "delete", *ids, namespace=ns.name, check=False, timeout=60)


@pytest.fixture
def bad(namespace: Namespace) -> Iterator[str]:
    """A container whose record holds a label that is not UTF-8 (and a traceparent)."""
    cid = f"bad-{uuid.uuid4().hex[:6]}"
    namespace.cd.ctr(
        "containers",
        "create",
        "--label",
        f"bad={INVALID_UTF8}",
        "--label",
        f"traceparent={TRACEPARENT}",
        namespace.image,
        cid,
        namespace=namespace.name,
    )
    yield cid
    delete_containers(namespace, cid)


def list_once(client: ContainerdClient, counters: Counters, *names: str) -> ReconcileSnapshot:
    """What the live source lists when it connects."""
    config = SourceConfig(address=client.address, namespaces=names, relist_interval_s=0)
    source = LiveSource(client, config, counters)
    stop = threading.Event()
    listed: list[ReconcileSnapshot] = []

    def sink(item: SourceItem) -> None:
        if isinstance(item, ReconcileSnapshot):
            listed.append(item)
            stop.set()

    thread = threading.Thread(target=source.run, args=(sink, stop), daemon=True)
    thread.start()
    thread.join(20)
    stop.set()
    assert listed, f"the source never listed containerd: {source.problem}"
    return listed[0]


def start_bridge(
    receiver: OtlpReceiver, address: str, *names: str, labels: tuple[str, ...] = ()
) -> Bridge:
    config = Config(
        source=SourceConfig(address=address, namespaces=names),
        correlate=CorrelateConfig(reconcile_grace_s=0.5),
        enrich=EnrichConfig(label_attributes=labels),
        state=StateConfig(dir=""),  # memory only
    )
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    bridge = build_live_bridge(config, environ=environ, metrics=False)
    bridge.start()
    if not bridge.pipeline.connected.wait(15):
        bridge.shutdown()
        raise AssertionError(f"the bridge never listed containerd: {bridge.source.problem}")
    return bridge


def startups(receiver: OtlpReceiver, ids: set[str]) -> dict[str, ReceivedSpan]:
    spans = receiver.wait_for_spans(
        lambda s: (
            s.name == semconv.SPAN_CONTAINER_STARTUP
            and s.attributes.get(semconv.CONTAINER_ID) in ids
        ),
        count=len(ids),
        timeout_s=30,
    )
    return {s.attributes[semconv.CONTAINER_ID]: s for s in spans}


def test_a_record_with_an_invalid_utf8_label_is_listed_counted_and_named(
    namespace: Namespace, other: Namespace, bad: str, caplog: pytest.LogCaptureFixture
) -> None:
    good = f"good-{uuid.uuid4().hex[:6]}"
    elsewhere = f"else-{uuid.uuid4().hex[:6]}"
    namespace.cd.ctr("containers", "create", namespace.image, good, namespace=namespace.name)
    other.cd.ctr("containers", "create", other.image, elsewhere, namespace=other.name)
    counters = Counters()
    try:
        with ContainerdClient(namespace.cd.address, counters=counters) as client:
            snapshot = list_once(client, counters, namespace.name, other.name)
            listed = {(c.namespace, c.id): c for c in snapshot.containers}
            assert set(listed) == {
                (namespace.name, bad),
                (namespace.name, good),
                (other.name, elsewhere),
            }
            # kept, its invalid byte escaped, the rest of it intact
            assert listed[(namespace.name, bad)].labels["bad"] == ESCAPED
            assert listed[(namespace.name, bad)].labels["traceparent"] == TRACEPARENT
            assert counters.get(semconv.METADATA_MALFORMED) == 1
            named = [
                r.getMessage()
                for r in caplog.records
                if f"{namespace.name}/{bad}" in r.getMessage()
            ]
            assert len(named) == 1 and "invalid UTF-8 in label 'bad'" in named[0]

            # the same record read alone (the lookup at /containers/create)
            assert client.get_container(namespace.name, bad).labels["bad"] == ESCAPED
            assert counters.get(semconv.METADATA_MALFORMED) == 2
    finally:
        delete_containers(namespace, good)
        delete_containers(other, elsewhere)


def test_containers_are_traced_in_every_namespace_next_to_a_bad_record(
    namespace: Namespace, other: Namespace, bad: str, receiver: OtlpReceiver
) -> None:
    bridge = start_bridge(
        receiver, namespace.cd.address, namespace.name, other.name, labels=("bad",)
    )
    try:
        hostile = f"hostile-{uuid.uuid4().hex[:6]}"
        good = f"good-{uuid.uuid4().hex[:6]}"
        elsewhere = f"else-{uuid.uuid4().hex[:6]}"
        labels = {"bad": INVALID_UTF8, "traceparent": TRACEPARENT}
        namespace.run(hostile, "/bin/true", labels=labels)
        namespace.run(good, "/bin/true")
        other.run(elsewhere, "/bin/true")
        roots = startups(receiver, {hostile, good, elsewhere})
        malformed = bridge.counters.get(semconv.METADATA_MALFORMED)
    finally:
        bridge.shutdown()
    assert malformed >= 1  # counted by the bridge itself, not only by a test client
    # the hostile container's record was read (leniently), not lost: its label and its
    # trace context are on its span
    assert roots[hostile].attributes["container.label.bad"] == ESCAPED
    assert roots[hostile].span.trace_id.hex() == TRACE_ID
    assert roots[good].attributes[semconv.OB_PARTIAL] is False
    assert roots[elsewhere].attributes[semconv.OB_PARTIAL] is False


@pytest.fixture
def big(namespace: Namespace) -> Iterator[list[str]]:
    """Containers whose records add up to more than containerd sends in one message."""
    ids = [f"big-{i}-{uuid.uuid4().hex[:6]}" for i in range(BIG_CONTAINERS)]
    labels = []
    for j in range(LABELS_PER_CONTAINER):
        labels += ["--label", f"k{j}={LABEL_VALUE}"]

    def create(cid: str) -> None:
        namespace.cd.ctr(
            "containers", "create", *labels, namespace.image, cid, namespace=namespace.name
        )

    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(create, ids))
        yield ids
    finally:
        delete_containers(namespace, *ids)


def test_a_namespace_whose_records_exceed_16_mib_is_listed_completely(
    namespace: Namespace, big: list[str], receiver: OtlpReceiver
) -> None:
    # the premise: containerd refuses to answer Containers/List for this namespace
    with grpc.insecure_channel(
        "unix://" + namespace.cd.address, options=[("grpc.max_receive_message_length", -1)]
    ) as channel:
        call = channel.unary_unary(M_CONTAINER_LIST, request_serializer=lambda _: b"")
        with pytest.raises(grpc.RpcError) as refused:
            call(None, timeout=30, metadata=(("containerd-namespace", namespace.name),))
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"vs. {SERVER_SEND_LIMIT}" in refused.value.details()

    with ContainerdClient(namespace.cd.address) as client:
        listed = client.list_containers(namespace.name)
    assert sorted(c.id for c in listed) == sorted(big)
    assert all(len(c.labels) >= LABELS_PER_CONTAINER for c in listed)

    # and the bridge connects, so a container started now is traced
    bridge = start_bridge(receiver, namespace.cd.address, namespace.name)
    try:
        cid = f"after-{uuid.uuid4().hex[:6]}"
        namespace.run(cid, "/bin/true")
        root = startups(receiver, {cid})[cid]
    finally:
        bridge.shutdown()
    assert root.attributes[semconv.OB_PARTIAL] is False


@pytest.fixture(autouse=True)
def _log_level(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
