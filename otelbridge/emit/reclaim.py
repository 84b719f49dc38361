"""Emit: a reclaimed snapshot -> a ``snapshot.reclaim`` span (implementation follows)."""

from __future__ import annotations

from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otelbridge.gc import ReclaimRecord


def build_reclaim_span(reclaim: ReclaimRecord) -> Span:
    raise NotImplementedError
