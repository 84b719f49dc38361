"""docs/validate.md lists every check of codes.py, with its severity, and no other."""

from __future__ import annotations

import re
from pathlib import Path

from otelbridge.validate.codes import CHECKS

DOC = Path(__file__).parents[3] / "docs" / "validate.md"
# a check's row: | `code` | severity ... |
_ROW = re.compile(r"^\| `([a-z0-9_]+\.[a-z0-9_]+)` \| (error|warning)\b", re.MULTILINE)


def documented() -> dict[str, str]:
    rows = _ROW.findall(DOC.read_text(encoding="utf-8"))
    codes = [code for code, _ in rows]
    assert len(codes) == len(set(codes)), "a code documented twice"
    return dict(rows)


def test_the_documented_codes_are_the_declared_codes() -> None:
    assert sorted(documented()) == sorted(CHECKS)


def test_each_documented_severity_is_the_default_one() -> None:
    assert documented() == {code: check.severity for code, check in CHECKS.items()}


def test_the_config_keys_of_validate_are_in_the_doc() -> None:
    text = DOC.read_text(encoding="utf-8")
    for key in ("validate.require_trace_context", "validate.require_readiness"):
        assert f"`{key}`" in text
