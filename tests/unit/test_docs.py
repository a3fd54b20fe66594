"""The docs tell the truth about the code: point maps (docs/devices.md), settings (docs/configuration.md), the two
commands (README), and the repository stands alone (no tracked file points outside it)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from app.settings import Settings
from drivers.points import node_map_markdown, register_map_markdown
from drivers.roles import vocabulary_markdown

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _doc(name: str) -> str:
    return (ROOT / "docs" / name).read_text(encoding="utf-8")


def _section(text: str, marker: str) -> str:
    m = re.search(rf"<!-- {marker} -->\n(.*?)\n<!-- /{marker} -->", text, re.S)
    assert m, f"no {marker} section"
    return m.group(1).strip()


def test_register_map_in_the_docs_matches_code() -> None:
    assert _section(_doc("devices.md"), "register-map") == register_map_markdown()


def test_node_map_in_the_docs_matches_code() -> None:
    assert _section(_doc("devices.md"), "node-map") == node_map_markdown()


def test_role_vocabulary_in_the_docs_matches_code() -> None:
    assert _section(_doc("devices.md"), "role-vocabulary") == vocabulary_markdown()


def test_every_setting_is_documented() -> None:
    text = _doc("configuration.md")
    missing = [n for n in Settings.model_fields if f"CULTURECTL_{n.upper()}" not in text]
    assert not missing, f"settings missing from docs/configuration.md: {missing}"


def test_the_readme_is_short_and_links_every_doc() -> None:
    assert len(README.splitlines()) <= 150
    for doc in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{doc.name}" in README, f"README does not link docs/{doc.name}"


def test_the_repository_stands_alone() -> None:
    outside_dir = "/".join(("..", "shared"))  # the team's notes beside a checkout; a clone has no such folder
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    outside = []
    for name in tracked.split():
        path = ROOT / name
        if path.suffix in {".py", ".md", ".yaml", ".yml", ".toml", ".html", ".js", ".css", ".ini", ""} \
                and path.is_file() and outside_dir in path.read_text(encoding="utf-8", errors="replace"):
            outside.append(name)
    assert not outside, f"these files refer to a path outside the repository: {outside}"


def test_readme_starts_with_the_demo_and_test_commands() -> None:
    demo = re.search(r"<!-- demo-command -->\n```\n(.+)\n```", README)
    test = re.search(r"<!-- test-command -->\n```\n(.+)\n```", README)
    assert demo and "culturectl demo" in demo.group(1)
    assert test and "pytest" in test.group(1) and "mypy" in test.group(1) and "ruff" in test.group(1)
