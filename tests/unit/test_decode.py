"""Decode: RawEnvelope -> LifecycleEvent | Skipped, and the counting Decoder stage."""

from __future__ import annotations

import pytest
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from otelbridge.containerd import topics
from otelbridge.containerd._gen import otelbridge_events_pb2 as ev
from otelbridge.core import semconv
from otelbridge.core.counters import Counters
from otelbridge.core.model import EventKind, LifecycleEvent, RawEnvelope
from otelbridge.decode import DISPATCH, TYPE_URL_FOR_TOPIC, Decoder, Skipped, SkipReason, decode
from otelbridge.testing.events import envelope

# an odd nanosecond count, so a rounding through float or microseconds would show
T = 1_764_330_123_121_070_841
NS = "default"


def decoded(topic: str, payload: Message, *, ts_ns: int = T, ns: str = NS) -> LifecycleEvent:
    result = decode(envelope(topic, payload, ts_ns=ts_ns, ns=ns))
    assert isinstance(result, LifecycleEvent), result
    return result


def skipped(env: RawEnvelope) -> Skipped:
    result = decode(env)
    assert isinstance(result, Skipped), result
    return result


def raw(topic: str, payload: bytes = b"", *, type_url: str | None = None) -> RawEnvelope:
    url = TYPE_URL_FOR_TOPIC.get(topic, "") if type_url is None else type_url
    return RawEnvelope(T, NS, topic, url, payload)


# -- every topic -----------------------------------------------------------------------------


def test_snapshot_prepare_decodes_key_parent_and_snapshotter() -> None:
    msg = ev.SnapshotPrepare(key="c1", parent="sha256:" + "b" * 64, snapshotter="overlayfs")
    assert decoded(topics.SNAPSHOT_PREPARE, msg) == LifecycleEvent(
        EventKind.SNAPSHOT_PREPARE,
        T,
        NS,
        "c1",
        snapshotter="overlayfs",
        parent="sha256:" + "b" * 64,
    )


def test_snapshot_commit_decodes_key_and_snapshotter() -> None:
    msg = ev.SnapshotCommit(key="extract-1", name="sha256:cc", snapshotter="overlayfs")
    assert decoded(topics.SNAPSHOT_COMMIT, msg) == LifecycleEvent(
        EventKind.SNAPSHOT_COMMIT, T, NS, "extract-1", snapshotter="overlayfs"
    )


def test_snapshot_remove_decodes_key_and_snapshotter() -> None:
    msg = ev.SnapshotRemove(key="c1", snapshotter="native")
    assert decoded(topics.SNAPSHOT_REMOVE, msg) == LifecycleEvent(
        EventKind.SNAPSHOT_REMOVE, T, NS, "c1", snapshotter="native"
    )


def test_container_create_decodes_id_image_and_runtime_name() -> None:
    msg = ev.ContainerCreate(
        id="c1", image="docker.io/library/busybox:1.36", runtime=ev.RuntimeRef(name="runc.v2")
    )
    assert decoded(topics.CONTAINER_CREATE, msg) == LifecycleEvent(
        EventKind.CONTAINER_CREATE,
        T,
        NS,
        "c1",
        image="docker.io/library/busybox:1.36",
        runtime="runc.v2",
    )


def test_container_update_decodes_image_and_labels() -> None:
    msg = ev.ContainerUpdate(id="c1", image="img:2", labels={"team": "runtime", "tier": "1"})
    event = decoded(topics.CONTAINER_UPDATE, msg)
    assert (event.kind, event.subject, event.image) == (EventKind.CONTAINER_UPDATE, "c1", "img:2")
    assert dict(event.labels) == {"team": "runtime", "tier": "1"}


def test_container_update_without_labels_has_empty_labels() -> None:
    event = decoded(topics.CONTAINER_UPDATE, ev.ContainerUpdate(id="c1"))
    assert dict(event.labels) == {}


def test_container_delete_decodes_id() -> None:
    assert decoded(topics.CONTAINER_DELETE, ev.ContainerDelete(id="c1")) == LifecycleEvent(
        EventKind.CONTAINER_DELETE, T, NS, "c1"
    )


def test_task_create_decodes_container_id_and_pid() -> None:
    msg = ev.TaskCreate(container_id="c1", bundle="/run/c1", pid=2340)
    assert decoded(topics.TASK_CREATE, msg) == LifecycleEvent(
        EventKind.TASK_CREATE, T, NS, "c1", pid=2340
    )


def test_task_start_decodes_container_id_and_pid() -> None:
    msg = ev.TaskStart(container_id="c1", pid=2340)
    assert decoded(topics.TASK_START, msg) == LifecycleEvent(
        EventKind.TASK_START, T, NS, "c1", pid=2340
    )


def test_task_exit_decodes_exec_id_status_and_exited_at_to_the_nanosecond() -> None:
    msg = ev.TaskExit(container_id="c1", id="exec-7", pid=2356, exit_status=137)
    msg.exited_at.seconds, msg.exited_at.nanos = 1_764_330_123, 171_353_122
    assert decoded(topics.TASK_EXIT, msg) == LifecycleEvent(
        EventKind.TASK_EXIT,
        T,
        NS,
        "c1",
        pid=2356,
        exec_id="exec-7",
        exit_status=137,
        exited_at_ns=1_764_330_123_171_353_122,
    )


def test_task_exit_with_go_zero_time_has_exited_at_zero() -> None:
    msg = ev.TaskExit(container_id="c1", id="c1", pid=1)
    msg.exited_at.seconds = -62_135_596_800  # 0001-01-01T00:00:00Z, Go's zero time
    assert decoded(topics.TASK_EXIT, msg).exited_at_ns == 0


def test_task_delete_decodes_exec_id_status_and_exited_at() -> None:
    msg = ev.TaskDelete(container_id="c1", id="c1", pid=2356, exit_status=3)
    msg.exited_at.seconds, msg.exited_at.nanos = 1_764_330_124, 1
    assert decoded(topics.TASK_DELETE, msg) == LifecycleEvent(
        EventKind.TASK_DELETE,
        T,
        NS,
        "c1",
        pid=2356,
        exec_id="c1",
        exit_status=3,
        exited_at_ns=1_764_330_124_000_000_001,
    )


def test_task_oom_decodes_container_id() -> None:
    assert decoded(topics.TASK_OOM, ev.TaskOOM(container_id="c1")) == LifecycleEvent(
        EventKind.TASK_OOM, T, NS, "c1"
    )


def test_every_dispatched_topic_has_a_test_above() -> None:
    # a new topic in DISPATCH needs its own field test in this module
    assert len(DISPATCH) == len(EventKind) == 11


def test_envelope_namespace_and_timestamp_are_kept_exactly() -> None:
    event = decoded(topics.TASK_START, ev.TaskStart(container_id="c1"), ts_ns=1, ns="k8s.io")
    assert (event.timestamp_ns, event.namespace, event.key) == (1, "k8s.io", ("k8s.io", "c1"))


# -- type URLs -------------------------------------------------------------------------------


def test_type_url_with_a_host_prefix_is_accepted() -> None:
    payload = ev.TaskStart(container_id="c1", pid=9).SerializeToString()
    env = raw(topics.TASK_START, payload, type_url="types.example/containerd.events.TaskStart")
    result = decode(env)
    assert isinstance(result, LifecycleEvent)
    assert (result.kind, result.subject, result.pid) == (EventKind.TASK_START, "c1", 9)


def test_type_url_of_another_event_is_malformed() -> None:
    payload = ev.TaskStart(container_id="c1").SerializeToString()
    env = raw(topics.TASK_START, payload, type_url=topics.TYPE_TASK_EXIT)
    assert skipped(env).reason is SkipReason.MALFORMED


def test_prefixed_type_url_of_another_event_is_malformed() -> None:
    payload = ev.TaskStart(container_id="c1").SerializeToString()
    env = raw(topics.TASK_START, payload, type_url="types.example/containerd.events.TaskExit")
    assert skipped(env).reason is SkipReason.MALFORMED


# -- malformed envelopes ---------------------------------------------------------------------


def test_garbage_payload_bytes_are_malformed() -> None:
    env = raw(topics.TASK_CREATE, b"\xff\xff\xff\xff\x0f")
    assert skipped(env).reason is SkipReason.MALFORMED


def test_string_field_with_invalid_utf8_is_malformed() -> None:
    # field 1 (container_id), length-delimited, 2 bytes that are not UTF-8
    env = raw(topics.TASK_START, b"\x0a\x02\xc3\x28")
    assert skipped(env).reason is SkipReason.MALFORMED


def test_missing_namespace_is_malformed() -> None:
    env = envelope(topics.TASK_START, ev.TaskStart(container_id="c1"), ts_ns=T, ns="")
    env = RawEnvelope(env.timestamp_ns, "", env.topic, env.type_url, env.payload)
    assert skipped(env).reason is SkipReason.MALFORMED


@pytest.mark.parametrize("ts", [0, -1])
def test_zero_or_negative_timestamp_is_malformed(ts: int) -> None:
    env = envelope(topics.TASK_START, ev.TaskStart(container_id="c1"), ts_ns=ts)
    assert skipped(env).reason is SkipReason.MALFORMED


@pytest.mark.parametrize(
    ("topic", "payload"),
    [
        (topics.CONTAINER_CREATE, ev.ContainerCreate(image="img")),
        (topics.TASK_START, ev.TaskStart(pid=5)),
        (topics.TASK_EXIT, ev.TaskExit(id="c1")),
        (topics.SNAPSHOT_PREPARE, ev.SnapshotPrepare(parent="sha256:aa")),
    ],
)
def test_empty_container_id_or_snapshot_key_is_malformed(topic: str, payload: Message) -> None:
    assert skipped(envelope(topic, payload, ts_ns=T)).reason is SkipReason.MALFORMED


def test_empty_payload_is_malformed_not_an_event_without_subject() -> None:
    assert skipped(raw(topics.CONTAINER_DELETE, b"")).reason is SkipReason.MALFORMED


# -- topics that are not decoded ---------------------------------------------------------------


@pytest.mark.parametrize("topic", sorted(topics.IGNORED_TOPICS))
def test_known_topics_without_startup_meaning_are_ignored(topic: str) -> None:
    assert skipped(raw(topic, b"\x0a\x01x", type_url="containerd.events.X")).reason is (
        SkipReason.IGNORED
    )


@pytest.mark.parametrize("topic", ["/tasks/frobnicate", "", "/snapshots/prepare", "tasks/start"])
def test_unknown_topic_is_unknown(topic: str) -> None:
    assert skipped(raw(topic)).reason is SkipReason.UNKNOWN


def test_unknown_topic_detail_is_bounded() -> None:
    assert len(skipped(raw("/x" * 10_000)).detail) < 200


# -- the Decoder stage -------------------------------------------------------------------------


def test_decoder_returns_event_and_counts_decoded() -> None:
    counters = Counters()
    event = Decoder(counters)(envelope(topics.TASK_OOM, ev.TaskOOM(container_id="c1"), ts_ns=T))
    assert isinstance(event, LifecycleEvent)
    assert counters.nonzero() == {semconv.EVENTS_DECODED.name: 1}


def test_decoder_counts_each_kind_of_skip_separately() -> None:
    counters = Counters()
    decoder = Decoder(counters)
    good = envelope(topics.TASK_OOM, ev.TaskOOM(container_id="c1"), ts_ns=T)
    inputs = [
        good,
        good,
        raw("/images/create"),
        raw("/namespaces/create"),
        raw("/images/delete"),
        raw("/what/ever"),
        raw(topics.TASK_START, b"\xff"),
        raw(topics.TASK_START, b"", type_url="nope"),
    ]
    results = [decoder(env) for env in inputs]
    assert [r is not None for r in results] == [True, True] + [False] * 6
    assert counters.nonzero() == {
        semconv.EVENTS_DECODED.name: 2,
        semconv.EVENTS_IGNORED.name: 3,
        semconv.EVENTS_UNKNOWN.name: 1,
        semconv.EVENTS_MALFORMED.name: 2,
    }


# -- never raises ------------------------------------------------------------------------------

_KNOWN_TOPICS = sorted(DISPATCH) + sorted(topics.IGNORED_TOPICS)
_TYPE_URLS = st.one_of(
    st.sampled_from(sorted(TYPE_URL_FOR_TOPIC.values())),
    st.sampled_from(sorted(TYPE_URL_FOR_TOPIC.values())).map(lambda u: "types.example/" + u),
    st.text(max_size=60),
)


@settings(max_examples=200, deadline=None)
@given(
    ts=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    namespace=st.text(max_size=20),
    topic=st.one_of(st.sampled_from(_KNOWN_TOPICS), st.text(max_size=30)),
    type_url=_TYPE_URLS,
    payload=st.binary(max_size=200),
)
def test_decode_never_raises_on_arbitrary_envelopes(
    ts: int, namespace: str, topic: str, type_url: str, payload: bytes
) -> None:
    result = decode(RawEnvelope(ts, namespace, topic, type_url, payload))
    assert isinstance(result, LifecycleEvent | Skipped)
    if isinstance(result, LifecycleEvent):
        assert result.subject
        assert result.timestamp_ns == ts > 0
        assert result.namespace == namespace


@settings(max_examples=200, deadline=None)
@given(topic=st.sampled_from(sorted(DISPATCH)), payload=st.binary(max_size=200))
def test_decode_with_the_right_type_url_never_raises_on_random_bytes(
    topic: str, payload: bytes
) -> None:
    result = decode(raw(topic, payload))
    assert isinstance(result, LifecycleEvent | Skipped)
