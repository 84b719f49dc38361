"""A trace as a terminal waterfall: one line per span, a bar on a shared time axis.

::

    rollout demo                     |██████████████████████████████| 412.3 ms
      container.startup web-1        |  ████████                    |  98.1 ms
        container.create             |  ▏                           |   4.2 ms

Pure: spans in, text out.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from otelbridge.core import semconv

_BLOCKS = " ▏▎▍▌▋▊▉█"
_COLORS = {
    semconv.SPAN_CONTAINER_STARTUP: "\x1b[36m",
    semconv.SPAN_CONTAINER_CREATE: "\x1b[34m",
    semconv.SPAN_SHIM_LAUNCH: "\x1b[35m",
    semconv.SPAN_TASK_START: "\x1b[33m",
    semconv.SPAN_READINESS_WAIT: "\x1b[32m",
}
_RED = "\x1b[31m"
_DIM = "\x1b[2m"
_RESET = "\x1b[0m"


def _attr(span: Span, key: str) -> str:
    for kv in span.attributes:
        if kv.key == key:
            return str(kv.value.string_value)
    return ""


def _bar(start: int, end: int, t0: int, t1: int, width: int) -> str:
    """A bar with eighth-of-a-cell resolution; a zero-length span is a thin mark."""
    scale = width * 8 / max(t1 - t0, 1)
    last = width * 8 - 1
    a = min(int((start - t0) * scale), last)  # a zero-length span at t1 stays visible
    b = max(int((end - t0) * scale), a + 1)
    cells = []
    for cell in range(width):
        lo, hi = cell * 8, cell * 8 + 8
        filled = max(0, min(b, hi) - max(a, lo))
        if filled == 8:
            cells.append("█")
        elif filled and a > lo:
            cells.append("▐")  # a bar starting inside the cell: show it on the right
        else:
            cells.append(_BLOCKS[filled])
    return "".join(cells)


def _label(span: Span) -> str:
    if span.name == semconv.SPAN_CONTAINER_STARTUP:
        return f"{span.name} {_attr(span, semconv.CONTAINER_ID)}"
    if span.name == semconv.SPAN_ROLLOUT:
        return f"{span.name} {_attr(span, semconv.OB_ROLLOUT_NAME)}".rstrip()
    return span.name


def render(spans: Sequence[Span], *, width: int = 48, color: bool = False) -> str:
    """The waterfall of ``spans`` (one trace), parents before children, by start time."""
    if not spans:
        return "(no spans)"
    ids = {s.span_id for s in spans}
    children: dict[bytes, list[Span]] = defaultdict(list)
    roots = []
    for s in spans:
        if s.parent_span_id and s.parent_span_id in ids:
            children[s.parent_span_id].append(s)
        else:
            roots.append(s)
    t0 = min(s.start_time_unix_nano for s in spans)
    t1 = max(s.end_time_unix_nano for s in spans)
    rows: list[tuple[int, Span]] = []

    def walk(span: Span, depth: int) -> None:
        rows.append((depth, span))
        for child in sorted(children[span.span_id], key=lambda c: c.start_time_unix_nano):
            walk(child, depth + 1)

    for root in sorted(roots, key=lambda r: r.start_time_unix_nano):
        walk(root, 0)
    label_width = max(len("  " * d + _label(s)) for d, s in rows) + 2
    lines = []
    for depth, span in rows:
        label = ("  " * depth + _label(span)).ljust(label_width)
        bar = _bar(span.start_time_unix_nano, span.end_time_unix_nano, t0, t1, width)
        ms = (span.end_time_unix_nano - span.start_time_unix_nano) / 1e6
        error = span.status.code == Status.StatusCode.STATUS_CODE_ERROR
        note = f"  {span.status.message}" if error and span.status.message else ""
        if color:
            tint = _RED if error else _COLORS.get(span.name, "")
            bar = f"{tint}{bar}{_RESET}"
            note = f"{_RED}{note}{_RESET}" if note else ""
            label = f"{_DIM}{label}{_RESET}" if depth > 1 else label
        lines.append(f"{label}|{bar}| {ms:8.1f} ms{note}")
    return "\n".join(lines)
