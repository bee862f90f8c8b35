"""The answerer's pure parts: context budget and numbering, citation parsing, don't-know, validation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from opsloop.errors import InvalidInputError
from opsloop.llm.protocol import ChatChunk, ChatRequest, ChatResult, LLMClient, Usage
from rag.answer import (
    DEFAULT_PROMPT,
    DONT_KNOW,
    NOTE_DONT_KNOW,
    NOTE_REPETITIVE,
    NOTE_UNCITED,
    Answerer,
    build_context,
    extract_citations,
    render_prompt,
)
from rag.retriever import RetrievedChunk


class WhitespaceTokenizer:
    """One token per run of non-space characters."""

    def count(self, text: str) -> int:
        return len(text.split())


TOKENIZER = WhitespaceTokenizer()


class ScriptedLLM:
    """An LLMClient that returns a fixed text and records every request it gets."""

    name = "scripted"

    def __init__(self, reply: str = "Restart the pod [1].") -> None:
        self.reply = reply
        self.requests: list[ChatRequest] = []

    async def chat(self, request: ChatRequest) -> ChatResult:
        self.requests.append(request)
        return ChatResult(self.reply, "stop", Usage(100, 7), "scripted-model", self.name)

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        raise AssertionError("the answerer does not stream")
        yield ChatChunk()  # pragma: no cover - makes this an async generator

    async def aclose(self) -> None:
        return None


def chunk(
    i: int, words: int = 10, *, title: str = "Runbook", headings: tuple[str, ...] = ("GPU",)
) -> RetrievedChunk:
    text = " ".join(f"c{i}w{j}" for j in range(words))
    return RetrievedChunk(
        id=f"id{i}",
        text=text,
        source=f"docs/doc{i}.md",
        title="Runbook",
        headings=("GPU",),
        chunk=0,
        score=1.0 / (60 + i),
        dense_score=0.5,
        dense_rank=i,
        sparse_score=None,
        sparse_rank=None,
    )


def block_tokens(words: int, header_tokens: int = 5) -> int:
    # "[n] Runbook > GPU (docs/docN.md)" is 5 whitespace tokens.
    return header_tokens + words


def test_scripted_llm_is_an_llm_client() -> None:
    assert isinstance(ScriptedLLM(), LLMClient)


# -- context -------------------------------------------------------------------------------------


def test_context_numbers_sources_in_rank_order_with_headers() -> None:
    context, sources = build_context([chunk(1, 3), chunk(2, 3)], TOKENIZER, 1000)
    assert context == (
        "[1] Runbook > GPU (docs/doc1.md)\nc1w0 c1w1 c1w2\n\n[2] Runbook > GPU (docs/doc2.md)\nc2w0 c2w1 c2w2"
    )
    assert [(s.n, s.source, s.title, s.headings, s.text) for s in sources] == [
        (1, "docs/doc1.md", "Runbook", ("GPU",), "c1w0 c1w1 c1w2"),
        (2, "docs/doc2.md", "Runbook", ("GPU",), "c2w0 c2w1 c2w2"),
    ]
    assert sources[0].score == chunk(1).score


def test_context_header_without_title_and_breadcrumb_not_repeated() -> None:
    ingested = RetrievedChunk(
        "x", "Runbook > GPU\n\nbody text", "a.md", "Runbook", ("GPU",), 0, 0.1, 0.5, 1, None, None
    )
    bare = RetrievedChunk("y", "plain", "b.txt", "", (), 0, 0.1, 0.5, 2, None, None)
    context, sources = build_context([ingested, bare], TOKENIZER, 1000)
    assert context == "[1] Runbook > GPU (a.md)\nbody text\n\n[2] (b.txt)\nplain"
    assert sources[0].text == "body text"


@pytest.mark.parametrize("extra", [0, 1, 14])
def test_context_stops_at_the_first_source_that_does_not_fit(extra: int) -> None:
    budget = 2 * block_tokens(10) + extra  # two blocks fit; a third needs 15 more
    chunks = [chunk(1), chunk(2), chunk(3), chunk(4, 1)]  # the small fourth would fit, but ranks lower
    context, sources = build_context(chunks, TOKENIZER, budget)
    assert [s.n for s in sources] == [1, 2]
    assert [s.source for s in sources] == ["docs/doc1.md", "docs/doc2.md"]
    assert TOKENIZER.count(context) <= budget
    assert "c3w0" not in context and "c4w0" not in context


def test_context_exactly_full_budget_keeps_the_source() -> None:
    budget = 3 * block_tokens(10)
    _, sources = build_context([chunk(1), chunk(2), chunk(3)], TOKENIZER, budget)
    assert len(sources) == 3


def test_top_source_larger_than_budget_is_cut_at_a_word_boundary() -> None:
    context, sources = build_context([chunk(1, 100), chunk(2)], TOKENIZER, 20)
    assert TOKENIZER.count(context) == 20
    assert [s.n for s in sources] == [1]
    assert sources[0].text == " ".join(f"c1w{j}" for j in range(15))
    assert context.endswith(sources[0].text)


def test_context_with_the_real_minilm_tokenizer_respects_the_budget() -> None:
    from rag.chunking import HFTokenizer

    tokenizer = HFTokenizer()
    chunks = [chunk(i, 40) for i in range(1, 8)]
    context, sources = build_context(chunks, tokenizer, 300)
    assert 1 <= len(sources) < 7
    assert tokenizer.count(context) <= 300
    assert [s.n for s in sources] == list(range(1, len(sources) + 1))
    # One more source would not have fitted.
    longer, more = build_context(chunks[: len(sources) + 1], tokenizer, 10_000)
    assert len(more) == len(sources) + 1 and tokenizer.count(longer) > 300


def test_no_chunks_gives_an_empty_context() -> None:
    assert build_context([], TOKENIZER, 100) == ("", [])


# -- citations -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected_text", "expected"),
    [
        pytest.param("Restart it [1].", "Restart it [1].", [1], id="single"),
        pytest.param("A [2] and B [1].", "A [2] and B [1].", [2, 1], id="order-of-appearance"),
        pytest.param("Both [1, 2].", "Both [1, 2].", [1, 2], id="comma-list"),
        pytest.param("Both [1,2] again [2].", "Both [1,2] again [2].", [1, 2], id="dedup"),
        pytest.param("Both [1][2].", "Both [1][2].", [1, 2], id="adjacent"),
        pytest.param("Both [ 3 ].", "Both [ 3 ].", [3], id="spaces-inside"),
        pytest.param("No citation here.", "No citation here.", [], id="none"),
        pytest.param("Out of range [7].", "Out of range.", [], id="out-of-range-removed"),
        pytest.param("Zero [0] too.", "Zero too.", [], id="zero"),
        pytest.param("Mixed [1, 7].", "Mixed [1].", [1], id="out-of-range-in-list"),
        pytest.param("Mixed [9][2].", "Mixed [2].", [2], id="out-of-range-adjacent"),
        pytest.param("Use x[0] or arr[12].", "Use x[0] or arr[12].", [], id="indexing-is-no-citation"),
        pytest.param("[4] says so [1].", "says so [1].", [1], id="leading"),
        pytest.param("See [source 1].", "See [source 1].", [], id="not-a-number"),
    ],
)
def test_extract_citations(text: str, expected_text: str, expected: list[int]) -> None:
    assert extract_citations(text, {1, 2, 3}) == (expected_text, expected)


# -- prompt ----------------------------------------------------------------------------------


def test_default_prompt_has_both_variables_and_the_dont_know_sentence() -> None:
    assert DONT_KNOW in DEFAULT_PROMPT
    rendered = render_prompt(DEFAULT_PROMPT, context="[1] T (a.md)\nbody", question="Why {{context}}?")
    assert "[1] T (a.md)\nbody" in rendered
    assert "Question: Why {{context}}?" in rendered  # filled in one pass, not expanded again
    assert render_prompt("{{ context }}|{{question}}|{{other}}", context="c", question="q") == "c|q|{{other}}"


def test_prompt_without_variables_is_invalid() -> None:
    with pytest.raises(InvalidInputError) as info:
        render_prompt("Answer: {{question}}", context="c", question="q")
    assert info.value.details["field"] == "prompt_template"
    assert info.value.details["missing"] == ["context"]


# -- answerer --------------------------------------------------------------------------------


def test_answer_calls_the_llm_with_the_rendered_prompt_and_settings() -> None:
    llm = ScriptedLLM("Restart the pod [1] and drain the node [2][5].")
    answerer = Answerer(llm, TOKENIZER, context_tokens=block_tokens(10), max_answer_tokens=32)
    result = asyncio.run(answerer.answer("  How to fix OOM?  ", [chunk(1), chunk(2)], DEFAULT_PROMPT, 3))

    [request] = llm.requests
    assert (request.max_tokens, request.temperature, request.frequency_penalty) == (32, 0.0, None)
    [message] = request.messages
    assert message.role == "user"
    assert message.content == render_prompt(
        DEFAULT_PROMPT, context=build_context([chunk(1)], TOKENIZER, 1000)[0], question="How to fix OOM?"
    )
    # Only source 1 fitted, so [2] and [5] lead nowhere and are removed.
    assert result.answer == "Restart the pod [1] and drain the node."
    assert [s.n for s in result.sources] == [1]
    assert result.citations == [1]
    assert result.usage == Usage(100, 7)
    assert (result.prompt_version, result.model, result.backend) == (3, "scripted-model", "scripted")
    assert (result.mode, result.note, result.generated) == ("generated", None, result.answer)


def test_no_chunks_answers_dont_know_without_calling_the_llm() -> None:
    llm = ScriptedLLM()
    result = asyncio.run(Answerer(llm, TOKENIZER).answer("What is X?", [], DEFAULT_PROMPT, "2"))
    assert llm.requests == []
    assert result.answer == DONT_KNOW
    assert (result.sources, result.citations, result.usage) == ([], [], Usage())
    assert (result.prompt_version, result.model, result.backend) == ("2", None, "scripted")
    assert (result.mode, result.note, result.generated) == ("no_sources", None, None)


# -- the fallback ----------------------------------------------------------------------------

OOM = RetrievedChunk(
    id="oom",
    text="GPU runbook > Out of memory\nWhen a training pod fails with CUDA out of memory, halve the batch "
    "size. Then restart the pod from its last checkpoint.",
    source="runbooks/gpu.md",
    title="GPU runbook",
    headings=("Out of memory",),
    chunk=0,
    score=0.03,
    dense_score=0.7,
    dense_rank=1,
    sparse_score=None,
    sparse_rank=None,
)
LOOPING = "Restart the pod [1]. " + "The pod is restarted by the operator on call. " * 6


@pytest.mark.parametrize(
    ("reply", "note"),
    [
        ("Halve the batch size and restart the pod.", NOTE_UNCITED),
        ("Halve the batch size [7].", NOTE_UNCITED),  # cites a source that does not exist
        (DONT_KNOW, NOTE_DONT_KNOW),
        (LOOPING, NOTE_REPETITIVE),  # cites [1], but loops
    ],
)
def test_an_uncited_or_looping_answer_becomes_extractive(reply: str, note: str) -> None:
    llm = ScriptedLLM(reply)
    result = asyncio.run(
        Answerer(llm, TOKENIZER).answer(
            "What do I do when a pod runs out of GPU memory?", [OOM, chunk(2)], DEFAULT_PROMPT, 1
        )
    )
    assert (result.mode, result.note) == ("extractive", note)
    first = result.answer.splitlines()[0]
    assert first == "When a training pod fails with CUDA out of memory, halve the batch size. [1]"
    assert result.citations[0] == 1
    assert extract_citations(result.answer, {1, 2}) == (result.answer, result.citations)
    assert result.generated == extract_citations(reply, {1, 2})[0]
    assert result.usage == Usage(100, 7) and result.model == "scripted-model"  # the LLM call happened


def test_without_fallback_the_models_answer_stands() -> None:
    result = asyncio.run(
        Answerer(ScriptedLLM(LOOPING), TOKENIZER, fallback=False).answer("Pod OOM?", [OOM], DEFAULT_PROMPT, 1)
    )
    assert (result.mode, result.note, result.answer) == ("generated", None, result.generated)
    assert result.answer.startswith("Restart the pod [1].")


def test_when_no_source_has_a_sentence_the_models_answer_stands() -> None:
    result = asyncio.run(
        Answerer(ScriptedLLM("Uncited."), TOKENIZER).answer("What?", [chunk(1, 3)], DEFAULT_PROMPT, 1)
    )
    assert (result.mode, result.answer, result.citations) == ("generated", "Uncited.", [])


@pytest.mark.parametrize("question", ["", "   \n", None, 42, "x" * 2001])
def test_bad_question_is_invalid_input_naming_the_field(question: object) -> None:
    llm = ScriptedLLM()
    with pytest.raises(InvalidInputError) as info:
        asyncio.run(Answerer(llm, TOKENIZER).answer(question, [chunk(1)], DEFAULT_PROMPT, 1))  # type: ignore[arg-type]
    assert info.value.details["field"] == "question"
    assert llm.requests == []


def test_question_length_limit_is_a_setting() -> None:
    llm = ScriptedLLM()
    answerer = Answerer(llm, TOKENIZER, max_question_chars=5)
    assert asyncio.run(answerer.answer("12345", [chunk(1)], DEFAULT_PROMPT, 1)).citations == [1]
    with pytest.raises(InvalidInputError, match="5 characters"):
        asyncio.run(answerer.answer("123456", [chunk(1)], DEFAULT_PROMPT, 1))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"context_tokens": 0}, "context_tokens"),
        ({"max_answer_tokens": -1}, "max_answer_tokens"),
        ({"max_answer_tokens": True}, "max_answer_tokens"),
        ({"max_question_chars": 0}, "max_question_chars"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"frequency_penalty": 2.5}, "frequency_penalty"),
        ({"frequency_penalty": float("nan")}, "frequency_penalty"),
        ({"frequency_penalty": "high"}, "frequency_penalty"),
    ],
)
def test_bad_settings_are_invalid_input(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        Answerer(ScriptedLLM(), TOKENIZER, **kwargs)  # type: ignore[arg-type]
    assert info.value.details["field"] == field


def test_the_frequency_penalty_goes_with_the_request() -> None:
    llm = ScriptedLLM()
    asyncio.run(Answerer(llm, TOKENIZER, frequency_penalty=0.5).answer("Fix?", [chunk(1)], DEFAULT_PROMPT, 1))
    assert llm.requests[0].frequency_penalty == 0.5
