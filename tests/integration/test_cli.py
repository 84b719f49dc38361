"""The commands as users run them: real processes against a private containerd."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from otelbridge.core import semconv
from otelbridge.export.files import from_otlp_json
from otelbridge.testing.otlp import OtlpReceiver
from tests.conftest import Namespace
from tests.integration.processes import OTELBRIDGE, start, stop, wait_for_line
from tests.integration.test_live_bridge import TRACE_ID, TRACEPARENT

pytestmark = pytest.mark.containerd


def test_run_daemon_exports_and_stops_cleanly_on_sigterm(
    namespace: Namespace, receiver: OtlpReceiver, tmp_path: Path
) -> None:
    proc = start(
        [
            "run",
            "-v",
            "--address",
            namespace.cd.address,
            "--namespace",
            namespace.name,
            "--state-dir",
            str(tmp_path / "state"),
            "--http-addr",
            "127.0.0.1:0",
        ],
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"},
    )
    try:
        wait_for_line(proc, "subscribed to containerd")
        cid = f"daemon-{uuid.uuid4().hex[:6]}"
        namespace.run(cid, "/bin/true", labels={"traceparent": TRACEPARENT})
        spans = receiver.wait_for_spans(
            lambda s: (
                s.name != semconv.SPAN_SNAPSHOT_RECLAIM
                and s.attributes.get(semconv.CONTAINER_ID) == cid
            ),
            count=5,
            timeout_s=15,
        )
        assert {s.span.trace_id.hex() for s in spans} == {TRACE_ID}
    finally:
        code, _, err = stop(proc)
    assert code == 0, err
    assert "stopped; counters" in err


def test_a_replayed_recording_gives_the_live_spans_exactly(
    namespace: Namespace, receiver: OtlpReceiver, tmp_path: Path
) -> None:
    recording = tmp_path / "events.jsonl"
    live = start(
        [
            "run",
            "-v",
            "--address",
            namespace.cd.address,
            "--namespace",
            namespace.name,
            "--state-dir",
            str(tmp_path / "state"),
            "--http-addr",
            "127.0.0.1:0",
            "--record",
            str(recording),
        ],
        env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"},
    )
    # and `otelbridge record` beside it: its own recording of the same events
    beside = tmp_path / "beside.jsonl"
    recorder = start(
        [
            "record",
            "-v",
            "--address",
            namespace.cd.address,
            "--namespace",
            namespace.name,
            "--output",
            str(beside),
        ]
    )
    try:
        wait_for_line(live, "subscribed to containerd")
        wait_for_line(recorder, "subscribed to containerd")
        ids = [f"rec-{i}-{uuid.uuid4().hex[:6]}" for i in range(3)]
        for i, cid in enumerate(ids):
            labels = {"traceparent": TRACEPARENT} if i < 2 else {}
            namespace.run(cid, "/bin/sh", "-c", "sleep 0.3", labels=labels)
        # defect 8: ready by a probe (its own loopback, 0.4 s late): the replay must take
        # the live verdict, not decide "started" at /tasks/start
        probed = f"rec-probed-{uuid.uuid4().hex[:6]}"
        ids.append(probed)
        namespace.run(
            probed,
            "/bin/sh",
            "-c",
            "sleep 0.4; httpd -p 127.0.0.1:8080; sleep 1.5",
            labels={"otelbridge.io/readiness": "tcp://127.0.0.1:8080"},
        )
        live_spans = receiver.wait_for_spans(
            lambda s: s.attributes.get(semconv.CONTAINER_ID) in ids, count=20, timeout_s=20
        )
    finally:
        stop(live)
        code, _, err = stop(recorder)
    assert code == 0, err

    out = tmp_path / "spans.jsonl"
    replay = subprocess.run(
        [*OTELBRIDGE, "replay", "--exporter", "jsonl", "--jsonl-path", str(out), str(recording)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert replay.returncode == 0, replay.stderr
    assert "replayed" in replay.stderr

    def key(span):  # type: ignore[no-untyped-def]
        return (
            span.trace_id,
            span.span_id,
            span.parent_span_id,
            span.name,
            span.start_time_unix_nano,
            span.end_time_unix_nano,
        )

    replayed = {
        key(span)
        for line in out.read_text().splitlines()
        for rs in from_otlp_json(json.loads(line)).resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
    }
    assert {key(s.span) for s in live_spans} <= replayed
    [probed_startup] = [
        s
        for s in live_spans
        if s.name == semconv.SPAN_CONTAINER_STARTUP and s.attributes[semconv.CONTAINER_ID] == probed
    ]
    assert probed_startup.attributes[semconv.OB_READINESS_SOURCE] == "probe"

    # the recording made beside the bridge replays the same startups, with the probe's
    # verdict (its own probe's moment: not "started" at /tasks/start)
    again = tmp_path / "again.jsonl"
    replay = subprocess.run(
        [*OTELBRIDGE, "replay", "--exporter", "jsonl", "--jsonl-path", str(again), str(beside)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert replay.returncode == 0, replay.stderr

    def attr(span, key: str) -> str:  # type: ignore[no-untyped-def]
        return next(kv.value.string_value for kv in span.attributes if kv.key == key)

    sources = {
        attr(span, semconv.CONTAINER_ID): attr(span, semconv.OB_READINESS_SOURCE)
        for line in again.read_text().splitlines()
        for rs in from_otlp_json(json.loads(line)).resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
        if span.name == semconv.SPAN_CONTAINER_STARTUP
    }
    assert sources[probed] == "probe"
    assert {sources[cid] for cid in ids if cid != probed} == {"started"}


def otelbridge(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*OTELBRIDGE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_replay_of_a_recording_with_bad_lines_reports_them_and_succeeds(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"format":"otelbridge-recording","version":1}\nnot json\n{"ts": "x"}\n')
    result = otelbridge("replay", "--exporter", "none", str(bad))
    assert result.returncode == 0
    assert "otelbridge.events.malformed=2" in result.stderr
    assert "line 2" in result.stderr


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("this is\nnot a recording\n", "not an otelbridge recording or `ctr events` output"),
        ('{"format": "otelbridge-recording", "version": 9}\n', "recording version 9"),
        ('{"format": "other", "version": 1}\n', "unknown format"),
        ("", "holds no events"),
    ],
)
def test_replay_of_what_is_no_recording_says_so_and_exits_1(
    tmp_path: Path, content: str, says: str
) -> None:
    """Defects 7 and 13: these exited 0 (an unknown version was accepted silently)."""
    path = tmp_path / "input"
    path.write_text(content)
    result = otelbridge("replay", "--exporter", "none", str(path))
    assert result.returncode == 1, result.stderr
    assert says in result.stderr
    assert "Traceback" not in result.stderr


def test_replay_whose_spans_cannot_be_delivered_exits_1(tmp_path: Path) -> None:
    """Defect 7: it printed "of note: {'otelbridge.spans.dropped': 548}" and exited 0."""
    from otelbridge.source.recording import envelope_line, header_line  # noqa: PLC0415
    from otelbridge.testing.events import Timeline  # noqa: PLC0415

    path = tmp_path / "rec.jsonl"
    lines = [header_line(), *(envelope_line(e) for e in Timeline().run_container("c1"))]
    path.write_text("\n".join(lines) + "\n")
    # a collector that answers nothing: every attempt fails until the replay gives up
    result = otelbridge(
        "replay",
        str(path),
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "200",
        },
    )
    assert result.returncode == 1, result.stderr
    assert "could not be delivered" in result.stderr


def test_record_that_never_connects_exits_1(tmp_path: Path) -> None:
    """Defect 7: it exited 0 with an empty recording."""
    result = otelbridge(
        "record",
        "--address",
        str(tmp_path / "no.sock"),
        "-o",
        str(tmp_path / "out.jsonl"),
        "--duration",
        "2",
    )
    assert result.returncode == 1, result.stderr
    assert "never connected to containerd" in result.stderr


def test_a_state_dir_that_cannot_be_opened_says_permission_denied_and_names_the_flag(
    tmp_path: Path,
) -> None:
    """Defect 6: it said neither what was wrong nor which setting to change."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)  # root's: user nobody may not enter it
    tmp_path.chmod(0o755)
    result = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            *OTELBRIDGE,
            "run",
            "--state-dir",
            str(locked / "state"),
            "--http-addr",
            "",
            "--address",
            str(tmp_path / "no.sock"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none"},
    )
    assert result.returncode == 1, result.stderr
    assert "ermission denied" in result.stderr and "--state-dir" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_config_lists_every_problem_and_exits_2(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[source]\nqueue_size = "big"\nbogus = 1\n[enrich]\nlink_policy = "x"\n')
    result = subprocess.run(
        [*OTELBRIDGE, "replay", "--config", str(cfg), "-"],
        input="",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    for problem in ("source.queue_size", "source.bogus: unknown key", "enrich.link_policy"):
        assert problem in result.stderr
