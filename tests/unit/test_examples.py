"""The shipped example files stay true."""

from __future__ import annotations

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
