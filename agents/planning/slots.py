"""Slot extraction: the arguments a request names, read by rules over a catalog of known names.

Names (models, collections, tenants, prompts, eval jobs, LLM routes) come from the
:class:`Catalog` (the platform's own, at the time of the request), matched tolerant of
spacing, hyphens and one typo per five letters ("credit risk", "creditrisk", "chrun"); numbers
in digits or words ("v4", "version four", "10%", "a tenth"); time windows as durations
("this week" -> ``7d``); a model folder's path as written (read first and taken out of the text,
so "./models/churn-v2" names no model and no version); budgets by kind ("monthly", "$",
"tokens per minute") and amount ("$1.5k", "2M tokens"); API keys by their 12-hex-digit id.
Every pattern is linear: no nested or adjacent unbounded quantifiers over the same characters
(a request is untrusted text).

The result holds only what the request says: defaults are the plan's business, so that a
missing required slot can be asked for instead of guessed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from rapidfuzz.distance import DamerauLevenshtein

__all__ = ["KEY_ID", "MODEL_NAME", "Catalog", "Extraction", "extract_slots"]


@dataclass(frozen=True)
class Catalog:
    """The names a request may mention, by kind."""

    models: tuple[str, ...] = ()
    collections: tuple[str, ...] = ()
    tenants: tuple[str, ...] = ()
    prompts: tuple[str, ...] = ()
    jobs: tuple[str, ...] = ()
    routes: tuple[str, ...] = ()


@dataclass
class Extraction:
    """Slots found, and the ones the request named more than one value for."""

    slots: dict[str, str | int | float] = field(default_factory=dict)
    ambiguous: dict[str, list[str | int | float]] = field(default_factory=dict)


_NUMBER_WORDS = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "fifteen": 15, "twenty": 20,
}  # fmt: skip
_FRACTIONS = {"a tenth": 10, "a fifth": 20, "a quarter": 25, "a third": 33, "half": 50}
_NUM = r"(\d{1,6}|" + "|".join(_NUMBER_WORDS) + r")\b"
_TOKEN = re.compile(r"[a-z0-9]+(?:[-_.][a-z0-9]+)*")
_EVAL_WORDS = {"eval", "evals", "evaluation", "evaluations", "evaluate"}
_EVERYDAY_WORDS = {"docs"}
"""Collection names that are words of ordinary requests: a collection only where the request
says "collection" or "query" beside them ("the docs collection", not "where are the docs")."""
_VERSION = re.compile(r"\b(?:version|ver|v)\s?[=:#]?\s?" + _NUM)
_PERCENT = re.compile(r"\b(\d{1,3})\s?(?:%|percent\b|pct\b)")
_REQUESTS = re.compile(r"\b(\d{1,7})\s?(?:requests|reqs|calls|queries)\b")
_CONCURRENCY = (
    re.compile(r"\bconcurrency\s?(?:of\s|=\s?|:\s?)?(\d{1,5})\b"),
    re.compile(r"\b(\d{1,5})\s(?:concurrent|parallel|simultaneous|in flight|at a time)\b"),
)
_REPLICAS = re.compile(r"\b" + r"(\d{1,4}|" + "|".join(_NUMBER_WORDS) + r")\s(?:replicas?|pods?|instances)\b")
_WINDOWS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b(?:last|past)\s(?:hour|60 minutes)\b"), "1h"),
    (re.compile(r"\b(?:today|yesterday|last 24 hours|past 24 hours|last day|past day)\b"), "24h"),
    (re.compile(r"\b(?:this|past|last)\sweek\b"), "7d"),
    (re.compile(r"\b(?:this|past|last)\smonth\b"), "30d"),
)
_WINDOW_COUNT = re.compile(
    r"\b(?:last|past)\s" + r"(\d{1,3}|" + "|".join(_NUMBER_WORDS) + r")\s(hour|day|week|month)s?\b"
)
_UNIT_HOURS = {"hour": ("h", 1), "day": ("d", 1), "week": ("d", 7), "month": ("d", 30)}


def _number(text: str) -> int:
    return int(text) if text.isdigit() else _NUMBER_WORDS[text]


def _similar(candidate: str, name: str) -> bool:
    """Equal up to hyphens and spaces, or one edit per five letters of a long name."""
    bare = name.replace("-", "")
    if candidate in (name, bare):
        return True
    close = abs(len(candidate) - len(bare)) <= 1
    return close and len(bare) >= 5 and DamerauLevenshtein.normalized_similarity(candidate, bare) >= 0.8


@dataclass(frozen=True)
class _Mention:
    name: str
    start: int
    """Index of the first token."""
    end: int
    """Index after the last token."""


def _mentions(tokens: list[str], names: Iterable[str]) -> list[_Mention]:
    """Where each name occurs, as one to three tokens joined (longest match first, no overlaps)."""
    found: list[_Mention] = []
    taken: set[int] = set()
    for width in (3, 2, 1):
        for start in range(len(tokens) - width + 1):
            span = range(start, start + width)
            if taken.intersection(span):
                continue
            if width > 1 and (tokens[start].isdigit() or tokens[start + width - 1].isdigit()):
                continue  # "credit-risk 6" is a model and a version, not a longer name
            joined = "".join(t.replace("-", "") for t in tokens[start : start + width])
            for name in names:
                if _similar(joined, name):
                    found.append(_Mention(name, start, start + width))
                    taken.update(span)
                    break
    return sorted(found, key=lambda m: m.start)


def _near(tokens: list[str], mention: _Mention, words: set[str], before: int, after: int) -> bool:
    window = (
        tokens[max(0, mention.start - before) : mention.start] + tokens[mention.end : mention.end + after]
    )
    return bool(words.intersection(window))


def _windows(text: str) -> list[str]:
    found = []
    for match in _WINDOW_COUNT.finditer(text):
        count, unit = _number(match.group(1)), match.group(2)
        suffix, scale = _UNIT_HOURS[unit]
        found.append(f"{count * scale}{suffix}")
    for pattern, window in _WINDOWS:
        if pattern.search(text):
            found.append(window)
    return found[:1]  # the first named window; "this week vs last week" names one


_ENDPOINTS = ("/predict", "/query", "/v1", "/chat", "/ui", "/admin", "/health", "/metrics")
"""opsloop's own routes: a request naming one asks about the endpoint, not a folder."""
_QUOTED = re.compile(r"(['\"`])([^'\"`\n]{2,512})\1")
_TRAILING = ".,;:!?)]}'\"`"
KEY_ID = re.compile(r"[0-9a-f]{12}")
"""An API key's public id."""
MODEL_NAME = re.compile(r"[a-z][a-z0-9_-]{1,62}")
"""A name a request may give a model it registers."""
_KEY_ID = re.compile(rf"\b(?:olk?_)?({KEY_ID.pattern})(?:_[A-Za-z0-9_-]+)?\b")  # a pasted secret too
_NEW_NAME = re.compile(
    r"\b(?:as|named|called|under(?: the name)?|name it|call it|calling it)\s"
    rf"(?:(?:a|the)\s)?(?:new\s)?(?:model\s)?[\"'`]?({MODEL_NAME.pattern})"
)
_NOT_NAMES = {
    "a", "the", "new", "brand", "model", "version", "v", "champion", "challenger", "latest", "next",
    "well", "registry", "it", "named", "called",
}  # fmt: skip
_AMOUNT = re.compile(
    r"(\$\s?)?(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?)\s?(k|m|thousand|million)?\b"
    r"(\s?(?:usd|dollars?|bucks|tokens?|rpm|tpm|requests?|reqs))?"
)
_SCALE = {"k": 1e3, "thousand": 1e3, "m": 1e6, "million": 1e6}
_PER_MINUTE = re.compile(r"\b(?:per|a|each|/)\s?(?:minute|min)\b|/min\b")
_RATE_WORDS = {"rpm": "rpm", "tpm": "tpm"}
_DAILY = re.compile(r"\b(?:daily|per day|a day|each day|every day|day's|today's)\b|/day\b")
_MONTHLY = re.compile(r"\b(?:monthly|per month|a month|each month|every month|month's)\b|/mo(?:nth)?\b")


def _is_path(word: str) -> bool:
    """A folder's path: ``./x``, ``~/x``, ``/a/b``, ``a/b/c`` (not "a/b", "w/", "50/50" or ``/predict``)."""
    if word.startswith(("./", "../", "~/")):
        return len(word) > 2
    if word.lower().startswith(_ENDPOINTS) or "://" in word:
        return False
    if word.startswith("/"):
        return len(word.strip("/")) > 0
    segments = word.strip("/").split("/")
    return (
        len(segments) >= 2
        and all(len(part) >= 2 and not part.isdigit() for part in segments)
        and word.lower() not in ("and/or", "w/o")
    )


def split_path(text: str) -> tuple[str | None, str]:
    """The first folder path ``text`` names (as written), and ``text`` with it replaced by "path".

    A path in quotes may hold spaces ("register '/srv/models/churn 2' as churn").
    """
    for quoted in _QUOTED.finditer(text):
        inside = quoted.group(2)
        if inside == inside.strip() and _is_path(inside):  # not the text between two apostrophes
            return inside, text.replace(quoted.group(0), " path ", 1)
    for word in text.split():
        path = word.strip("'\"`").rstrip(_TRAILING)
        if _is_path(path):
            return path, text.replace(word, " path ", 1)
    return None, text


def _budget_kind(lowered: str, tokens: list[str]) -> str | None:
    lowered = lowered.replace("-", " ")  # "requests-per-minute", "per-day"
    for word, kind in _RATE_WORDS.items():
        if word in tokens:
            return kind
    per_minute = bool(_PER_MINUTE.search(lowered))
    counts_tokens = bool({"token", "tokens"} & set(tokens))
    if per_minute:
        return "tpm" if counts_tokens else "rpm"
    period = "daily" if _DAILY.search(lowered) else "monthly" if _MONTHLY.search(lowered) else None
    money = "$" in lowered or bool({"usd", "dollar", "dollars", "bucks", "spend"} & set(tokens))
    unit = "tokens" if counts_tokens else "usd" if money else None
    return f"{period}_{unit}" if period and unit else None


def _limits(lowered: str) -> list[float]:
    """Amounts stated as money, tokens or requests ("$200", "1.5k dollars", "2M tokens", "to 50")."""
    found = []
    for match in _AMOUNT.finditer(lowered):
        dollar, number, scale, unit = match.groups()
        before = lowered[max(0, match.start() - 3) : match.start()]
        if not (dollar or unit or scale or before.endswith("to ")):
            continue
        value = float(number.replace(",", "")) * _SCALE.get(scale or "", 1.0)
        found.append(int(value) if value.is_integer() else value)
    return found


def extract_slots(text: str, catalog: Catalog, wanted: Iterable[str]) -> Extraction:
    """The ``wanted`` slots that ``text`` names, with conflicting values set aside as ambiguous."""
    wanted = set(wanted)
    values: dict[str, list[str | int | float]] = {}

    def add(slot: str, value: str | int | float) -> None:
        if slot in wanted and value not in values.setdefault(slot, []):
            values[slot].append(value)

    if "path" in wanted:
        path, text = split_path(text)
        if path is not None:
            add("path", path)
    lowered = text.lower()
    tokens = _TOKEN.findall(lowered)
    if "key" in wanted:
        for match in _KEY_ID.finditer(lowered):
            add("key", match.group(1))
        lowered = _KEY_ID.sub(" key ", lowered)  # a key id's digits are no amount or version
        tokens = _TOKEN.findall(lowered)
    if "budget" in wanted:
        kind = _budget_kind(lowered, tokens)
        if kind is not None:
            add("budget", kind)
    if "limit" in wanted:
        for amount in _limits(lowered):
            add("limit", amount)

    models = _mentions(tokens, catalog.models)
    if "path" in wanted and not models:  # registering: the name may be a new one
        new_name = _NEW_NAME.search(lowered)
        while new_name is not None and new_name.group(1) in _NOT_NAMES:  # "as a new model named x"
            new_name = _NEW_NAME.search(lowered, new_name.start(1))
        if new_name is not None:
            add("model", new_name.group(1))
        bare = lowered.strip().strip(".!")
        if "model" not in values and MODEL_NAME.fullmatch(bare) and bare not in _NOT_NAMES:
            add("model", bare)  # the answer to "which model?"
    prompts = _mentions(tokens, catalog.prompts)
    for mention in models:
        add("model", mention.name)
    for mention in prompts:
        add("prompt", mention.name)
    for mention in _mentions(tokens, catalog.routes):
        add("route", mention.name)
    for mention in _mentions(tokens, catalog.tenants):
        # "default" is a tenant only where the request says so ("the default tenant")
        if mention.name != "default" or _near(tokens, mention, {"tenant", "tenant's"}, 1, 1):
            add("tenant", mention.name)
    for mention in _mentions(tokens, catalog.jobs):
        followed_by_collection = tokens[mention.end : mention.end + 1] == ["collection"]
        if _near(tokens, mention, _EVAL_WORDS, 4, 2) and not followed_by_collection:
            add("job", mention.name)
    for mention in _mentions(tokens, catalog.collections):
        said = _near(tokens, mention, {"collection", "collections", "collection's"}, 0, 2)
        searched = _near(tokens, mention, {"query", "queries", "retrieval", "questions"}, 0, 2)
        evaluated = _near(tokens, mention, _EVAL_WORDS, 4, 2) and mention.name in catalog.jobs
        named = "ask_docs" not in wanted and mention.name not in _EVERYDAY_WORDS
        if said or (not evaluated and (searched or named)):
            add("collection", mention.name)

    versions = [_number(m.group(1)) for m in _VERSION.finditer(lowered)]
    for mention in models + prompts:  # "credit-risk 6", "prompt 8"
        follower = tokens[mention.end : mention.end + 2]
        if follower and follower[0].isdigit() and follower[1:2] not in (["requests"], ["reqs"], ["replicas"]):
            versions.append(int(follower[0]))
    if "prompt" in tokens:
        at = tokens.index("prompt")
        if tokens[at + 1 : at + 2] and tokens[at + 1].isdigit():
            versions.append(int(tokens[at + 1]))
    prompt_context = bool(prompts) or ("prompt" in tokens and not models)
    for version in versions:
        add("prompt_version" if prompt_context and "prompt_version" in wanted else "version", version)

    for match in _PERCENT.finditer(lowered):
        add("percent", int(match.group(1)))
    for phrase, percent in _FRACTIONS.items():
        if re.search(rf"\b{phrase}\b", lowered):
            add("percent", percent)
    for match in _REQUESTS.finditer(lowered):
        add("requests", int(match.group(1)))
    for pattern in _CONCURRENCY:
        for match in pattern.finditer(lowered):
            add("concurrency", int(match.group(1)))
    for match in _REPLICAS.finditer(lowered):
        add("replicas", _number(match.group(1)))
    for window in _windows(lowered):
        add("window", window)

    extraction = Extraction()
    for slot, found in values.items():
        if len(found) == 1:
            extraction.slots[slot] = found[0]
        else:
            extraction.ambiguous[slot] = found
    return extraction


_PLACEHOLDERS = (("model", "models"), ("prompt", "prompts"), ("route", "routes"), ("tenant", "tenants"))
_DIGITS = re.compile(r"\d+")
_SHORT_VERSION = re.compile(r"\bv\d+\b")


def mask_names(text: str, catalog: Catalog) -> str:
    """``text`` in lower case with catalog names replaced by their kind and numbers by ``N``.

    A folder's path becomes ``path`` and an API key's id ``key``.

    What a request asks for is in its verbs, not in which model it names: without this, the
    nearest examples of "fraud-detector: all good?" are the ones that name fraud-detector.
    Eval job names stay (they say "eval"), and so does ``docs`` (a word of how-to questions).
    """
    text = _KEY_ID.sub(" key ", split_path(text)[1].lower())
    tokens = _TOKEN.findall(text)
    kinds: list[tuple[str, tuple[str, ...]]] = [
        (kind, getattr(catalog, attr)) for kind, attr in _PLACEHOLDERS
    ]
    kinds.append(
        ("collection", tuple(c for c in catalog.collections if c not in catalog.jobs and c != "docs"))
    )
    masked: list[str | None] = list(tokens)
    for kind, names in kinds:
        for mention in _mentions([t if t is not None else "" for t in masked], names):
            masked[mention.start : mention.end] = [kind] + [None] * (mention.end - mention.start - 1)
    words = " ".join(t for t in masked if t is not None)
    return _DIGITS.sub("N", _SHORT_VERSION.sub("version N", words))
