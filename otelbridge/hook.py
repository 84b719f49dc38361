"""`otelbridge hook`: the runtime-side recorder of runtime-internal phases, and its install.

* ``otelbridge hook install --spool DIR``: compiles the recorder (a small static C runc
  wrapper, :mod:`otelbridge.runtime.install`) for the spool ``DIR`` and prints its path;
* ``otelbridge hook print-config --spool DIR --format cri|ctr``: installs it the same way
  and prints what makes containerd use it: for ``cri``, the TOML to merge into
  containerd's config (the CRI runtime handler's ``BinaryName``); for ``ctr``, comment
  lines and, as the last line, the extra ``ctr run`` arguments as shell words.

The bridge reads the spool with ``otelbridge run --hook-spool DIR`` (``[runtime]
hook_spool``). Exit codes: 0 done; 1 the recorder could not be built (no compiler, the
compile failed); 2 bad usage (a relative path, a runc that is not there).
"""

from __future__ import annotations

import argparse
import sys

from otelbridge.core.errors import ConfigError, EnvironmentProblem
from otelbridge.runtime import install as recorder

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _install_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--spool",
        required=True,
        metavar="DIR",
        help="directory the recorder writes and `otelbridge run --hook-spool DIR` reads "
        "(absolute; created, mode 0700)",
    )
    p.add_argument(
        "--runc", metavar="PATH", help="the real runc the recorder runs (default: runc on PATH)"
    )
    p.add_argument(
        "--install-dir",
        metavar="DIR",
        default=recorder.DEFAULT_INSTALL_DIR,
        help=f"where the recorder binary goes (default: {recorder.DEFAULT_INSTALL_DIR})",
    )
    p.add_argument("-v", "--verbose", action="count", default=0)


def configure(parser: argparse.ArgumentParser) -> None:
    """Adds this command's flags to ``parser`` (the command line's subcommand)."""
    parser.description = (
        "Install the runtime-side recorder of runtime-internal phases (docs/runtime.md)."
    )
    sub = parser.add_subparsers(dest="hook_command", required=True, metavar="SUBCOMMAND")
    inst = sub.add_parser("install", help="compile the recorder for a spool; print its path")
    _install_flags(inst)
    show = sub.add_parser(
        "print-config",
        help="install the recorder and print the containerd (cri) or ctr run (ctr) settings",
    )
    _install_flags(show)
    show.add_argument(
        "--format",
        required=True,
        choices=("cri", "ctr"),
        help="cri: TOML for containerd's config; ctr: `ctr run` arguments (last line)",
    )
    show.add_argument(
        "--runtime",
        default="runc",
        metavar="HANDLER",
        help="--format cri: the CRI runtime handler to configure (default: runc)",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0)


def main(args: argparse.Namespace) -> int:
    """Runs the command; returns its exit code."""
    try:
        installed = recorder.install(args.spool, runc=args.runc, install_dir=args.install_dir)
    except ConfigError as exc:
        print(f"otelbridge hook: {'; '.join(exc.problems)}", file=sys.stderr)
        return EXIT_USAGE
    except EnvironmentProblem as exc:
        print(f"otelbridge hook: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if installed.compiled:
        how = "static" if installed.static else "dynamically linked (no static libc found)"
        print(f"otelbridge hook: compiled {installed.binary} ({how})", file=sys.stderr)
    if args.hook_command == "install":
        print(installed.binary)
        return EXIT_OK
    try:
        if args.format == "cri":
            text = recorder.cri_config(installed, args.runtime)
        else:
            text = recorder.ctr_config(installed)
    except ConfigError as exc:
        print(f"otelbridge hook: {'; '.join(exc.problems)}", file=sys.stderr)
        return EXIT_USAGE
    sys.stdout.write(text)
    return EXIT_OK
