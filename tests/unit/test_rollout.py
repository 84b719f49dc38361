"""`otelbridge rollout`: trace context, carrier, substitution, the patch, and the commands
run in-process (their spans written by the jsonl exporter, time from a fake clock)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from otelbridge import rollout
from otelbridge.app import Exporting
from otelbridge.cli import build_parser
from otelbridge.core import semconv
from otelbridge.core.clock import FakeClock
from otelbridge.core.errors import StateError
from otelbridge.core.tracecontext import TraceContext, parse_traceparent
from otelbridge.export import ExportResult
from otelbridge.export.factory import build_resource
from otelbridge.export.files import from_otlp_json
from otelbridge.rollout_context import (
    Carrier,
    child_environ,
    default_carrier_path,
    env_lines,
    new_context,
    parse_resource,
    pod_template_patch,
    read_carrier,
    substitute,
    to_yaml,
    write_carrier,
)
from otelbridge.rollout_exec import run_command

CTX = TraceContext(
    bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736"), bytes.fromhex("00f067aa0ba902b7"), 1
)
TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
START_NS = 1_700_000_000_000_000_000


# -- trace context -------------------------------------------------------------------------
def test_a_new_context_is_random_sampled_and_its_traceparent_parses_by_w3c_rules() -> None:
    contexts = [new_context() for _ in range(50)]
    assert len({c.trace_id for c in contexts}) == 50
    assert len({c.span_id for c in contexts}) == 50
    for ctx in contexts:
        line = env_lines(ctx)
        assert line == [f"TRACEPARENT={ctx.to_traceparent()}"]
        parsed = parse_traceparent(line[0].removeprefix("TRACEPARENT="))
        assert parsed == TraceContext(ctx.trace_id, ctx.span_id, 0x01)
        assert parsed.sampled and parsed.version == 0  # type: ignore[union-attr]


def test_env_lines_survive_eval_in_a_shell_even_with_spaces_in_the_tracestate() -> None:
    ctx = TraceContext(CTX.trace_id, CTX.span_id, 1, "rojo=00f067aa0ba902b7,congo=a b;$x")
    lines = env_lines(ctx)
    assert lines[0] == f"TRACEPARENT={TP}"  # plain: GITHUB_ENV and env files take it as is
    script = 'eval "$(cat)"; printf "%s\\n%s\\n" "$TRACEPARENT" "$TRACESTATE"'
    out = subprocess.run(
        ["sh", "-c", script], input="\n".join(lines), capture_output=True, text=True, check=True
    ).stdout
    assert out.splitlines() == [TP, ctx.trace_state]


def test_the_child_environment_carries_the_context_and_drops_a_stale_tracestate() -> None:
    env = child_environ({"PATH": "/bin", "TRACEPARENT": "old", "TRACESTATE": "old=1"}, CTX)
    assert env == {"PATH": "/bin", "TRACEPARENT": TP}
    with_state = TraceContext(CTX.trace_id, CTX.span_id, 1, "k=v")
    assert child_environ({}, with_state) == {"TRACEPARENT": TP, "TRACESTATE": "k=v"}


def test_substitution_replaces_the_placeholders_once_and_leaves_other_templates() -> None:
    ctx = TraceContext(CTX.trace_id, CTX.span_id, 1, "k={{trace_id}}")
    args = [
        "--traceparent={{traceparent}}",
        "{{trace_id}}{{trace_id}}",
        "{{tracestate}}",
        "-o=go-template={{.metadata.name}}",
        "{{ traceparent }}",
    ]
    assert substitute(args, ctx) == [
        f"--traceparent={TP}",
        CTX.trace_id_hex * 2,
        "k={{trace_id}}",  # a substituted value is not searched again
        "-o=go-template={{.metadata.name}}",
        "{{ traceparent }}",
    ]


# -- the carrier ---------------------------------------------------------------------------
def test_a_carrier_round_trips_through_its_file(tmp_path: Path) -> None:
    ctx = TraceContext(CTX.trace_id, CTX.span_id, 1, "rojo=00f067aa0ba902b7")
    carrier = Carrier(ctx, "web-v2", START_NS, {"team": "payments", "empty": ""})
    path = tmp_path / "state" / "rollout.json"  # its directory is created
    write_carrier(path, carrier)
    assert read_carrier(path) == carrier
    data = json.loads(path.read_text())
    assert data["traceparent"] == TP
    assert data["tracestate"] == "rojo=00f067aa0ba902b7"
    assert data["start_time_unix_nano"] == START_NS
    assert data["end_time_unix_nano"] is None
    assert list(tmp_path.joinpath("state").iterdir()) == [path]  # no temporary file left
    ended = Carrier(ctx, "web-v2", START_NS, {}, end_ns=START_NS + 5)
    write_carrier(path, ended, force=True)
    assert read_carrier(path) == ended and not ended.open


def test_the_default_carrier_is_in_the_state_dir_else_the_working_directory() -> None:
    assert default_carrier_path({"OTELBRIDGE_STATE_DIR": "/var/lib/x"}) == Path(
        "/var/lib/x/rollout.json"
    )
    assert default_carrier_path({"OTELBRIDGE_STATE_DIR": ""}) == Path("otelbridge-rollout.json")
    assert default_carrier_path({}) == Path("otelbridge-rollout.json")


def _carrier_json(**changes: Any) -> dict[str, Any]:
    data = Carrier(CTX, "web", START_NS).to_json()
    data.update(changes)
    return data


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "no rollout carrier at"),
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (json.dumps({"traceparent": TP}).encode(), "not an otelbridge rollout carrier"),
        (json.dumps(_carrier_json(version=2)).encode(), "carrier version 2 is not supported"),
        (json.dumps(_carrier_json(traceparent=TP.upper())).encode(), "invalid traceparent"),
        (json.dumps(_carrier_json(tracestate="a")).encode(), "invalid tracestate"),
        (json.dumps(_carrier_json(name="")).encode(), "no rollout name"),
        (json.dumps(_carrier_json(start_time_unix_nano=True)).encode(), "invalid start time"),
        (json.dumps(_carrier_json(end_time_unix_nano="x")).encode(), "invalid end time"),
        (json.dumps(_carrier_json(attributes={"a": 1})).encode(), "map of strings"),
        (b" " * (1 << 20) + b"{}", "too large"),
    ],
)
def test_a_missing_or_corrupt_carrier_is_one_clear_error(
    tmp_path: Path, content: bytes | None, says: str
) -> None:
    path = tmp_path / "rollout.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(StateError) as err:
        read_carrier(path)
    assert says in str(err.value) and str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_an_open_carrier_or_another_file_is_not_overwritten_without_force(tmp_path: Path) -> None:
    path = tmp_path / "rollout.json"
    write_carrier(path, Carrier(CTX, "first", START_NS))
    with pytest.raises(StateError, match=r"'first' .* is still open"):
        write_carrier(path, Carrier(new_context(), "second", START_NS))
    assert read_carrier(path).name == "first"
    write_carrier(path, Carrier(new_context(), "second", START_NS), force=True)
    assert read_carrier(path).name == "second"

    write_carrier(path, Carrier(CTX, "ended", START_NS, end_ns=START_NS + 1), force=True)
    write_carrier(path, Carrier(CTX, "third", START_NS))  # an ended one may be replaced
    assert read_carrier(path).name == "third"

    other = tmp_path / "notes.json"
    other.write_text('{"mine": true}')
    with pytest.raises(StateError, match="not a rollout carrier: not overwriting"):
        write_carrier(other, Carrier(CTX, "x", START_NS))
    assert other.read_text() == '{"mine": true}'


def test_an_unwritable_carrier_is_a_state_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateError, match="cannot write the carrier"):
        write_carrier(blocker / "rollout.json", Carrier(CTX, "x", START_NS))


# -- annotate ------------------------------------------------------------------------------
EXPECTED_YAML = f"""\
spec:
  template:
    metadata:
      annotations:
        tracing.k8s.io/traceparent: "{TP}"
        tracing.k8s.io/tracestate: null"""


def test_the_patch_as_json_and_as_yaml() -> None:
    patch = pod_template_patch(CTX)
    assert patch == {
        "spec": {
            "template": {
                "metadata": {
                    "annotations": {
                        "tracing.k8s.io/traceparent": TP,
                        # null removes a previous rollout's, which must not pair with this one
                        "tracing.k8s.io/tracestate": None,
                    }
                }
            }
        }
    }
    assert to_yaml(patch) == EXPECTED_YAML
    assert yaml.safe_load(to_yaml(patch)) == patch  # PyYAML (from the kubernetes client)


def test_the_patch_of_a_named_resource_with_a_tracestate_reads_back_as_yaml() -> None:
    ctx = TraceContext(CTX.trace_id, CTX.span_id, 1, 'a=" x: y #z",b=c')
    patch = pod_template_patch(ctx, parse_resource("Deploy/web-1"))
    assert patch["apiVersion"] == "apps/v1" and patch["kind"] == "Deployment"
    assert patch["metadata"] == {"name": "web-1"}
    annotations = patch["spec"]["template"]["metadata"]["annotations"]
    assert annotations["tracing.k8s.io/tracestate"] == ctx.trace_state
    assert yaml.safe_load(to_yaml(patch)) == patch
    assert to_yaml({"on": {"n": {}}, "a b": "x"}) == '"on":\n  "n": {}\n"a b": "x"'
    assert parse_resource("rollout/web")[:2] == ("argoproj.io/v1alpha1", "Rollout")


@pytest.mark.parametrize("value", ["web", "cronjob/web", "deployment/", "deployment/Web_1"])
def test_a_resource_that_is_not_a_workload_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match=r"KIND/NAME|object name"):
        parse_resource(value)


# -- the span ------------------------------------------------------------------------------
def _attrs(span: Span) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in span.attributes:
        out[kv.key] = getattr(kv.value, kv.value.WhichOneof("value"))
    return out


def test_the_rollout_span_has_the_carriers_ids_times_and_attributes() -> None:
    carrier = Carrier(CTX, "web", START_NS, {"team": "a", "tier": "1"})
    span = rollout.rollout_span(carrier, START_NS + 10, extra=[("tier", "2")], ok=True)
    assert span.name == semconv.SPAN_ROLLOUT
    assert (span.trace_id, span.span_id, span.parent_span_id) == (CTX.trace_id, CTX.span_id, b"")
    assert (span.start_time_unix_nano, span.end_time_unix_nano) == (START_NS, START_NS + 10)
    assert _attrs(span) == {semconv.OB_ROLLOUT_NAME: "web", "team": "a", "tier": "2"}
    assert span.status.code == Status.StatusCode.STATUS_CODE_OK
    failed = rollout.rollout_span(carrier, START_NS - 5, error="boom")
    assert failed.end_time_unix_nano == START_NS  # never ends before it starts
    assert failed.status.code == Status.StatusCode.STATUS_CODE_ERROR
    assert failed.status.message == "boom"
    assert not rollout.rollout_span(carrier, START_NS).HasField("status")


class Refusing:
    name = "refusing"

    def export(self, request: ExportTraceServiceRequest, span_count: int) -> ExportResult:
        return ExportResult.FAILURE

    def shutdown(self) -> None:
        pass


def _exporting(*exporters: Any) -> Exporting:
    return Exporting(list(exporters), build_resource({}), {})


def test_the_sender_says_why_a_span_was_not_delivered_in_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sender = rollout.SpanSender(_exporting(Refusing()), quiet=True)
    span = rollout.rollout_span(Carrier(CTX, "web", START_NS), START_NS)
    problem = sender.send([span], 5.0)
    assert problem is not None and "refused permanently" in problem
    assert "\n" not in problem
    assert not [r for r in caplog.records if r.name.startswith("otelbridge.export")]
    assert not _export_logger_changed()


def _export_logger_changed() -> bool:
    import logging  # noqa: PLC0415

    logger = logging.getLogger("otelbridge.export")
    return not logger.propagate or bool(logger.handlers)


# -- the commands, in-process --------------------------------------------------------------
class Run:
    """The rollout commands as the command line parses them, in this process."""

    def __init__(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.clock = FakeClock(START_NS)
        self.spans_file = tmp_path / "spans.jsonl"
        self.environ: dict[str, str] = {
            "PATH": os.environ["PATH"],
            "OTELBRIDGE_STATE_DIR": str(tmp_path / "state"),
            "OTEL_TRACES_EXPORTER": "jsonl",
        }
        self.carrier = tmp_path / "state" / "rollout.json"
        self.capsys = capsys
        self.out = self.err = ""

    def __call__(self, *argv: str, environ: Mapping[str, str] | None = None) -> int:
        args = build_parser().parse_args(["rollout", *argv])
        if getattr(args, "jsonl_path", "absent") is None:
            args.jsonl_path = str(self.spans_file)
        code = rollout.main(args, environ=environ or self.environ, clock=self.clock)
        captured = self.capsys.readouterr()
        self.out, self.err = captured.out, captured.err
        return code

    def spans(self) -> list[Span]:
        if not self.spans_file.exists():
            return []
        return [
            span
            for line in self.spans_file.read_text().splitlines()
            for rs in from_otlp_json(json.loads(line)).resource_spans
            for ss in rs.scope_spans
            for span in ss.spans
        ]


@pytest.fixture
def run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Run:
    return Run(tmp_path, capsys)


def test_start_then_end_exports_the_span_from_the_start_to_the_end(run: Run) -> None:
    assert run("start", "--name", "web-v2", "--attr", "team=payments") == 0
    assert run.err.startswith("otelbridge rollout: 'web-v2' started")
    (line,) = run.out.splitlines()
    ctx = parse_traceparent(line.removeprefix("TRACEPARENT="))
    assert isinstance(ctx, TraceContext)
    assert read_carrier(run.carrier).context == ctx
    run.clock.advance(12.5)
    assert run("end", "--attr", "result=done") == 0, run.err
    (span,) = run.spans()
    assert (span.trace_id, span.span_id) == (ctx.trace_id, ctx.span_id)
    assert span.start_time_unix_nano == START_NS
    assert span.end_time_unix_nano == START_NS + 12_500_000_000
    assert _attrs(span) == {
        semconv.OB_ROLLOUT_NAME: "web-v2",
        "team": "payments",
        "result": "done",
    }
    assert not run.carrier.exists()
    assert "ended after 12.5 s" in run.err


def test_end_with_an_error_status(run: Run) -> None:
    assert run("start", "--name", "web") == 0
    assert run("end", "--status", "error", "--message", "canary failed") == 0
    (span,) = run.spans()
    assert span.status.code == Status.StatusCode.STATUS_CODE_ERROR
    assert span.status.message == "canary failed"


@pytest.mark.parametrize(
    ("argv", "code", "says"),
    [
        (("end",), 1, "no rollout carrier at"),
        (("end", "--message", "x"), 2, "--message goes with --status error"),
        (("annotate",), 1, "no rollout carrier at"),
        (("start", "--name", " "), 2, "--name is empty"),
        (("exec", "--exporter", "none"), 2, "no command"),
        (("exec", "--exporter", "none", "--"), 2, "no command"),
    ],
)
def test_usage_and_runtime_errors_are_one_line(
    run: Run, argv: tuple[str, ...], code: int, says: str
) -> None:
    assert run(*argv) == code
    assert says in run.err
    assert len(run.err.splitlines()) == 1 and run.err.startswith("otelbridge rollout ")


def test_a_bad_exporter_configuration_is_usage_and_is_found_before_the_command_runs(
    run: Run, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    env = {**run.environ, "OTEL_TRACES_EXPORTER": "zipkin"}
    assert run("exec", "--", "touch", str(marker), environ=env) == 2
    assert "unknown exporter(s) 'zipkin'" in run.err and len(run.err.splitlines()) == 1
    assert not marker.exists()
    assert run("start", "--name", "web") == 0
    assert run("end", environ=env) == 2
    assert run.carrier.exists()  # kept: nothing was sent


def test_a_second_start_while_one_is_open_is_refused_unless_forced(run: Run) -> None:
    assert run("start", "--name", "first") == 0
    assert run("start", "--name", "second") == 1
    assert "'first'" in run.err and "still open" in run.err and "--force" in run.err
    assert run("start", "--name", "second", "--force") == 0
    assert read_carrier(run.carrier).name == "second"


def test_annotate_reads_the_carrier_else_the_environment(run: Run) -> None:
    assert run("start", "--name", "web", "--tracestate", "k=v") == 0
    carrier = read_carrier(run.carrier)
    assert run("annotate") == 0
    assert json.loads(run.out) == pod_template_patch(carrier.context)
    assert run("annotate", "--format", "yaml") == 0
    assert yaml.safe_load(run.out) == pod_template_patch(carrier.context)

    inside = {**run.environ, "TRACEPARENT": TP}  # inside `rollout exec`
    assert run("annotate", environ=inside) == 0
    assert json.loads(run.out) == pod_template_patch(CTX)
    assert run("annotate", "--carrier", str(run.carrier), environ=inside) == 0
    assert json.loads(run.out) == pod_template_patch(carrier.context)
    assert run("annotate", environ={**inside, "TRACEPARENT": TP.upper()}) == 1
    assert "$TRACEPARENT is not a valid traceparent" in run.err


def test_exec_runs_the_command_in_the_span_and_passes_its_exit_code(
    run: Run, tmp_path: Path
) -> None:
    seen = tmp_path / "seen"
    script = f'printf "%s %s" "$TRACEPARENT" "$1" > {seen}; exit 3'
    code = run(
        "exec",
        "--name",
        "deploy",
        "--attr",
        "env=prod",
        "--",
        "sh",
        "-c",
        script,
        "sh",
        "{{traceparent}}",
    )
    assert code == 3
    env_tp, arg_tp = seen.read_text().split()
    assert env_tp == arg_tp
    (span,) = run.spans()
    assert env_tp == f"00-{span.trace_id.hex()}-{span.span_id.hex()}-01"
    assert _attrs(span) == {
        semconv.OB_ROLLOUT_NAME: "deploy",
        "env": "prod",
        semconv.PROCESS_COMMAND: "sh",
        semconv.PROCESS_EXIT_CODE: 3,
    }
    assert span.status.code == Status.StatusCode.STATUS_CODE_ERROR
    assert span.status.message == "sh exited with code 3"
    assert run.err == ""


def test_exec_of_what_cannot_run_says_so_and_records_it(run: Run, tmp_path: Path) -> None:
    assert run("exec", "--", "no-such-command-here") == 127
    assert (
        run.err == "otelbridge rollout exec: cannot run 'no-such-command-here': command not found\n"
    )
    plain = tmp_path / "plain"
    plain.write_text("data")
    assert run("exec", "--", str(plain)) == 126
    assert "Permission denied" in run.err
    first, second = run.spans()
    assert _attrs(first)[semconv.PROCESS_EXIT_CODE] == 127
    assert _attrs(first)[semconv.OB_ROLLOUT_NAME] == "no-such-command-here"
    assert _attrs(second)[semconv.PROCESS_EXIT_CODE] == 126
    assert second.status.message.startswith(f"cannot run '{plain}'")


def test_exec_with_a_carrier_leaves_it_ended_for_the_gate(run: Run) -> None:
    assert run("exec", "--carrier", str(run.carrier), "--", "true") == 0
    carrier = read_carrier(run.carrier)
    (span,) = run.spans()
    assert (carrier.context.trace_id, carrier.context.span_id) == (span.trace_id, span.span_id)
    assert carrier.end_ns == span.end_time_unix_nano and not carrier.open
    assert run("end") == 1 and "has already ended" in run.err
    assert run("start", "--name", "next") == 0  # an ended carrier is not in the way


def test_exec_does_not_start_over_an_open_carrier(run: Run, tmp_path: Path) -> None:
    assert run("start", "--name", "open") == 0
    marker = tmp_path / "ran"
    assert run("exec", "--carrier", str(run.carrier), "--", "touch", str(marker)) == 1
    assert "still open" in run.err and not marker.exists()


# -- running a command ---------------------------------------------------------------------
def _signal_state() -> tuple[object, ...]:
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    handlers = tuple(signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD))
    return (frozenset(mask), handlers)


def test_run_command_reports_exit_codes_and_signals_and_restores_the_signals() -> None:
    before = _signal_state()
    env = {"PATH": os.environ["PATH"]}
    assert run_command(["sh", "-c", "exit 3"], env).exit_code == 3
    killed = run_command(["sh", "-c", "kill -TERM $$"], env)
    assert (killed.exit_code, killed.signal) == (143, signal.SIGTERM)
    assert killed.describe("sh") == "sh was killed by SIGTERM"
    missing = run_command(["no-such-command-here"], env)
    assert (missing.exit_code, missing.error) == (127, "command not found")
    assert _signal_state() == before


def test_the_command_does_not_inherit_otelbridges_blocked_signals_or_ignored_sigpipe(
    tmp_path: Path,
) -> None:
    status = tmp_path / "status"
    finished = run_command(
        ["sh", "-c", f"grep -E '^(SigBlk|SigIgn)' /proc/self/status > {status}"],
        {"PATH": os.environ["PATH"]},
    )
    assert finished.exit_code == 0
    fields = dict(line.split(":\t") for line in status.read_text().splitlines())
    assert int(fields["SigBlk"], 16) == 0
    assert not int(fields["SigIgn"], 16) & (1 << (signal.SIGPIPE - 1))
