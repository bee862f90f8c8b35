"""``opsloop prompts`` as a user runs it on a fresh home: the steps that make a ``candidate``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.server import cli


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prompts") / "home"


def _ok(home: Path, *args: str) -> str:
    done = cli(home, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_candidate_workflow(home: Path, tmp_path: Path) -> None:
    # A fresh home lists the answer prompt the RAG service would create on first use.
    listed = _ok(home, "prompts", "list")
    assert "rag-answer" in listed and "production=1" in listed

    production = _ok(home, "prompts", "show", "rag-answer", "--raw")
    assert "{{context}}" in production and "{{question}}" in production
    edited = tmp_path / "my_prompt.txt"
    edited.write_text(production.replace("Answer:", "Answer in one sentence:"))
    registered = cli(home, "prompts", "register", "rag-answer", "--template", str(edited), "-m", "shorter")
    assert registered.returncode == 0, registered.stderr
    assert "version 2" in registered.stderr

    aliased = cli(home, "prompts", "alias", "rag-answer", "candidate", "2")
    assert aliased.returncode == 0, aliased.stderr
    assert "candidate unset -> 2" in aliased.stderr

    shown = _ok(home, "prompts", "show", "rag-answer", "--version", "candidate")
    assert "version:   2" in shown
    assert "aliases:   candidate" in shown
    assert "variables: context, question" in shown
    assert "message:   shorter" in shown
    assert shown.rstrip().endswith("Answer in one sentence:")

    diff = _ok(home, "prompts", "diff", "rag-answer", "production", "2")
    assert diff.startswith("--- rag-answer version 1 (production)\n+++ rag-answer version 2\n")
    assert "\n-Answer:\n+Answer in one sentence:\n" in diff

    listed = _ok(home, "prompts", "list")
    assert "candidate=2, production=1" in listed

    tail = _ok(home, "audit", "tail", "--json")
    entries = [json.loads(line) for line in tail.splitlines()]
    assert [(e["action"], e["target"], e["tenant"]) for e in entries] == [
        ("prompt.register", "prompt:rag-answer", "default"),
        ("prompt.alias", "prompt:rag-answer", "default"),
    ]
    assert entries[0]["actor"].startswith("cli")
    assert entries[1]["after"] == {"alias": "candidate", "version": 2}


def test_bad_requests_are_refused_with_a_clear_error(tmp_path: Path) -> None:
    home = tmp_path / "home"
    bad = tmp_path / "bad.txt"
    bad.write_text("Sources: {{context}}\nAnswer briefly.")
    done = cli(home, "prompts", "register", "rag-answer", "--template", str(bad))
    assert done.returncode == 1
    assert "must contain {{context}} and {{question}}; missing ['question']" in " ".join(done.stderr.split())

    missing = cli(home, "prompts", "show", "rag-answer", "--version", "9")
    assert missing.returncode == 1
    message = " ".join(missing.stderr.split())  # rich wraps long lines
    assert "prompt 'rag-answer' version 9" in message and "not found" in message

    # Nothing was registered or audited.
    assert "production=1" in _ok(home, "prompts", "list")
    assert _ok(home, "audit", "tail", "--json") == ""
