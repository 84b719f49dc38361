"""Recordings: the raw event stream written to, and read back from, a file.

Two input formats, told apart by the first non-blank character:

* **otelbridge recordings** (``otelbridge record``), JSON lines, lossless::

    {"format": "otelbridge-recording", "version": 1, ...}                  header
    {"container": {"ns": ..., "id": ..., "labels": {...}, ...}}             a container record
    {"ts": 1700000000004000000, "ns": "default", "topic": "/containers/create",
     "type_url": "containerd.events.ContainerCreate", "payload": "<base64>"}

  A container's record is written just before its ``/containers/create`` envelope, so a
  replay knows its labels, annotations and trace context when the container appears.

* **``ctr events`` output**, one event per line:
  ``2026-11-28 11:42:03.12107084 +0000 UTC demo /tasks/start {"container_id":...}``.
  The JSON payload is re-encoded into the protobuf bytes containerd sent, so both formats
  go through the same decoder. Timestamps keep every nanosecond digit ``ctr`` printed.

A line that cannot be read is logged (with its number) and counted as
``otelbridge.events.malformed``; reading goes on.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import json
import logging
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

from google.protobuf import json_format

from otelbridge.core import semconv
from otelbridge.core.counters import Counters
from otelbridge.core.errors import NotFound
from otelbridge.core.logutil import ThrottledLogger
from otelbridge.core.model import ContainerInfo, CriInfo, LifecycleEvent, RawEnvelope
from otelbridge.decode import MESSAGE_FOR_TOPIC, TYPE_URL_FOR_TOPIC, decode

_log = ThrottledLogger(logging.getLogger(__name__))
FORMAT = "otelbridge-recording"
VERSION = 1
MAX_LINE = 4 * 1024 * 1024  # a line longer than this is not an event

_CTR_LINE = re.compile(
    r"(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))? ([+-])(\d\d)(\d\d) \S+ "
    r"(\S+) (/\S+)(?: (.*))?"
)


def envelope_line(env: RawEnvelope) -> str:
    return json.dumps(
        {
            "ts": env.timestamp_ns,
            "ns": env.namespace,
            "topic": env.topic,
            "type_url": env.type_url,
            "payload": base64.b64encode(env.payload).decode("ascii"),
        },
        separators=(",", ":"),
    )


def container_line(info: ContainerInfo) -> str:
    return json.dumps(
        {
            "container": {
                "ns": info.namespace,
                "id": info.id,
                "image": info.image,
                "runtime": info.runtime,
                "snapshotter": info.snapshotter,
                "snapshot_key": info.snapshot_key,
                "created_at_ns": info.created_at_ns,
                "labels": dict(info.labels),
                "annotations": dict(info.annotations),
                "env": dict(info.env),
                **({"cri": _cri_json(info.cri)} if info.cri is not None else {}),
            }
        },
        separators=(",", ":"),
    )


def _cri_json(cri: CriInfo) -> dict[str, Any]:
    return {
        "kind": cri.kind,
        "sandbox_id": cri.sandbox_id,
        "pod_name": cri.pod_name,
        "pod_namespace": cri.pod_namespace,
        "pod_uid": cri.pod_uid,
        "container_name": cri.container_name,
        "attempt": cri.attempt,
        "annotations": dict(cri.annotations),
        "pod_annotations": dict(cri.pod_annotations),
    }


def _cri(obj: Any) -> CriInfo | None:
    if obj is None:
        return None
    if not isinstance(obj, dict) or obj.get("kind") not in ("sandbox", "container"):
        raise ValueError("cri must be an object with kind sandbox or container")
    attempt = obj.get("attempt", 0)
    if not isinstance(attempt, int) or isinstance(attempt, bool):
        raise ValueError("cri.attempt must be an integer")
    return CriInfo(
        kind=str(obj["kind"]),
        sandbox_id=str(obj.get("sandbox_id", "")),
        pod_name=str(obj.get("pod_name", "")),
        pod_namespace=str(obj.get("pod_namespace", "")),
        pod_uid=str(obj.get("pod_uid", "")),
        container_name=str(obj.get("container_name", "")),
        attempt=attempt,
        annotations=_str_map(obj.get("annotations", {})),
        pod_annotations=_str_map(obj.get("pod_annotations", {})),
    )


def header_line(**extra: Any) -> str:
    return json.dumps({"format": FORMAT, "version": VERSION, **extra}, separators=(",", ":"))


def _int_ns(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer of nanoseconds")
    return value


def _str_map(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValueError("expected an object of strings")
    return {str(k): str(v) for k, v in value.items()}


def _container(obj: Mapping[str, Any]) -> ContainerInfo:
    return ContainerInfo(
        namespace=str(obj["ns"]),
        id=str(obj["id"]),
        image=str(obj.get("image", "")),
        runtime=str(obj.get("runtime", "")),
        snapshotter=str(obj.get("snapshotter", "")),
        snapshot_key=str(obj.get("snapshot_key", "")),
        created_at_ns=_int_ns(obj.get("created_at_ns", 0), "created_at_ns"),
        labels=_str_map(obj.get("labels", {})),
        annotations=_str_map(obj.get("annotations", {})),
        env=_str_map(obj.get("env", {})),
        cri=_cri(obj.get("cri")),
    )


def _json_line(obj: Any) -> RawEnvelope | ContainerInfo | None:
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    if "format" in obj:
        if obj.get("format") != FORMAT:
            raise ValueError(f"unknown format {obj.get('format')!r}")
        return None
    if "container" in obj:
        return _container(obj["container"])
    return RawEnvelope(
        _int_ns(obj["ts"], "ts"),
        str(obj["ns"]),
        str(obj["topic"]),
        str(obj.get("type_url", "")),
        base64.b64decode(obj.get("payload", ""), validate=True),
    )


def parse_ctr_line(line: str) -> RawEnvelope:
    """One line of ``ctr events`` output as the envelope containerd sent."""
    m = _CTR_LINE.fullmatch(line)
    if m is None:
        raise ValueError("not a `ctr events` line")
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    frac = (m.group(7) or "").ljust(9, "0")
    offset = (int(m.group(9)) * 60 + int(m.group(10))) * 60
    if m.group(8) == "-":
        offset = -offset
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)) - offset
    ts_ns = seconds * 1_000_000_000 + int(frac)
    namespace, topic, payload_json = m.group(11), m.group(12), m.group(13) or ""
    message_type = MESSAGE_FOR_TOPIC.get(topic)
    if message_type is None:
        # a topic otelbridge does not decode: keep it so it is counted as such
        return RawEnvelope(ts_ns, namespace, topic, "", payload_json.encode())
    message = message_type()
    if payload_json:
        json_format.Parse(payload_json, message, ignore_unknown_fields=True)
    return RawEnvelope(
        ts_ns, namespace, topic, TYPE_URL_FOR_TOPIC[topic], message.SerializeToString()
    )


@dataclass
class Recording:
    """What a reader found: envelopes are streamed, container records collected.

    ``admit`` (the enricher's) trims each record as it is stored, so a long recording
    holds only what the bridge reads of each container.
    """

    containers: dict[tuple[str, str], ContainerInfo] = field(default_factory=dict)
    admit: Callable[[ContainerInfo], ContainerInfo] | None = None

    def store(self, info: ContainerInfo) -> None:
        self.containers[(info.namespace, info.id)] = (
            self.admit(info) if self.admit is not None else info
        )

    def lookup(self, namespace: str, container_id: str) -> ContainerInfo:
        try:
            return self.containers[(namespace, container_id)]
        except KeyError:
            raise NotFound(f"{namespace}/{container_id}: not in the recording") from None


def read_events(
    lines: Iterable[str], counters: Counters, recording: Recording | None = None
) -> Iterator[RawEnvelope]:
    """Envelopes from a recording or ``ctr events`` output; container records go into
    ``recording``. Never raises on bad lines: they are logged and counted."""
    text_format: bool | None = None
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line:
            continue
        if text_format is None:
            text_format = not line.startswith("{")
        try:
            if len(line) > MAX_LINE:
                raise ValueError(f"line longer than {MAX_LINE} bytes")
            if text_format:
                yield parse_ctr_line(line)
                continue
            item = _json_line(json.loads(line))
        except (
            ValueError,  # bad JSON, bad fields, bad timestamps (json's errors are ValueErrors)
            KeyError,
            TypeError,
            OverflowError,
            RecursionError,  # JSON nested deeper than the parser's stack
            binascii.Error,
            json_format.ParseError,
        ) as exc:
            counters.inc(semconv.EVENTS_MALFORMED)
            _log.warning("line", "line %d: skipped, cannot be read (%s)", number, exc)
            continue
        if isinstance(item, RawEnvelope):
            yield item
        elif item is not None and recording is not None:
            recording.store(item)


def bounded_lines(stream: IO[str], max_line: int = MAX_LINE) -> Iterator[str]:
    """The lines of ``stream``, never reading more than ``max_line`` + 1 characters into
    one: the rest of a longer line is skipped, and what is yielded for it is long enough
    for :func:`read_events` to reject it (and count it)."""
    while True:
        line = stream.readline(max_line + 1)
        if not line:
            return
        if len(line) > max_line and not line.endswith("\n"):
            while True:  # skip to the end of the overlong line, a chunk at a time
                rest = stream.readline(max_line + 1)
                if not rest or rest.endswith("\n"):
                    break
        yield line


def open_text(path: str) -> IO[str]:
    """A recording to read: a path, or ``-`` for standard input."""
    if path == "-":
        return sys.stdin
    return open(path, encoding="utf-8", errors="replace")


class Recorder:
    """A live-source sink writing a lossless recording (see the module docstring).

    Called on the source thread. On ``/containers/create`` it reads the container's
    record first and writes it before the envelope (a container already gone is
    recorded without it). Reconcile listings are not recorded: a recording holds what
    containerd published.
    """

    def __init__(
        self,
        out: IO[str],
        lookup: Any,
        counters: Counters,
        *,
        max_events: int = 0,
        on_limit: Any = None,
    ) -> None:
        self._out = out
        self._lookup = lookup
        self._counters = counters
        self._max = max_events
        self._on_limit = on_limit
        self.events = 0
        self._written: set[tuple[str, str]] = set()  # container records in the file

    def header(self, **extra: Any) -> None:
        self._out.write(header_line(**extra) + "\n")
        self._out.flush()

    def __call__(self, item: object) -> None:
        if not isinstance(item, RawEnvelope):
            return
        if self._max and self.events >= self._max:
            return
        self._counters.inc(semconv.EVENTS_RECEIVED)
        if item.topic == "/containers/create" and self._lookup is not None:
            event_id = _container_id(item)
            if event_id:
                info = self._read(item.namespace, event_id)
                if info is not None:
                    cri = info.cri
                    # a recording begun after the sandbox must still know the pod
                    if (
                        cri is not None
                        and cri.kind == "container"
                        and cri.sandbox_id
                        and (item.namespace, cri.sandbox_id) not in self._written
                    ):
                        sandbox = self._read(item.namespace, cri.sandbox_id)
                        if sandbox is not None:
                            self._write(sandbox)
                    self._write(info)
        self._out.write(envelope_line(item) + "\n")
        self._out.flush()
        self.events += 1
        if self._max and self.events >= self._max and self._on_limit is not None:
            self._on_limit()

    def _read(self, namespace: str, container_id: str) -> ContainerInfo | None:
        try:
            info: ContainerInfo = self._lookup(namespace, container_id)
        except Exception as exc:  # NotFound for short-lived containers, or worse
            self._counters.inc(semconv.METADATA_FAILED)
            _log.info("record-lookup", "%s/%s: no record (%s)", namespace, container_id, exc)
            return None
        return info

    def _write(self, info: ContainerInfo) -> None:
        self._out.write(container_line(info) + "\n")
        self._written.add((info.namespace, info.id))


def _container_id(env: RawEnvelope) -> str:
    event = decode(env)
    return event.subject if isinstance(event, LifecycleEvent) else ""
