"""`otelbridge validate` as a command."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    """Adds this command's flags to ``parser`` (the command line's subcommand)."""
    parser.add_argument("-v", "--verbose", action="count", default=0)


def main(args: argparse.Namespace) -> int:
    """Runs the command; returns its exit code."""
    raise NotImplementedError("validate: not built yet")
