"""The README tells the truth about the code: point maps, settings and the two commands."""

from __future__ import annotations

import re
from pathlib import Path

from app.settings import Settings
from drivers.points import node_map_markdown, register_map_markdown

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def _section(marker: str) -> str:
    m = re.search(rf"<!-- {marker} -->\n(.*?)\n<!-- /{marker} -->", README, re.S)
    assert m, f"README has no {marker} section"
    return m.group(1).strip()


def test_readme_register_map_matches_code() -> None:
    assert _section("register-map") == register_map_markdown()


def test_readme_node_map_matches_code() -> None:
    assert _section("node-map") == node_map_markdown()


def test_readme_documents_every_setting() -> None:
    missing = [n for n in Settings.model_fields if f"CULTURECTL_{n.upper()}" not in README]
    assert not missing, f"settings missing from README: {missing}"


def test_readme_starts_with_the_demo_and_test_commands() -> None:
    demo = re.search(r"<!-- demo-command -->\n```\n(.+)\n```", README)
    test = re.search(r"<!-- test-command -->\n```\n(.+)\n```", README)
    assert demo and "culturectl demo" in demo.group(1)
    assert test and "pytest" in test.group(1) and "mypy" in test.group(1) and "ruff" in test.group(1)
