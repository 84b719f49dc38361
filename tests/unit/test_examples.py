"""The shipped example files stay true."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import fields
from pathlib import Path

from otelbridge.core.config import Config, load_config, section_name

ROOT = Path(__file__).parents[2]


def test_example_config_lists_every_key_with_its_default() -> None:
    example = ROOT / "examples" / "otelbridge.toml"
    assert load_config(example) == Config()
    text = example.read_text(encoding="utf-8")
    for section in fields(Config):
        for f in fields(getattr(Config(), section.name)):
            assert f"{f.name} = " in text or f"[{section.name}.{f.name}]" in text, f.name


def test_every_config_key_is_documented() -> None:
    doc = (ROOT / "docs" / "commands.md").read_text(encoding="utf-8")
    for section in fields(Config):
        for f in fields(getattr(Config(), section.name)):
            key = f"{section_name(section.name)}.{f.name}"
            assert f"`{key}`" in doc, key


def test_every_ci_script_is_executable_valid_and_shellcheck_clean() -> None:
    # what each one does is tested beside its command (test_cd_files.py,
    # tests/unit/validate/test_ci_example.py); here: none is left out of the checks
    scripts = sorted((ROOT / "examples" / "ci").glob("*.sh"))
    assert {p.name for p in scripts} >= {"deploy-and-gate.sh", "validate-before-apply.sh"}
    for script in scripts:
        assert os.access(script, os.X_OK), script
        subprocess.run(["bash", "-n", str(script)], check=True)
        if shutil.which("shellcheck"):
            subprocess.run(["shellcheck", str(script)], check=True)
