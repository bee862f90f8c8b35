"""End to end answer with the real embedded LLM (SmolLM2-135M in llama.cpp) and MiniLM tokenizer.

SmolLM2-135M is too small to follow the citation instructions reliably, so this checks the
answer's structure, not its wording.
"""

from __future__ import annotations

import asyncio

from opsloop.llm.llamacpp import LlamaCppClient
from rag.answer import DEFAULT_PROMPT, Answer, Answerer, extract_citations
from rag.chunking import HFTokenizer
from rag.retriever import RetrievedChunk

CHUNKS = [
    RetrievedChunk(
        id="a",
        text="GPU runbook > Out of memory\n\nWhen a training pod fails with CUDA out of memory, "
        "halve the batch size and restart the pod.",
        source="runbooks/gpu.md",
        title="GPU runbook",
        headings=("Out of memory",),
        chunk=0,
        score=0.032,
        dense_score=0.71,
        dense_rank=1,
        sparse_score=4.2,
        sparse_rank=1,
    ),
    RetrievedChunk(
        id="b",
        text="Node drain: cordon the node, then evict its pods before maintenance.",
        source="runbooks/nodes.md",
        title="Node runbook",
        headings=(),
        chunk=3,
        score=0.016,
        dense_score=0.44,
        dense_rank=2,
        sparse_score=None,
        sparse_rank=None,
    ),
]


async def _answer() -> Answer:
    llm = LlamaCppClient()
    try:
        answerer = Answerer(llm, HFTokenizer(), context_tokens=400, max_answer_tokens=40)
        return await answerer.answer(
            "What should I do when a pod runs out of GPU memory?", CHUNKS, DEFAULT_PROMPT, 1
        )
    finally:
        await llm.aclose()


def test_answer_with_the_embedded_llm() -> None:
    result = asyncio.run(_answer())
    assert result.answer.strip()
    assert [s.n for s in result.sources] == [1, 2]
    assert [(s.source, s.title, s.headings) for s in result.sources] == [
        (c.source, c.title, c.headings) for c in CHUNKS
    ]
    assert result.sources[0].text.startswith("When a training pod fails")  # breadcrumb not repeated
    assert set(result.citations) <= {1, 2}
    # The citations are exactly those written in the returned text, which cites nothing else.
    assert extract_citations(result.answer, {1, 2}) == (result.answer, result.citations)
    assert result.usage.prompt_tokens > 0 and 0 < result.usage.completion_tokens <= 40
    assert result.prompt_version == 1
    assert result.backend == "llamacpp" and result.model and "SmolLM2" in result.model
