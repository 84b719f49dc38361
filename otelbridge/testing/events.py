"""Builders of containerd envelopes for tests: real protobuf payloads, no containerd.

``Timeline`` plays a container's life the way containerd would publish it::

    tl = Timeline(start_ns=1_700_000_000_000_000_000)
    envs = tl.run_container("web", ns="default")  # prepare, create, task create/start, ...

Gaps default to what TESTBED.md measured on a real containerd (4 ms, 44 ms, 9 ms).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

from google.protobuf.message import Message

from otelbridge.containerd import topics
from otelbridge.containerd._gen import otelbridge_events_pb2 as ev
from otelbridge.core.model import RawEnvelope
from otelbridge.decode import TYPE_URL_FOR_TOPIC

_MS = 1_000_000


def envelope(topic: str, payload: Message, *, ts_ns: int, ns: str = "default") -> RawEnvelope:
    """An envelope for ``topic`` carrying ``payload`` under containerd's type URL."""
    return RawEnvelope(ts_ns, ns, topic, TYPE_URL_FOR_TOPIC[topic], payload.SerializeToString())


def _set_ts(field: object, ts_ns: int) -> None:
    field.seconds, field.nanos = divmod(ts_ns, 1_000_000_000)  # type: ignore[attr-defined]


class Timeline:
    """Emits envelopes with increasing timestamps (integer nanoseconds)."""

    def __init__(self, start_ns: int = 1_700_000_000_000_000_000, ns: str = "default") -> None:
        self.now_ns = start_ns
        self.ns = ns

    def at(
        self, topic: str, payload: Message, *, after_ns: int = 0, ns: str | None = None
    ) -> RawEnvelope:
        self.now_ns += after_ns
        return envelope(topic, payload, ts_ns=self.now_ns, ns=ns or self.ns)

    # one builder per topic ---------------------------------------------------------------
    def snapshot_prepare(
        self, key: str, *, after_ns: int = 0, ns: str | None = None
    ) -> RawEnvelope:
        msg = ev.SnapshotPrepare(key=key, parent="sha256:" + "a" * 64, snapshotter="overlayfs")
        return self.at(topics.SNAPSHOT_PREPARE, msg, after_ns=after_ns, ns=ns)

    def snapshot_remove(self, key: str, *, after_ns: int = 0, ns: str | None = None) -> RawEnvelope:
        msg = ev.SnapshotRemove(key=key, snapshotter="overlayfs")
        return self.at(topics.SNAPSHOT_REMOVE, msg, after_ns=after_ns, ns=ns)

    def container_create(
        self,
        cid: str,
        *,
        image: str = "localhost/otelbridge-busybox:latest",
        runtime: str = "io.containerd.runc.v2",
        after_ns: int = 0,
        ns: str | None = None,
    ) -> RawEnvelope:
        msg = ev.ContainerCreate(id=cid, image=image, runtime=ev.RuntimeRef(name=runtime))
        return self.at(topics.CONTAINER_CREATE, msg, after_ns=after_ns, ns=ns)

    def container_update(
        self, cid: str, labels: Mapping[str, str] | None = None, *, after_ns: int = 0
    ) -> RawEnvelope:
        msg = ev.ContainerUpdate(id=cid, labels=dict(labels or {}))
        return self.at(topics.CONTAINER_UPDATE, msg, after_ns=after_ns)

    def container_delete(
        self, cid: str, *, after_ns: int = 0, ns: str | None = None
    ) -> RawEnvelope:
        return self.at(
            topics.CONTAINER_DELETE, ev.ContainerDelete(id=cid), after_ns=after_ns, ns=ns
        )

    def task_create(
        self, cid: str, pid: int = 4242, *, after_ns: int = 0, ns: str | None = None
    ) -> RawEnvelope:
        msg = ev.TaskCreate(container_id=cid, bundle=f"/run/bundle/{cid}", pid=pid)
        return self.at(topics.TASK_CREATE, msg, after_ns=after_ns, ns=ns)

    def task_start(
        self, cid: str, pid: int = 4242, *, after_ns: int = 0, ns: str | None = None
    ) -> RawEnvelope:
        return self.at(
            topics.TASK_START, ev.TaskStart(container_id=cid, pid=pid), after_ns=after_ns, ns=ns
        )

    def task_exit(
        self,
        cid: str,
        status: int = 0,
        pid: int = 4242,
        *,
        exec_id: str | None = None,
        after_ns: int = 0,
        ns: str | None = None,
    ) -> RawEnvelope:
        msg = ev.TaskExit(
            container_id=cid, id=cid if exec_id is None else exec_id, pid=pid, exit_status=status
        )
        _set_ts(msg.exited_at, self.now_ns + after_ns)
        return self.at(topics.TASK_EXIT, msg, after_ns=after_ns, ns=ns)

    def task_delete(
        self,
        cid: str,
        status: int = 0,
        pid: int = 4242,
        *,
        after_ns: int = 0,
        ns: str | None = None,
    ) -> RawEnvelope:
        msg = ev.TaskDelete(container_id=cid, pid=pid, exit_status=status)
        _set_ts(msg.exited_at, self.now_ns)
        return self.at(topics.TASK_DELETE, msg, after_ns=after_ns, ns=ns)

    def task_oom(self, cid: str, *, after_ns: int = 0, ns: str | None = None) -> RawEnvelope:
        return self.at(topics.TASK_OOM, ev.TaskOOM(container_id=cid), after_ns=after_ns, ns=ns)

    def run_container(
        self,
        cid: str,
        *,
        ns: str | None = None,
        image: str = "localhost/otelbridge-busybox:latest",
        exit_status: int = 0,
        gaps_ns: tuple[int, int, int] = (4 * _MS, 44 * _MS, 9 * _MS),
        lifetime_ns: int = 2 * _MS,
        remove: bool = True,
    ) -> list[RawEnvelope]:
        """The whole life of a ``ctr run --rm`` container, in containerd's order."""
        pid = 1000 + zlib.crc32(cid.encode()) % 30000  # stable across processes
        out = [
            self.snapshot_prepare(cid, ns=ns),
            self.container_create(cid, image=image, after_ns=gaps_ns[0], ns=ns),
            self.task_create(cid, pid, after_ns=gaps_ns[1], ns=ns),
            self.task_start(cid, pid, after_ns=gaps_ns[2], ns=ns),
            self.task_exit(cid, exit_status, pid, after_ns=lifetime_ns, ns=ns),
        ]
        if remove:
            out += [
                self.task_delete(cid, exit_status, pid, after_ns=10 * _MS, ns=ns),
                self.snapshot_remove(cid, after_ns=10 * _MS, ns=ns),
                self.container_delete(cid, after_ns=_MS, ns=ns),
            ]
        return out
