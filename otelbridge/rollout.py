"""`otelbridge rollout`: the provisioning span of a rollout (start, end, exec, annotate).

A rollout is one trace: the processor and the gate tell rollouts apart by trace ID, so
every ``start`` and ``exec`` begins a new trace (random trace and span IDs, sampled) and
never joins a ``TRACEPARENT`` already in the environment. Its root span, named
``rollout`` (``otelbridge.rollout.name`` = ``--name``), is the parent of the
``pod.startup``/``container.startup`` spans of every container that carries the
traceparent (pod annotation, label or ``TRACEPARENT`` environment variable).

::

    eval "$(otelbridge rollout start --name web-v2)"  # prints TRACEPARENT=..., writes the carrier
    kubectl patch deployment web --patch "$(otelbridge rollout annotate)"
    otelbridge rollout end                            # exports the span: carrier start -> now

    otelbridge rollout exec --name web-v2 -- ./deploy.sh {{traceparent}}

**The carrier** (``--carrier FILE``; default ``$OTELBRIDGE_STATE_DIR/rollout.json`` when
that variable is set and not empty, else ``./otelbridge-rollout.json``) is a JSON object::

    {"format": "otelbridge-rollout-carrier", "version": 1,
     "traceparent": "00-<trace id>-<span id>-01", "tracestate": "",
     "name": "web-v2", "start_time_unix_nano": 1700000000000000000,
     "end_time_unix_nano": null, "attributes": {"team": "payments"}}

Its format is in :mod:`otelbridge.rollout_context`. ``start`` does not overwrite the
carrier of a rollout still open (nor a file that is not a carrier) without ``--force``;
``end`` removes it once the span is delivered and keeps it when not (run ``end`` again).
``exec --carrier FILE`` writes one too, marked ended when CMD ends, so
``otelbridge gate --carrier FILE`` can follow an ``exec``.

**Exit codes**: 0 done; 1 a runtime failure (carrier missing, corrupt, open, unwritable;
the span not delivered); 2 bad usage (a bad ``--attr``, ``--tracestate``, ``--resource``,
invalid ``OTEL_*`` variables). ``exec`` exits with CMD's exit code (128+N when a signal N
ended it; 127 when CMD is not found, 126 when it cannot be executed), whether or not its
span could be delivered (a warning says so). Every failure is one line on stderr.

**Signals** (``exec``): SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to otelbridge are
forwarded to CMD once (:mod:`otelbridge.rollout_exec`); once CMD has ended, one of them
abandons the delivery of the span.

**Delivery**: through :class:`otelbridge.app.Exporting` and
:func:`otelbridge.app.memory_delivery`, like every command (``OTEL_TRACES_EXPORTER``,
``OTEL_EXPORTER_OTLP_*``, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, or
``--exporter``/``--jsonl-path``); ``end`` and ``exec`` wait at most ``--timeout``
seconds for it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import Final

from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from otelbridge.app import Exporting, memory_delivery
from otelbridge.core import semconv
from otelbridge.core.clock import Clock, SystemClock
from otelbridge.core.config import Config
from otelbridge.core.counters import Counters
from otelbridge.core.errors import ConfigError, ExportError, OtelbridgeError, StateError
from otelbridge.core.model import AttrValue
from otelbridge.core.tracecontext import (
    ENV_TRACEPARENT,
    ENV_TRACESTATE,
    Invalid,
    TraceContext,
    parse_traceparent,
    parse_tracestate,
)
from otelbridge.emit.spans import provisioning_span
from otelbridge.rollout_context import (
    LOCAL_CARRIER,
    STATE_CARRIER,
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
from otelbridge.rollout_exec import Relay, run_command

__all__ = ["DELIVERY_TIMEOUT_S", "SpanSender", "configure", "main", "rollout_span"]

_log = logging.getLogger(__name__)

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2

#: how long ``end`` and ``exec`` wait for the span's delivery by default (``--timeout``)
DELIVERY_TIMEOUT_S: Final = 30.0
#: attribute keys the commands set themselves; ``--attr`` may not
_RESERVED: Final = frozenset(
    {semconv.OB_ROLLOUT_NAME, semconv.PROCESS_COMMAND, semconv.PROCESS_EXIT_CODE}
)
_CARRIER_HELP: Final = (
    f"the rollout's carrier file (default: $OTELBRIDGE_STATE_DIR/{STATE_CARRIER}, "
    f"else ./{LOCAL_CARRIER})"
)


class _Usage(Exception):
    """Bad usage found after parsing: one line, exit 2. Never leaves this module."""


# -- the span and its delivery -------------------------------------------------------------
def rollout_span(
    carrier: Carrier,
    end_ns: int,
    *,
    extra: Sequence[tuple[str, AttrValue]] = (),
    ok: bool = False,
    error: str | None = None,
) -> Span:
    """The ``rollout`` span of ``carrier``: its start, ``end_ns`` (never before the
    start), ``otelbridge.rollout.name``, its attributes then ``extra`` (a later value of
    a key wins). Status ERROR with ``error``; OK when ``ok``; else unset."""
    attributes: dict[str, AttrValue] = {semconv.OB_ROLLOUT_NAME: carrier.name}
    attributes.update(carrier.attributes)
    attributes.update(extra)
    span = provisioning_span(
        carrier.context,
        name=semconv.SPAN_ROLLOUT,
        start_ns=carrier.start_ns,
        end_ns=max(end_ns, carrier.start_ns),
        attributes=list(attributes.items()),
        error=error,
    )
    if ok and not error:
        span.status.code = Status.StatusCode.STATUS_CODE_OK
    return span


class SpanSender:
    """Spans to the exporters the ``OTEL_*`` variables (or ``--exporter``) name, through
    the same memory queue and delivery engine as every command: for one send.

    Building it validates the exporter configuration (:class:`ConfigError`), so a
    command can refuse to run before it does anything. ``quiet``: the delivery engine's
    log lines are held back and the one that says why is the reason :meth:`send`
    returns (a command then fails with one line; ``-v`` shows them all).
    """

    def __init__(self, exporting: Exporting, *, quiet: bool = False) -> None:
        self._lanes = len(exporting.exporters)
        self._quiet = quiet
        self.counters = Counters()
        self._storage, self._delivery = memory_delivery(exporting, self.counters)

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: Mapping[str, str]) -> SpanSender:
        exporting = Exporting.from_env(
            Config(), environ=environ, exporter=args.exporter, jsonl_path=args.jsonl_path
        )
        return cls(exporting, quiet=not args.verbose)

    def send(self, spans: Sequence[Span], timeout_s: float) -> str | None:
        """Delivers ``spans`` and shuts down; waits at most about ``timeout_s`` (and one
        second more for an attempt in flight). Returns ``None`` when every exporter
        accepted every span, else why not (one line). Interrupted (an exception from a
        signal handler), it stops at once and lets the exception through."""
        held = _HeldLog(_EXPORT_LOGGER) if self._quiet else None
        try:
            return self._send(spans, timeout_s, held)
        finally:
            if held is not None:
                held.close()

    def _send(self, spans: Sequence[Span], timeout_s: float, held: _HeldLog | None) -> str | None:
        self._delivery.start()
        self._storage.submit(spans)
        problems: list[str] = []
        try:
            flushed = self._delivery.force_flush(timeout_s)
            if not flushed:
                problems = self._delivery.problems()
        except BaseException:
            self._delivery.shutdown(0.0)
            raise
        self._delivery.shutdown(1.0)
        dropped = self.counters.get(semconv.SPANS_DROPPED)
        exported = self.counters.get(semconv.SPANS_EXPORTED)
        if not dropped and exported >= len(spans) * self._lanes:
            return None
        if problems:
            return "; ".join(problems)
        said = held.last() if held is not None else None
        if said is not None:
            return said
        if not flushed:
            return f"no answer within {timeout_s:g} s"
        return "refused (see the log above)"


#: the delivery engine's and the exporters' loggers
_EXPORT_LOGGER: Final = "otelbridge.export"


class _HeldLog(logging.Handler):
    """Keeps what ``logger`` logs from WARNING up instead of printing it, until closed."""

    def __init__(self, name: str) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []
        self._logger = logging.getLogger(name)
        self._propagate = self._logger.propagate
        self._logger.addHandler(self)
        self._logger.propagate = False

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def last(self) -> str | None:
        """The newest message held, if any."""
        return self.records[-1].getMessage() if self.records else None

    def close(self) -> None:
        self._logger.removeHandler(self)
        self._logger.propagate = self._propagate
        super().close()


class _Interrupted(BaseException):
    """A signal came while the span was being delivered (BaseException: it must get
    through the delivery engine's ``except Exception``)."""


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise _Interrupted(signum)


# -- the command line ----------------------------------------------------------------------
def _attr(value: str) -> tuple[str, str]:
    key, sep, text = value.partition("=")
    key = key.strip()
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{value!r} is not KEY=VALUE")
    if key in _RESERVED:
        raise argparse.ArgumentTypeError(f"{key} is set by otelbridge itself")
    return key, text


def _tracestate(value: str) -> str:
    state, reason = parse_tracestate(value)
    if reason is not None:
        raise argparse.ArgumentTypeError(f"not a valid W3C tracestate ({reason})")
    return state


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds")
    return seconds


def _verbose(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: without -v here, the parent parser's count stands
    p.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS)


def _carrier_flag(p: argparse.ArgumentParser, help_text: str = _CARRIER_HELP) -> None:
    p.add_argument("--carrier", type=Path, metavar="FILE", help=help_text)


def _exporting(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--exporter",
        help="span exporters, comma-separated: otlp, console, jsonl, none "
        "(default: $OTEL_TRACES_EXPORTER or otlp)",
    )
    p.add_argument(
        "--jsonl-path", default=None, help="file for the jsonl exporter (default: stdout)"
    )
    p.add_argument(
        "--timeout",
        type=_seconds,
        default=DELIVERY_TIMEOUT_S,
        metavar="SECONDS",
        help=f"wait at most this long for the span's delivery (default {DELIVERY_TIMEOUT_S:g})",
    )


def _attrs(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--attr",
        type=_attr,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an attribute of the rollout span (repeatable)",
    )


def configure(parser: argparse.ArgumentParser) -> None:
    """Adds this command's flags to ``parser`` (the command line's subcommand)."""
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="rollout_command", required=True, metavar="SUBCOMMAND")

    start = sub.add_parser(
        "start",
        help="begin a rollout: print TRACEPARENT=... for eval, write the carrier",
        description="Begins a rollout (a new trace): prints TRACEPARENT=... (and "
        'TRACESTATE=...) for `eval "$(otelbridge rollout start --name NAME)"`, and writes '
        "the carrier that `rollout end` and `rollout annotate` read.",
    )
    start.add_argument("--name", required=True, help="the rollout's name (otelbridge.rollout.name)")
    _attrs(start)
    _carrier_flag(start)
    start.add_argument("--tracestate", type=_tracestate, default="", help="a W3C tracestate")
    start.add_argument(
        "--force", action="store_true", help="replace a carrier of a rollout still open"
    )
    _verbose(start)

    end = sub.add_parser(
        "end",
        help="end the rollout: export its span (carrier's start -> now), remove the carrier",
    )
    _carrier_flag(end)
    end.add_argument("--status", choices=("ok", "error"), help="the span's status (default unset)")
    end.add_argument("--message", help="why it failed (with --status error)")
    _attrs(end)
    _exporting(end)
    _verbose(end)

    run = sub.add_parser(
        "exec",
        help="run a command inside a rollout span; its exit code passes through",
        description="Runs CMD inside a new rollout span: TRACEPARENT/TRACESTATE in its "
        "environment, {{traceparent}}, {{tracestate}} and {{trace_id}} substituted in its "
        "arguments, its exit code passed through and recorded.",
    )
    run.add_argument("--name", help="the rollout's name (default: CMD's file name)")
    _attrs(run)
    _carrier_flag(
        run,
        "also write the rollout's carrier to FILE, marked ended when CMD ends "
        "(for `otelbridge gate --carrier FILE`)",
    )
    run.add_argument("--tracestate", type=_tracestate, default="", help="a W3C tracestate")
    run.add_argument(
        "--force", action="store_true", help="replace a carrier of a rollout still open"
    )
    _exporting(run)
    _verbose(run)
    # not "command": the top-level parser keeps the command's name there
    run.add_argument(
        "argv",
        nargs=argparse.REMAINDER,
        metavar="-- CMD ARGS...",
        help="the command to run and its arguments, after --",
    )

    annotate = sub.add_parser(
        "annotate",
        help="print the pod-template patch carrying the traceparent (kubectl patch, kustomize)",
        description="Prints the patch of a workload's pod template annotations with the "
        "rollout's traceparent: --carrier FILE, else $TRACEPARENT (inside `rollout exec`), "
        "else the default carrier.",
    )
    _carrier_flag(annotate)
    annotate.add_argument("--format", choices=("json", "yaml"), default="json")
    annotate.add_argument(
        "--resource",
        type=_resource,
        metavar="KIND/NAME",
        help="name the object (deployment/web): a complete patch file for kustomize",
    )
    _verbose(annotate)


def _resource(value: str) -> tuple[str, str, str]:
    try:
        return parse_resource(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(
    args: argparse.Namespace,
    *,
    environ: Mapping[str, str] | None = None,
    clock: Clock | None = None,
) -> int:
    """Runs the command; returns its exit code. ``environ`` (default ``os.environ``)
    and ``clock`` (default the system's) are for tests. Every failure is printed as one
    line on stderr, never a traceback."""
    env = os.environ if environ is None else environ
    now = clock or SystemClock()
    command = args.rollout_command
    try:
        return _COMMANDS[command](args, env, now)
    except _Usage as exc:
        _say(command, str(exc))
        return EXIT_USAGE
    except ConfigError as exc:
        _say(command, "; ".join(exc.problems))
        return EXIT_USAGE
    except OtelbridgeError as exc:
        _say(command, str(exc))
        return EXIT_FAILED


def _say(command: str, text: str) -> None:
    print(f"otelbridge rollout {command}: {text}", file=sys.stderr, flush=True)


def _carrier_path(args: argparse.Namespace, environ: Mapping[str, str]) -> Path:
    path: Path | None = args.carrier
    return path if path is not None else default_carrier_path(environ)


def _start(args: argparse.Namespace, environ: Mapping[str, str], clock: Clock) -> int:
    if not args.name.strip():
        raise _Usage("--name is empty")
    path = _carrier_path(args, environ)
    carrier = Carrier(new_context(args.tracestate), args.name, clock.now_ns(), dict(args.attr))
    write_carrier(path, carrier, force=args.force)
    print("\n".join(env_lines(carrier.context)), flush=True)
    print(
        f"otelbridge rollout: {args.name!r} started, trace {carrier.context.trace_id_hex}, "
        f"carrier {path}",
        file=sys.stderr,
    )
    return EXIT_OK


def _end(args: argparse.Namespace, environ: Mapping[str, str], clock: Clock) -> int:
    if args.message is not None and args.status != "error":
        raise _Usage("--message goes with --status error")
    path = _carrier_path(args, environ)
    carrier = read_carrier(path)
    if not carrier.open:
        raise StateError(f"the rollout {carrier.name!r} in {path} has already ended")
    sender = SpanSender.from_args(args, environ)
    end_ns = clock.now_ns()
    error = (args.message or "the rollout failed") if args.status == "error" else None
    span = rollout_span(carrier, end_ns, extra=args.attr, ok=args.status == "ok", error=error)
    problem = sender.send([span], args.timeout)
    if problem is not None:
        raise ExportError(
            f"the rollout span was not delivered: {problem}; {path} is kept, "
            "run `otelbridge rollout end` again"
        )
    path.unlink(missing_ok=True)
    seconds = (span.end_time_unix_nano - span.start_time_unix_nano) / 1e9
    print(
        f"otelbridge rollout: {carrier.name!r} ended after {seconds:.1f} s, "
        f"trace {carrier.context.trace_id_hex}",
        file=sys.stderr,
    )
    return EXIT_OK


def _exec(args: argparse.Namespace, environ: Mapping[str, str], clock: Clock) -> int:
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise _Usage("no command: otelbridge rollout exec [--name NAME] -- CMD ARGS...")
    name = args.name if args.name is not None else os.path.basename(argv[0]) or argv[0]
    if not name.strip():
        raise _Usage("--name is empty")
    ctx = new_context(args.tracestate)
    relay = Relay()  # before the exporters' threads exist: they inherit the block
    relay.hold()
    try:
        sender = SpanSender.from_args(args, environ)
        carrier = Carrier(ctx, name, clock.now_ns(), dict(args.attr))
        if args.carrier is not None:
            write_carrier(args.carrier, carrier, force=args.force)
        _log.info("rollout %r: TRACEPARENT=%s", name, ctx.to_traceparent())
        command = substitute(argv, ctx)
        finished = run_command(command, child_environ(environ, ctx), relay=relay)
        carrier = replace(carrier, end_ns=clock.now_ns())
        if finished.error is not None:
            _say("exec", finished.describe(command[0]) or "")
        extra: list[tuple[str, AttrValue]] = [
            (semconv.PROCESS_COMMAND, command[0]),
            (semconv.PROCESS_EXIT_CODE, finished.exit_code),
        ]
        span = rollout_span(
            carrier, carrier.end_ns or 0, extra=extra, error=finished.describe(command[0])
        )
        try:
            relay.release(_interrupt)
            problem = sender.send([span], args.timeout)
            relay.release(signal.SIG_IGN)  # sent: nothing left to interrupt
        except _Interrupted as exc:
            relay.restore()  # a further signal acts as it would without otelbridge's relay
            problem = f"interrupted by {signal.Signals(exc.args[0]).name}"
        if args.carrier is not None:
            _mark_ended(args.carrier, carrier)
    finally:
        relay.restore()
    if problem is not None:
        _say("exec", f"warning: the rollout span was not delivered: {problem}")
    return finished.exit_code


def _mark_ended(path: Path, carrier: Carrier) -> None:
    try:
        write_carrier(path, carrier, force=True)
    except StateError as exc:
        _say("exec", f"warning: {exc}")


def _annotate(args: argparse.Namespace, environ: Mapping[str, str], _clock: Clock) -> int:
    ctx = _annotated_context(args, environ)
    patch = pod_template_patch(ctx, args.resource)
    print(json.dumps(patch) if args.format == "json" else to_yaml(patch), flush=True)
    return EXIT_OK


def _annotated_context(args: argparse.Namespace, environ: Mapping[str, str]) -> TraceContext:
    """--carrier, else $TRACEPARENT (the rollout this runs in), else the default carrier."""
    if args.carrier is None and ENV_TRACEPARENT in environ:
        parsed = parse_traceparent(environ[ENV_TRACEPARENT])
        if isinstance(parsed, Invalid):
            raise StateError(
                f"${ENV_TRACEPARENT} is not a valid traceparent ({parsed.reason}); "
                "name the rollout with --carrier"
            )
        state, _ = parse_tracestate(environ.get(ENV_TRACESTATE, ""))
        return replace(parsed, trace_state=state)
    return read_carrier(_carrier_path(args, environ)).context


_COMMANDS: Final[dict[str, Callable[[argparse.Namespace, Mapping[str, str], Clock], int]]] = {
    "start": _start,
    "end": _end,
    "exec": _exec,
    "annotate": _annotate,
}
