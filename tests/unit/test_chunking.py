"""Heading-aware chunking, measured with a whitespace tokenizer: bounds, overlap, sections, order."""

from __future__ import annotations

import itertools
import re

import pytest

from opsloop.errors import InvalidInputError
from rag.chunking import Chunk, Tokenizer, chunk_document, context_header
from rag.loaders import Document, Section


class WhitespaceTokenizer:
    """One token per run of non-space characters; no special tokens."""

    def count(self, text: str) -> int:
        return len(text.split())

    def offsets(self, text: str) -> list[tuple[int, int]]:
        return [match.span() for match in re.finditer(r"\S+", text)]


TOKENIZER: Tokenizer = WhitespaceTokenizer()


def words(prefix: str, n: int) -> str:
    return " ".join(f"{prefix}{i}" for i in range(n))


def sentences(prefix: str, n: int, length: int = 8) -> str:
    return " ".join(words(f"{prefix}{i}w", length) + "." for i in range(n))


def document(*sections: Section, title: str = "Guide") -> Document:
    return Document("docs/guide.md", title, sections, {"format": "markdown"})


def body(chunk: Chunk) -> str:
    """The chunk text without its context prefix."""
    return chunk.text.split("\n\n", 1)[1]


def test_chunks_never_exceed_max_tokens_and_cover_every_word() -> None:
    paragraphs = "\n\n".join(sentences(f"p{i}s", 5) for i in range(6))
    doc = document(Section(("Install",), paragraphs))
    chunks = chunk_document(doc, tokenizer=TOKENIZER, max_tokens=40, overlap_tokens=8)
    assert len(chunks) > 3
    for chunk in chunks:
        assert chunk.token_count == TOKENIZER.count(chunk.text) <= 40
        assert chunk.text.startswith("Guide > Install\n\n")
    seen = {word for chunk in chunks for word in body(chunk).split()}
    assert seen == set(paragraphs.split())
    assert [chunk.index for chunk in chunks] == list(range(len(chunks)))


def test_consecutive_chunks_overlap_by_at_most_overlap_tokens_starting_at_a_word() -> None:
    text = sentences("s", 20)
    chunks = chunk_document(document(Section((), text)), tokenizer=TOKENIZER, max_tokens=30, overlap_tokens=6)
    assert len(chunks) > 3
    for previous, current in itertools.pairwise(chunks):
        start, end = current.metadata["char_start"], previous.metadata["char_end"]
        assert previous.metadata["char_start"] < start < end
        shared = text[start:end].split()
        assert 1 <= len(shared) <= 6
        assert body(previous).split()[-len(shared) :] == shared
        assert body(current).split()[: len(shared)] == shared
        assert text[start - 1] == " "


def test_zero_overlap_gives_disjoint_chunks() -> None:
    text = sentences("s", 10)
    chunks = chunk_document(document(Section((), text)), tokenizer=TOKENIZER, max_tokens=20, overlap_tokens=0)
    assert " ".join(body(chunk) for chunk in chunks).split() == text.split()


def test_sections_are_never_mixed_and_keep_their_heading_paths() -> None:
    doc = document(
        Section((), "Intro words here."),
        Section(("Install",), sentences("install", 6)),
        Section(("Install", "Linux"), sentences("linux", 6)),
        Section(("Usage",), "Short usage."),
    )
    chunks = chunk_document(doc, tokenizer=TOKENIZER, max_tokens=24, overlap_tokens=4)
    for chunk in chunks:
        section = doc.sections[chunk.metadata["section"]]
        assert chunk.headings == section.headings
        assert set(body(chunk).split()) <= set(section.text.split())
        assert chunk.source == "docs/guide.md" and chunk.title == "Guide"
        assert chunk.metadata["format"] == "markdown"
    prefixes = {chunk.text.split("\n\n", 1)[0] for chunk in chunks}
    assert prefixes == {"Guide", "Guide > Install", "Guide > Install > Linux", "Guide > Usage"}


def test_section_metadata_such_as_a_page_reaches_the_chunk() -> None:
    doc = document(Section((), "Page two text.", {"page": 2}))
    (chunk,) = chunk_document(doc, tokenizer=TOKENIZER)
    assert chunk.metadata["page"] == 2


def test_chunking_is_deterministic() -> None:
    doc = document(Section(("A",), "\n\n".join(sentences(f"p{i}", 4) for i in range(5))))
    first = chunk_document(doc, tokenizer=TOKENIZER, max_tokens=25, overlap_tokens=5)
    assert first == chunk_document(doc, tokenizer=TOKENIZER, max_tokens=25, overlap_tokens=5)


def test_empty_and_blank_sections_are_skipped() -> None:
    doc = document(Section(("Empty",), ""), Section(("Blank",), "  \n\n \t"), Section(("Full",), "Text."))
    chunks = chunk_document(doc, tokenizer=TOKENIZER)
    assert [(chunk.headings, chunk.index) for chunk in chunks] == [(("Full",), 0)]
    assert chunk_document(document(), tokenizer=TOKENIZER) == []


def test_small_paragraphs_are_packed_together() -> None:
    text = "One two.\n\nThree four.\n\nFive six."
    (chunk,) = chunk_document(document(Section((), text)), tokenizer=TOKENIZER, context_prefix=False)
    assert chunk.text == text  # the original separators survive: chunks are slices of the section


def test_a_single_huge_sentence_is_split_on_tokens() -> None:
    text = words("w", 500)
    chunks = chunk_document(
        document(Section((), text)), tokenizer=TOKENIZER, max_tokens=50, overlap_tokens=10
    )
    assert all(chunk.token_count <= 50 for chunk in chunks)
    # Runs of 50 - 1 (prefix) - 10 (overlap) tokens: cut on tokens, not into tiny bits.
    assert all(chunk.token_count >= 40 for chunk in chunks[:-1])
    covered = [word for chunk in chunks for word in body(chunk).split()]
    assert set(covered) == set(text.split())
    assert len(covered) > 500  # the overlap repeats words


def test_paragraph_too_long_is_split_at_sentences_first() -> None:
    text = sentences("s", 10, length=5)
    chunks = chunk_document(
        document(Section((), text)),
        tokenizer=TOKENIZER,
        max_tokens=16,
        overlap_tokens=0,
        context_prefix=False,
    )
    assert all(chunk.text.endswith(".") for chunk in chunks)
    assert all(chunk.token_count <= 16 for chunk in chunks)


def test_context_prefix_can_be_turned_off_and_repeats_are_dropped() -> None:
    doc = document(Section(("Guide", "Install"), "Text."))
    (with_prefix,) = chunk_document(doc, tokenizer=TOKENIZER)
    (without,) = chunk_document(doc, tokenizer=TOKENIZER, context_prefix=False)
    assert with_prefix.text == "Guide > Install\n\nText."
    assert without.text == "Text." and without.headings == ("Guide", "Install")
    assert context_header("", ()) == ""


def test_a_breadcrumb_longer_than_half_the_budget_is_left_out() -> None:
    doc = document(Section((words("h", 20),), "Body text."))
    (chunk,) = chunk_document(doc, tokenizer=TOKENIZER, max_tokens=16, overlap_tokens=0)
    assert chunk.text == "Body text."


@pytest.mark.parametrize(
    ("max_tokens", "overlap_tokens", "field"),
    [
        (15, 0, "max_tokens"),
        (64, 64, "overlap_tokens"),
        (64, 100, "overlap_tokens"),
        (64, -1, "overlap_tokens"),
    ],
)
def test_bad_sizes_name_the_field(max_tokens: int, overlap_tokens: int, field: str) -> None:
    with pytest.raises(InvalidInputError, match=field) as info:
        chunk_document(document(), tokenizer=TOKENIZER, max_tokens=max_tokens, overlap_tokens=overlap_tokens)
    assert info.value.details["field"] == field
