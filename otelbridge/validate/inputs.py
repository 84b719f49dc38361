"""The inputs of `otelbridge validate`: what a PATH is, read into checked targets.

A PATH is, in this order:

* ``-``: Kubernetes manifests on standard input (``kustomize build | otelbridge validate -``);
* a directory holding ``config.json``: an OCI bundle (its root filesystem is looked for);
* another directory: the manifests directly in it (``*.yaml``, ``*.yml``, ``*.json``, not
  recursive), each its own target, like ``kubectl apply -f DIR``;
* a ``.yaml``/``.yml`` file: manifests;
* any other file: JSON if it parses as JSON (a Kubernetes object when it has a ``kind``
  and no ``ociVersion``, else an OCI runtime spec); a non-``.json`` file that is not JSON
  is read as YAML manifests.

An input that cannot be read (missing, unreadable, larger than 32 MiB, not UTF-8, not
JSON or YAML, a directory with nothing to check) is a target with ``error`` set, which
makes the command exit 2. Nothing here raises on any file content.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Final

from otelbridge.validate.contract import Rules
from otelbridge.validate.manifests import (
    DEFAULT_NAMESPACE,
    is_manifest_json,
    load_documents,
    validate_documents,
)
from otelbridge.validate.oci import validate_spec
from otelbridge.validate.report import Problem, TargetResult, Unreadable

__all__ = ["MANIFEST_SUFFIXES", "MAX_INPUT_BYTES", "read_text", "validate_path"]

#: Larger inputs are refused unread (a manifest or a config.json is kilobytes).
MAX_INPUT_BYTES: Final = 32 * 1024 * 1024
#: Files a directory of manifests is made of.
MANIFEST_SUFFIXES: Final = (".yaml", ".yml", ".json")


def read_text(path: Path) -> str:
    """The UTF-8 text of ``path`` (a leading BOM dropped); raises :class:`Unreadable`."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_INPUT_BYTES + 1)
    except OSError as exc:
        raise Unreadable(f"cannot read: {exc.strerror or exc}") from exc
    return _decode(data)


def _decode(data: bytes) -> str:
    if len(data) > MAX_INPUT_BYTES:
        raise Unreadable(f"larger than {MAX_INPUT_BYTES // (1024 * 1024)} MiB")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise Unreadable(f"not UTF-8 text (byte {exc.start})") from exc


def _manifests(text: str, rules: Rules, namespace: str | None) -> list[Problem]:
    return validate_documents(
        load_documents(text), rules=rules, namespace=namespace or DEFAULT_NAMESPACE
    )


def _file(path: Path, rules: Rules, namespace: str | None) -> list[Problem]:
    text = read_text(path)
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return _manifests(text, rules, namespace)
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:
        if suffix == ".json":
            raise Unreadable(f"not valid JSON: {exc}") from exc
        return _manifests(text, rules, namespace)
    if is_manifest_json(doc):
        return validate_documents([doc], rules=rules, namespace=namespace or DEFAULT_NAMESPACE)
    return validate_spec(doc, namespace=namespace or DEFAULT_NAMESPACE, rules=rules)


def _bundle(directory: Path, rules: Rules, namespace: str | None) -> list[Problem]:
    text = read_text(directory / "config.json")
    try:
        spec = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise Unreadable(f"config.json is not valid JSON: {exc}") from exc
    return validate_spec(
        spec, namespace=namespace or DEFAULT_NAMESPACE, rules=rules, bundle_dir=directory
    )


def _one(target: str, check: Callable[[], list[Problem]]) -> TargetResult:
    """``check()``'s problems as the target's, or its :class:`Unreadable` as its error."""
    try:
        problems = check()
    except Unreadable as exc:
        return TargetResult(target, error=str(exc))
    return TargetResult(target, problems)


def validate_path(arg: str, rules: Rules, *, namespace: str | None = None) -> list[TargetResult]:
    """The targets of one PATH argument (the module docstring), in a stable order.
    ``namespace``: the namespace of bundles, and of manifest objects that name none
    (default ``default``)."""
    if arg == "-":
        try:
            text = _decode(sys.stdin.buffer.read(MAX_INPUT_BYTES + 1))
        except (OSError, Unreadable) as exc:
            return [TargetResult("-", error=str(exc))]
        return [_one("-", lambda: _manifests(text, rules, namespace))]
    path = Path(arg)
    try:
        is_dir = path.is_dir()
        has_config = is_dir and (path / "config.json").is_file()
    except (OSError, ValueError) as exc:  # a NUL in the argument, a name too long
        return [TargetResult(arg, error=f"cannot read: {exc}")]
    if has_config:
        return [_one(arg, lambda: _bundle(path, rules, namespace))]
    if is_dir:
        try:
            files = sorted(
                p for p in path.iterdir() if p.suffix.lower() in MANIFEST_SUFFIXES and p.is_file()
            )
        except OSError as exc:
            return [TargetResult(arg, error=f"cannot list: {exc.strerror or exc}")]
        if not files:
            return [
                TargetResult(
                    arg, error="neither an OCI bundle (no config.json) nor a directory of manifests"
                )
            ]
        return [_one(str(p), functools.partial(_file, p, rules, namespace)) for p in files]
    if not path.exists():
        return [TargetResult(arg, error="no such file or directory")]
    return [_one(arg, lambda: _file(path, rules, namespace))]
