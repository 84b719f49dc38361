"""The defects the delivery path had, each shown fixed on a real containerd.

`otelbridge run` is the real process, the receiver a real OTLP/gRPC server on loopback,
the containers real (`ctr run` on a private containerd):

* defects 1 and 2: with ``otlp,jsonl`` and the collector down for 15 s while 5 containers
  start, every span reaches each exporter once, and the retries follow the backoff (at
  most 10 during the outage; about 300 before);
* defect 5: a relist during an 8 s readiness wait leaves one complete ``ready`` startup
  (it was emitted as a 70 ms ``reconciled`` partial one);
* defect 10: a full state disk (a 768 KiB tmpfs) drops spans, counted, then recovers
  without a restart: containers started after the collector returned arrive.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from otelbridge.core import semconv
from otelbridge.export.files import read_jsonl
from otelbridge.testing.otlp import OtlpReceiver
from tests.conftest import Namespace
from tests.integration.processes import Daemon
from tests.integration.test_reliability import kill_all, run_burst, wait_for_startups

pytestmark = pytest.mark.containerd

OUTAGE_S = 15.0


def span_ids_at(receiver: OtlpReceiver, ids: set[str]) -> Counter[bytes]:
    """How many times each span of the containers ``ids`` arrived at the receiver."""
    return Counter(
        s.span.span_id
        for s in receiver.spans()
        if s.attributes.get(semconv.CONTAINER_ID) in ids
        or s.attributes.get(semconv.CONTAINER_ID) is None
    )


def span_ids_in(path: Path, ids: set[str]) -> Counter[bytes]:
    out: Counter[bytes] = Counter()
    with path.open() as f:
        for request in read_jsonl(f):
            for rs in request.resource_spans:
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        attrs = {kv.key: kv.value.string_value for kv in span.attributes}
                        if attrs.get(semconv.CONTAINER_ID) in ids:
                            out[span.span_id] += 1
    return out


@pytest.fixture
def cleanup(namespace: Namespace) -> Iterator[list[Daemon]]:
    daemons: list[Daemon] = []
    yield daemons
    for d in daemons:
        d.close()
    kill_all(namespace)


@pytest.mark.slow
def test_an_outage_sends_each_span_once_to_each_exporter_and_holds_the_backoff(
    namespace: Namespace, receiver: OtlpReceiver, tmp_path: Path, cleanup: list[Daemon]
) -> None:
    jsonl = tmp_path / "spans.jsonl"
    daemon = Daemon(
        namespace.cd.address,
        namespace.name,
        tmp_path / "state",
        receiver.endpoint,
        extra_args=("--jsonl-path", str(jsonl)),
        extra_env={"OTEL_TRACES_EXPORTER": "otlp,jsonl", "OTEL_METRICS_EXPORTER": "none"},
    )
    cleanup.append(daemon)
    daemon.start()
    receiver.stop()
    down_at = time.monotonic()
    ids = {f"once-{i}-{uuid.uuid4().hex[:6]}" for i in range(5)}
    run_burst(namespace, sorted(ids), "/bin/true", workers=5, detach=False)
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
    during = daemon.counters()
    status, body = daemon.get("/readyz")
    receiver.start()

    got = wait_for_startups(receiver, ids, timeout_s=60)
    assert set(got) == ids
    time.sleep(1.0)  # what else is in flight lands
    counters = daemon.stop()

    retries = during[semconv.EXPORT_RETRIES.name]
    print(f"\nretries during a {OUTAGE_S:.0f} s outage: {retries}; /readyz {status}: {body!r}")
    assert 1 <= retries <= 10, retries
    assert status == 503 and "otlp/grpc" in body  # the failing exporter, named
    at_receiver = span_ids_at(receiver, ids)
    in_file = span_ids_in(jsonl, ids)
    assert at_receiver and set(at_receiver.values()) == {1}, "a span reached the collector twice"
    assert in_file and set(in_file.values()) == {1}, "a span was written to jsonl twice"
    assert set(in_file) <= set(at_receiver)
    emitted = counters[semconv.SPANS_EMITTED.name]
    assert counters[semconv.SPANS_EXPORTED.name] == 2 * emitted  # once per exporter
    assert semconv.SPANS_DROPPED.name not in counters


def test_a_relist_during_a_readiness_wait_leaves_one_complete_ready_startup(
    namespace: Namespace, receiver: OtlpReceiver, tmp_path: Path, cleanup: list[Daemon]
) -> None:
    config = tmp_path / "otelbridge.toml"
    config.write_text(
        "[source]\nrelist_interval_s = 3\n[readiness]\nprobe_deadline_s = 30\n",
        encoding="utf-8",
    )
    daemon = Daemon(
        namespace.cd.address,
        namespace.name,
        tmp_path / "state",
        receiver.endpoint,
        config=config,
        extra_env={"OTEL_METRICS_EXPORTER": "none"},
    )
    cleanup.append(daemon)
    daemon.start()
    cid = f"slow-{uuid.uuid4().hex[:6]}"
    # in its own network namespace: the target opens on the container's loopback, 8 s late
    namespace.run(
        cid,
        "sh",
        "-c",
        "sleep 8; exec httpd -f -p 127.0.0.1:8080",
        detach=True,
        labels={"otelbridge.io/readiness": "tcp://127.0.0.1:8080"},
    )
    got = wait_for_startups(receiver, {cid}, timeout_s=40)
    [startup] = got[cid]
    attrs = startup.attributes
    duration_s = (startup.span.end_time_unix_nano - startup.span.start_time_unix_nano) / 1e9
    assert attrs[semconv.OB_STARTUP_OUTCOME] == "ready", attrs
    assert attrs[semconv.OB_READINESS_SOURCE] == "probe"
    assert not attrs.get(semconv.OB_PARTIAL)
    assert 8.0 <= duration_s < 20.0
    counters = daemon.stop()
    assert semconv.STARTUPS_RECONCILED.name not in counters
    assert semconv.STARTUPS_PARTIAL.name not in counters


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=768k", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_a_full_state_disk_drops_counted_and_recovers_without_a_restart(
    namespace: Namespace,
    receiver: OtlpReceiver,
    tmp_path: Path,
    tiny_disk: Path,
    cleanup: list[Daemon],
) -> None:
    daemon = Daemon(
        namespace.cd.address,
        namespace.name,
        tiny_disk / "state",
        receiver.endpoint,
        log_dir=tmp_path,
        extra_env={"OTEL_METRICS_EXPORTER": "none"},
    )
    cleanup.append(daemon)
    daemon.start()
    receiver.stop()
    before = [f"full-{i}-{uuid.uuid4().hex[:6]}" for i in range(300)]
    run_burst(namespace, before, "/bin/true", workers=8, detach=False)
    time.sleep(1.0)
    during = daemon.counters()
    _, ready = daemon.get("/readyz")
    health, _ = daemon.get("/healthz")
    print(f"\nwith the disk full: {json.dumps({k: v for k, v in during.items() if v})}")
    assert during[semconv.SPANS_DROPPED.name] > 0, "the disk never filled: make it smaller"
    assert "nearly full" in ready or "state database" in ready, ready
    assert health == 200  # degraded, alive

    receiver.start()
    after = {f"back-{i}-{uuid.uuid4().hex[:6]}" for i in range(5)}
    time.sleep(2.0)
    run_burst(namespace, sorted(after), "/bin/true", workers=5, detach=False)
    got = wait_for_startups(receiver, after, timeout_s=60)
    assert set(got) == after, "startups after the recovery were lost"
    time.sleep(2.0)
    counters = daemon.stop()
    emitted = counters[semconv.SPANS_EMITTED.name]
    exported = counters[semconv.SPANS_EXPORTED.name]
    dropped = counters.get(semconv.SPANS_DROPPED.name, 0)
    print(f"emitted {emitted}, exported {exported}, dropped {dropped}")
    assert exported + dropped == emitted  # every span accounted for, none twice
    assert "Traceback" not in daemon.log()
