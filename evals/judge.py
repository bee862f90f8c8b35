"""Adapters from opsloop's seams to what ragas 0.4's metric collections expect.

``ragas.metrics.collections`` metrics take an ``InstructorBaseRagasLLM`` (``agenerate(prompt,
response_model)`` returning a parsed pydantic object) and a ``BaseRagasEmbedding``. ragas builds
those over the OpenAI SDK and ``instructor``; here they are built over opsloop's own
:class:`~opsloop.llm.protocol.LLMClient` (so judge calls go through the gateway, its routing,
fallbacks and cost ledger) and :class:`~rag.embedder.Embedder` (the packaged MiniLM).

:class:`JudgeLLM` asks the judge for JSON of the output's schema (in ragas' prompt, and as the
request's ``json_schema``, which constrains decoding where the backend can), pulls
the first JSON object that validates out of whatever the model wrote (code fences, chatter), and
retries a timeout, a backend failure or unparsable output up to ``retries`` times, the retries
with a little temperature so that a deterministic model does not repeat the same bad answer.
What still fails raises :class:`JudgeError` with a ``reason`` (``timeout``, ``backend_error``,
``unparsable``, ``rejected``), which the runner counts per metric. A request the backend refuses
as bad (``InvalidInputError``, e.g. a prompt over the context window) is not retried.

Token use and cost are added to the :class:`JudgeTally` of the sample being scored, found
through a context variable that the runner sets in each sample's task, so concurrent samples
never mix their counts.

This module imports ragas at import time; import it lazily (``evals.scoring`` does).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from ragas.embeddings.base import BaseRagasEmbedding
from ragas.llms.base import InstructorBaseRagasLLM

from evals.calls import CostFn, FailureReason, JudgeError, current_tally
from opsloop.errors import InvalidInputError, OpsloopError
from opsloop.llm.protocol import ChatMessage, ChatRequest, LLMClient
from rag.embedder import Embedder

__all__ = ["JudgeLLM", "MiniLMEmbeddings", "parse_json"]

T = TypeVar("T", bound=BaseModel)

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def parse_json(text: str, model: type[T]) -> T:
    """The first JSON object in ``text`` that validates as ``model``.

    Looks inside code fences first, then at every ``{`` in the text in turn.

    Raises:
        ValueError: No JSON object in ``text`` validates; the message says what was tried.
    """
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    decoder = json.JSONDecoder()
    last_error = "no JSON object found"
    for candidate in candidates:
        for start in (i for i, ch in enumerate(candidate) if ch == "{"):
            try:
                value, _ = decoder.raw_decode(candidate, start)
            except json.JSONDecodeError as exc:
                last_error = f"invalid JSON: {exc.msg}"
                continue
            try:
                return model.model_validate(value)
            except ValidationError as exc:
                last_error = f"JSON does not match {model.__name__}: {exc.errors()[0]['msg']}"
    raise ValueError(last_error)


class JudgeLLM(InstructorBaseRagasLLM):
    """An opsloop LLM client as a ragas judge (see the module docs).

    Args:
        client: The judge's LLM client, usually a gateway route.
        max_tokens: Completion limit of each judge call.
        timeout_s: Seconds one call may take.
        retries: Further tries after a failed call.
        retry_temperature: Sampling temperature of the retries (the first call uses 0).
        cost: Prices one call; None counts no cost (tokens are still counted).
    """

    def __init__(
        self,
        client: LLMClient,
        *,
        max_tokens: int = 512,
        timeout_s: float = 120.0,
        retries: int = 2,
        retry_temperature: float = 0.4,
        cost: CostFn | None = None,
    ) -> None:
        if max_tokens < 1:
            raise InvalidInputError("judge max_tokens must be positive", field="judge_max_tokens")
        if timeout_s <= 0:
            raise InvalidInputError("judge timeout must be positive", field="judge_timeout_s")
        if retries < 0:
            raise InvalidInputError("judge retries must be >= 0", field="judge_retries")
        self.client = client
        self.max_tokens = max_tokens
        self.timeout_s = timeout_s
        self.retries = retries
        self.retry_temperature = retry_temperature
        self.cost = cost

    def generate(self, prompt: str, response_model: type[T]) -> T:
        """Not supported: ragas' collections call :meth:`agenerate`; the judge is async only."""
        raise TypeError("JudgeLLM is asynchronous: use agenerate() (metric.ascore())")

    async def agenerate(self, prompt: str, response_model: type[T]) -> T:
        """Ask the judge and parse its answer as ``response_model``, retrying failures.

        Raises:
            JudgeError: Every try failed; ``reason`` is the last failure's.
        """
        tally = current_tally.get()
        reason: FailureReason = "backend_error"
        message = ""
        attempts = self.retries + 1
        loop = asyncio.get_running_loop()
        # Backends that can constrain decoding to the schema (llama.cpp, vLLM) then always
        # answer parsable JSON; the others get the schema in ragas' prompt only.
        schema = response_model.model_json_schema()
        for attempt in range(attempts):
            request = ChatRequest(
                messages=[ChatMessage(role="user", content=prompt)],
                max_tokens=self.max_tokens,
                temperature=0.0 if attempt == 0 else self.retry_temperature,
                json_schema=schema,
            )
            if tally is not None:
                tally.calls += 1
                tally.retries += attempt > 0
            started = loop.time()
            try:
                async with asyncio.timeout(self.timeout_s):
                    result = await self.client.chat(request)
            except TimeoutError:
                reason, message = "timeout", f"the judge did not answer within {self.timeout_s:g} s"
                continue
            except InvalidInputError as exc:
                raise JudgeError(
                    "rejected", f"the judge refused the request: {exc.message}", attempt + 1
                ) from exc
            except OpsloopError as exc:
                reason, message = "backend_error", f"the judge failed: {exc.message}"
                continue
            if tally is not None:
                tally.prompt_tokens += result.usage.prompt_tokens
                tally.completion_tokens += result.usage.completion_tokens
                if self.cost is not None:
                    tally.cost_usd += self.cost(result.backend, result.usage, (loop.time() - started) * 1000)
            try:
                return parse_json(result.text, response_model)
            except ValueError as exc:
                reason, message = "unparsable", f"unparsable judge output ({exc}): {result.text[:120]!r}"
        raise JudgeError(reason, message, attempts)


class MiniLMEmbeddings(BaseRagasEmbedding):
    """An opsloop :class:`~rag.embedder.Embedder` (MiniLM by default) as ragas embeddings."""

    def __init__(self, embedder: Embedder) -> None:
        super().__init__(cache=None)
        self.embedder = embedder

    def embed_text(self, text: str, **kwargs: Any) -> list[float]:
        """The text's unit-length vector."""
        return [float(x) for x in self.embedder.embed([text])[0]]

    async def aembed_text(self, text: str, **kwargs: Any) -> list[float]:
        """:meth:`embed_text` on a worker thread."""
        return await asyncio.to_thread(self.embed_text, text)

    def embed_texts(self, texts: Sequence[str], **kwargs: Any) -> list[list[float]]:
        """One batch through the model."""
        return [[float(x) for x in row] for row in self.embedder.embed(list(texts))]

    async def aembed_texts(self, texts: Sequence[str], **kwargs: Any) -> list[list[float]]:
        """:meth:`embed_texts` on a worker thread."""
        return await asyncio.to_thread(self.embed_texts, texts)
