"""`otelbridge processor`: the collector-side service, as a command.

Exit codes: 0 stopped by SIGTERM or SIGINT; 1 the state directory cannot be used or an
address cannot be listened on (one line saying which); 2 bad flags or configuration
(every problem, one a line).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from otelbridge.core.config import Config, load_config
from otelbridge.core.counters import Counters
from otelbridge.core.errors import ConfigError, StateError
from otelbridge.httpd import CannotListen, parse_addr

_log = logging.getLogger("otelbridge.processor")

DEFAULT_OTLP_GRPC_ADDR = "127.0.0.1:4317"
DEFAULT_HTTP_ADDR = "127.0.0.1:9465"
DEFAULT_STATE_DIR = "/var/lib/otelbridge/processor"
ENV_STATE_DIR = "OTELBRIDGE_STATE_DIR"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def configure(parser: argparse.ArgumentParser) -> None:
    """Adds this command's flags to ``parser`` (the command line's subcommand)."""
    parser.description = (
        "Receives OTLP traces (gRPC and HTTP), keeps per rollout (trace ID) and per namespace "
        "the startups and their SLA durations in mergeable sketches, and answers "
        "GET /v1/rollouts/{trace_id}, /v1/namespaces/{ns}, a Flagger webhook (POST "
        "/v1/flagger) and /metrics. Exit codes: 0 stopped by a signal, 1 the state "
        "directory or an address cannot be used, 2 bad flags or configuration."
    )
    parser.add_argument(
        "--otlp-grpc-addr",
        default=DEFAULT_OTLP_GRPC_ADDR,
        metavar="HOST:PORT",
        help=f"OTLP/gRPC receiver (default {DEFAULT_OTLP_GRPC_ADDR}, loopback only)",
    )
    parser.add_argument(
        "--http-addr",
        default=DEFAULT_HTTP_ADDR,
        metavar="HOST:PORT",
        help=f"OTLP/HTTP (POST /v1/traces) and the API (default {DEFAULT_HTTP_ADDR})",
    )
    parser.add_argument(
        "--state-dir",
        help=f"where the rollouts' aggregates are kept (default: ${ENV_STATE_DIR}/processor, "
        f"else {DEFAULT_STATE_DIR}; empty: memory only, lost on restart)",
    )
    parser.add_argument(
        "--config", "-c", type=Path, help="TOML config file: [sla], [gate], [processor]"
    )
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        help="bearer token (read once) required on both receivers and the API, "
        "except /healthz and /readyz",
    )
    parser.add_argument("--tls-cert", metavar="FILE", help="PEM certificate (chain) to serve")
    parser.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")


def state_dir(flag: str | None) -> str:
    """--state-dir, else ``$OTELBRIDGE_STATE_DIR/processor``, else the default; "" keeps
    nothing on disk."""
    if flag is not None:
        return flag
    base = os.environ.get(ENV_STATE_DIR)
    return os.path.join(base, "processor") if base else DEFAULT_STATE_DIR


def _token(path: str | None, problems: list[str]) -> str | None:
    if path is None:
        return None
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"--token-file {path}: cannot read ({getattr(exc, 'strerror', exc)})")
        return None
    if not token or any(c.isspace() for c in token) or not token.isprintable():
        problems.append(f"--token-file {path}: expected one token (printable, no spaces)")
        return None
    return token


def _checked(args: argparse.Namespace) -> tuple[Config, str | None]:
    """The config and the token; ConfigError with every problem of the flags and file."""
    from otelbridge.processor.server import Tls  # noqa: PLC0415 - grpc only when running

    problems: list[str] = []
    config = Config()
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        problems += exc.problems
    for flag, value, example in (
        ("--otlp-grpc-addr", args.otlp_grpc_addr, DEFAULT_OTLP_GRPC_ADDR),
        ("--http-addr", args.http_addr, DEFAULT_HTTP_ADDR),
    ):
        try:
            parse_addr(value, what=flag, example=example)
        except ConfigError as exc:
            problems += exc.problems
    token = _token(args.token_file, problems)
    if (args.tls_cert is None) != (args.tls_key is None):
        problems.append("--tls-cert and --tls-key go together")
    elif args.tls_cert is not None:
        try:
            Tls(args.tls_cert, args.tls_key).load()
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        raise ConfigError(problems)
    return config, token


def main(args: argparse.Namespace) -> int:
    """Runs the processor until SIGTERM or SIGINT; returns the exit code."""
    try:
        config, token = _checked(args)
    except ConfigError as exc:
        print(f"otelbridge processor: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from otelbridge.core import semconv  # noqa: PLC0415
    from otelbridge.processor.aggregate import Aggregator  # noqa: PLC0415
    from otelbridge.processor.server import ProcessorServer, Tls  # noqa: PLC0415
    from otelbridge.processor.store import RolloutStore  # noqa: PLC0415

    counters = Counters(semconv.PROCESSOR_COUNTERS)
    directory = state_dir(args.state_dir)
    try:
        store = RolloutStore(Path(directory), counters) if directory else None
        aggregator = Aggregator(config, counters, store=store)
    except StateError as exc:
        print(f"otelbridge processor: {' '.join(str(exc).splitlines())}", file=sys.stderr)
        return EXIT_FAILED
    try:
        server = ProcessorServer(
            aggregator,
            config,
            counters,
            otlp_grpc_addr=args.otlp_grpc_addr,
            http_addr=args.http_addr,
            token=token,
            tls=Tls(args.tls_cert, args.tls_key) if args.tls_cert else None,
        )
    except CannotListen as exc:
        aggregator.close()
        print(f"otelbridge processor: {'; '.join(exc.problems)}", file=sys.stderr)
        return EXIT_FAILED
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        _log.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    grpc_host = args.otlp_grpc_addr.rpartition(":")[0]
    _log.warning(
        "OTLP/gRPC on %s:%d; OTLP/HTTP and the API on %s/; %s",
        grpc_host,
        server.grpc_port,
        server.http_url,
        f"state in {directory}" if directory else "memory only (--state-dir '')",
    )
    while not stop.wait(0.5):
        pass
    server.shutdown()
    aggregator.close()
    _log.warning("stopped; counters: %s", counters.nonzero())
    return EXIT_OK
