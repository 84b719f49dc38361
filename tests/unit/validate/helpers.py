"""Shared helpers of the validator's unit tests."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from otelbridge.core.config import Config, ValidateConfig
from otelbridge.validate.contract import Rules
from otelbridge.validate.report import Problem

TESTDATA = Path(__file__).parent / "testdata"
#: The config.json containerd 1.6.20 wrote (its task state dir) for
#: `ctr run --detach IMAGE vgen1 sleep 30` on this machine, re-indented; the integration
#: test tests/integration/test_validate.py checks a freshly written one the same way.
CONTAINERD_CONFIG: dict[str, Any] = json.loads(
    (TESTDATA / "containerd-config.json").read_text(encoding="utf-8")
)

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"
OTHER_TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"

RULES = Rules.from_config(Config())


def rules(**validate: Any) -> Rules:
    """The default rules with ``[validate]`` set as given."""
    return Rules.from_config(Config(validate_=ValidateConfig(**validate)))


def spec(**changes: Any) -> dict[str, Any]:
    """A copy of the real config.json with top-level keys replaced (None: removed)."""
    out = copy.deepcopy(CONTAINERD_CONFIG)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def codes(problems: list[Problem]) -> list[str]:
    return [p.code for p in problems]


def at(problems: list[Problem], path: str) -> list[str]:
    """The codes reported at ``path``."""
    return [p.code for p in problems if p.path == path]
