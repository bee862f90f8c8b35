"""The CLI answers quickly: help and the store commands import no heavy library.

Each case runs the ``opsloop`` app in a fresh interpreter and reads ``sys.modules`` after it
returns; a module that imports one of these at its top (MLflow alone takes seconds) fails
here, naming the command and the module. The key and audit commands import no ORM either, nor
pydantic-settings where the environment alone says where the store is. Timings are in
``bench/cli``, not here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest
from typer.core import TyperGroup
from typer.main import get_command
from typer.testing import CliRunner

from serving.cli import app

# Imported by commands that use them, never by help or the store commands.
HEAVY = (
    "mlflow",
    "fastapi",
    "starlette",
    "uvicorn",
    "httpx",
    "pandas",
    "numpy",
    "scipy",
    "sklearn",
    "torch",
    "transformers",
    "sentence_transformers",
    "llama_cpp",
    "qdrant_edge",
    "qdrant_client",
    "ragas",
    "langchain_core",
    "langgraph",
    "prometheus_client",
)
# Help needs no store and no settings either.
HELP_ALSO = ("sqlalchemy", "alembic", "pydantic_settings")
# The key and audit commands read with SQLAlchemy Core (opsloop.db).
KEYS_AND_AUDIT = (["keys", "list"], ["audit", "tail", "-n", "5"])

_RUN = """
import json, sys
from serving.cli import app
try:
    app(sys.argv[1:])
except SystemExit as exc:
    if exc.code not in (0, None):
        raise
print(json.dumps(sorted(sys.modules)))
"""


def _modules(*args: str, env: dict[str, str] | None = None) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", _RUN, *args], capture_output=True, text=True, timeout=120, check=False, env=env
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


def _imported(*args: str, env: dict[str, str] | None = None) -> set[str]:
    return {name.split(".")[0] for name in _modules(*args, env=env)}


@pytest.mark.parametrize(
    "args", [["--help"], ["keys", "--help"], ["models", "--help"], ["eval", "run", "--help"]]
)
def test_help_imports_no_heavy_library(args: list[str]) -> None:
    loaded = _imported(*args) & {*HEAVY, *HELP_ALSO}
    assert not loaded, f"opsloop {' '.join(args)} imported {sorted(loaded)}"


@pytest.mark.parametrize(
    "command", [["keys", "list"], ["audit", "tail", "-n", "5"], ["budgets", "list"], ["costs", "report"]]
)
def test_store_commands_import_no_heavy_library(tmp_path: Path, command: list[str]) -> None:
    loaded = _imported("--home", str(tmp_path / "home"), *command) & set(HEAVY)
    assert not loaded, f"opsloop {' '.join(command)} imported {sorted(loaded)}"


def test_help_still_lists_every_group_and_command() -> None:
    # Moving imports into the commands must not lose a command or its help text.
    group = get_command(app)
    assert isinstance(group, TyperGroup)
    runner = CliRunner()
    top = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert top.exit_code == 0, top.output
    for name, command in group.commands.items():
        assert name in top.output
        first_words = " ".join((command.help or "").split()[:3])
        assert first_words and first_words in top.output, (name, first_words)
        sub = getattr(command, "commands", {})
        if sub:
            listed = runner.invoke(app, [name, "--help"], env={"COLUMNS": "200"})
            assert listed.exit_code == 0, listed.output
            assert all(child in listed.output for child in sub), (name, sorted(sub))


def test_costs_offers_every_grouping_of_the_ledger() -> None:
    from opsloop.llm.ledger import GroupBy
    from serving.cli.costs import GroupBy as CliGroupBy

    assert get_args(CliGroupBy) == get_args(GroupBy)


def test_an_existing_store_is_opened_without_alembic(tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    assert "alembic" in _imported("--home", home, "keys", "list")  # a new store is migrated
    assert "alembic" not in _imported("--home", home, "keys", "list")  # then found at the newest


@pytest.mark.parametrize("command", KEYS_AND_AUDIT)
def test_key_and_audit_commands_load_no_orm_and_no_settings_class(tmp_path: Path, command: list[str]) -> None:
    home = str(tmp_path / "home")
    _modules("--home", home, "keys", "list")  # migrates the new store (Alembic loads the ORM)
    bare = {k: v for k, v in os.environ.items() if not k.upper().startswith("OPSLOOP_")}
    loaded = _modules("--home", home, *command, env=bare)
    unwanted = {"sqlalchemy.orm", "opsloop.tables", "opsloop.settings", "pydantic_settings"} & loaded
    assert not unwanted, f"opsloop {' '.join(command)} imported {sorted(unwanted)}"
    # Another setting in the environment takes the whole Settings (which validates it), still no ORM.
    loaded = _modules("--home", home, *command, env={**bare, "OPSLOOP_TRACING": "false"})
    assert "pydantic_settings" in loaded and "sqlalchemy.orm" not in loaded
