"""The checkpoint's record codec: every field of a startup record survives a restart."""

from __future__ import annotations

import dataclasses

from otelbridge.core.model import ContainerKey, Outcome, StartupRecord
from otelbridge.export.checkpoint import decode_record, encode_record

T0 = 1_700_000_000_123_456_789  # a float could not hold it exactly


def full_record(**changes: object) -> StartupRecord:
    record = StartupRecord(
        key=ContainerKey("default", "web"),
        incarnation_ns=T0,
        attempt=2,
        snapshot_prepare_ns=T0,
        container_create_ns=T0 + 1,
        task_create_ns=T0 + 2,
        task_start_ns=T0 + 3,
        ready_ns=None,
        end_ns=T0 + 9,
        outcome=Outcome.NOT_READY,
        partial=True,
        pid=4242,
        exit_status=137,
        image="registry:5000/web:1",
        runtime="io.containerd.runc.v2",
        snapshotter="overlayfs",
        readiness_source="probe",
        failure="probe did not succeed by its deadline",
        oom_ns=[T0 + 5],
    )
    return dataclasses.replace(record, **changes)  # type: ignore[arg-type]


def test_every_field_round_trips_to_the_nanosecond() -> None:
    record = full_record()
    decoded, last = decode_record(record.key, encode_record(record, T0 + 7))
    assert last == T0 + 7
    assert decoded == record


def test_the_reason_of_a_not_ready_startup_survives() -> None:
    """Defect 4: the codec dropped StartupRecord.failure: a restored not_ready startup lost
    its reason."""
    record = full_record()
    decoded, _ = decode_record(record.key, encode_record(record, 0))
    assert decoded.failure == "probe did not succeed by its deadline"


def test_a_checkpoint_written_before_the_failure_field_still_reads() -> None:
    text = encode_record(full_record(), 0).replace(
        ',"fail":"probe did not succeed by its deadline"', ""
    )
    assert '"fail"' not in text
    decoded, _ = decode_record(ContainerKey("default", "web"), text)
    assert decoded.failure == ""
