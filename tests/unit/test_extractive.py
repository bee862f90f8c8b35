"""The answer fallback's pure parts: the repetition detector, sentence splitting, the extractive answer."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from rag.extractive import Repetition, extractive_answer, is_repetitive, repetition, split_sentences

MB = 1_000_000

# What SmolLM2-135M answered to "How many retrieved chunks end up in the prompt?" (cut short).
LOOP = (
    "The answer is 2.\n\nThe reason is that the `RAG` command is used to generate a new collection of "
    "chunks. The `RAG` command is used to create a new collection of chunks. The `OPSLOPPER` command is "
    "used to generate a new collection of chunks. The `OPSLOPPER` command is used to create a new "
    "collection of chunks. The `OPSLOPPER` command is used to create a new collection of chunks."
)
NUMBERED_LOOP = "\n\n".join(
    f"{i}. The `models.md` file contains a reference to the `models.md` file that is a CSV file."
    for i in range(1, 6)
)
GOOD = (
    "Create a key with `opsloop keys create --tenant acme --role user` [1]. The key is shown once; "
    "store it, since only its hash is kept [2]."
)


# -- repetition ------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [LOOP, NUMBERED_LOOP, "yes " * 50, "Run it [1]. " * 3])
def test_loops_are_repetitive(text: str) -> None:
    assert is_repetitive(text)


@pytest.mark.parametrize("text", [GOOD, "", "Python 3.11 or newer [1].", "The answer is 2."])
def test_ordinary_answers_are_not_repetitive(text: str) -> None:
    assert not is_repetitive(text)


def test_a_phrase_twice_is_quoting_three_times_is_a_loop() -> None:
    phrase = "opsloop keys create --tenant acme"
    twice = f"Run {phrase} first. Later, run {phrase} again for the second key."
    assert repetition(twice).max_count == 2 and not is_repetitive(twice)
    assert is_repetitive(f"{twice} Then {phrase} once more.")


def test_many_ngrams_repeated_twice_is_a_loop_by_share() -> None:
    text = "one two three four five six seven eight " * 2
    found = repetition(text)
    assert found == Repetition(max_count=2, repeated_share=5 / 13)
    assert is_repetitive(text)
    assert not is_repetitive(text, max_share=0.5)


def test_repetition_ignores_case_and_punctuation_and_counts_short_texts_as_none() -> None:
    assert repetition("Run it. RUN IT! run, it? run it", n=2).max_count == 4
    assert repetition("Run it. RUN IT! run, it? run it").max_count == 3  # "run it run it"
    assert repetition("too short") == Repetition(0, 0.0)


def test_ngram_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="n must be at least 1"):
        repetition("text", n=0)


@pytest.mark.timeout(30)
def test_repetition_is_linear_on_a_megabyte_of_loop() -> None:
    assert is_repetitive("word [1] " * (MB // 9))
    assert repetition(" " * MB) == Repetition(0, 0.0)


# -- sentences -------------------------------------------------------------------------------


def test_sentences_drop_code_tables_headings_and_bullets() -> None:
    text = (
        "# Keys\n\nKeys are created by admins only. Each key has a role!\n"
        "- The viewer role may only read things.\n"
        "1. Rotate a key by creating a new one.\n"
        "```sh\nopsloop keys create --tenant acme --role user\n```\n"
        "| setting | default | meaning |\n|---|---|---|\n| rag_top_k | 5 | chunks a query retrieves |\n"
        "Too short.\n"
    )
    assert split_sentences(text) == [
        "Keys are created by admins only.",
        "Each key has a role!",
        "The viewer role may only read things.",
        "Rotate a key by creating a new one.",
        "rag_top_k; 5; chunks a query retrieves",  # the header row has too few words
    ]


def test_wrapped_lines_join_and_a_cut_first_sentence_is_dropped() -> None:
    text = (
        "the chunk starts in the middle of this sentence. All local state lives in one folder:\n"
        "`./.opsloop` by default, or the folder given by\n`OPSLOOP_HOME`. Delete it to start over.\n"
        "- A list item may wrap\n  onto a second line.\n"
    )
    assert split_sentences(text) == [
        "All local state lives in one folder: `./.opsloop` by default, or the folder given by "
        "`OPSLOOP_HOME`.",
        "Delete it to start over.",
        "A list item may wrap onto a second line.",
    ]


@pytest.mark.timeout(30)
def test_sentence_splitting_is_linear_on_a_megabyte_of_breaks() -> None:
    assert split_sentences(". " * (MB // 2)) == []
    assert split_sentences("\n" * MB + "One two three four.") == ["One two three four."]
    assert split_sentences("A" + " " * MB + "b. C d e f.") == ["C d e f."]
    assert split_sentences("(cut " * 5 + "here. " + "Whole one two three.") == ["Whole one two three."]


# -- extractive answer -----------------------------------------------------------------------

SOURCES = [
    (1, "The server listens on port 8000 by default. Logs go to standard error by default."),
    (2, "Create an API key with opsloop keys create. An admin key is written to admin.key on first start."),
    (3, "Budgets limit what a tenant may spend per day on model calls."),
]


def test_extractive_answer_quotes_the_best_sentences_with_their_markers() -> None:
    text, cited = extractive_answer(
        "Where is the admin key written on first start?", SOURCES, max_sentences=2
    )
    lines = text.splitlines()
    assert lines[0] == "An admin key is written to admin.key on first start. [2]"
    assert len(lines) == 2 and all(line.endswith(("[1]", "[2]", "[3]")) for line in lines)
    assert cited[0] == 2 and len(cited) == len(set(cited))


def test_ties_go_to_the_better_ranked_source_then_the_earlier_sentence() -> None:
    text, cited = extractive_answer("zebra?", SOURCES, max_sentences=3)  # no word in any source
    assert text.splitlines() == [
        "The server listens on port 8000 by default. [1]",
        "Logs go to standard error by default. [1]",
        "Create an API key with opsloop keys create. [2]",
    ]
    assert cited == [1, 2]


def test_extractive_answer_keeps_within_max_chars_but_always_one_sentence() -> None:
    text, _ = extractive_answer("port", SOURCES, max_sentences=3, max_chars=50)
    assert text == "The server listens on port 8000 by default. [1]"
    long = [(4, "Word " * 300 + "end.")]
    text, cited = extractive_answer("word", long, max_chars=100)
    assert text.endswith(" ... [4]") and len(text) <= 110 and cited == [4]


def test_no_sentence_gives_an_empty_answer() -> None:
    assert extractive_answer("anything?", []) == ("", [])
    assert extractive_answer("anything?", [(1, "```\ncode only\n```"), (2, "Too short.")]) == ("", [])


class LetterEmbedder:
    """A deterministic embedder for tests: normalised counts of the letters a-z."""

    dimension = 26

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        rows = np.zeros((len(texts), 26), dtype=np.float32)
        for i, text in enumerate(texts):
            for char in text.lower():
                if "a" <= char <= "z":
                    rows[i, ord(char) - 97] += 1
        return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-9)


def test_with_an_embedder_sentences_rank_by_cosine_to_the_question() -> None:
    sources = [(1, "Zzz zzz zzz zzz zzz. Aaa bbb aaa bbb aaa.")]
    text, _ = extractive_answer("zzzz", sources, embedder=LetterEmbedder(), max_sentences=1)
    assert text == "Zzz zzz zzz zzz zzz. [1]"
    text, _ = extractive_answer("abab", sources, embedder=LetterEmbedder(), max_sentences=1)
    assert text == "Aaa bbb aaa bbb aaa. [1]"
