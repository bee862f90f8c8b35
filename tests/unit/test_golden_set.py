"""The labelled question set for the bundled docs, ``evals/datasets/docs_golden.jsonl``.

Each line is one item: ``question``, a short ``reference`` answer, ``reference_sources`` (doc files
relative to ``docs/``), ``reference_contexts`` (sentences copied from those files that hold the
answer) and ``tags``. These checks keep the set honest as the docs change: a context that no
longer appears in its file means the docs moved under the question and it needs a look.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "evals" / "datasets" / "docs_golden.jsonl"
DOCS = REPO / "docs"
MIN_ITEMS = 40
FIELDS: dict[str, type] = {
    "question": str,
    "reference": str,
    "reference_sources": list,
    "reference_contexts": list,
    "tags": list,
}


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _items() -> list[dict[str, Any]]:
    items = []
    for number, line in enumerate(GOLDEN.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            pytest.fail(f"line {number} is not JSON: {exc}")
        assert isinstance(item, dict), f"line {number} is not a JSON object"
        items.append(item)
    return items


@pytest.fixture(scope="module")
def items() -> list[dict[str, Any]]:
    return _items()


def test_every_line_is_a_json_object_and_there_are_enough(items: list[dict[str, Any]]) -> None:
    assert len(items) >= MIN_ITEMS


def test_every_item_has_the_required_fields(items: list[dict[str, Any]]) -> None:
    for item in items:
        for name, kind in FIELDS.items():
            assert isinstance(item.get(name), kind), (
                f"{item.get('question')!r}: {name} must be a {kind.__name__}"
            )
        assert item["question"].strip() and item["reference"].strip(), item
        for name in ("reference_sources", "reference_contexts"):
            values = item[name]
            assert values and all(isinstance(v, str) and v.strip() for v in values), (item["question"], name)
        assert all(isinstance(tag, str) and tag for tag in item["tags"]), item["question"]


def test_no_question_appears_twice(items: list[dict[str, Any]]) -> None:
    questions = [_normalise(item["question"]).lower() for item in items]
    repeated = sorted({q for q in questions if questions.count(q) > 1})
    assert not repeated


def test_reference_sources_are_files_under_docs(items: list[dict[str, Any]]) -> None:
    for item in items:
        for source in item["reference_sources"]:
            path = (DOCS / source).resolve()
            assert path.is_relative_to(DOCS.resolve()) and path.is_file(), (item["question"], source)


def test_each_context_is_verbatim_in_one_of_its_sources(items: list[dict[str, Any]]) -> None:
    texts: dict[str, str] = {}

    def text(source: str) -> str:
        path = DOCS / source
        if source not in texts:
            texts[source] = _normalise(path.read_text(encoding="utf-8")) if path.is_file() else ""
        return texts[source]

    missing = [
        (item["question"], context)
        for item in items
        for context in item["reference_contexts"]
        if not any(_normalise(context) in text(source) for source in item["reference_sources"])
    ]
    assert not missing, "\n".join(f"{q!r}: {c!r}" for q, c in missing)
