"""Deterministic synthetic text: a Markdown corpus for ingestion, and chunk-sized texts for search.

Words come from a fixed vocabulary of pronounceable pseudo-words drawn with Zipf frequencies
(a few words are very common, most are rare), as in real prose. That matters to both halves of
the benchmark: the tokenizer splits rare words into several word pieces, so chunk sizes in model
tokens look like real text's, and BM25 posting lists are long for common terms and short for
rare ones, which is what a sparse search has to cope with. A few dozen real function words
lead the ranking, so the encoder's stop-word list has something to remove.

Everything is a pure function of its seed: the same seed gives byte-identical files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["Vocabulary", "chunk_texts", "write_corpus"]

_FUNCTION_WORDS = (
    "the", "of", "and", "to", "a", "in", "is", "that", "for", "it", "with", "as", "on", "be", "by",
    "this", "are", "or", "from", "at", "not", "can", "when", "each", "one", "all", "its", "then",
)  # fmt: skip
_ONSETS = ("b", "c", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "st", "tr", "pl", "gr")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou", "ea")
_CODAS = ("", "", "n", "r", "s", "t", "l", "x", "nd", "rk")


class Vocabulary:
    """A ranked list of words and their Zipf probabilities; rank 1 is the most frequent word.

    Args:
        seed: Seed of the pseudo-words' spelling.
        size: Number of distinct words.
        exponent: Zipf exponent ``s`` (probability of rank ``r`` is proportional to ``r**-s``).
    """

    def __init__(self, seed: int = 0, *, size: int = 20_000, exponent: float = 1.07) -> None:
        rng = np.random.default_rng(seed)
        words = list(_FUNCTION_WORDS)
        seen = set(words)
        while len(words) < size:
            syllables = int(rng.integers(1, 4))
            word = "".join(
                _ONSETS[rng.integers(len(_ONSETS))]
                + _VOWELS[rng.integers(len(_VOWELS))]
                + _CODAS[rng.integers(len(_CODAS))]
                for _ in range(syllables)
            )
            if word not in seen:
                seen.add(word)
                words.append(word)
        self.words = np.array(words, dtype=object)
        weights = 1.0 / np.arange(1, size + 1, dtype=np.float64) ** exponent
        self.probabilities = weights / weights.sum()

    def sample(self, rng: np.random.Generator, count: int) -> list[str]:
        """``count`` words drawn independently by frequency."""
        return [str(w) for w in self.words[rng.choice(len(self.words), size=count, p=self.probabilities)]]

    def sentence(self, rng: np.random.Generator, low: int = 8, high: int = 22) -> str:
        """A capitalised sentence of ``low`` to ``high - 1`` words ending in a full stop."""
        words = self.sample(rng, int(rng.integers(low, high)))
        return " ".join(words).capitalize() + "."


def _heading(vocabulary: Vocabulary, rng: np.random.Generator) -> str:
    return " ".join(vocabulary.sample(rng, int(rng.integers(2, 5)))).capitalize()


def _paragraph(vocabulary: Vocabulary, rng: np.random.Generator) -> str:
    return " ".join(vocabulary.sentence(rng) for _ in range(int(rng.integers(2, 7))))


def markdown_file(vocabulary: Vocabulary, rng: np.random.Generator) -> str:
    """One Markdown document: a title, 2-5 sections with paragraphs, some with sub-sections."""
    parts = [f"# {_heading(vocabulary, rng)}", _paragraph(vocabulary, rng)]
    for _ in range(int(rng.integers(2, 6))):
        parts.append(f"## {_heading(vocabulary, rng)}")
        parts.extend(_paragraph(vocabulary, rng) for _ in range(int(rng.integers(1, 4))))
        if rng.random() < 0.4:
            parts.append(f"### {_heading(vocabulary, rng)}")
            parts.extend(_paragraph(vocabulary, rng) for _ in range(int(rng.integers(1, 3))))
    return "\n\n".join(parts) + "\n"


def write_corpus(root: Path, files: int, seed: int) -> int:
    """Write ``files`` Markdown files under ``root`` (in 10 sub-folders); returns the bytes written."""
    vocabulary = Vocabulary(seed)
    rng = np.random.default_rng([seed, 1])
    written = 0
    for i in range(files):
        path = root / f"topic-{i % 10:02d}" / f"doc-{i:05d}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = markdown_file(vocabulary, rng).encode("utf-8")
        path.write_bytes(data)
        written += len(data)
    return written


def chunk_texts(vocabulary: Vocabulary, rng: np.random.Generator, count: int) -> list[str]:
    """``count`` texts the size of a 256-token chunk's body (80-160 words each)."""
    lengths = rng.integers(80, 161, size=count)
    flat = vocabulary.sample(rng, int(lengths.sum()))
    texts: list[str] = []
    start = 0
    for length in lengths:
        texts.append(" ".join(flat[start : start + int(length)]))
        start += int(length)
    return texts
