"""Loaders, chunking and the sparse tokenizer on adversarial text: linear time, shown by size.

Each input is a megabyte or more of what made the old patterns backtrack: runs of blanks, of
``#``, of sentence ends, of newlines. No test reads a clock. A quadratic pass over a megabyte runs
for tens of minutes or more (the old heading patterns took 25 s on a 60 KB line, the old sentence
splitter 0.6 s on 20,000 blanks; each doubling of the input quadrupled it), a linear one takes
milliseconds, so the 30-second timeout on each test is what fails a quadratic rewrite; the tests
themselves check the results.

The rewritten parsers must also agree with the old patterns wherever those finish: every short
string over the characters that matter is compared against the old pattern, kept here as the
reference (on a few characters it is fast).
"""

from __future__ import annotations

import itertools
import re

import pytest

from rag.answer import extract_citations
from rag.chunking import _SENTENCE_BREAK, chunk_document
from rag.loaders import Document, Section, _atx_heading, load_bytes
from rag.sparse import tokenize
from tests.unit.test_chunking import TOKENIZER

MB = 1_000_000

# The patterns this module replaced: the references for short inputs, quadratic on long ones.
_OLD_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?[ \t]*$")
_OLD_ATX_CLOSE = re.compile(r"(?:^|[ \t]+)#+$")
_OLD_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"'\u201d\u2019)\]])\s+|[ \t]*\n\s*")

linear = pytest.mark.timeout(30)


def strings(alphabet: str, longest: int) -> list[str]:
    return ["".join(chars) for n in range(longest + 1) for chars in itertools.product(alphabet, repeat=n)]


def old_atx_heading(line: str) -> tuple[int, str] | None:
    match = _OLD_ATX.match(line)
    if match is None:
        return None
    return len(match.group(1)), _OLD_ATX_CLOSE.sub("", match.group(2) or "").strip()


# --------------------------------------------------------------------------- the same results


def test_headings_parse_as_the_old_patterns_did_on_every_short_line() -> None:
    lines = strings(" #a", 9) + strings(" \t#a\u00a0", 5)
    lines += ["#" * 7 + " a", "    # a", "## C# ##", "# a # b", "###### x ######", "#\ta\t#\t"]
    for line in lines:
        assert _atx_heading(line) == old_atx_heading(line), repr(line)


def test_sentence_breaks_are_the_old_ones_on_every_short_text() -> None:
    for text in strings('a." \t\n\u00a0', 5):
        # Searches start at a non-blank, as chunking's (trimmed) spans do, or at the start.
        starts = [0] + [i for i, char in enumerate(text) if not char.isspace()]
        for start in starts:
            old = [match.span() for match in _OLD_SENTENCE_BREAK.finditer(text, start)]
            assert [match.span() for match in _SENTENCE_BREAK.finditer(text, start)] == old, repr(text)


# --------------------------------------------------------------------------- Markdown headings


def words(n: int) -> str:
    return " ".join(f"w{i}" for i in range(n))


def markdown(text: str) -> Document:
    return load_bytes(text.encode(), source="upload.md")


@linear
def test_the_60_kb_heading_line_of_the_report_scaled_to_a_megabyte() -> None:
    heading = "a" + " " * MB + "b"
    document = markdown(f"# {heading}\n\nBody.\n")
    assert document.title == heading
    assert document.sections == (Section((heading,), "Body."),)


@linear
@pytest.mark.parametrize(
    ("line", "level", "text"),
    [
        ("## x" + " \t" * MB + "y ##", 2, "x" + " \t" * MB + "y"),
        ("# a" + " " * MB + "#" * MB + "b", 1, "a" + " " * MB + "#" * MB + "b"),
        ("# a" + "\t" * MB + "#" * MB, 1, "a"),
        ("# " + "#" * MB, 1, ""),
        ("#" + " " * MB, 1, ""),
        ("# " * MB, 1, "# " * (MB - 3) + "#"),
        ("### a" + " " * MB + "\u00a0", 3, "a"),
    ],
    ids=["blanks-and-tabs", "blanks-then-hashes", "closing-run", "only-hashes", "only-blanks",
         "hash-blank-pairs", "blanks-then-nbsp"],
)  # fmt: skip
def test_heading_lines_with_long_runs_parse_in_one_pass(line: str, level: int, text: str) -> None:
    assert _atx_heading(line) == (level, text)
    document = markdown(line + "\nBody.")
    assert document.sections == (Section((text,), "Body."),)


@linear
@pytest.mark.parametrize(
    "line",
    ["#" * MB, "#" * MB + " a", "    #" + " " * MB + "a", "#a" + " " * MB + "b", " " * MB + "# a"],
    ids=["hashes", "too-many-hashes", "indented", "no-blank-after-hash", "deep-indent"],
)
def test_long_lines_that_are_not_headings_stay_text(line: str) -> None:
    assert _atx_heading(line) is None
    assert markdown(line).sections == (Section((), line.rstrip()),)


@linear
def test_a_5_mb_single_line_of_blanks_and_letters_loads_and_chunks() -> None:
    line = words(40) + " " * (5 * MB) + "end"  # 41 tokens: too long for one chunk, so split
    document = load_bytes(line.encode(), source="one-line.md")
    assert document.sections == load_bytes(line.encode(), source="one-line.txt").sections
    assert document.sections == (Section((), line),)
    chunks = chunk_document(document, tokenizer=TOKENIZER, max_tokens=16, overlap_tokens=4)
    assert all(chunk.token_count <= 16 for chunk in chunks)
    assert {word for chunk in chunks for word in chunk.text.split()} == set(line.split()) | {"one-line"}
    heading = load_bytes(f"# {line}\n\nBody.".encode(), source="one-line.md")
    assert heading.sections == (Section((line,), "Body."),)


@linear
@pytest.mark.parametrize(
    "text",
    [
        "---\n" + "--- " + " " * MB + "x\n",
        "---\n" + "\n" * (MB // 10) + "body",
        "---\n" + ("---" + " " * 100 + "x\n") * 10_000,
        "---" + " \t" * MB,
    ],
    ids=["blanks-after-dashes", "unclosed", "many-near-closings", "no-newline"],
)
def test_front_matter_that_does_not_close_is_refused_in_one_pass(text: str) -> None:
    document = markdown(text)
    assert document.title == "upload" and document.metadata.keys() == {"format", "sha256"}


@linear
def test_front_matter_between_long_fence_lines_is_found_in_one_pass() -> None:
    document = markdown("---" + " \t" * MB + "\ntitle: Long\n---" + " " * MB + "\n# H\n\nbody")
    assert document.title == "Long" and document.sections == (Section(("H",), "body"),)


@linear
def test_code_fences_of_a_megabyte_open_and_close() -> None:
    fence = "`" * MB
    document = markdown(f"{fence}\n# code\n{fence}\n# Heading\n\ntext")
    assert [section.headings for section in document.sections] == [(), ("Heading",)]


# --------------------------------------------------------------------------- chunking


@linear
@pytest.mark.parametrize(
    "text",
    [
        words(40) + " " * MB + "end",
        words(40) + "\t" * MB + "end",
        words(40) + " \t" * MB + "end",
        words(40) + " " * MB + "\u00a0\nend",
        words(40) + '."' + " " * MB + "end",
        words(40) + " " + "." * MB + " " + "!" * MB + " " + "?" * MB + " end",
        words(40) + " " + ".!?" * MB + " " * MB + "end",
        words(40) + "\n" * MB + "end",
        words(40) + "\n \t" * MB + "end",
    ],
    ids=["blanks", "tabs", "blanks-and-tabs", "blanks-then-newline", "quoted-end-then-blanks",
         "runs-of-ends", "ends-then-blanks", "newlines", "blank-lines"],
)  # fmt: skip
def test_sentence_and_paragraph_splitting_is_linear(text: str) -> None:
    # 41 words or more: too long for one chunk, so every paragraph is split into sentences.
    document = Document("long.md", "", (Section((), text),))
    chunks = chunk_document(document, tokenizer=TOKENIZER, max_tokens=16, overlap_tokens=4)
    assert all(chunk.token_count <= 16 for chunk in chunks)
    assert {word for chunk in chunks for word in chunk.text.split()} == set(text.split())


# --------------------------------------------------------------------------- sparse tokens


@linear
@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        (" " * (5 * MB), []),
        ("_" * MB + " " + "É" * MB, ["_" * MB, "é" * MB]),
        (("E4012" + " " * 95) * 10_000, ["e4012"] * 10_000),
        ("#." * MB + "x", ["x"]),
    ],
    ids=["blanks", "long-words", "codes-between-blanks", "punctuation"],
)
def test_sparse_tokens_take_one_pass(text: str, tokens: list[str]) -> None:
    assert tokenize(text) == tokens


@pytest.mark.timeout(30)
def test_citation_markers_after_a_megabyte_of_blanks_take_one_pass() -> None:
    """Model output is untrusted too: the citation cleaner once rescanned every run of blanks."""
    text = "The answer is here" + " " * 1_000_000 + "[1] and [7]" + "\t" * 1_000_000 + "end"
    cleaned, cited = extract_citations(text, {1, 2})
    assert cited == [1] and "[7]" not in cleaned and cleaned.endswith("end")
