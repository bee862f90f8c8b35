"""When a generated answer cannot be used: a repetition detector and an extractive answer.

A small local model (SmolLM2-135M) often writes answers that cite nothing or loop on one
phrase until it runs out of tokens. :func:`repetition` and :func:`is_repetitive` find the loop;
:func:`extractive_answer` builds the answer the answerer returns instead: the sources'
sentences that match the question best, each followed by its source's citation marker.

Both are pure and linear in their input: the text is model output, and the sources may be long.

Repetition. Words are the runs of letters and digits, lowercased. A text is repetitive when
one word n-gram (``n`` = 4 by default) occurs ``max_repeats`` (3) times or more, or when at
least ``max_share`` (30%) of its n-grams repeat an earlier one. Three times is what a loop
leaves even when it is cut short; once or twice is how answers quote a command or a name.

Extractive answer. Each source's text is cut into blocks (paragraphs with their wrapped lines
joined, list items, table rows) and those into sentences (at ``.``, ``!`` or ``?`` and a blank);
code blocks, headings and table rules are left out, and so are sentences of fewer than
``min_words`` words and a first piece that starts as no sentence does (the tail of a sentence
that the chunk's start cut). Every sentence is scored against the
question: the cosine of their embeddings when an :class:`~rag.embedder.Embedder` is given, else
the share of the question's words it contains. The ``max_sentences`` best (ties: the better-ranked
source first, then the earlier sentence) are returned in score order, each with ``[n]``, up to
``max_chars`` characters in all (the first is always kept, cut at a word if it alone is longer).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rag.embedder import Embedder

__all__ = ["Extract", "Repetition", "extractive_answer", "is_repetitive", "repetition", "split_sentences"]

_WORD = re.compile(r"[^\W_]+")
# A sentence ends at ., ! or ? with blanks after it. Only the first blank of a run can follow the
# mark, so each position is tried in constant time: linear, unlike patterns with adjacent
# unbounded quantifiers (see the design notes).
_SENTENCE_END = re.compile(r"(?<=[.!?])[ \t]+")
# How a sentence may start: a capital, a digit, code, a quote, emphasis or a link.
_STARTS_SENTENCE = re.compile(r"[A-Z0-9`\"'*\[]")
_BULLET = re.compile(r"[-*+>]|\d{1,3}[.)]")
_FENCE = "```"
# Words too common to say what a question is about (for the scorer without embeddings).
_STOPWORDS = frozenset(
    re.findall(
        r"\w+",
        "a an and are as at be by can do does for from how i if in is it its of on or so that the "
        "this to was what when where which who why will with you your",
    )
)


@dataclass(frozen=True)
class Repetition:
    """How much of a text repeats: its most frequent word n-gram's count and the repeated share."""

    max_count: int
    """Occurrences of the most frequent n-gram (0 for a text of fewer than n words)."""
    repeated_share: float
    """Share of the n-grams that repeat an earlier one, in [0, 1)."""


def repetition(text: str, n: int = 4) -> Repetition:
    """Measure repeated word ``n``-grams in ``text`` (see the module docs for what a word is).

    Raises:
        ValueError: ``n`` is below 1.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    words = [word.lower() for word in _WORD.findall(text)]
    grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    total = sum(grams.values())
    if not total:
        return Repetition(0, 0.0)
    return Repetition(max(grams.values()), (total - len(grams)) / total)


def is_repetitive(text: str, *, n: int = 4, max_repeats: int = 3, max_share: float = 0.3) -> bool:
    """Whether ``text`` loops: an ``n``-gram occurs ``max_repeats`` times, or ``max_share`` repeat."""
    found = repetition(text, n)
    return found.max_count >= max_repeats or found.repeated_share >= max_share


@dataclass(frozen=True)
class Extract:
    """One sentence taken from a source for an extractive answer."""

    n: int
    """The source's number (its citation marker)."""
    text: str
    score: float


def split_sentences(text: str, *, min_words: int = 4) -> list[str]:
    """The sentences of a source's text, without list bullets, code, headings and table rules.

    Lines of one paragraph or list item are joined first (Markdown wraps them), so a sentence is
    never cut at a line break. A source that starts inside a sentence (chunks overlap, and a cut
    may fall mid-sentence) loses that first piece: it starts as no sentence does (in lowercase, with
    a parenthesis or a comma) and lacks its subject.
    """
    blocks: list[str] = []
    current: list[str] = []
    in_code = False

    def close() -> None:
        if current:
            blocks.append(" ".join(current))
            current.clear()

    for raw in text.split("\n"):
        line = raw.strip()
        if line.startswith(_FENCE):
            close()
            in_code = not in_code
            continue
        if in_code:
            continue
        if not line or line.startswith("#") or set(line) <= set("|-: =*"):
            close()  # a blank line, a heading (the breadcrumb names it) or a rule ends a block
            continue
        if line.startswith("|"):  # a table row: its cells, one block per row
            close()
            blocks.append("; ".join(cell.strip() for cell in line.strip("|").split("|") if cell.strip()))
            continue
        bullet = _BULLET.match(line)
        if bullet and line[bullet.end() : bullet.end() + 1] == " ":
            close()  # a list item starts a block of its own
            line = line[bullet.end() :].strip()
        current.append(line)
    close()
    sentences: list[str] = []
    for i, block in enumerate(blocks):
        for j, piece in enumerate(_SENTENCE_END.split(block)):
            sentence = piece.strip()
            if i == j == 0 and not _STARTS_SENTENCE.match(sentence):
                continue  # the tail of a sentence the chunk's start cut
            if len(_WORD.findall(sentence)) >= min_words:
                sentences.append(sentence)
    return sentences


def extractive_answer(
    question: str,
    sources: Sequence[tuple[int, str]],
    *,
    embedder: Embedder | None = None,
    max_sentences: int = 3,
    max_chars: int = 600,
    min_words: int = 4,
) -> tuple[str, list[int]]:
    """The best sentences of ``sources`` (``(n, text)``, best first) for ``question``, with markers.

    Returns the answer text (each sentence followed by `` [n]``, one per line) and the cited
    source numbers in order of first appearance; ``("", [])`` when no source has a sentence.
    """
    candidates = [
        (n, rank, position, sentence)
        for rank, (n, text) in enumerate(sources)
        for position, sentence in enumerate(split_sentences(text, min_words=min_words))
    ]
    if not candidates:
        return "", []
    scores = _scores(question, [c[3] for c in candidates], embedder)
    order = sorted(range(len(candidates)), key=lambda i: (-scores[i], candidates[i][1], candidates[i][2]))
    picked: list[Extract] = []
    used = 0
    for i in order[:max_sentences]:
        n, _, _, sentence = candidates[i]
        if picked and used + len(sentence) > max_chars:
            break
        if not picked and len(sentence) > max_chars:
            sentence = sentence[:max_chars].rsplit(" ", 1)[0] + " ..."
        picked.append(Extract(n, sentence, scores[i]))
        used += len(sentence)
    cited: list[int] = []
    for extract in picked:
        if extract.n not in cited:
            cited.append(extract.n)
    return "\n".join(f"{e.text} [{e.n}]" for e in picked), cited


def _scores(question: str, sentences: list[str], embedder: Embedder | None) -> list[float]:
    if embedder is not None:
        vectors = embedder.embed([question, *sentences])
        return [float(x) for x in np.asarray(vectors[1:]) @ np.asarray(vectors[0])]
    wanted = {w.lower() for w in _WORD.findall(question)} - _STOPWORDS
    if not wanted:
        return [0.0] * len(sentences)
    return [len(wanted & {w.lower() for w in _WORD.findall(s)}) / len(wanted) for s in sentences]
