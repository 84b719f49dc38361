"""`otelbridge rollout` as users run it: real processes, a shell, a real OTLP receiver."""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from otelbridge.core import semconv
from otelbridge.core.tracecontext import TraceContext, parse_traceparent
from otelbridge.testing.otlp import OtlpReceiver, ReceivedSpan
from tests.integration.processes import OTELBRIDGE

COMMAND = " ".join(OTELBRIDGE)  # for shell scripts; a path without spaces
TOLERANCE_NS = 50_000_000


def env_for(receiver: OtlpReceiver, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "TRACE"))}
    return {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, **extra}


def rollout_spans(receiver: OtlpReceiver, count: int = 1) -> list[ReceivedSpan]:
    return receiver.wait_for_spans(lambda s: s.name == semconv.SPAN_ROLLOUT, count=count)


def parsed(traceparent: str) -> TraceContext:
    ctx = parse_traceparent(traceparent)
    assert isinstance(ctx, TraceContext), traceparent
    return ctx


def test_eval_of_start_then_end_exports_one_span_from_the_start_commands_moment(
    receiver: OtlpReceiver, tmp_path: Path
) -> None:
    script = textwrap.dedent(
        f"""\
        set -e
        before=$(date +%s%N)
        eval "$({COMMAND} rollout start --name web-v2 --attr team=payments)"
        after=$(date +%s%N)
        echo "$before $after $TRACEPARENT"
        sleep 0.3
        {COMMAND} rollout end
        """
    )
    result = subprocess.run(
        ["sh", "-c", script],
        cwd=tmp_path,
        env=env_for(receiver),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    before, after, traceparent = result.stdout.split()
    ctx = parsed(traceparent)
    (span,) = rollout_spans(receiver)
    assert (span.span.trace_id, span.span.span_id) == (ctx.trace_id, ctx.span_id)
    assert not span.span.parent_span_id
    start, end = span.span.start_time_unix_nano, span.span.end_time_unix_nano
    assert int(before) - TOLERANCE_NS <= start <= int(after) + TOLERANCE_NS
    assert end - start >= 300_000_000
    assert span.attributes == {semconv.OB_ROLLOUT_NAME: "web-v2", "team": "payments"}
    assert not (tmp_path / "otelbridge-rollout.json").exists()
    assert len(receiver.spans()) == 1


def test_exec_passes_the_exit_code_through_and_records_it(
    receiver: OtlpReceiver, tmp_path: Path
) -> None:
    result = subprocess.run(
        [
            *OTELBRIDGE,
            "rollout",
            "exec",
            "--name",
            "deploy",
            "--",
            "sh",
            "-c",
            "echo $TRACEPARENT; exit 3",
        ],
        env=env_for(receiver),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 3, result.stderr
    assert result.stderr == ""
    seen = parsed(result.stdout.strip())
    (span,) = rollout_spans(receiver)
    assert span.span.trace_id == seen.trace_id  # the child saw the exported span's trace
    assert span.span.span_id == seen.span_id
    assert span.attributes[semconv.PROCESS_EXIT_CODE] == 3
    assert span.attributes[semconv.PROCESS_COMMAND] == "sh"
    assert span.attributes[semconv.OB_ROLLOUT_NAME] == "deploy"
    assert span.span.status.code == Status.StatusCode.STATUS_CODE_ERROR


CHILD = """\
import os
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(insecure=True)))
parent = TraceContextTextMapPropagator().extract({"traceparent": os.environ["TRACEPARENT"]})
with provider.get_tracer("deploy.sh").start_as_current_span("kubectl apply", context=parent):
    pass
provider.shutdown()
"""


def test_a_span_the_command_makes_from_traceparent_is_the_rollout_spans_child(
    receiver: OtlpReceiver, tmp_path: Path
) -> None:
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    result = subprocess.run(
        [*OTELBRIDGE, "rollout", "exec", "--name", "sdk", "--", sys.executable, str(child)],
        env=env_for(receiver),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (rollout,) = rollout_spans(receiver)
    (step,) = receiver.wait_for_spans(lambda s: s.name == "kubectl apply")
    assert step.span.trace_id == rollout.span.trace_id
    assert step.span.parent_span_id == rollout.span.span_id
    assert rollout.span.start_time_unix_nano <= step.span.start_time_unix_nano
    assert step.span.end_time_unix_nano <= rollout.span.end_time_unix_nano


def test_exec_passes_stdin_and_stdout_through(receiver: OtlpReceiver) -> None:
    result = subprocess.run(
        [*OTELBRIDGE, "rollout", "exec", "--", "tr", "a-z", "A-Z"],
        input="hello\n",
        env=env_for(receiver),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout) == (0, "HELLO\n")


COUNTER = """\
import signal, sys, time
got = []
signal.signal(signal.SIGINT, lambda s, f: got.append("INT"))
signal.signal(signal.SIGTERM, lambda s, f: got.append("TERM"))
print("ready", flush=True)
deadline = time.monotonic() + float(sys.argv[1])
while time.monotonic() < deadline and len(got) < int(sys.argv[2]):
    time.sleep(0.02)
time.sleep(0.3)  # a signal sent twice would have arrived by now
print(" ".join(got), flush=True)
sys.exit(7)
"""


def test_sigint_and_sigterm_sent_to_otelbridge_reach_the_command_once(
    receiver: OtlpReceiver, tmp_path: Path
) -> None:
    counter = tmp_path / "counter.py"
    counter.write_text(COUNTER)
    proc = subprocess.Popen(
        [*OTELBRIDGE, "rollout", "exec", "--", sys.executable, str(counter), "20", "2"],
        env=env_for(receiver),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 7, err
    assert out.split() == ["INT", "TERM"]
    (span,) = rollout_spans(receiver)
    assert span.attributes[semconv.PROCESS_EXIT_CODE] == 7


def test_ctrl_c_at_a_terminal_reaches_the_command_once(tmp_path: Path) -> None:
    """The terminal signals the whole foreground process group, the command included:
    otelbridge must not send it a second time."""
    counter = tmp_path / "counter.py"
    counter.write_text(COUNTER)
    argv = [*OTELBRIDGE, "rollout", "exec", "--exporter", "none", "--"]
    argv += [sys.executable, str(counter), "3", "1"]
    pid, fd = pty.fork()
    if pid == 0:  # the child: a session leader with the pty as its terminal
        try:
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    out = b""
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # the other side closed
                    break
                if not chunk:
                    break
                if b"ready" in chunk and b"ready" not in out:
                    os.write(fd, b"\x03")  # Ctrl-C
                out += chunk
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    lines = [line.strip() for line in out.decode(errors="replace").replace("^C", "").splitlines()]
    assert os.waitstatus_to_exitcode(status) == 7, lines
    assert [line for line in lines if line][-1] == "INT", lines  # not "INT INT"


def test_a_span_that_cannot_be_delivered_fails_end_in_one_line_and_keeps_the_carrier(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://127.0.0.1:9"  # nothing listens
    start = subprocess.run(
        [*OTELBRIDGE, "rollout", "start", "--name", "web"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert start.returncode == 0, start.stderr
    end = subprocess.run(
        [*OTELBRIDGE, "rollout", "end", "--timeout", "1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert end.returncode == 1
    (line,) = end.stderr.splitlines()
    assert line.startswith("otelbridge rollout end: the rollout span was not delivered")
    assert "127.0.0.1:9" in line and "Traceback" not in end.stderr
    assert (tmp_path / "otelbridge-rollout.json").exists()

    run = subprocess.run(
        [*OTELBRIDGE, "rollout", "exec", "--timeout", "1", "--", "sh", "-c", "exit 5"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 5  # the command's, delivered or not
    (line,) = run.stderr.splitlines()
    assert line.startswith("otelbridge rollout exec: warning: the rollout span was not delivered")


def test_a_command_that_cannot_be_found_exits_127_and_is_recorded(
    receiver: OtlpReceiver,
) -> None:
    result = subprocess.run(
        [*OTELBRIDGE, "rollout", "exec", "--", "no-such-deploy-script"],
        env=env_for(receiver),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 127
    assert result.stderr.splitlines() == [
        "otelbridge rollout exec: cannot run 'no-such-deploy-script': command not found"
    ]
    (span,) = rollout_spans(receiver)
    assert span.attributes[semconv.PROCESS_EXIT_CODE] == 127
    assert span.span.status.code == Status.StatusCode.STATUS_CODE_ERROR


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_annotate_inside_exec_names_the_running_rollout(
    receiver: OtlpReceiver, tmp_path: Path, fmt: str
) -> None:
    script = f'{COMMAND} rollout annotate --format {fmt}; echo "$TRACEPARENT"'
    result = subprocess.run(
        [*OTELBRIDGE, "rollout", "exec", "--", "sh", "-c", script],
        cwd=tmp_path,
        env=env_for(receiver),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    *lines, traceparent = result.stdout.splitlines()
    patch = (json.loads if fmt == "json" else yaml.safe_load)("\n".join(lines))
    annotations = patch["spec"]["template"]["metadata"]["annotations"]
    assert annotations["tracing.k8s.io/traceparent"] == traceparent
    (span,) = rollout_spans(receiver)
    assert traceparent == f"00-{span.span.trace_id.hex()}-{span.span.span_id.hex()}-01"


DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
      annotations:
        tracing.k8s.io/tracestate: previous=rollout
        team: payments
    spec:
      containers:
      - name: web
        image: nginx
"""


def _template_annotations(manifest: str) -> dict[str, str]:
    annotations: dict[str, str] = yaml.safe_load(manifest)["spec"]["template"]["metadata"][
        "annotations"
    ]
    return annotations


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_the_patch_applies_with_kubectl_patch_and_with_kustomize(tmp_path: Path) -> None:
    """Offline: `kubectl patch --local` and `kubectl kustomize` (no cluster needed)."""
    (tmp_path / "deployment.yaml").write_text(DEPLOYMENT)
    env = {**os.environ, "TRACEPARENT": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
    expected = {"team": "payments", "tracing.k8s.io/traceparent": env["TRACEPARENT"]}

    def otelbridge(*args: str) -> str:
        return subprocess.run(
            [*OTELBRIDGE, "rollout", "annotate", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout

    def kubectl(*args: str) -> str:
        return subprocess.run(
            ["kubectl", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout

    for patch_type, fmt in (("strategic", "json"), ("merge", "yaml")):
        patched = kubectl(
            "patch",
            "-f",
            "deployment.yaml",
            "--local",
            "-o",
            "yaml",
            "--type",
            patch_type,
            "--patch",
            otelbridge("--format", fmt),
        )
        # the previous rollout's tracestate is gone: it must not pair with this traceparent
        assert _template_annotations(patched) == expected, (patch_type, fmt)

    (tmp_path / "patch.yaml").write_text(
        otelbridge("--format", "yaml", "--resource", "deployment/web")
    )
    (tmp_path / "kustomization.yaml").write_text(
        "resources:\n- deployment.yaml\npatches:\n- path: patch.yaml\n"
    )
    assert _template_annotations(kubectl("kustomize", ".")) == expected
