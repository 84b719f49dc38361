"""What the checkpoint holds, and how a startup record is written into it.

The correlator's state (startups in flight, completed containers' tombstones, unclaimed
snapshot prepares) and the startups completed but not yet emitted are kept in the state
database (:mod:`otelbridge.export.spool`) as rows; a record is JSON with every moment to
the nanosecond. Its container record is not kept: it is looked up again after a restart.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from otelbridge.core.model import ContainerKey, Outcome, StartupRecord


def encode_record(record: StartupRecord, last_event_ns: int) -> str:
    """A record as the checkpoint keeps it; its container record is looked up again."""
    return json.dumps(
        {
            "inc": record.incarnation_ns,
            "att": record.attempt,
            "t": [
                record.snapshot_prepare_ns,
                record.container_create_ns,
                record.task_create_ns,
                record.task_start_ns,
                record.ready_ns,
                record.end_ns,
            ],
            "out": record.outcome.value if record.outcome is not None else None,
            "partial": record.partial,
            "pid": record.pid,
            "exit": record.exit_status,
            "image": record.image,
            "runtime": record.runtime,
            "snap": record.snapshotter,
            "ready_by": record.readiness_source,
            "oom": record.oom_ns,
            "fail": record.failure,
            "last": last_event_ns,
        },
        separators=(",", ":"),
    )


def decode_record(key: ContainerKey, text: str) -> tuple[StartupRecord, int]:
    d = json.loads(text)
    prepare, create, task_create, task_start, ready, end = d["t"]
    record = StartupRecord(
        key=key,
        incarnation_ns=int(d["inc"]),
        attempt=int(d["att"]),
        snapshot_prepare_ns=prepare,
        container_create_ns=create,
        task_create_ns=task_create,
        task_start_ns=task_start,
        ready_ns=ready,
        end_ns=end,
        outcome=Outcome(d["out"]) if d["out"] is not None else None,
        partial=bool(d["partial"]),
        pid=int(d["pid"]),
        exit_status=d["exit"],
        image=str(d["image"]),
        runtime=str(d["runtime"]),
        snapshotter=str(d["snap"]),
        readiness_source=str(d["ready_by"]),
        oom_ns=[int(t) for t in d["oom"]],
        failure=str(d.get("fail", "")),  # absent in checkpoints of schema 2
    )
    return record, int(d["last"])


@dataclass(slots=True)
class StateRow:
    """What the checkpoint holds for one key after a change (``None``: nothing)."""

    key: ContainerKey
    record: StartupRecord | None = None  # the startup in flight
    last_event_ns: int = 0
    tombstone: tuple[int, int, int] | None = None  # (incarnation, attempt, task create)
    prepare_ns: int | None = None
    unemitted: Sequence[StartupRecord] = ()  # completed attempts whose spans are not out


@dataclass
class Checkpoint:
    """What a previous run left: see :meth:`StateStore.load`."""

    in_flight: list[tuple[StartupRecord, int]] = field(default_factory=list)
    unemitted: list[StartupRecord] = field(default_factory=list)
    done: list[tuple[ContainerKey, int, int, int]] = field(default_factory=list)
    prepares: list[tuple[ContainerKey, int]] = field(default_factory=list)
    horizon_ns: int | None = None
    spooled: int = 0


__all__ = ["Checkpoint", "StateRow", "decode_record", "encode_record"]
