"""`otelbridge validate` as a command: the contract, checked before the rollout.

::

    otelbridge validate PATH... [--config FILE] [--namespace NS] [--json]
    otelbridge validate --address SOCK --namespace NS [--namespace NS2 ...] [--json]

PATHs are OCI bundles, config.json files, Kubernetes manifests or directories of them, or
``-`` for manifests on standard input (:mod:`otelbridge.validate.inputs`). With
``--address`` (or ``--namespace`` and no PATH: ``$CONTAINERD_ADDRESS``, else
``source.address`` of the config, else the default socket) the live containers of each
namespace are checked through the read-only client (:mod:`otelbridge.validate.live`).
With PATHs, ``--namespace`` (at most one) is the namespace of bundles and of manifest
objects that name none: the one ``[validate] require_trace_context`` is matched against.

The checks and their codes: :mod:`otelbridge.validate.codes`, docs/validate.md. The rules
come from the config file (``[enrich]`` keys and limits, ``[readiness] label``,
``[validate]``), so the validator judges with the bridge's own settings.

Output: the readable report on standard output, or ``--json``
(:func:`otelbridge.validate.report.render_json`); inputs that cannot be read are also
named on standard error. Exit codes: 0 no error found, 1 errors found, 2 an input could
not be read (or bad usage, a bad config file).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from otelbridge.core.config import Config, load_config
from otelbridge.core.text import escape_controls
from otelbridge.validate.contract import Rules
from otelbridge.validate.inputs import validate_path
from otelbridge.validate.report import (
    EXIT_UNREADABLE,
    TargetResult,
    exit_code,
    render_json,
    render_text,
)

__all__ = ["configure", "main", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    """Adds this command's flags to ``parser`` (the command line's subcommand)."""
    parser.description = (
        "Checks OCI bundles, Kubernetes manifests or the live containers of a namespace "
        "against the container execution contract (docs/validate.md): the runtime-spec "
        "rules, the trace context, the readiness target and probes, the tenant limits. "
        "Exit code: 0 no error, 1 errors found, 2 an input could not be read."
    )
    parser.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="an OCI bundle directory, a config.json, a Kubernetes manifest (YAML or JSON), "
        "a directory of manifests, or - for manifests on standard input",
    )
    parser.add_argument(
        "--config",
        "-c",
        type=Path,
        metavar="FILE",
        help="TOML config file (the bridge's: its rules apply)",
    )
    parser.add_argument(
        "--address",
        "-a",
        metavar="SOCK",
        help="check the live containers of --namespace at this containerd socket",
    )
    parser.add_argument(
        "--namespace",
        "-n",
        metavar="NS",
        action="append",
        default=[],
        help="live: a containerd namespace to check (repeatable); with PATHs: the namespace "
        "of bundles and of manifest objects that name none (default: default)",
    )
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    parser.add_argument("-v", "--verbose", action="count", default=0)


def _live(address: str, namespaces: list[str], cfg: Config, rules: Rules) -> list[TargetResult]:
    # imported here: grpc is loaded only when containerd is asked
    from otelbridge.containerd.client import ContainerdClient  # noqa: PLC0415
    from otelbridge.validate.live import validate_live  # noqa: PLC0415

    env_keys = tuple(name for pair in rules.env_keys for name in pair)
    with ContainerdClient(
        address, timeout_s=cfg.source.connect_timeout_s, env_keys=env_keys
    ) as client:
        results = validate_live(client, namespaces, rules, address=address)
    if any(r.error is not None and not r.target.endswith("/") for r in results):
        return results  # containerd did not answer: nothing is known of any namespace
    empty = [ns for ns in namespaces if not any(r.target.startswith(f"{ns}/") for r in results)]
    for namespace in empty:
        print(
            f"otelbridge validate: namespace {namespace!r} has no containers",
            file=sys.stderr,
        )
    return results


def run(args: argparse.Namespace) -> tuple[int, list[TargetResult]]:
    """The command without its output: (exit code, targets); 2 and no targets on bad
    usage (said on standard error)."""
    cfg = load_config(args.config).checked()
    rules = Rules.from_config(cfg)
    namespaces: list[str] = args.namespace
    live = args.address is not None or (not args.paths and namespaces)
    if not args.paths and not live:
        print("otelbridge validate: give PATHs, or --address and --namespace", file=sys.stderr)
        return EXIT_UNREADABLE, []
    if live and not namespaces:
        print("otelbridge validate: --address needs --namespace NS", file=sys.stderr)
        return EXIT_UNREADABLE, []
    if args.paths and len(namespaces) > 1:
        print("otelbridge validate: with PATHs, --namespace names one namespace", file=sys.stderr)
        return EXIT_UNREADABLE, []
    results: list[TargetResult] = []
    namespace = namespaces[0] if namespaces else None
    for arg in args.paths:
        results += validate_path(arg, rules, namespace=namespace)
    if live:
        address = args.address or os.environ.get("CONTAINERD_ADDRESS") or cfg.source.address
        results += _live(address, namespaces, cfg, rules)
    return exit_code(results), results


def main(args: argparse.Namespace) -> int:
    """Runs the command; returns its exit code (a bad config file raises ConfigError,
    which the command line turns into exit 2)."""
    code, results = run(args)
    if not results and code == EXIT_UNREADABLE:
        return code  # bad usage, said on standard error (a namespace with no containers: 0)
    for result in results:
        if result.error is not None:
            line = escape_controls(f"{result.target}: {result.error}")[0]
            print(f"otelbridge validate: {line}", file=sys.stderr)
    sys.stdout.write(render_json(results) if args.json else render_text(results))
    return code
