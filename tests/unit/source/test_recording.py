"""Recordings and `ctr events` text: lines -> RawEnvelope (+ ContainerInfo)."""

from __future__ import annotations

import base64
import calendar
import json
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otelbridge.containerd import topics
from otelbridge.core import semconv
from otelbridge.core.counters import Counters
from otelbridge.core.errors import DecodeError, NotFound
from otelbridge.core.model import ContainerInfo, EventKind, LifecycleEvent, RawEnvelope
from otelbridge.decode import Skipped, SkipReason, decode
from otelbridge.source.recording import (
    Recording,
    container_line,
    envelope_line,
    header_line,
    parse_ctr_line,
    read_events,
)
from otelbridge.testing.events import Timeline

T0 = 1_764_330_000_123_456_789


def read(lines: list[str], counters: Counters | None = None) -> tuple[list[RawEnvelope], Recording]:
    recording = Recording()
    envs = list(read_events(lines, counters or Counters(), recording))
    return envs, recording


def malformed(counters: Counters) -> int:
    return counters.get(semconv.EVENTS_MALFORMED)


def event_of(env: RawEnvelope) -> LifecycleEvent:
    result = decode(env)
    assert isinstance(result, LifecycleEvent), result
    return result


def utc_ns(stamp: str, frac_ns: int) -> int:
    """``"YYYY-MM-DD HH:MM:SS"`` in UTC plus a fraction, as integer nanoseconds."""
    seconds = calendar.timegm(time.strptime(stamp, "%Y-%m-%d %H:%M:%S"))
    return seconds * 1_000_000_000 + frac_ns


INFO = ContainerInfo(
    namespace="default",
    id="web",
    image="docker.io/library/nginx:1.27",
    runtime="io.containerd.runc.v2",
    snapshotter="overlayfs",
    snapshot_key="web-snap",
    created_at_ns=T0 - 1,
    labels={"traceparent": "00-5d3c9e0b7a1f4e2d8c6b0a9f1e2d3c4b-a1b2c3d4e5f60718-01"},
    annotations={"io.kubernetes.cri.container-name": "web"},
    env={"TRACEPARENT": "00-5d3c9e0b7a1f4e2d8c6b0a9f1e2d3c4b-a1b2c3d4e5f60718-00"},
)


# -- otelbridge recordings ---------------------------------------------------------------------


def test_envelope_lines_round_trip_exactly() -> None:
    envs = Timeline(start_ns=T0).run_container("web")
    lines = [header_line(node="n1"), *(envelope_line(e) for e in envs)]
    back, _ = read(lines)
    assert back == envs


def test_container_line_round_trips_into_the_recording() -> None:
    counters = Counters()
    envs, recording = read([header_line(), container_line(INFO)], counters)
    assert envs == []
    assert recording.containers == {("default", "web"): INFO}
    assert recording.lookup("default", "web") == INFO
    assert counters.nonzero() == {}


def test_container_line_with_empty_maps_round_trips() -> None:
    info = ContainerInfo("k8s.io", "pause")
    _, recording = read([container_line(info)])
    assert recording.lookup("k8s.io", "pause") == info


def test_recording_lookup_of_an_unknown_container_raises_not_found() -> None:
    with pytest.raises(NotFound):
        Recording().lookup("default", "nope")


def test_payload_bytes_that_are_not_a_valid_event_still_round_trip() -> None:
    env = RawEnvelope(T0, "ns", "/tasks/start", "containerd.events.TaskStart", b"\x00\xff\x80")
    assert read([envelope_line(env)])[0] == [env]


def test_blank_lines_are_skipped_silently() -> None:
    env = Timeline(start_ns=T0).task_start("c1")
    counters = Counters()
    assert read(["", "   ", envelope_line(env), "\n"], counters)[0] == [env]
    assert counters.nonzero() == {}


# -- `ctr events` text -------------------------------------------------------------------------

CTR_PREPARE = (
    "2026-11-28 11:42:03.12107084 +0000 UTC demo /snapshot/prepare "
    '{"key":"t1","parent":"sha256:6b17b3d4b2ab5c8fd0f6e7b3cd4fbc1cb6bc4a0e5e2a3f2d2b6b1e0c8f7a6b5c"}'
)
CTR_CREATE = (
    "2026-11-28 11:42:03.125812345 +0000 UTC demo /containers/create "
    '{"id":"t1","image":"docker.io/library/busybox:latest","runtime":{"name":'
    '"io.containerd.runc.v2","options":{"type_url":"containerd.runc.v1.Options"}}}'
)
CTR_TASK_CREATE = (
    "2026-11-28 11:42:03.169947 +0000 UTC demo /tasks/create "
    '{"container_id":"t1","bundle":"/run/containerd/io.containerd.runtime.v2.task/demo/t1",'
    '"rootfs":[{"type":"overlay","source":"overlay","options":["index=off"]}],'
    '"io":{"stdout":"/run/containerd/fifo/1/t1-stdout","terminal":true},"pid":2356}'
)
CTR_TASK_START = (
    '2026-11-28 11:42:03.17 +0000 UTC demo /tasks/start {"container_id":"t1","pid":2356}'
)
CTR_EXIT = (
    "2026-11-28 11:42:03.171923405 +0000 UTC demo /tasks/exit "
    '{"container_id":"t1","id":"t1","pid":2356,"exited_at":"2026-11-28T11:42:03.171353122Z"}'
)
CTR_IMAGE = (
    "2026-11-28 11:41:58.5 +0000 UTC demo /images/create "
    '{"name":"docker.io/library/busybox:latest"}'
)


def test_ctr_snapshot_prepare_line_keeps_every_nanosecond_digit() -> None:
    env = parse_ctr_line(CTR_PREPARE)
    assert env.timestamp_ns == utc_ns("2026-11-28 11:42:03", 121_070_840)
    assert (env.namespace, env.topic, env.type_url) == (
        "demo",
        topics.SNAPSHOT_PREPARE,
        topics.TYPE_SNAPSHOT_PREPARE,
    )
    event = event_of(env)
    assert (event.kind, event.subject) == (EventKind.SNAPSHOT_PREPARE, "t1")
    assert event.parent.startswith("sha256:6b17")


def test_ctr_container_create_line_ignores_fields_otelbridge_does_not_read() -> None:
    event = event_of(parse_ctr_line(CTR_CREATE))
    assert event.timestamp_ns == utc_ns("2026-11-28 11:42:03", 125_812_345)
    assert (event.kind, event.subject, event.image, event.runtime) == (
        EventKind.CONTAINER_CREATE,
        "t1",
        "docker.io/library/busybox:latest",
        "io.containerd.runc.v2",
    )


def test_ctr_task_create_line_with_rootfs_and_io() -> None:
    event = event_of(parse_ctr_line(CTR_TASK_CREATE))
    assert event.timestamp_ns == utc_ns("2026-11-28 11:42:03", 169_947_000)
    assert (event.kind, event.subject, event.pid) == (EventKind.TASK_CREATE, "t1", 2356)


def test_ctr_task_start_line_with_two_fraction_digits() -> None:
    event = event_of(parse_ctr_line(CTR_TASK_START))
    assert event.timestamp_ns == utc_ns("2026-11-28 11:42:03", 170_000_000)


def test_ctr_task_exit_line_has_exact_envelope_and_exit_times() -> None:
    event = event_of(parse_ctr_line(CTR_EXIT))
    assert event.timestamp_ns == utc_ns("2026-11-28 11:42:03", 171_923_405)
    assert event.exited_at_ns == utc_ns("2026-11-28 11:42:03", 171_353_122)
    assert (event.kind, event.subject, event.exec_id, event.pid, event.exit_status) == (
        EventKind.TASK_EXIT,
        "t1",
        "t1",
        2356,
        0,
    )


def test_ctr_task_delete_line_with_go_zero_exited_at_has_exited_at_zero() -> None:
    line = (
        "2026-11-28 11:42:03.2 +0000 UTC demo /tasks/delete "
        '{"container_id":"t1","pid":2356,"exited_at":"0001-01-01T00:00:00Z"}'
    )
    event = event_of(parse_ctr_line(line))
    assert (event.kind, event.exited_at_ns) == (EventKind.TASK_DELETE, 0)


def test_ctr_exited_at_with_an_offset_is_converted_to_utc() -> None:
    line = (
        "2026-11-28 11:42:03.2 +0000 UTC demo /tasks/exit "
        '{"container_id":"t1","id":"t1","exited_at":"2026-11-28T12:42:03.171353122+01:00"}'
    )
    assert event_of(parse_ctr_line(line)).exited_at_ns == utc_ns("2026-11-28 11:42:03", 171_353_122)


def test_ctr_line_without_fraction() -> None:
    env = parse_ctr_line('2026-11-28 11:42:03 +0000 UTC demo /tasks/oom {"container_id":"t1"}')
    assert env.timestamp_ns == utc_ns("2026-11-28 11:42:03", 0)


@pytest.mark.parametrize(
    ("stamp", "utc_hour", "utc_minute"),
    [("12:42:03.000000001 +0100 CET", 11, 42), ("06:12:03.000000001 -0530 X", 11, 42)],
)
def test_ctr_line_with_non_utc_offset_is_converted_to_utc(
    stamp: str, utc_hour: int, utc_minute: int
) -> None:
    env = parse_ctr_line(f'2026-11-28 {stamp} demo /tasks/start {{"container_id":"t1"}}')
    assert env.timestamp_ns == utc_ns(f"2026-11-28 {utc_hour:02d}:{utc_minute:02d}:03", 1)


def test_ctr_image_create_line_is_read_and_decoded_as_ignored() -> None:
    env = parse_ctr_line(CTR_IMAGE)
    assert (env.namespace, env.topic) == ("demo", "/images/create")
    result = decode(env)
    assert isinstance(result, Skipped) and result.reason is SkipReason.IGNORED


def test_ctr_events_output_reads_every_line_in_order() -> None:
    counters = Counters()
    lines = [CTR_IMAGE, CTR_PREPARE, CTR_CREATE, CTR_TASK_CREATE, CTR_TASK_START, CTR_EXIT]
    envs, _ = read(lines, counters)
    assert [e.topic for e in envs] == [
        "/images/create",
        topics.SNAPSHOT_PREPARE,
        topics.CONTAINER_CREATE,
        topics.TASK_CREATE,
        topics.TASK_START,
        topics.TASK_EXIT,
    ]
    assert malformed(counters) == 0


# -- malformed lines ---------------------------------------------------------------------------


def good_envelope_line(ts: int = T0) -> str:
    return envelope_line(Timeline(start_ns=ts).task_start("c1"))


@pytest.mark.parametrize(
    "bad",
    [
        '{"ts": 1, "ns": "default", "topic": "/tasks/start"',  # bad JSON
        '{"ts": 1, "ns": "d", "topic": "/tasks/start", "payload": "!!not base64!!"}',
        '{"ts": 1, "ns": "d", "topic": "/tasks/start", "payload": "\u00e9"}',
        '{"ts": 1, "ns": "d", "topic": "/tasks/start", "payload": 5}',
        '{"ns": "default", "topic": "/tasks/start"}',  # no ts
        '{"ts": 1, "topic": "/tasks/start"}',  # no ns
        '{"ts": 1, "ns": "default"}',  # no topic
        '{"ts": "1", "ns": "default", "topic": "/tasks/start"}',  # ts not an int
        '{"ts": 1.5, "ns": "default", "topic": "/tasks/start"}',
        '{"ts": true, "ns": "default", "topic": "/tasks/start"}',
        '{"container": {"id": "x"}}',  # no ns
        '{"container": "x"}',
        '{"container": {"ns": "a", "id": "b", "labels": ["x"]}}',
        '{"container": {"ns": "a", "id": "b", "created_at_ns": "soon"}}',
        "[1, 2, 3]",
        "null",
        "random text after a valid first line",
    ],
)
def test_malformed_recording_line_is_skipped_counted_and_reading_continues(bad: str) -> None:
    counters = Counters()
    envs, _ = read([good_envelope_line(T0), bad, good_envelope_line(T0 + 1)], counters)
    assert [e.timestamp_ns for e in envs] == [T0, T0 + 1]
    assert malformed(counters) == 1


@pytest.mark.parametrize(
    "header",
    [
        '{"format": "something-else", "version": 1}',
        '{"format": "otelbridge-recording", "version": 3}',
        '{"format": "otelbridge-recording", "version": "2"}',
        '{"format": "otelbridge-recording"}',
    ],
)
def test_a_header_of_another_format_or_version_is_refused(header: str) -> None:
    """Defect 13: a recording header with an unknown version was accepted silently."""
    with pytest.raises(DecodeError, match=r"format|version"):
        read([header, good_envelope_line(T0)], Counters())


def test_a_file_of_which_no_line_can_be_read_is_refused() -> None:
    """Defect 7: replay of a file that is not a recording or `ctr events` output."""
    with pytest.raises(DecodeError, match="none of its 3 lines"):
        read(["{not json", "{neither", "{nor this"], Counters())


@pytest.mark.parametrize(
    "bad",
    [
        "random text after a valid first line",
        '2026-11-28 11:42:03.1 +0000 UTC demo /tasks/start {"container_id": ',  # bad JSON
        '2026-11-28 11:42:03.1 +0000 UTC demo /tasks/start {"container_id": 5}',  # bad type
        "2026-11-28 11:42:03.1 +0000 UTC demo /tasks/start 5",  # not an object
        '2026-13-45 11:42:03.1 +0000 UTC demo /tasks/start {"container_id":"t1"}',
        '2026-11-28 11:42:03.1234567890 +0000 UTC demo /tasks/start {"container_id":"t1"}',
        "2026-11-28 11:42:03.1 +0000 UTC demo",  # no topic
        '{"ts": 1, "ns": "default", "topic": "/tasks/start"}',  # a recording line
    ],
)
def test_malformed_ctr_line_is_skipped_counted_and_reading_continues(bad: str) -> None:
    counters = Counters()
    envs, _ = read([CTR_PREPARE, bad, CTR_EXIT], counters)
    assert [e.topic for e in envs] == [topics.SNAPSHOT_PREPARE, topics.TASK_EXIT]
    assert malformed(counters) == 1


def test_each_malformed_line_is_counted_once() -> None:
    counters = Counters()
    envs, _ = read([good_envelope_line(), "x", "{", "[]", good_envelope_line()], counters)
    assert len(envs) == 2
    assert malformed(counters) == 3


def test_container_line_with_infinite_creation_time_is_skipped_and_counted() -> None:
    counters = Counters()
    bad = '{"container": {"ns": "a", "id": "b", "created_at_ns": 1e999}}'
    envs, _ = read([good_envelope_line(T0), bad, good_envelope_line(T0 + 1)], counters)
    assert len(envs) == 2
    assert malformed(counters) == 1


def test_deeply_nested_json_line_is_skipped_and_counted() -> None:
    counters = Counters()
    bad = '{"a":' + "[" * 100_000
    envs, _ = read([good_envelope_line(T0), bad, good_envelope_line(T0 + 1)], counters)
    assert len(envs) == 2
    assert malformed(counters) == 1


def test_ctr_line_with_deeply_nested_payload_is_skipped_and_counted() -> None:
    counters = Counters()
    bad = "2026-11-28 11:42:03.1 +0000 UTC demo /tasks/start " + "[" * 100_000
    envs, _ = read([CTR_PREPARE, bad, CTR_EXIT], counters)
    assert len(envs) == 2
    assert malformed(counters) == 1


# -- never raises ------------------------------------------------------------------------------

_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
_FIELDS = ("ts", "ns", "topic", "type_url", "payload", "container", "format", "id", "labels")


def _recording_line(obj: dict[str, Any]) -> str:
    return json.dumps(obj)


_LINES = st.one_of(
    st.text(max_size=200),
    st.dictionaries(st.sampled_from(_FIELDS), _JSONISH, max_size=6).map(_recording_line),
    st.builds(
        lambda ns, topic, body: f"2026-11-28 11:42:03.5 +0000 UTC {ns} {topic} {body}",
        st.from_regex(r"[a-z0-9.]{1,8}", fullmatch=True),
        st.sampled_from([*sorted(topics.IGNORED_TOPICS), "/tasks/start", "/tasks/exit", "/x"]),
        st.one_of(st.text(max_size=60), _JSONISH.map(json.dumps)),
    ),
    st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()),
)


@settings(max_examples=150, deadline=None)
@given(
    first=st.sampled_from([good_envelope_line(), CTR_PREPARE, ""]),
    lines=st.lists(_LINES, max_size=20),
)
def test_read_events_never_raises_on_arbitrary_lines(first: str, lines: list[str]) -> None:
    """Only a file that is no recording at all (no line readable, or a header of another
    format or version) raises, and then DecodeError."""
    counters = Counters()
    recording = Recording()
    envs: list[RawEnvelope] = []
    try:
        envs.extend(read_events([first, *lines], counters, recording))
    except DecodeError:
        return
    assert all(isinstance(e, RawEnvelope) for e in envs)
    non_blank = sum(1 for line in [first, *lines] if line.strip())
    assert len(envs) + len(recording.containers) + malformed(counters) <= non_blank
