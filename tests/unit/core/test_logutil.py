"""Throttled logging: the first few at once, then one per interval with a count."""
# ruff: noqa: PLE1205  (ThrottledLogger.warning takes a kind first; not logging.warning)

from __future__ import annotations

import logging

import pytest

from otelbridge.core.clock import FakeClock
from otelbridge.core.logutil import LogThrottle, ThrottledLogger


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
