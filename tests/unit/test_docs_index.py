"""The user guide's index names every CLI command and links every guide, so none goes missing.

``docs/index.md`` is where a user starts. A command group or guide added without an entry
there is one nobody finds: this fails naming what is missing.
"""

from __future__ import annotations

import re
from pathlib import Path

import typer.main

from serving.cli import app

DOCS = Path(__file__).resolve().parents[2] / "docs"
INDEX = DOCS / "index.md"


def _top_level_commands() -> list[str]:
    """Every command group and top-level command of the ``opsloop`` app, as click sees them."""
    group = typer.main.get_command(app)
    assert isinstance(group, typer.main.TyperGroup)
    return sorted(name for name, command in group.commands.items() if not command.hidden)


def test_the_app_has_the_commands_the_design_names() -> None:
    # Guards the walk itself: a walk that found nothing would pass the test below vacuously.
    commands = _top_level_commands()
    assert {"serve", "keys", "models", "ingest", "query", "eval", "drift"} <= set(commands), commands


def test_every_command_group_and_command_is_in_the_index() -> None:
    index = INDEX.read_text(encoding="utf-8")
    missing = [name for name in _top_level_commands() if f"`{name}`" not in index]
    assert not missing, f"docs/index.md does not name these opsloop commands (as `name`): {missing}"


def test_every_guide_is_linked_from_the_index() -> None:
    index = INDEX.read_text(encoding="utf-8")
    linked = set(re.findall(r"\]\(([\w./-]+\.md)(?:#[\w-]*)?\)", index))
    guides = sorted(p.name for p in DOCS.glob("*.md") if p != INDEX)
    assert guides, f"no guides found in {DOCS}"
    missing = [name for name in guides if name not in linked]
    assert not missing, f"docs/index.md links no entry for these guides: {missing}"
    dangling = sorted(name for name in linked if not (DOCS / name).is_file())
    assert not dangling, f"docs/index.md links guides that do not exist: {dangling}"
