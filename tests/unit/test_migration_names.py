"""Migration files follow the naming that ``Database.upgrade``'s fast path relies on.

It skips Alembic when the store holds the highest-numbered revision, which is right only
while every migration is ``NNNN_*.py`` with revision ``NNNN`` on top of the one before.
"""

from __future__ import annotations

import re
from pathlib import Path

import opsloop.db

VERSIONS = Path(opsloop.db.__file__).parent / "migrations" / "versions"


def test_every_migration_is_numbered_and_on_top_of_the_one_before() -> None:
    files = sorted(VERSIONS.glob("*.py"))
    assert files
    previous = None
    for number, path in enumerate(files, start=1):
        assert re.fullmatch(r"\d{4}_\w+\.py", path.name), path.name
        text = path.read_text(encoding="utf-8")
        revision = re.search(r'^revision = "(\w+)"$', text, re.MULTILINE)
        down = re.search(r"^down_revision = (None|\"\w+\")$", text, re.MULTILINE)
        assert revision and down, path.name
        assert revision.group(1) == path.name[:4] == f"{number:04d}", path.name
        assert down.group(1) == ("None" if previous is None else f'"{previous}"'), path.name
        previous = revision.group(1)
