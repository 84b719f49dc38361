"""`otelbridge gate`: durations, which rollout, waiting, exit codes, merging, failures.

The processors here are stand-ins: small HTTP servers answering
``GET /v1/rollouts/{trace_id}?expect=N&sketches=1`` with documents built by the real
verdict code (:func:`otelbridge.processor.verdict.judge` over real
:class:`~otelbridge.processor.sketch.Durations`), so the gate's merging of sketches is
real. The processor itself (spans in, documents out) is tested in its own tests, and the
whole loop (containerd -> bridge -> processor -> gate) end to end by the lead.
"""

from __future__ import annotations

import http.server
import json
import re
import socket
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from otelbridge import cli, gate, gate_inputs, sla
from otelbridge.core.clock import FakeClock
from otelbridge.core.config import Config, GateConfig, SlaConfig
from otelbridge.core.errors import ConfigError
from otelbridge.processor.sketch import Durations
from otelbridge.processor.verdict import FAILED_OUTCOMES, Counts, judge
from otelbridge.rollout_context import Carrier, write_carrier
from otelbridge.testing.serving import serve_in_thread

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
OTHER_TRACE = "0af7651916cd43dd8448eb211c80319c"


# -- a stand-in processor -------------------------------------------------------------------


@dataclass(frozen=True)
class Startup:
    """One container startup as the processor would hold it."""

    container_id: str
    create_s: float = 0.004
    shim_s: float = 0.05
    task_start_s: float = 0.01
    readiness_s: float = 0.3
    outcome: str = "ready"
    partial: bool = False
    namespace: str = "k8s.io"
    pod: str | None = None

    @property
    def total_s(self) -> float:
        return self.create_s + self.shim_s + self.task_start_s + self.readiness_s

    @property
    def phases(self) -> dict[str, float]:
        return {
            "container.create": self.create_s,
            "shim.launch": self.shim_s,
            "task.start": self.task_start_s,
            "readiness.wait": self.readiness_s,
        }


def fast(count: int, prefix: str = "c") -> list[Startup]:
    return [Startup(f"{prefix}{i:03d}", readiness_s=0.2 + i * 0.001) for i in range(count)]


def slow_readiness(count: int, prefix: str = "s") -> list[Startup]:
    """Startups whose readiness port opens after 1.4 s: task_create_to_ready over 1 s."""
    return [Startup(f"{prefix}{i:03d}", readiness_s=1.4, pod=f"web-{i}") for i in range(count)]


def document(
    trace_id: str | None,
    startups: Sequence[Startup],
    *,
    expect: int | None,
    sketches: bool,
    config: Config | None = None,
    name: str | None = "web-v2",
    namespace: str | None = None,
) -> dict[str, Any]:
    """The document a processor holding ``startups`` answers (the real ``judge``): of a
    rollout (``trace_id``), or of a namespace (``trace_id`` None, ``namespace`` set)."""
    cfg = config or Config()
    budgets = sla.budgets(cfg.sla)
    durations = Durations()
    for s in startups:
        ready = s.outcome == "ready"
        if ready and not s.partial:
            durations.add(sla.STARTUP_DURATION, s.total_s, budgets[sla.STARTUP_DURATION])
        durations.add(sla.SHIM_LAUNCH_TIME, s.shim_s, budgets[sla.SHIM_LAUNCH_TIME])
        if ready:
            durations.add(
                sla.TASK_CREATE_TO_READY,
                s.task_start_s + s.readiness_s,
                budgets[sla.TASK_CREATE_TO_READY],
            )
    counts = Counts(
        startups=len(startups),
        failed=sum(1 for s in startups if s.outcome in FAILED_OUTCOMES),
        partial=sum(1 for s in startups if s.partial),
    )
    slowest = [
        {
            "trace_id": trace_id,
            "container_id": s.container_id,
            "namespace": s.namespace,
            "pod": s.pod,
            "outcome": s.outcome,
            "startup_duration_s": round(s.total_s, 6),
            "dominant_phase": max(s.phases, key=lambda p: s.phases[p]),
            "phases": s.phases,
        }
        for s in startups
    ]
    return judge(
        counts=counts,
        durations=durations,
        slowest=slowest,
        config=cfg,
        expect=expect,
        trace_id=trace_id,
        name=name if startups and trace_id else None,
        namespace=namespace,
        sketches=sketches,
    )


Answer = Callable[[int], Sequence[Startup]]


@dataclass
class StandInProcessor:
    """Answers ``GET /v1/rollouts/{id}`` like the processor, from ``answers``: for each
    trace ID, a function of the request number (0, 1, ...) giving the startups held then
    (``default`` for any other trace ID).
    ``status`` (not 200) answers that code instead; ``body`` answers those bytes; a
    ``token`` makes every request without ``Authorization: Bearer <token>`` a 401."""

    answers: dict[str, Answer] = field(default_factory=dict)
    default: Answer | None = None
    """The answer for a trace ID not in ``answers`` (None: nothing held)."""
    namespaces: dict[str, Answer] = field(default_factory=dict)
    """``GET /v1/namespaces/{ns}``: the startups of every rollout held in ``ns``."""
    status: int = 200
    body: bytes | None = None
    token: str | None = None
    requests: list[tuple[str, dict[str, list[str]], str | None]] = field(default_factory=list)
    _server: http.server.ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def hold(self, trace_id: str, *answers: Sequence[Startup]) -> None:
        """Successive answers for ``trace_id``; the last one repeats."""
        steps = list(answers)
        self.answers[trace_id] = lambda n: steps[min(n, len(steps) - 1)]

    def start(self) -> StandInProcessor:
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                pass

            def do_GET(self) -> None:
                parts = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(parts.query)
                auth = self.headers.get("Authorization")
                with outer._lock:
                    outer.requests.append((parts.path, query, auth))
                    n = sum(1 for p, _, _ in outer.requests if p == parts.path) - 1
                if outer.token is not None and auth != f"Bearer {outer.token}":
                    return self._send(401, b'{"error": "unauthorized"}')
                if outer.status != 200:
                    return self._send(outer.status, b'{"error": "stand-in"}')
                if outer.body is not None:
                    return self._send(200, outer.body)
                key = urllib.parse.unquote(parts.path.rsplit("/", 1)[-1])
                sketches = query.get("sketches") == ["1"]
                if parts.path.startswith("/v1/namespaces/"):
                    answer = outer.namespaces.get(key)
                    held = answer(n) if answer is not None else []
                    doc = document(None, held, expect=None, sketches=sketches, namespace=key)
                    return self._send(200, json.dumps(doc).encode())
                if not parts.path.startswith("/v1/rollouts/"):
                    return self._send(404, b'{"error": "no route"}')
                expect = int(query["expect"][0]) if "expect" in query else None
                answer = outer.answers.get(key, outer.default)
                held = answer(n) if answer is not None else []
                doc = document(key, held, expect=expect, sketches=sketches)
                self._send(200, json.dumps(doc).encode())

            def _send(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        serve_in_thread(self._server, None, "stand-in-processor")
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> StandInProcessor:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


@pytest.fixture
def processor() -> Iterator[StandInProcessor]:
    with StandInProcessor() as p:
        yield p


@pytest.fixture
def second() -> Iterator[StandInProcessor]:
    with StandInProcessor() as p:
        yield p


def dead_url() -> str:
    """A loopback URL nothing listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def run(
    processors: Sequence[str],
    *,
    expect: int | None = None,
    timeout_s: float = 60.0,
    interval_s: float = 5.0,
    **kwargs: Any,
) -> gate.Outcome:
    """The gate on a fake clock that its sleeps advance: no test waits for real."""
    clock = FakeClock()
    return gate.run_gate(
        processors,
        TRACE_ID,
        expect=expect,
        timeout_s=timeout_s,
        interval_s=interval_s,
        clock=clock,
        sleep=clock.advance,
        progress=None,
        **kwargs,
    )


# -- durations ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("1h2m3s", 3723.0),
        ("250ms", 0.25),
        ("1.5s", 1.5),
        ("90", 90.0),
        ("2.5", 2.5),
        ("0", 0.0),
        (" 10s ", 10.0),
    ],
)
def test_durations_parse(text: str, seconds: float) -> None:
    assert gate_inputs.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    ["", " ", "-5", "-5s", "5x", "s", "m5", "5 m", "1h-", "inf", "nan", "5s5", "\u0661\u0662s"],
)
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        gate_inputs.parse_duration(text)


def test_a_bad_duration_on_the_command_line_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["gate", "--processor", "x:1", "--trace-id", TRACE_ID, "--timeout", "5 min"])
    assert exc.value.code == 2
    assert "--timeout" in capsys.readouterr().err


# -- which rollout --------------------------------------------------------------------------


def test_trace_id_from_the_flag() -> None:
    assert gate_inputs.trace_id_from_value(TRACE_ID) == TRACE_ID
    assert gate_inputs.trace_id_from_value(f" {TRACE_ID.upper()}\n") == TRACE_ID
    for bad in ("", "4bf9", TRACE_ID + "0", "0" * 32, "g" * 32, TRACEPARENT):
        with pytest.raises(ConfigError):
            gate_inputs.trace_id_from_value(bad)


def test_trace_id_from_a_traceparent() -> None:
    assert gate_inputs.trace_id_from_traceparent(TRACEPARENT) == TRACE_ID
    with pytest.raises(ConfigError, match="version_forbidden"):
        gate_inputs.trace_id_from_traceparent(f"ff-{TRACE_ID}-00f067aa0ba902b7-01")
    with pytest.raises(ConfigError, match="trace_id_zero"):
        gate_inputs.trace_id_from_traceparent(f"00-{'0' * 32}-00f067aa0ba902b7-01")


def test_trace_id_from_the_carrier_rollout_writes(tmp_path: Path) -> None:
    """The carrier file of `otelbridge rollout start`/`exec --carrier`, written by its
    own code."""
    from otelbridge.core.tracecontext import parse_traceparent  # noqa: PLC0415

    context = parse_traceparent(TRACEPARENT)
    assert not isinstance(context, type(None))
    path = tmp_path / "rollout.json"
    write_carrier(path, Carrier(context, "web-v2", 1_700_000_000_000_000_000))  # type: ignore[arg-type]
    assert gate_inputs.trace_id_from_carrier(path) == TRACE_ID


@pytest.mark.parametrize(
    "content",
    [
        json.dumps({"traceparent": TRACEPARENT}),
        json.dumps({"TRACEPARENT": TRACEPARENT, "name": "x"}),
        json.dumps({"context": {"traceparent": TRACEPARENT}}),
        json.dumps({"trace_id": TRACE_ID}),
        f"TRACEPARENT={TRACEPARENT}\n",
        f"export TRACEPARENT='{TRACEPARENT}'\nTRACESTATE=a=b\n",
        f'# saved by CI\nTRACEPARENT="{TRACEPARENT}"\n',
    ],
)
def test_trace_id_from_carriers_read_tolerantly(tmp_path: Path, content: str) -> None:
    path = tmp_path / "carrier"
    path.write_text(content, encoding="utf-8")
    assert gate_inputs.trace_id_from_carrier(path) == TRACE_ID


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (json.dumps({"name": "web"}), "without a traceparent"),
        (json.dumps(["x"]), "not an object"),
        (json.dumps({"traceparent": "00-xyz"}), "not a valid traceparent"),
        ("hello\n", "neither JSON"),
        ("", "neither JSON"),
    ],
)
def test_bad_carriers_say_what_they_lack(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "carrier"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        gate_inputs.trace_id_from_carrier(path)


def test_a_missing_carrier_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"carrier .*missing.json: cannot read"):
        gate_inputs.trace_id_from_carrier(tmp_path / "missing.json")


@pytest.mark.parametrize("which", ["--trace-id", "--traceparent", "--carrier"])
def test_each_input_reaches_the_same_rollout(
    processor: StandInProcessor,
    tmp_path: Path,
    which: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    processor.hold(TRACE_ID, fast(6))
    carrier = tmp_path / "rollout.json"
    carrier.write_text(json.dumps({"traceparent": TRACEPARENT}), encoding="utf-8")
    value = {"--trace-id": TRACE_ID, "--traceparent": TRACEPARENT, "--carrier": str(carrier)}
    code = cli.main(["gate", "--processor", processor.url, which, value[which], "--json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["trace_id"] == TRACE_ID
    assert processor.requests[0][0] == f"/v1/rollouts/{TRACE_ID}"


def test_the_inputs_exclude_each_other() -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["gate", "--processor", "x:1", "--trace-id", TRACE_ID, "--traceparent", "x"])
    assert exc.value.code == 2


# -- processor URLs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "base"),
    [
        ("http://p:9465", "http://p:9465"),
        ("p:9465", "http://p:9465"),
        ("https://gw.example/otelbridge/", "https://gw.example/otelbridge"),
        ("http://p:9465/v1/rollouts", "http://p:9465"),
        ("http://[::1]:9465", "http://[::1]:9465"),
    ],
)
def test_processor_urls(given: str, base: str) -> None:
    assert gate_inputs.processor_base(given) == base


@pytest.mark.parametrize("given", ["ftp://p:1", "http://", "http://p:port", ""])
def test_bad_processor_urls(given: str) -> None:
    with pytest.raises(ConfigError, match="--processor"):
        gate_inputs.processor_base(given)


def test_the_request_asks_for_expect_and_sketches(processor: StandInProcessor) -> None:
    processor.hold(TRACE_ID, fast(20))
    run([processor.url], expect=20)
    path, query, auth = processor.requests[0]
    assert path == f"/v1/rollouts/{TRACE_ID}"
    assert query == {"expect": ["20"], "sketches": ["1"]}
    assert auth is None
    assert gate_inputs.rollout_url("http://p:1", TRACE_ID, None) == (
        f"http://p:1/v1/rollouts/{TRACE_ID}?sketches=1"
    )


# -- waiting and the exit codes -------------------------------------------------------------


def test_it_waits_until_the_expected_startups_are_seen(processor: StandInProcessor) -> None:
    processor.hold(TRACE_ID, fast(3), fast(11), fast(20))
    outcome = run([processor.url], expect=20, interval_s=5.0)
    assert outcome.polls == 3
    assert outcome.waited_s == pytest.approx(10.0)
    assert not outcome.timed_out
    assert (outcome.verdict, outcome.exit_code) == ("pass", 0)
    assert outcome.document["startups"] == 20


def test_without_expect_it_waits_for_a_verdict(processor: StandInProcessor) -> None:
    # gate.min_startups is 5: 2 startups are insufficient, 6 are judged
    processor.hold(TRACE_ID, fast(2), fast(6))
    outcome = run([processor.url])
    assert (outcome.polls, outcome.verdict, outcome.exit_code) == (2, "pass", 0)


def test_timeout_is_insufficient(processor: StandInProcessor) -> None:
    processor.hold(TRACE_ID, fast(3))
    outcome = run([processor.url], expect=20, timeout_s=30.0, interval_s=10.0)
    assert outcome.timed_out
    assert outcome.polls == 4  # at 0, 10, 20 and 30 s: the last one at the deadline
    assert outcome.waited_s == pytest.approx(30.0)
    assert (outcome.verdict, outcome.exit_code) == ("insufficient", 2)
    assert "3 of 20 expected startups seen" in outcome.document["reasons"]


def test_timeout_zero_asks_once(processor: StandInProcessor) -> None:
    processor.hold(TRACE_ID, fast(3))
    outcome = run([processor.url], expect=20, timeout_s=0.0)
    assert (outcome.polls, outcome.exit_code, outcome.timed_out) == (1, 2, True)


def test_an_unknown_rollout_is_insufficient(processor: StandInProcessor) -> None:
    outcome = run([processor.url], timeout_s=10.0)
    assert (outcome.verdict, outcome.exit_code) == ("insufficient", 2)
    assert outcome.document["startups"] == 0


def test_halt_is_exit_1(processor: StandInProcessor) -> None:
    processor.hold(TRACE_ID, fast(15) + slow_readiness(5))
    outcome = run([processor.url], expect=20)
    assert (outcome.verdict, outcome.exit_code, outcome.polls) == ("halt", 1, 1)
    budget = outcome.document["budgets"][sla.TASK_CREATE_TO_READY]
    assert budget["verdict"] == "halt"
    assert budget["breaches"] == 5
    assert any(r.startswith("task_create_to_ready p99") for r in outcome.document["reasons"])
    assert outcome.document["slowest"][0]["dominant_phase"] == "readiness.wait"


def test_a_halt_does_not_wait_for_more(processor: StandInProcessor) -> None:
    """With --expect the gate waits for N startups; a crash among them halts when they
    are in, the verdict the processor would give."""
    crashed = [Startup("x001", outcome="exited")]
    processor.hold(TRACE_ID, fast(19) + crashed)
    outcome = run([processor.url], expect=20)
    assert (outcome.verdict, outcome.exit_code) == ("halt", 1)
    assert any("failed before ready" in r for r in outcome.document["reasons"])


def test_pass_is_exit_0_with_the_readable_report(
    processor: StandInProcessor, capsys: pytest.CaptureFixture[str]
) -> None:
    processor.hold(TRACE_ID, fast(20))
    code = cli.main(
        ["gate", "--processor", processor.url, "--trace-id", TRACE_ID, "--expect", "20"]
    )
    captured = capsys.readouterr()
    assert code == 0
    out = captured.out
    assert out.startswith(f"otelbridge gate: rollout web-v2 ({TRACE_ID}): PASS (exit 0)\n")
    assert "20 of 20 expected startups, 0 failed, 0 partial, coverage 100.0%" in out
    lines = out.splitlines()
    header = next(
        i for i, line in enumerate(lines) if line.split()[:3] == ["budget", "p99", "budget"]
    )
    rows = [lines[header + 1 + i].split() for i in range(3)]
    assert [r[0] for r in rows] == list(sla.DURATIONS)
    assert rows[0][-1] == "pass" and rows[0][3:5] == ["4", "s"]
    assert "slowest startups:" in out and "dominant readiness.wait" in out
    assert f"processors: {processor.url} 20 startups" in out
    assert "1 poll" in out
    assert "20 of 20 startups seen, verdict pass" in captured.err  # the progress line


def test_the_report_of_a_halt_lists_the_reasons(processor: StandInProcessor) -> None:
    processor.hold(TRACE_ID, fast(15) + slow_readiness(5))
    text = gate.render_report(run([processor.url], expect=20))
    assert ": HALT (exit 1)" in text.splitlines()[0]
    # the sketch's p99 is within 1% of the exact one (1.41 s)
    assert re.search(
        r"  reasons:\n    - task_create_to_ready p99 1\.4[0-3] s over its budget of 1 s", text
    )
    row = next(line for line in text.splitlines() if line.strip().startswith("task_create"))
    assert row.split()[-3:] == ["20", "5", "halt"]
    assert (
        "    s000 (k8s.io/web-0)  1.46 s, dominant readiness.wait 1.40 s = container.create" in text
    )


def test_the_config_file_judges(processor: StandInProcessor, tmp_path: Path) -> None:
    """The gate judges the merged rollout with its own [sla] budgets and [gate] rules."""
    processor.hold(TRACE_ID, fast(20))
    config = tmp_path / "otelbridge.toml"
    config.write_text("[sla]\nstartup_duration_p99_s = 0.1\n", encoding="utf-8")
    args = ["gate", "--processor", processor.url, "--trace-id", TRACE_ID, "--expect", "20"]
    assert cli.main([*args, "--config", str(config)]) == 1
    config.write_text("[gate]\nmin_startups = 30\n", encoding="utf-8")
    assert cli.main([*args, "--config", str(config), "--timeout", "0"]) == 2
    config.write_text("[gate]\nmin_startups = 0\n", encoding="utf-8")
    assert cli.main([*args, "--config", str(config)]) == 2  # invalid config: usage


# -- several processors ---------------------------------------------------------------------


def test_two_processors_are_merged_by_their_sketches(
    processor: StandInProcessor, second: StandInProcessor
) -> None:
    """12 startups on one replica, 8 on the other: each alone is insufficient (of 20
    expected); merged, the document is that of all 20 as one processor would judge it."""
    startups = fast(15) + slow_readiness(5)
    processor.hold(TRACE_ID, startups[::2] + startups[1:8:2])
    second.hold(TRACE_ID, startups[9::2])
    assert len(processor.answers[TRACE_ID](0)) + len(second.answers[TRACE_ID](0)) == 20
    outcome = run([processor.url, second.url], expect=20)
    whole = document(TRACE_ID, startups, expect=20, sketches=False)
    assert outcome.document["budgets"] == whole["budgets"]
    assert (outcome.document["startups"], outcome.verdict) == (20, "halt")
    assert outcome.document["reasons"] == whole["reasons"]
    assert outcome.document["slowest"] == whole["slowest"]
    assert "sketches" not in outcome.document
    for p in (processor, second):
        assert p.requests[0][1]["sketches"] == ["1"]


def test_merging_is_not_averaging(processor: StandInProcessor, second: StandInProcessor) -> None:
    """One replica's startups are all fast, the other's all slow: the p99 of the whole is
    the slow one's, not a mean of the two p99s."""
    processor.hold(TRACE_ID, fast(10))
    second.hold(TRACE_ID, slow_readiness(10))
    outcome = run([processor.url, second.url], expect=20)
    p99 = outcome.document["budgets"][sla.TASK_CREATE_TO_READY]["p99_s"]
    assert p99 == pytest.approx(1.41, rel=0.01)
    assert outcome.verdict == "halt"


def test_the_rollout_on_one_replica_of_several(
    processor: StandInProcessor, second: StandInProcessor
) -> None:
    """The loadbalancing exporter routes a rollout to one replica: the other answers an
    empty document, and the merge is the first one's."""
    processor.hold(TRACE_ID, fast(20))
    outcome = run([processor.url, second.url], expect=20)
    assert (outcome.verdict, outcome.document["startups"]) == ("pass", 20)
    assert [p.as_json()["startups"] for p in outcome.processors] == [20, 0]


def test_comma_separated_and_repeated_processors(
    processor: StandInProcessor, second: StandInProcessor, capsys: pytest.CaptureFixture[str]
) -> None:
    processor.hold(TRACE_ID, fast(10))
    second.hold(TRACE_ID, fast(10, prefix="d"))
    code = cli.main(
        [
            "gate",
            "--processor",
            f"{processor.url},{second.url}",
            "--processor",
            processor.url,  # the same replica twice is asked once: never counted twice
            "--trace-id",
            TRACE_ID,
            "--expect",
            "20",
            "--json",
        ]
    )
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["startups"] == 20
    assert [p["url"] for p in doc["gate"]["processors"]] == [processor.url, second.url]
    assert len(processor.requests) == 1


def test_one_processor_down_with_the_rollout_on_the_other(processor: StandInProcessor) -> None:
    """The down one may hold startups of this rollout: no pass without it; the gate asks
    it until the timeout and names it."""
    processor.hold(TRACE_ID, fast(20))
    dead = dead_url()
    outcome = run([processor.url, dead], expect=20, timeout_s=20.0, interval_s=10.0)
    assert outcome.timed_out and outcome.polls == 3
    assert (outcome.verdict, outcome.exit_code) == ("insufficient", 2)
    assert outcome.document["startups"] == 20
    reason = outcome.document["reasons"][-1]
    assert reason.startswith(f"{dead} never answered (cannot connect: ")
    assert "refused" in reason.lower()
    text = gate.render_report(outcome)
    assert f"{dead} never answered: cannot connect" in text
    assert "timed out after 20 s (3 polls)" in text


def test_one_processor_down_does_not_hide_a_halt(processor: StandInProcessor) -> None:
    processor.hold(TRACE_ID, fast(15) + slow_readiness(5))
    outcome = run([processor.url, dead_url()], expect=20, timeout_s=10.0)
    assert (outcome.verdict, outcome.exit_code) == ("halt", 1)


def test_a_processor_that_comes_back_is_merged(
    processor: StandInProcessor, second: StandInProcessor
) -> None:
    """Errors are retried every interval: a replica restarting (503) joins when back."""
    processor.hold(TRACE_ID, fast(10))
    second.hold(TRACE_ID, fast(10, prefix="d"))
    second.status = 503
    clock = FakeClock()

    def sleep(seconds: float) -> None:
        clock.advance(seconds)
        second.status = 200  # back after the first interval

    outcome = gate.run_gate(
        [processor.url, second.url],
        TRACE_ID,
        expect=20,
        timeout_s=60.0,
        interval_s=5.0,
        clock=clock,
        sleep=sleep,
        progress=None,
    )
    assert (outcome.polls, outcome.verdict, outcome.document["startups"]) == (2, "pass", 20)


def test_a_processor_keeps_its_last_answer_while_it_fails(
    processor: StandInProcessor, second: StandInProcessor
) -> None:
    processor.hold(TRACE_ID, fast(5), fast(12))
    second.hold(TRACE_ID, fast(8, prefix="d"))
    clock = FakeClock()
    polls = 0

    def sleep(seconds: float) -> None:
        nonlocal polls
        polls += 1
        clock.advance(seconds)
        second.status = 500  # answered once, then failing

    outcome = gate.run_gate(
        [processor.url, second.url],
        TRACE_ID,
        expect=20,
        timeout_s=60.0,
        clock=clock,
        sleep=sleep,
        progress=None,
    )
    assert (outcome.verdict, outcome.document["startups"], outcome.polls) == ("pass", 20, 2)
    assert outcome.processors[1].error == "answered 500 Internal Server Error"
    assert "8 startups at its last answer, now failing: answered 500" in gate.render_report(outcome)


def test_no_processor_answering_is_insufficient_with_the_reasons(
    capsys: pytest.CaptureFixture[str],
) -> None:
    dead = dead_url()
    code = cli.main(
        [
            "gate",
            "--processor",
            dead,
            "--trace-id",
            TRACE_ID,
            "--timeout",
            "1s",
            "--interval",
            "0.2",
        ]
    )
    out = capsys.readouterr().out
    assert code == 2
    assert ": INSUFFICIENT (exit 2)" in out
    assert f"no processor answered: {dead}: cannot connect:" in out


def test_a_refused_token_stops_at_once(processor: StandInProcessor) -> None:
    processor.token = "s3cret"
    processor.hold(TRACE_ID, fast(20))
    outcome = run([processor.url], expect=20, timeout_s=600.0)
    assert (outcome.polls, outcome.exit_code, outcome.timed_out) == (1, 2, False)
    assert (
        "401 Unauthorized (give the processor's token with --token-file)"
        in (outcome.document["reasons"][0])
    )


def test_the_token_file_is_sent(
    processor: StandInProcessor, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    processor.token = "s3cret"
    processor.hold(TRACE_ID, fast(20))
    token = tmp_path / "token"
    token.write_text("s3cret\n", encoding="utf-8")
    args = ["gate", "--processor", processor.url, "--trace-id", TRACE_ID, "--expect", "20"]
    assert cli.main([*args, "--token-file", str(token)]) == 0
    assert processor.requests[-1][2] == "Bearer s3cret"
    token.write_text("", encoding="utf-8")
    assert cli.main([*args, "--token-file", str(token)]) == 2
    assert "token file" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<html>proxy error</html>", "did not answer JSON"),
        (b"[1, 2]", "not a verdict document"),
        (b'{"verdict": "pass"}', "not a verdict document: document 1: startups"),
        (json.dumps({"trace_id": OTHER_TRACE, "startups": 1}).encode(), "not of " + TRACE_ID),
    ],
)
def test_an_answer_that_is_not_a_verdict_document_is_named(
    processor: StandInProcessor, body: bytes, message: str
) -> None:
    processor.body = body
    outcome = run([processor.url], expect=20, timeout_s=600.0)
    assert (outcome.polls, outcome.exit_code) == (1, 2)
    assert message in outcome.processors[0].error  # type: ignore[operator]
    assert message in outcome.document["reasons"][0]


def test_a_wrong_url_is_named(processor: StandInProcessor) -> None:
    outcome = run([f"{processor.url}/nothing-here"], timeout_s=600.0)
    assert outcome.polls == 1
    assert "404 Not Found: not an otelbridge processor API" in outcome.document["reasons"][0]


# -- --json ---------------------------------------------------------------------------------


def test_json_is_the_merged_document_without_sketches(
    processor: StandInProcessor, second: StandInProcessor, capsys: pytest.CaptureFixture[str]
) -> None:
    processor.hold(TRACE_ID, fast(12))
    second.hold(TRACE_ID, fast(8, prefix="d"))
    code = cli.main(
        [
            "gate",
            "--processor",
            processor.url,
            "--processor",
            second.url,
            "--traceparent",
            TRACEPARENT,
            "--expect",
            "20",
            "--json",
        ]
    )
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    whole = document(TRACE_ID, fast(12) + fast(8, prefix="d"), expect=20, sketches=False)
    assert {k: v for k, v in doc.items() if k != "gate"} == whole
    assert "sketches" not in doc
    assert set(whole) >= {"trace_id", "name", "verdict", "startups", "failed", "partial"}
    assert set(whole) >= {"expect", "coverage", "budgets", "reasons", "slowest"}
    assert doc["gate"]["exit_code"] == 0
    assert doc["gate"]["timed_out"] is False
    assert doc["gate"]["polls"] == 1
    assert isinstance(doc["gate"]["waited_s"], float)
    assert doc["gate"]["processors"] == [
        {"url": processor.url, "ok": True, "startups": 12, "error": None},
        {"url": second.url, "ok": True, "startups": 8, "error": None},
    ]


def test_json_when_nothing_answered(capsys: pytest.CaptureFixture[str]) -> None:
    dead = dead_url()
    code = cli.main(["gate", "-p", dead, "--trace-id", TRACE_ID, "--timeout", "0", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 2
    assert (doc["trace_id"], doc["verdict"], doc["startups"]) == (TRACE_ID, "insufficient", 0)
    assert doc["reasons"][0].startswith(f"no processor answered: {dead}: cannot connect")
    assert doc["gate"]["processors"][0]["ok"] is False
    assert set(doc["budgets"]) == set(sla.DURATIONS)


def test_min_startups_and_expect(processor: StandInProcessor) -> None:
    """expect below gate.min_startups: N seen is the end of the wait, and too few for a
    verdict (the processor's rule)."""
    processor.hold(TRACE_ID, fast(3))
    config = Config(gate=GateConfig(min_startups=5), sla=SlaConfig())
    outcome = run([processor.url], expect=3, config=config)
    assert (outcome.polls, outcome.verdict) == (1, "insufficient")


# -- a namespace ----------------------------------------------------------------------------


def test_a_namespace_is_merged_across_replicas(
    processor: StandInProcessor, second: StandInProcessor, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rollouts of one namespace live on different replicas: the gate merges the
    namespace's documents (sketches) as it merges a rollout's."""
    processor.namespaces["k8s.io"] = lambda _n: fast(10)
    second.namespaces["k8s.io"] = lambda _n: slow_readiness(10)
    code = cli.main(["gate", "-p", processor.url, "-p", second.url, "--namespace", "k8s.io"])
    out = capsys.readouterr().out
    assert code == 1
    assert out.startswith("otelbridge gate: namespace k8s.io: HALT (exit 1)\n")
    assert "20 startups, 0 failed" in out
    assert processor.requests[0][:2] == ("/v1/namespaces/k8s.io", {"sketches": ["1"]})
    outcome = gate.run_gate(
        [processor.url, second.url],
        gate_inputs.Subject.namespace("k8s.io"),
        progress=None,
        timeout_s=0,
    )
    whole = document(None, fast(10) + slow_readiness(10), expect=None, sketches=False)
    assert outcome.document["budgets"] == whole["budgets"]
    assert (outcome.document["namespace"], outcome.trace_id) == ("k8s.io", None)


def test_a_namespace_takes_no_expect(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["gate", "-p", "x:1", "--namespace", "k8s.io", "--expect", "3"]
    assert cli.main(args) == 2
    assert "not with --namespace" in capsys.readouterr().err


def test_docs_name_every_flag_and_exit_code() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "rollouts.md").read_text(encoding="utf-8")
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    gate_parser = sub.choices["gate"]  # type: ignore[attr-defined]
    for action in gate_parser._actions:
        for option in action.option_strings:
            if option not in ("-h", "--help", "-v", "--verbose"):
                assert f"`{option}" in doc, option
    for code, verdict in (("0", "pass"), ("1", "halt"), ("2", "insufficient")):
        assert f"| {code} | {verdict} |" in doc
