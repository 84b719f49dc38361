"""The processor's state database: a restart rebuilds every rollout exactly, a kill -9
after ingest returned loses nothing, a failing write leaves memory unchanged.

Every state directory is a ``tmp_path``; a failing disk is a trigger installed by a
connection of the test's own (as tests/unit/export/test_spool.py does); a crash is a real
``kill -9`` of a child process.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from otelbridge.core import semconv
from otelbridge.core.clock import FakeClock
from otelbridge.core.config import Config, ProcessorConfig
from otelbridge.core.counters import Counters
from otelbridge.core.errors import StateError
from otelbridge.core.model import Outcome
from otelbridge.processor.aggregate import Aggregator
from otelbridge.processor.store import DB_NAME, RolloutStore
from tests.unit.processor.test_aggregate import (
    CONFIG,
    COUNTERS,
    T0,
    fast_rollout,
    fed,
    held_rollouts,
    request,
    rollout_span,
    startup,
    trace_of,
    with_config,
)

REPO = Path(__file__).resolve().parents[3]
FULL = "database or disk is full"


def opened(
    directory: Path, config: Config = CONFIG, clock: FakeClock | None = None
) -> tuple[Aggregator, Counters, FakeClock]:
    clock = clock or FakeClock(T0)
    counters = Counters(COUNTERS)
    store = RolloutStore(directory, counters)
    return Aggregator(config, counters, clock=clock, store=store), counters, clock


def everything(agg: Aggregator, traces: range) -> list[Any]:
    """Every document (with sketches) and gauge the aggregator answers."""
    docs: list[Any] = [agg.rollout(trace_of(n), expect=20, sketches=True) for n in traces]
    docs += [agg.namespace(ns, sketches=True) for ns in ("default", "k8s.io", "shop")]
    return [*docs, sorted((d.name, sorted(labels.items()), v) for d, labels, v in agg.gauges())]


def raw(directory: Path) -> sqlite3.Connection:
    return sqlite3.connect(directory / DB_NAME, isolation_level=None)


def fail_on(directory: Path, when: str, table: str = "log") -> None:
    db = raw(directory)
    db.execute(
        f"CREATE TRIGGER fail_{when.lower()} BEFORE {when} ON {table} "
        f"BEGIN SELECT RAISE(ABORT, '{FULL}'); END"
    )
    db.close()


def heal(directory: Path, when: str) -> None:
    db = raw(directory)
    db.execute(f"DROP TRIGGER fail_{when.lower()}")
    db.close()


def mixed_spans() -> list[Any]:
    """Three rollouts: fast, slow and failing, across namespaces, one with a pending
    startup (phases only, its container.startup not sent yet)."""
    spans = [rollout_span(1, "web"), *fast_rollout(10, rollout=1)]
    spans += fast_rollout(6, rollout=2, ns="k8s.io", k8s="shop", wait_ms=1500)
    spans += startup(3, 0, outcome=Outcome.EXITED) + fast_rollout(4, rollout=3)
    spans += startup(1, 99)[1:]  # pending
    return spans


def test_a_restart_on_the_same_directory_gives_the_same_documents(tmp_path: Path) -> None:
    agg, _, clock = opened(tmp_path)
    spans = mixed_spans()
    for i in range(0, len(spans), 9):
        agg.ingest(request(spans[i : i + 9]))
        clock.advance(1)
    before = everything(agg, range(1, 5))
    agg.close()

    again, counters, _ = opened(tmp_path, clock=clock)
    assert everything(again, range(1, 5)) == before
    # the dedup state came back: everything again is duplicates, nothing changes
    again.ingest(request(spans))
    assert counters.get(semconv.PROCESSOR_SPANS_DUPLICATE) == len(spans)
    assert everything(again, range(1, 5)) == before
    # the pending phases came back: the startup completes them
    again.ingest(request(startup(1, 99)[:1]))
    assert again.rollout(trace_of(1))["budgets"]["task_create_to_ready"]["samples"] == 11
    again.close()


def test_a_restart_keeps_the_idleness_order_and_the_ttls(tmp_path: Path) -> None:
    config = with_config(processor=ProcessorConfig(rollout_ttl_s=100, max_rollouts=3))
    agg, _, clock = opened(tmp_path, config)
    for n in (1, 2, 3):
        agg.ingest(request(fast_rollout(5, rollout=n)))
        clock.advance(10)
    agg.ingest(request(startup(1, 50)))  # 1 becomes the latest: 2 is the idlest
    agg.close()

    again, counters, clock = opened(tmp_path, config, clock)
    again.ingest(request(fast_rollout(5, rollout=4)))
    assert held_rollouts(again) == {trace_of(n).hex() for n in (1, 3, 4)}
    assert counters.get(semconv.PROCESSOR_ROLLOUTS_EVICTED) == 1
    clock.advance(75)  # 3 was last touched 85 s ago, 1 and 4 75 s ago
    again.expire()
    assert len(held_rollouts(again)) == 3
    clock.advance(16)  # 101 s and 91 s
    again.expire()
    assert held_rollouts(again) == {trace_of(n).hex() for n in (1, 4)}
    again.close()

    third, _, _ = opened(tmp_path, config, clock)  # what was evicted stays forgotten
    assert held_rollouts(third) == {trace_of(n).hex() for n in (1, 4)}
    assert third.namespace("default")["startups"] == 11
    third.close()


def test_the_idleness_order_within_one_request_is_the_order_of_the_last_touch(
    tmp_path: Path,
) -> None:
    config = with_config(processor=ProcessorConfig(max_rollouts=2))
    agg, _, clock = opened(tmp_path, config)
    agg.ingest(request(fast_rollout(2, rollout=1) + fast_rollout(2, rollout=2) + startup(1, 9)))
    agg.close()
    again, _, _ = opened(tmp_path, config, clock)
    again.ingest(request(fast_rollout(2, rollout=3)))  # evicts the idlest: 2
    assert held_rollouts(again) == {trace_of(1).hex(), trace_of(3).hex()}
    again.close()


def test_forgotten_pending_phases_stay_forgotten_after_a_restart(tmp_path: Path) -> None:
    config = with_config(processor=ProcessorConfig(pending_ttl_s=60))
    agg, counters, clock = opened(tmp_path, config)
    agg.ingest(request(fast_rollout(5) + startup(1, 7)[1:] + startup(2, 0)[1:]))
    clock.advance(61)
    agg.expire()
    assert counters.get(semconv.PROCESSOR_PENDING_EXPIRED) == 8
    agg.ingest(request(startup(1, 7)[:1]))  # too late for its phases
    before = everything(agg, range(1, 3))
    agg.close()
    again, counters, _ = opened(tmp_path, config, clock)
    assert everything(again, range(1, 3)) == before
    assert again.rollout(trace_of(1))["budgets"]["shim_launch_time"]["samples"] == 5
    again.ingest(request(startup(1, 7)[1:]))  # forgotten, so new again
    assert counters.get(semconv.PROCESSOR_SPANS_DUPLICATE) == 0
    assert again.rollout(trace_of(1))["budgets"]["shim_launch_time"]["samples"] == 6
    again.close()


def test_kill_9_after_ingest_returned_keeps_every_rollout(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        from pathlib import Path
        from otelbridge.core.clock import FakeClock
        from otelbridge.core.config import Config
        from otelbridge.core.counters import Counters
        from otelbridge.core import semconv
        from otelbridge.processor.aggregate import Aggregator
        from otelbridge.processor.store import RolloutStore
        from tests.unit.processor.test_store import mixed_spans
        from tests.unit.processor.test_aggregate import request

        counters = Counters(semconv.PROCESSOR_COUNTERS)
        store = RolloutStore(Path(sys.argv[1]), counters)
        agg = Aggregator(Config(), counters, clock=FakeClock({T0}), store=store)
        spans = mixed_spans()
        for i in range(0, len(spans), 5):
            agg.ingest(request(spans[i : i + 5]))
        print("ingested", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert proc.stdout == "ingested\n"
    again, _, _ = opened(tmp_path)
    assert everything(again, range(1, 5))[:-1] == everything(fed(mixed_spans()), range(1, 5))[:-1]
    again.close()


def test_a_failing_write_raises_state_error_and_leaves_memory_unchanged(tmp_path: Path) -> None:
    agg, counters, _ = opened(tmp_path)
    agg.ingest(request(fast_rollout(5)))
    before, counted = everything(agg, range(1, 3)), counters.snapshot()
    fail_on(tmp_path, "INSERT")
    more = fast_rollout(5, rollout=2) + startup(1, 40)
    with pytest.raises(StateError, match=FULL):
        agg.ingest(request(more))
    assert everything(agg, range(1, 3)) == before
    # nothing counted but the failed write: the request was refused
    assert counters.snapshot() == {**counted, semconv.STATE_ERRORS.name: 1}
    assert agg._store is not None and agg._store.problems() != []

    heal(tmp_path, "INSERT")
    agg.ingest(request(more))  # the Collector's retry: accepted once, not a duplicate
    assert counters.get(semconv.PROCESSOR_SPANS_DUPLICATE) == 0
    assert agg.rollout(trace_of(1))["startups"] == 6
    assert agg._store.problems() == []
    after = everything(agg, range(1, 3))
    agg.close()
    again, _, _ = opened(tmp_path)
    assert everything(again, range(1, 3)) == after
    again.close()


def test_a_failing_write_of_the_rollouts_table_writes_no_fact_either(tmp_path: Path) -> None:
    agg, _, _ = opened(tmp_path)
    fail_on(tmp_path, "INSERT", table="rollouts")
    with pytest.raises(StateError):
        agg.ingest(request(fast_rollout(5)))
    assert agg.rollout(trace_of(1))["startups"] == 0
    assert raw(tmp_path).execute("SELECT count(*) FROM log").fetchone() == (0,)
    agg.close()


def test_a_failing_delete_keeps_the_rollout_until_a_later_expire_succeeds(tmp_path: Path) -> None:
    config = with_config(processor=ProcessorConfig(rollout_ttl_s=10))
    agg, counters, clock = opened(tmp_path, config)
    agg.ingest(request(fast_rollout(5)))
    clock.advance(11)
    fail_on(tmp_path, "DELETE")
    agg.expire()  # logged, not raised: the timer thread keeps going
    assert agg.rollout(trace_of(1))["startups"] == 5
    assert counters.get(semconv.PROCESSOR_ROLLOUTS_EVICTED) == 0
    heal(tmp_path, "DELETE")
    agg.expire()
    assert agg.rollout(trace_of(1))["startups"] == 0
    assert counters.get(semconv.PROCESSOR_ROLLOUTS_EVICTED) == 1
    agg.close()
    again, _, _ = opened(tmp_path, config, clock)
    assert again.rollout(trace_of(1))["startups"] == 0
    again.close()


@pytest.mark.parametrize("how", ["under-a-file", "db-is-garbage", "db-is-a-directory"])
def test_an_unusable_directory_raises_state_error_naming_state_dir(
    tmp_path: Path, how: str
) -> None:
    directory = tmp_path / "state"
    if how == "under-a-file":
        (tmp_path / "file").write_text("")
        directory = tmp_path / "file" / "state"
    elif how == "db-is-garbage":
        directory.mkdir()
        (directory / DB_NAME).write_bytes(b"this is not a database" * 100)
    else:
        (directory / DB_NAME).mkdir(parents=True)
    with pytest.raises(StateError) as err:
        RolloutStore(directory, Counters(COUNTERS))
    assert str(directory) in str(err.value)
    assert "--state-dir" in str(err.value)


def test_a_database_of_another_schema_is_refused(tmp_path: Path) -> None:
    RolloutStore(tmp_path, Counters(COUNTERS)).close()
    db = raw(tmp_path)
    db.execute("UPDATE meta SET value = 99 WHERE name = 'schema'")
    db.close()
    with pytest.raises(StateError, match="schema 99, expected 1"):
        RolloutStore(tmp_path, Counters(COUNTERS))


def test_an_unreadable_row_is_skipped_with_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    agg, _, _ = opened(tmp_path)
    agg.ingest(request(fast_rollout(5)))
    agg.ingest(request(fast_rollout(5, rollout=2)))
    agg.close()
    db = raw(tmp_path)
    db.execute("UPDATE log SET data = '[[\"zz\"]]' WHERE trace = ?", (trace_of(2),))
    db.close()
    again, _, _ = opened(tmp_path)
    assert again.rollout(trace_of(1))["startups"] == 5
    assert again.rollout(trace_of(2))["startups"] == 0
    assert "unreadable, skipped" in caplog.text
    again.close()


def test_a_lower_max_rollouts_after_a_restart_evicts_the_idlest(tmp_path: Path) -> None:
    agg, _, clock = opened(tmp_path)
    for n in range(1, 5):
        agg.ingest(request(fast_rollout(5, rollout=n)))
        clock.advance(1)
    agg.close()
    config = replace(CONFIG, processor=ProcessorConfig(max_rollouts=2))
    again, counters, _ = opened(tmp_path, config, clock)
    assert held_rollouts(again) == {trace_of(3).hex(), trace_of(4).hex()}
    assert counters.get(semconv.PROCESSOR_ROLLOUTS_EVICTED) == 2
    again.close()


def test_close_is_idempotent_and_a_closed_store_refuses_writes(tmp_path: Path) -> None:
    agg, _, _ = opened(tmp_path)
    agg.close()
    agg.close()
    with pytest.raises(StateError, match="closed"):
        agg.ingest(request(fast_rollout(1)))
