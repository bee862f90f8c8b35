"""Eval data set validation: every problem named by line and field, ids, hashes, subsets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evals.dataset import DatasetError, load_dataset, parse_dataset, question_id

REPO = Path(__file__).resolve().parents[2]


def _line(**fields: object) -> str:
    item: dict[str, object] = {
        "question": "What is X?",
        "reference": "X is Y.",
        "reference_sources": ["a.md"],
    }
    item.update(fields)
    return json.dumps({k: v for k, v in item.items() if v is not None})


def test_a_valid_set_parses_with_ids_by_question_hash() -> None:
    lines = [_line(), "", _line(question="What is Z?", reference_contexts=["Z is W."], tags=["t"])]
    data = parse_dataset(lines, name="set")
    assert [item.line for item in data.items] == [1, 3]
    assert data.items[0].id == question_id("What is X?")
    assert data.items[1].reference_contexts == ("Z is W.",)
    assert data.items[1].tags == ("t",)
    assert len(data.sha256) == 64


def test_question_id_ignores_case_and_whitespace() -> None:
    assert question_id("What  is\nX?") == question_id("what is x?")
    assert question_id("What is X?") != question_id("What is Y?")


def test_every_problem_is_reported_with_line_and_field() -> None:
    lines = [
        _line(),
        "{not json",
        "[1, 2]",
        _line(question=""),
        _line(reference=None, question="Q4?"),
        _line(question="Q5?", reference_sources=[], reference_contexts=None),
        _line(question="Q6?", tags="setup"),
        _line(question="Q7?", referece="typo"),
        _line(),  # a repeat of line 1
    ]
    with pytest.raises(DatasetError) as caught:
        parse_dataset(lines, name="bad", path="bad.jsonl")
    problems = caught.value.details["problems"]
    message = caught.value.message
    assert message.startswith("invalid data set bad.jsonl: ")
    expected = [
        "line 2: not valid JSON",
        "line 3: must be a JSON object, got list",
        "line 4: field 'question' must be a non-empty string",
        "line 5: field 'reference' must be a non-empty string (missing)",
        "line 6: field 'reference_contexts' or 'reference_sources' must be given",
        "line 7: field 'tags' must be a list of non-empty strings",
        "line 8: unknown field 'referece'",
        "line 9: field 'question' repeats line 1",
    ]
    assert len(problems) == len(expected)
    for problem, start in zip(problems, expected, strict=True):
        assert problem.startswith(start), problem
        assert problem in message
    assert caught.value.details["field"] == "dataset"


def test_an_empty_set_and_a_missing_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="has no items"):
        parse_dataset(["", "  "], name="empty")
    with pytest.raises(DatasetError, match="no data set at"):
        load_dataset(tmp_path / "missing.jsonl")


def test_the_hash_follows_content_not_formatting() -> None:
    a = parse_dataset([_line()], name="a")
    b = parse_dataset(["  " + json.dumps(json.loads(_line()), indent=None, separators=(",", ":"))], name="b")
    c = parse_dataset([_line(reference="X is Z.")], name="c")
    assert a.sha256 == b.sha256
    assert a.sha256 != c.sha256


def test_subsets_by_tag_and_limit_have_their_own_hash() -> None:
    lines = [_line(question=f"Q{i}?", tags=["even" if i % 2 == 0 else "odd"]) for i in range(6)]
    data = parse_dataset(lines, name="s")
    evens = data.subset(tags=["even"])
    assert [item.question for item in evens.items] == ["Q0?", "Q2?", "Q4?"]
    assert [item.question for item in data.subset(limit=2).items] == ["Q0?", "Q1?"]
    assert evens.sha256 != data.sha256
    assert data.subset().sha256 == data.sha256


def test_sources_are_normalised() -> None:
    data = parse_dataset([_line(reference_sources=["./docs\\a.md"])], name="s")
    assert data.items[0].reference_sources == ("docs/a.md",)


def test_the_bundled_golden_set_loads() -> None:
    data = load_dataset(REPO / "evals" / "datasets" / "docs_golden.jsonl")
    assert len(data) >= 40
    assert all(item.reference_sources for item in data.items)
