"""Recordings: the raw event stream written to, and read back from, a file.

Two input formats, told apart by the first non-blank character:

* **otelbridge recordings** (``otelbridge record``), JSON lines, lossless::

    {"format": "otelbridge-recording", "version": 2, "verdicts": true, ...}  header
    {"container": {"ns": ..., "id": ..., "labels": {...}, ...}}             a container record
    {"ts": 1700000000004000000, "ns": "default", "topic": "/containers/create",
     "type_url": "containerd.events.ContainerCreate", "payload": "<base64>"}
    {"ready": {"ns": ..., "id": ..., "attempt": 1, "at": ..., "source": "probe",
               "ok": true, "reason": ""}}                                  a readiness verdict

  The recorder sees what the live pipeline's event thread processes, in its order: the
  envelopes, and every readiness verdict (a probe's, the kubelet's, and ``started``
  decided by the bridge), so a replay gives the live run's spans, IDs and verdicts. A
  container's record is written as soon as the bridge read it (before the bridge used
  it); a replay looks records up when it needs them. Version 1 recordings (records before
  their ``/containers/create``, no verdicts) are still read; any other version is refused.

* **``ctr events`` output**, one event per line:
  ``2026-11-28 11:42:03.12107084 +0000 UTC demo /tasks/start {"container_id":...}``.
  The JSON payload is re-encoded into the protobuf bytes containerd sent, so both formats
  go through the same decoder. Timestamps keep every nanosecond digit ``ctr`` printed.

A line that cannot be read is logged (with its number) and counted as
``otelbridge.events.malformed``; reading goes on. A file none of whose lines can be read,
or whose header names an unknown format or version, raises
:class:`~otelbridge.core.errors.DecodeError` (the command exits non-zero).
"""

from __future__ import annotations

import base64
import binascii
import calendar
import itertools
import json
import logging
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

from google.protobuf import json_format

from otelbridge.core import semconv
from otelbridge.core.counters import Counters
from otelbridge.core.errors import DecodeError, NotFound
from otelbridge.core.logutil import ThrottledLogger
from otelbridge.core.model import (
    ContainerInfo,
    ContainerKey,
    CriInfo,
    RawEnvelope,
    ReadySignal,
    SourceItem,
)
from otelbridge.decode import MESSAGE_FOR_TOPIC, TYPE_URL_FOR_TOPIC

_log = ThrottledLogger(logging.getLogger(__name__))
FORMAT = "otelbridge-recording"
VERSION = 2
VERSIONS = (1, 2)  # what this reader understands
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


def ready_line(signal: ReadySignal) -> str:
    return json.dumps(
        {
            "ready": {
                "ns": signal.key.namespace,
                "id": signal.key.id,
                "attempt": signal.attempt,
                "at": signal.at_ns,
                "source": signal.source,
                "ok": signal.ok,
                "reason": signal.reason,
            }
        },
        separators=(",", ":"),
    )


def _ready(obj: Any) -> ReadySignal:
    if not isinstance(obj, dict):
        raise ValueError("ready must be an object")
    attempt = obj["attempt"]
    if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
        raise ValueError("ready.attempt must be a positive integer")
    if not isinstance(obj.get("ok", True), bool):
        raise ValueError("ready.ok must be true or false")
    return ReadySignal(
        ContainerKey(str(obj["ns"]), str(obj["id"])),
        attempt,
        _int_ns(obj["at"], "ready.at"),
        str(obj["source"]),
        bool(obj.get("ok", True)),
        str(obj.get("reason", "")),
    )


def _header(obj: Mapping[str, Any], recording: Recording | None) -> None:
    if obj.get("format") != FORMAT:
        raise DecodeError(f"unknown format {obj.get('format')!r}: not an otelbridge recording")
    version = obj.get("version")
    if version not in VERSIONS:
        raise DecodeError(
            f"recording version {version!r} is not one this otelbridge reads "
            f"({', '.join(map(str, VERSIONS))}): it was written by another version"
        )
    if recording is not None:
        recording.version = int(version)
        recording.verdicts = bool(obj.get("verdicts", False))


def _json_line(obj: Any) -> RawEnvelope | ContainerInfo | ReadySignal | dict[str, Any]:
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    if "format" in obj:
        return obj
    if "container" in obj:
        return _container(obj["container"])
    if "ready" in obj:
        return _ready(obj["ready"])
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
    """What a reader found: items are streamed, container records collected.

    ``admit`` (the enricher's) trims each record as it is stored, so a long recording
    holds only what the bridge reads of each container. ``kind`` is ``recording`` or
    ``ctr`` (plain ``ctr events`` output: no records, so no labels and no rollout links)
    once the first line was read; ``verdicts``: the recording holds every readiness
    verdict (a replay then takes them, not its own decisions).
    """

    containers: dict[tuple[str, str], ContainerInfo] = field(default_factory=dict)
    admit: Callable[[ContainerInfo], ContainerInfo] | None = None
    kind: str = ""
    version: int = 0
    verdicts: bool = False
    readable: int = 0  # lines read as something

    def store(self, info: ContainerInfo) -> None:
        self.containers[(info.namespace, info.id)] = (
            self.admit(info) if self.admit is not None else info
        )

    def lookup(self, namespace: str, container_id: str) -> ContainerInfo:
        try:
            return self.containers[(namespace, container_id)]
        except KeyError:
            raise NotFound(f"{namespace}/{container_id}: not in the recording") from None


def read_items(
    lines: Iterable[str], counters: Counters, recording: Recording | None = None
) -> Iterator[SourceItem]:
    """Envelopes and readiness verdicts from a recording or ``ctr events`` output, in
    order; container records go into ``recording``. Bad lines are logged and counted; a
    header naming an unknown format or version raises DecodeError, and so does a file
    with lines none of which could be read."""
    text_format: bool | None = None
    bad = good = 0
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line:
            continue
        if text_format is None:
            text_format = not line.startswith("{")
            if recording is not None:
                recording.kind = "ctr" if text_format else "recording"
        try:
            if len(line) > MAX_LINE:
                raise ValueError(f"line longer than {MAX_LINE} bytes")
            if text_format:
                item: Any = parse_ctr_line(line)
            else:
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
            bad += 1
            counters.inc(semconv.EVENTS_MALFORMED)
            _log.warning("line", "line %d: skipped, cannot be read (%s)", number, exc)
            continue
        good += 1
        if recording is not None:
            recording.readable = good
        if isinstance(item, dict):
            _header(item, recording)
        elif isinstance(item, ContainerInfo):
            if recording is not None:
                recording.store(item)
        else:
            yield item
    if bad and not good:
        raise DecodeError(
            f"none of its {bad} lines could be read: not an otelbridge recording or "
            "`ctr events` output"
        )


def read_events(
    lines: Iterable[str], counters: Counters, recording: Recording | None = None
) -> Iterator[RawEnvelope]:
    """The envelopes of :func:`read_items` (verdicts left out)."""
    for item in read_items(lines, counters, recording):
        if isinstance(item, RawEnvelope):
            yield item


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


def open_items(
    lines: Iterable[str], counters: Counters, recording: Recording
) -> Iterator[SourceItem]:
    """:func:`read_items`, with the first line read at once: ``recording`` knows its
    kind, version and whether it holds verdicts before the first item is taken. Raises
    DecodeError now for a header this reader refuses."""
    it = iter(lines)
    first = ""
    for line in it:
        if line.strip():
            first = line
            break
    head = first.strip()
    recording.kind = "" if not head else "recording" if head.startswith("{") else "ctr"
    if head.startswith("{"):
        try:
            obj = json.loads(head)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and "format" in obj:
            _header(obj, recording)
    return read_items(itertools.chain([first] if first else [], it), counters, recording)


def open_text(path: str) -> IO[str]:
    """A recording to read: a path, or ``-`` for standard input."""
    if path == "-":
        return sys.stdin
    return open(path, encoding="utf-8", errors="replace")


class Recorder:
    """Writes a recording of what a live pipeline's event thread processes (see the
    module docstring): wire :meth:`item` as the pipeline's ``tap`` (it sees the items and
    the verdicts the bridge decided), :meth:`record` as its record desk's ``on_read``.

    :meth:`record` may be called from any thread (the lookup threads); the rest from the
    event thread. A write error (a full disk, a closed pipe) ends the recording: it is
    kept in ``error`` and told to ``on_error`` once; nothing is written after it.
    """

    def __init__(
        self,
        out: IO[str],
        counters: Counters,
        *,
        max_events: int = 0,
        on_limit: Callable[[], None] | None = None,
        on_error: Callable[[OSError], None] | None = None,
    ) -> None:
        self._out = out
        self._counters = counters
        self._max = max_events
        self._on_limit = on_limit
        self._on_error = on_error
        self._lock = threading.Lock()
        self.events = 0
        self.verdicts = 0
        self._written: set[tuple[str, str, int]] = set()  # records in the file
        self.error: OSError | None = None

    def header(self, **extra: Any) -> None:
        self._write(header_line(verdicts=True, **extra))

    def _write(self, line: str) -> None:
        with self._lock:
            if self.error is not None:
                return
            try:
                self._out.write(line + "\n")
                self._out.flush()
                return
            except OSError as exc:
                self.error = error = exc
        if self._on_error is not None:
            self._on_error(error)

    def item(self, item: SourceItem) -> None:
        """An envelope or a readiness verdict, as the event thread takes it."""
        if self._max and self.events >= self._max:
            return
        if isinstance(item, RawEnvelope):
            self._write(envelope_line(item))
            self.events += 1
            if self._max and self.events >= self._max and self._on_limit is not None:
                self._on_limit()
        elif isinstance(item, ReadySignal):
            self._write(ready_line(item))
            self.verdicts += 1

    def record(self, info: ContainerInfo) -> None:
        """A container record as containerd returned it (before it was admitted)."""
        key = (info.namespace, info.id, info.created_at_ns)
        with self._lock:
            if key in self._written:
                return
            self._written.add(key)
        self._write(container_line(info))
