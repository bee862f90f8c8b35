"""Eval data sets: JSON Lines files of questions with reference answers and contexts.

One JSON object a line (blank lines are skipped)::

    {"question": "...", "reference": "...",
     "reference_contexts": ["sentence that holds the answer", ...],
     "reference_sources": ["index.md", ...],
     "tags": ["setup", ...]}

``question`` and ``reference`` (the expected answer) are required; so is at least one of
``reference_contexts`` (passages that hold the answer, for the context precision and recall
metrics) and ``reference_sources`` (documents, as the collection names them, for hit rate and
MRR). ``tags`` and ``id`` are optional; any other field is refused, so that a misspelt optional
field does not quietly switch a metric off.

Each item's :attr:`EvalItem.id` is a hash of its normalised question (unless the line gives an
``id``): two runs of different versions of a set pair their samples by it, so a question that was
reworded is a new sample, and an edited reference keeps its pairing. Questions must be unique.

:func:`parse_dataset` is pure and reports every problem at once, each naming its line and field.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opsloop.errors import InvalidInputError

__all__ = [
    "DatasetError",
    "EvalDataset",
    "EvalItem",
    "dataset_from_items",
    "load_dataset",
    "parse_dataset",
    "question_id",
]

_REQUIRED = ("question", "reference")
_LISTS = ("reference_contexts", "reference_sources", "tags")
_KNOWN = frozenset({"id", *_REQUIRED, *_LISTS})
_MAX_REPORTED = 20
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")


class DatasetError(InvalidInputError):
    """A data set file that cannot be used; ``details["problems"]`` lists each line and field."""


def question_id(question: str) -> str:
    """The pairing key of a question: 16 hex digits of the SHA-256 of its normalised text.

    Case and runs of whitespace do not count, so re-wrapping a question keeps its pairing.
    """
    normalised = re.sub(r"\s+", " ", question).strip().casefold()
    return hashlib.sha256(normalised.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class EvalItem:
    """One question of a data set, as validated."""

    id: str
    question: str
    reference: str
    reference_contexts: tuple[str, ...] = ()
    reference_sources: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    line: int = 0
    """Line of the file the item came from (1-based)."""

    def to_dict(self) -> dict[str, Any]:
        """The item as the JSON object it would be written as."""
        return {
            "id": self.id,
            "question": self.question,
            "reference": self.reference,
            "reference_contexts": list(self.reference_contexts),
            "reference_sources": list(self.reference_sources),
            "tags": list(self.tags),
        }


@dataclass(frozen=True)
class EvalDataset:
    """A validated data set; ``sha256`` hashes its items' content, not the file's bytes."""

    name: str
    items: tuple[EvalItem, ...]
    sha256: str
    path: str | None = None
    tags: tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return len(self.items)

    @classmethod
    def of(cls, name: str, items: Iterable[EvalItem], path: str | None = None) -> EvalDataset:
        """A data set of ``items`` (already validated), with its content hash."""
        items = tuple(items)
        return cls(name, items, _content_hash(items), path)

    def subset(self, *, limit: int | None = None, tags: Iterable[str] = ()) -> EvalDataset:
        """The items with any of ``tags`` (all when none given), the first ``limit`` of them.

        The subset has a hash of its own, so its runs never pair with the whole set's by accident.
        """
        wanted = set(tags)
        items = [item for item in self.items if not wanted or wanted & set(item.tags)]
        if limit is not None:
            items = items[:limit]
        return EvalDataset(self.name, tuple(items), _content_hash(items), self.path, tuple(sorted(wanted)))


def load_dataset(path: Path | str) -> EvalDataset:
    """Read and validate the data set at ``path``.

    Raises:
        DatasetError: The file is missing, not UTF-8, or has invalid lines; every problem is
            named by line and field in the message and in ``details["problems"]``.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DatasetError(f"no data set at {path}", field="dataset", path=str(path)) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"cannot read data set {path}: {exc}", field="dataset", path=str(path)) from exc
    return parse_dataset(text.splitlines(), name=path.stem, path=str(path))


def parse_dataset(lines: Iterable[str], *, name: str, path: str | None = None) -> EvalDataset:
    """Validate JSON lines into a data set (see the module docs for the format).

    Raises:
        DatasetError: Some line is invalid, or the set is empty; every problem is reported.
    """
    problems: list[str] = []
    items: list[EvalItem] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        item = _parse_line(raw, number, problems)
        if item is None:
            continue
        if item.id in seen:
            problems.append(
                f"line {number}: field 'question' repeats line {seen[item.id]} "
                "(questions, and ids, must be unique: samples are paired by them)"
            )
            continue
        seen[item.id] = number
        items.append(item)
    where = path or name
    if not problems and not items:
        problems.append("the data set has no items")
    if problems:
        shown = problems[:_MAX_REPORTED]
        more = len(problems) - len(shown)
        message = f"invalid data set {where}: " + "; ".join(shown) + (f"; and {more} more" if more else "")
        raise DatasetError(message, field="dataset", path=where, problems=problems)
    return EvalDataset(name, tuple(items), _content_hash(items), path)


def dataset_from_items(
    items: Iterable[Mapping[str, Any]], *, name: str, path: str | None = None
) -> EvalDataset:
    """Validate items of a data set sent as JSON (e.g. :meth:`EvalItem.to_dict` of a parsed file).

    Each item is checked as a line of a file would be, numbered from 1 (messages say "line 3"
    of the third item), and the hash covers the same content, so a set parsed by one process and
    sent to another keeps its :attr:`EvalDataset.sha256`.

    Raises:
        DatasetError: Some item is invalid, or there are none; every problem is reported.
    """
    return parse_dataset((json.dumps(item, ensure_ascii=False) for item in items), name=name, path=path)


def _parse_line(raw: str, number: int, problems: list[str]) -> EvalItem | None:
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        problems.append(f"line {number}: not valid JSON ({exc.msg} at column {exc.colno})")
        return None
    if not isinstance(data, dict):
        problems.append(f"line {number}: must be a JSON object, got {type(data).__name__}")
        return None
    before = len(problems)
    unknown = sorted(set(data) - _KNOWN)
    for key in unknown:
        problems.append(f"line {number}: unknown field {key!r} (known: {', '.join(sorted(_KNOWN))})")
    texts: dict[str, str] = {}
    for key in _REQUIRED:
        value = data.get(key)
        if not isinstance(value, str) or not value.strip():
            got = "missing" if key not in data else f"got {json.dumps(value)[:40]}"
            problems.append(f"line {number}: field {key!r} must be a non-empty string ({got})")
        else:
            texts[key] = value.strip()
    lists: dict[str, tuple[str, ...]] = {}
    for key in _LISTS:
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            problems.append(f"line {number}: field {key!r} must be a list of non-empty strings")
        else:
            lists[key] = tuple(v.strip() for v in value)
    if not lists.get("reference_contexts") and not lists.get("reference_sources") and len(problems) == before:
        problems.append(
            f"line {number}: field 'reference_contexts' or 'reference_sources' must be given (non-empty)"
        )
    item_id = data.get("id")
    if item_id is not None and (not isinstance(item_id, str) or not _ID.fullmatch(item_id)):
        problems.append(f"line {number}: field 'id' must be 1-64 characters of letters, digits, '_.:-'")
    if len(problems) > before:
        return None
    return EvalItem(
        id=item_id or question_id(texts["question"]),
        question=texts["question"],
        reference=texts["reference"],
        reference_contexts=lists["reference_contexts"],
        reference_sources=tuple(_normalise_source(s) for s in lists["reference_sources"]),
        tags=lists["tags"],
        line=number,
    )


def _normalise_source(source: str) -> str:
    return source.replace("\\", "/").removeprefix("./")


def _content_hash(items: Iterable[EvalItem]) -> str:
    canonical = json.dumps([item.to_dict() for item in items], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
