"""The ``otelbridge`` command line: commands and exit codes, nothing else.

Exit codes: 0 success; 1 the command failed at run time; 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from otelbridge import __version__
from otelbridge.app import build_live_bridge, build_replay
from otelbridge.core import semconv
from otelbridge.core.config import Config, load_config
from otelbridge.core.counters import Counters
from otelbridge.core.errors import ConfigError, DecodeError, EnvironmentProblem, OtelbridgeError
from otelbridge.core.logutil import LOG_FORMATS, JsonFormatter
from otelbridge.source.recording import Recording, bounded_lines, open_items, open_text
from otelbridge.status import DEFAULT_HTTP_ADDR, StatusServer

_log = logging.getLogger("otelbridge")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _common(p: argparse.ArgumentParser, *, address: bool = True) -> None:
    if address:
        p.add_argument(
            "--address",
            "-a",
            help="containerd socket (default: $CONTAINERD_ADDRESS or "
            "/run/containerd/containerd.sock)",
        )
    p.add_argument("--config", "-c", type=Path, help="TOML config file (examples/otelbridge.toml)")
    p.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        help="follow only this containerd namespace (repeatable; default: all)",
    )
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")


def _exporting(p: argparse.ArgumentParser, default: str = "$OTEL_TRACES_EXPORTER or otlp") -> None:
    p.add_argument(
        "--exporter",
        help=f"span exporters, comma-separated: otlp, console, jsonl, none (default: {default})",
    )
    p.add_argument(
        "--jsonl-path", default=None, help="file for the jsonl exporter (default: stdout)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otelbridge",
        description="containerd events -> OpenTelemetry container-startup traces",
    )
    parser.add_argument("--version", action="version", version=f"otelbridge {__version__}")
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help="text (default) or json: one JSON object per line (else $OTELBRIDGE_LOG_FORMAT)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="the node daemon: containerd events -> spans -> OTLP")
    _common(run)
    _exporting(run)
    run.add_argument(
        "--http-addr",
        help="status API address, HOST:PORT (default: $OTELBRIDGE_HTTP_ADDR or "
        "127.0.0.1:9464, loopback only; empty: no status API)",
    )
    run.add_argument(
        "--state-dir",
        help="where spans waiting for the collector and the checkpoint are kept "
        "(default: $OTELBRIDGE_STATE_DIR or /var/lib/otelbridge; empty: memory only)",
    )
    run.add_argument(
        "--record",
        metavar="FILE",
        help="also record what this bridge processes (events, container records, readiness "
        "verdicts): `otelbridge replay FILE` then gives this run's spans exactly",
    )
    run.add_argument(
        "--hook-spool",
        metavar="DIR",
        help="read the runtime-side recorder's spool (`otelbridge hook`): runtime-internal "
        "spans under shim.launch and task.start (default: [runtime] hook_spool; empty: off)",
    )

    rec = sub.add_parser("record", help="record containerd's raw event stream to a file")
    _common(rec)
    rec.add_argument("--output", "-o", required=True, help="file to write (- for stdout)")
    rec.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds")
    rec.add_argument("--count", type=int, default=0, help="stop after this many events")

    rep = sub.add_parser(
        "replay", help="replay a recording (or `ctr events` output) through the pipeline"
    )
    _common(rep, address=False)
    _exporting(rep)
    rep.add_argument("file", help="recording or `ctr events` output (- for stdin)")

    demo = sub.add_parser(
        "demo", help="self-contained showcase on a private containerd, with a terminal waterfall"
    )
    demo.add_argument("--containers", type=int, default=6, help="containers in the rollout")
    demo.add_argument(
        "--no-install",
        action="store_true",
        help="do not install missing packages (containerd, runc, umoci, busybox-static); "
        "by default they are installed with apt when running as root",
    )
    demo.add_argument("--no-color", action="store_true", help="plain text output")
    demo.add_argument("-v", "--verbose", action="count", default=0)
    _exporting(demo, default="none: the waterfall only")

    sla = sub.add_parser(
        "sla",
        help="the SLA report: verdicts per namespace as a table, JSON or an HTML page",
        description="Judges the startup SLA per namespace (docs/sla.md). Exit code: 0 every "
        "namespace passes, 1 a namespace breaches (or the source cannot be read), 2 bad "
        "usage or not enough data to judge a namespace.",
    )
    _common(sla, address=False)
    source = sla.add_mutually_exclusive_group()
    source.add_argument(
        "--from",
        dest="from_url",
        metavar="URL",
        help="a running bridge's status API: http://HOST:PORT[/v1/sla] or HOST:PORT "
        "(default: http://$OTELBRIDGE_HTTP_ADDR/v1/sla, else http://127.0.0.1:9464/v1/sla); "
        "its own budgets and rolling window apply",
    )
    source.add_argument(
        "--spans",
        metavar="FILE",
        help="a jsonl span file (otelbridge run --exporter jsonl --jsonl-path FILE; - for "
        "stdin), judged over all its spans with the budgets of --config",
    )
    sla.add_argument(
        "--html",
        nargs="?",
        const=True,
        metavar="OUT",
        help="also write a self-contained HTML report: to OUT, or to --output, else "
        "otelbridge-sla.html",
    )
    sla.add_argument("--output", "-o", metavar="FILE", help="where --html writes the report")
    sla.add_argument(
        "--trace-url",
        metavar="TEMPLATE",
        help="link trace IDs in the HTML report to Jaeger, Tempo or Grafana: a URL with "
        "{trace_id}, e.g. http://localhost:16686/trace/{trace_id} "
        "(default: $OTELBRIDGE_TRACE_URL; none: IDs only)",
    )
    sla.add_argument(
        "--json", action="store_true", help="print the verdict JSON (/v1/sla's shape) instead"
    )
    for name, help_text, module in (
        ("rollout", "the provisioning span of a rollout: start, end, exec, annotate", "rollout"),
        (
            "processor",
            "the collector-side service: OTLP in, a verdict per rollout out",
            "processor.command",
        ),
        (
            "gate",
            "pass (0), halt (1) or insufficient (2) for a rollout, from the processors",
            "gate",
        ),
        (
            "validate",
            "check bundles, manifests or live containers against the contract, before rollout",
            "validate.command",
        ),
        ("hook", "the runtime-side recorder of runtime-internal phases", "hook"),
    ):
        command = sub.add_parser(name, help=help_text)
        _command_module(module).configure(command)
    return parser


def _command_module(name: str) -> Any:
    """A command that lives in its own module (imported when the parser is built; the
    modules import their heavy dependencies lazily)."""
    return importlib.import_module(f"otelbridge.{name}")


#: commands that run for long: what they do is said at INFO by default (-v: debug)
_DAEMONS = frozenset({"run", "record", "processor"})


def _setup_logging(verbosity: int, command: str, log_format: str | None) -> None:
    """Warnings by default (INFO for the long-running commands); ``-v`` one level more,
    ``-vv`` debug. ``--log-format json`` (or ``OTELBRIDGE_LOG_FORMAT=json``): one JSON
    object per line."""
    levels = [logging.WARNING, logging.INFO, logging.DEBUG]
    start = 1 if command in _DAEMONS else 0
    level = levels[min(start + max(verbosity, 0), len(levels) - 1)]
    handler = logging.StreamHandler(sys.stderr)
    chosen = log_format or os.environ.get("OTELBRIDGE_LOG_FORMAT", "").strip() or "text"
    if chosen == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    # the HPACK library of the event connection logs every header it decodes at DEBUG
    logging.getLogger("hpack").setLevel(max(level, logging.INFO))


def _config(args: argparse.Namespace) -> Config:
    cfg = load_config(args.config)
    source = cfg.source
    if "address" in vars(args):
        # --address, then $CONTAINERD_ADDRESS, then the config file, then the default
        address = args.address or os.environ.get("CONTAINERD_ADDRESS") or source.address
        source = dataclasses.replace(source, address=address)
    if args.namespace:
        source = dataclasses.replace(source, namespaces=tuple(args.namespace))
    state = cfg.state
    if "state_dir" in vars(args):
        # --state-dir, then $OTELBRIDGE_STATE_DIR, then the config file, then the default
        flag = args.state_dir
        state_dir = flag if flag is not None else os.environ.get("OTELBRIDGE_STATE_DIR")
        if state_dir is not None:
            state = dataclasses.replace(state, dir=state_dir)
    runtime = cfg.runtime
    if getattr(args, "hook_spool", None) is not None:  # --hook-spool, then the config file
        runtime = dataclasses.replace(runtime, hook_spool=args.hook_spool)
    return dataclasses.replace(cfg, source=source, state=state, runtime=runtime).checked()


def _on_signals(*events: threading.Event) -> None:
    """SIGTERM and SIGINT set each of ``events``."""

    def handler(signum: int, _frame: object) -> None:
        _log.info("received %s, shutting down", signal.Signals(signum).name)
        for event in events:
            event.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _wait(stop: threading.Event, failed: threading.Event, duration_s: float = 0.0) -> None:
    """Until a signal (``stop``), a failure, or ``duration_s`` (0: no limit). Sleeps on
    ``failed`` (signals set it too, see :func:`_on_signals`): the main thread does not
    poll; the 5 s bound is a safety net only."""
    deadline = time.monotonic() + duration_s if duration_s else None
    while not stop.is_set() and not failed.is_set():
        left = 5.0 if deadline is None else deadline - time.monotonic()
        if left <= 0:
            return
        failed.wait(min(left, 5.0))


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _config(args)
    bridge = build_live_bridge(
        cfg,
        exporter=args.exporter,
        jsonl_path=args.jsonl_path,
        record_verdicts=bool(args.record),
    )
    recording = None
    if args.record:
        try:
            recording = open(args.record, "w", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            print(f"otelbridge run: cannot write {args.record}: {exc.strerror}", file=sys.stderr)
            return EXIT_FAILED
        bridge.record_to(recording, address=cfg.source.address)
    _log.info(
        "otelbridge %s following containerd at %s (namespaces: %s)",
        __version__,
        cfg.source.address,
        ", ".join(cfg.source.namespaces) or "all",
    )
    if bridge.store is not None:
        _log.info("state kept in %s", bridge.store.path)
    http_addr = args.http_addr
    if http_addr is None:
        http_addr = os.environ.get("OTELBRIDGE_HTTP_ADDR", DEFAULT_HTTP_ADDR)
    status = None
    if http_addr:
        status = StatusServer(
            http_addr,
            bridge.counters,
            health=bridge.health,
            readiness=bridge.readiness,
            sla=bridge.pipeline.sla.snapshot,
            routes={"/metrics": bridge.metrics.prometheus_route} if bridge.metrics else None,
        )
        host, port = status.address[:2]
        _log.info(
            "status API on http://%s:%s/ (/healthz, /readyz, /v1/counters, /v1/sla, /metrics)",
            host,
            port,
        )
        status.start()
    stop = threading.Event()
    _on_signals(stop, bridge.pipeline.stopped)
    bridge.start()
    _wait(stop, bridge.pipeline.stopped)
    bridge.shutdown()
    if status is not None:
        status.shutdown()
    if recording is not None:
        recording.close()
    _log.info("stopped; counters: %s", json.dumps(bridge.counters.nonzero(), sort_keys=True))
    if bridge.pipeline.failed:
        print(f"otelbridge run: {bridge.pipeline.failure}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_record(args: argparse.Namespace) -> int:
    cfg = _config(args)
    # a bridge that exports nothing and keeps no state, whose event thread is recorded
    cfg = dataclasses.replace(cfg, state=dataclasses.replace(cfg.state, dir=""))
    try:
        out = sys.stdout if args.output == "-" else open(args.output, "w", encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        print(f"otelbridge record: cannot write {args.output}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILED
    bridge = build_live_bridge(cfg, exporter="none", metrics=False, record_verdicts=True)
    stop = bridge.pipeline.stopped  # the main thread sleeps on it (see _wait)
    try:
        recorder = bridge.record_to(
            out,
            address=cfg.source.address,
            max_events=args.count,
            on_limit=stop.set,
            on_error=lambda _: stop.set(),
        )
        _on_signals(stop)
        bridge.start()
        _wait(stop, bridge.pipeline.stopped, args.duration)
        bridge.shutdown(grace_s=1.0)
    finally:
        if out is not sys.stdout:
            out.close()
    print(
        f"recorded {recorder.events} events and {recorder.verdicts} readiness verdicts",
        file=sys.stderr,
    )
    if recorder.error is not None:
        print(f"otelbridge record: writing {args.output} failed: {recorder.error}", file=sys.stderr)
        return EXIT_FAILED
    if bridge.pipeline.failed or not bridge.pipeline.connected.is_set():
        why = bridge.pipeline.failure or bridge.source.problem or "no answer"
        print(
            f"otelbridge record: never connected to containerd at {cfg.source.address}: {why}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK


def cmd_replay(args: argparse.Namespace) -> int:
    cfg = _config(args)
    try:
        stream = open_text(args.file)
    except OSError as exc:
        print(f"otelbridge replay: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILED
    counters = Counters()
    recording = Recording()
    with stream:
        try:
            items = open_items(bounded_lines(stream), counters, recording)
        except DecodeError as exc:
            print(f"otelbridge replay: {args.file}: {exc}", file=sys.stderr)
            return EXIT_FAILED
        replay = build_replay(
            cfg,
            recording.lookup,
            counters=counters,
            exporter=args.exporter,
            jsonl_path=args.jsonl_path,
            recorded_verdicts=recording.verdicts,
        )
        recording.admit = replay.pipeline.enricher.admit
        if recording.kind == "ctr":
            print(
                "otelbridge replay: note: `ctr events` output holds no container records, so "
                "labels and rollout links (traceparent) are unknown: every startup is its own "
                "trace; `otelbridge record` keeps them",
                file=sys.stderr,
            )
        try:
            result = replay.run(items)
        except DecodeError as exc:
            print(f"otelbridge replay: {args.file}: {exc}", file=sys.stderr)
            return EXIT_FAILED
    stats = result.counters
    if not recording.readable:
        print(f"otelbridge replay: {args.file} holds no events", file=sys.stderr)
        return EXIT_FAILED
    startups = result.startups
    print(
        f"replayed {stats[semconv.EVENTS_RECEIVED.name]} events -> {startups} startups, "
        f"{stats[semconv.SPANS_EMITTED.name]} spans in {result.elapsed_s:.3f}s "
        f"({startups / result.cpu_s if result.cpu_s > 0 else 0:.0f} startups per CPU-second)",
        file=sys.stderr,
    )
    notable = (
        semconv.EVENTS_MALFORMED,
        semconv.EVENTS_UNKNOWN,
        semconv.STARTUPS_PARTIAL,
        semconv.TRACEPARENT_INVALID,
        semconv.SPANS_DROPPED,
        semconv.PIPELINE_ERRORS,
    )
    problems = [f"{m.name}={stats[m.name]}" for m in notable if stats[m.name]]
    if problems:
        print(f"  of note: {', '.join(problems)}", file=sys.stderr)
    if not result.delivered:
        print(
            f"otelbridge replay: {stats[semconv.SPANS_DROPPED.name]} spans could not be "
            "delivered (see the log above)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from otelbridge.demo.run import run_demo  # noqa: PLC0415 - only the demo needs it

    return run_demo(
        containers=args.containers,
        install=not args.no_install,
        color=not args.no_color and sys.stdout.isatty(),
        exporter=args.exporter,
        jsonl_path=args.jsonl_path,
    )


def _html_path(args: argparse.Namespace) -> str | None:
    """Where ``sla`` writes its HTML report: ``--html OUT``, ``--html -o FILE``, ``-o
    FILE.html`` alone, else ``otelbridge-sla.html`` for a bare ``--html``."""
    if isinstance(args.html, str):
        return args.html
    if args.html or args.output:
        return str(args.output or "otelbridge-sla.html")
    return None


def cmd_sla(args: argparse.Namespace) -> int:
    from otelbridge import report  # noqa: PLC0415 - matplotlib and friends only here

    cfg = _config(args)
    generated_at_ns = time.time_ns()
    html = _html_path(args)
    trace_url = args.trace_url or os.environ.get("OTELBRIDGE_TRACE_URL", "").strip() or None
    if trace_url is not None:
        report.check_trace_url(trace_url)
    if args.spans is not None:
        rep = report.read_span_file(
            args.spans,
            cfg.sla,
            generated_at_ns=generated_at_ns,
            namespaces=cfg.source.namespaces,
            rules=cfg,
        )
    else:
        if args.config is not None:
            print(
                "otelbridge sla: --config is not used with a bridge: its budgets apply",
                file=sys.stderr,
            )
        addr = os.environ.get("OTELBRIDGE_HTTP_ADDR") or DEFAULT_HTTP_ADDR
        rep = report.from_bridge(
            report.sla_url(args.from_url, addr),
            generated_at_ns=generated_at_ns,
            namespaces=cfg.source.namespaces,
            samples=bool(html),
        )
    # how many failed startups are too many is the rollout gate's rule, from this config
    rep = dataclasses.replace(rep, failed_max_ratio=cfg.gate.max_failed_ratio)
    if html:
        report.write_html(rep, html, trace_url=trace_url)
    if args.json:
        print(json.dumps(rep.verdict_json, indent=1))
    else:
        color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
        sys.stdout.write(report.render_table(rep, color=color))
    if html:
        print(f"wrote {html}", file=sys.stderr)
    # every namespace passes: 0; any breaches: 1; else (too little data somewhere, or no
    # namespace at all): 2, for a report never passes on too little data
    return {"pass": EXIT_OK, "breach": EXIT_FAILED}.get(rep.verdict, EXIT_USAGE)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "record": cmd_record,
    "replay": cmd_replay,
    "demo": cmd_demo,
    "sla": cmd_sla,
    "rollout": lambda args: _command_module("rollout").main(args),
    "processor": lambda args: _command_module("processor.command").main(args),
    "gate": lambda args: _command_module("gate").main(args),
    "validate": lambda args: _command_module("validate.command").main(args),
    "hook": lambda args: _command_module("hook").main(args),
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(getattr(args, "verbose", 0), args.command, args.log_format)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"otelbridge {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except EnvironmentProblem as exc:
        print(f"otelbridge {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OtelbridgeError as exc:
        print(f"otelbridge {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_FAILED
