"""Throttled logging: the first few at once, then one per interval with a count."""
# ruff: noqa: PLE1205  (ThrottledLogger.warning takes a kind first; not logging.warning)

from __future__ import annotations

import json
import logging
import sys

import pytest

from otelbridge.core.clock import FakeClock
from otelbridge.core.logutil import JsonFormatter, LogThrottle, ThrottledLogger


def test_a_burst_goes_through_then_one_line_per_interval_with_the_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    log = ThrottledLogger(logging.getLogger("t"), burst=2, interval_s=10, clock=clock)
    with caplog.at_level(logging.WARNING, "t"):
        for _ in range(5):
            log.warning("k", "bad thing")
        assert len(caplog.records) == 2
        clock.advance(10)
        log.warning("k", "bad thing")
    assert len(caplog.records) == 3
    assert "(3 similar messages since the last one)" in caplog.records[-1].getMessage()


def test_a_rare_message_is_never_silenced_for_good(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    log = ThrottledLogger(logging.getLogger("t"), burst=1, interval_s=10, clock=clock)
    with caplog.at_level(logging.WARNING, "t"):
        for _ in range(20):
            log.warning("rare", "once a minute")
            clock.advance(60)
    assert len(caplog.records) == 20


def test_kinds_are_throttled_apart(caplog: pytest.LogCaptureFixture) -> None:
    log = ThrottledLogger(logging.getLogger("t"), burst=1, clock=FakeClock())
    with caplog.at_level(logging.WARNING, "t"):
        for kind in ("a", "b", "a", "b"):
            log.warning(kind, kind)
    assert [r.getMessage() for r in caplog.records] == ["a", "b"]


def test_log_throttle_counts_what_it_held_back() -> None:
    clock = FakeClock()
    throttle = LogThrottle(interval_s=1, clock=clock)
    assert throttle.ready() == 1
    assert throttle.ready() is None
    assert throttle.ready() is None
    clock.advance(1)
    assert throttle.ready() == 3


def test_json_log_lines_carry_fields_a_log_pipeline_reads() -> None:
    record = logging.LogRecord("otelbridge.x", logging.WARNING, "f.py", 1, "lost %d", (3,), None)
    record.created = 0.25
    record.msecs = 250.0
    line = JsonFormatter().format(record)
    assert "\n" not in line
    assert json.loads(line) == {
        "time": "1970-01-01T00:00:00.250Z",
        "level": "WARNING",
        "logger": "otelbridge.x",
        "message": "lost 3",
    }
    try:
        raise ValueError("bad")
    except ValueError:
        record.exc_info = sys.exc_info()
    assert "ValueError: bad" in json.loads(JsonFormatter().format(record))["exception"]
