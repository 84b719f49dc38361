"""What `otelbridge validate` found, and how it is shown: problems, targets, exit codes.

A :class:`Problem` names the offending field (``path``: dotted, array items by index, map
keys as they are, e.g. ``annotations.tracing.k8s.io/traceparent`` or, in a manifest,
``Deployment/web: spec.template.spec.containers[0].readinessProbe``), the check's ``code``
(:mod:`otelbridge.validate.codes`), its ``severity`` and a readable ``message``. Values
quoted in a message come from tenants: :func:`shown` escapes their control characters and
cuts them, so a message never carries a newline or a terminal escape of theirs.

A :class:`TargetResult` is one input (a file, a bundle directory, a live container) with
its problems, or with ``error`` set when it could not be read at all.

Exit codes (:func:`exit_code`): ``2`` when any input could not be read (the check is
incomplete, whatever else was found), else ``1`` when any problem is an error, else ``0``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from otelbridge.core.text import escape_controls, truncate
from otelbridge.validate.codes import ERROR, WARNING, Severity, check

__all__ = [
    "EXIT_ERRORS",
    "EXIT_OK",
    "EXIT_UNREADABLE",
    "UNREADABLE_CODE",
    "Problem",
    "TargetResult",
    "Unreadable",
    "exit_code",
    "problem",
    "render_json",
    "render_text",
    "shown",
]

EXIT_OK: Final = 0
EXIT_ERRORS: Final = 1
EXIT_UNREADABLE: Final = 2

_SHOWN_LIMIT: Final = 80
#: The code of an input that could not be read, in the ``--json`` output.
UNREADABLE_CODE: Final = "input.unreadable"


class Unreadable(Exception):
    """An input could not be read at all (missing, not UTF-8, not JSON or YAML); the
    message says why, for :attr:`TargetResult.error`. Internal to the command: it never
    reaches the command line's caller."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding about one field."""

    path: str
    severity: Severity
    code: str
    message: str

    def as_json(self) -> dict[str, str]:
        return {
            "path": self.path,
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
        }


def problem(code: str, path: str, message: str, *, severity: Severity | None = None) -> Problem:
    """A :class:`Problem` of a declared check, with its default severity unless
    ``severity`` overrides it; ``KeyError`` for an undeclared code (a bug)."""
    return Problem(path, severity or check(code).severity, code, message)


@dataclass
class TargetResult:
    """One input and what was found in it; ``error`` set: it could not be read."""

    target: str
    problems: list[Problem] = field(default_factory=list)
    error: str | None = None

    @property
    def errors(self) -> int:
        return sum(1 for p in self.problems if p.severity == ERROR)

    @property
    def warnings(self) -> int:
        return sum(1 for p in self.problems if p.severity == WARNING)

    def as_json(self) -> dict[str, Any]:
        """The target in the ``--json`` shape: an input that could not be read has one
        problem, ``input.unreadable`` at path ``""``, saying why (the shape stays exact)."""
        problems = [p.as_json() for p in self.problems]
        if self.error is not None:
            problems = [problem(UNREADABLE_CODE, "", self.error).as_json()]
        return {"target": self.target, "problems": problems}


def shown(value: str, limit: int = _SHOWN_LIMIT) -> str:
    """A tenant's string, safe to quote in a message: control characters escaped
    (:func:`otelbridge.core.text.escape_controls`), cut to ``limit`` characters with
    ``...`` and the full length when longer, in double quotes."""
    escaped, _ = escape_controls(value)
    if len(escaped) <= limit:
        return f'"{escaped}"'
    return f'"{truncate(escaped, limit)}..." ({len(value)} characters)'


def exit_code(results: Sequence[TargetResult]) -> int:
    """2 if an input could not be read, else 1 if any error was found, else 0."""
    if any(r.error is not None for r in results):
        return EXIT_UNREADABLE
    if any(r.errors for r in results):
        return EXIT_ERRORS
    return EXIT_OK


def render_json(results: Sequence[TargetResult]) -> str:
    """``{"targets": [{"target", "problems": [{"path", "severity", "code", "message"}]}]}``
    (an unreadable input: :meth:`TargetResult.as_json`), indented for readable diffs."""
    return json.dumps({"targets": [r.as_json() for r in results]}, indent=1) + "\n"


def _safe(text: str) -> str:
    """``text`` with control characters escaped: paths hold tenants' keys, targets file
    names; a terminal must not be driven by them."""
    return escape_controls(text)[0]


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def render_text(results: Sequence[TargetResult]) -> str:
    """The readable report: each target, its problems (severity, path, then code and
    message), and a summary line; control characters in any of them are escaped."""
    lines: list[str] = []
    for result in results:
        target = _safe(result.target)
        if result.error is not None:
            lines.append(f"{target}: CANNOT READ: {_safe(result.error)}")
            continue
        if not result.problems:
            lines.append(f"{target}: ok")
            continue
        lines.append(
            f"{target}: {_count(result.errors, 'error')}, {_count(result.warnings, 'warning')}"
        )
        for p in result.problems:
            lines.append(f"  {p.severity:<8} {_safe(p.path)}")
            lines.append(f"           {p.code}: {_safe(p.message)}")
    errors = sum(r.errors for r in results)
    warnings = sum(r.warnings for r in results)
    unreadable = sum(1 for r in results if r.error is not None)
    summary = (
        f"{_count(len(results), 'target')}: {_count(errors, 'error')}, "
        f"{_count(warnings, 'warning')}"
    )
    if unreadable:
        summary += f", {unreadable} could not be read"
    verdict = {EXIT_OK: "PASS", EXIT_ERRORS: "FAIL", EXIT_UNREADABLE: "INCOMPLETE"}
    lines.append(f"{summary}: {verdict[exit_code(results)]}")
    return "\n".join(lines) + "\n"
