"""Scorers: one object per metric that turns a scored sample's inputs into a number.

A scorer's :meth:`Scorer.score` returns a float, or None when the metric does not apply to the
sample (no reference sources for hit rate, an empty answer for faithfulness); it raises when it
could not score, and the runner records the failure under the metric. ragas metrics that answer
NaN (faithfulness of an answer without claims) are recorded as *undefined*, also per metric; a
summary mean is taken over real numbers only and says how many were left out and why.

:func:`build_scorers` builds the ragas metrics, importing ragas only then. Non-LLM context
metrics come from ragas' classic single-turn API (``SingleTurnSample`` and
``single_turn_ascore``, where they live in 0.4); the rest from ``ragas.metrics.collections``,
whose LLM metrics take the :class:`~evals.judge.JudgeLLM` adapter. ``ResponseRelevancy`` is
``AnswerRelevancy`` there, run with ``strictness=1``: its default of 3 asks the judge the same
prompt three times, which at temperature 0 gives three equal questions for three times the cost.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from evals.calls import CostFn, JudgeOptions
from evals.metrics import (
    GENERATION_METRICS,
    JUDGE_METRICS,
    METRICS,
    RETRIEVAL_METRICS,
    hit_at_k,
    reciprocal_rank_at_k,
)
from opsloop.errors import ConfigError, InvalidInputError
from opsloop.llm.protocol import LLMClient
from rag.embedder import Embedder

if TYPE_CHECKING:
    from evals.judge import JudgeLLM

__all__ = ["Scorer", "ScoringInput", "build_scorers", "preload", "select_metrics"]


@dataclass(frozen=True)
class ScoringInput:
    """What the metrics of one sample see.

    ``contexts`` are the retrieved chunks' texts, best first (for the context metrics);
    ``answer_contexts`` the texts the model was given (for faithfulness); ``retrieved_sources``
    the chunks' documents, best first (for hit rate and MRR).
    """

    question: str
    reference: str
    answer: str | None
    contexts: tuple[str, ...]
    answer_contexts: tuple[str, ...]
    retrieved_sources: tuple[str, ...]
    reference_contexts: tuple[str, ...]
    reference_sources: tuple[str, ...]
    k: int


class Scorer(Protocol):
    """One metric over one sample."""

    name: str

    async def score(self, sample: ScoringInput) -> float | None:
        """The metric's value; None when it does not apply; NaN when ragas found it undefined."""
        ...


def select_metrics(*, generate: bool, judge: bool, only: Sequence[str] | None = None) -> tuple[str, ...]:
    """The metrics a run computes: retrieval always, generation with answers, judge with a judge.

    ``only`` narrows the choice (operational metrics are always reported and need not be named).

    Raises:
        InvalidInputError: ``only`` names an unknown metric, or one the run cannot compute.
    """
    available = list(RETRIEVAL_METRICS)
    if generate:
        available += GENERATION_METRICS
        if judge:
            available += JUDGE_METRICS
    if only is None:
        return tuple(available)
    chosen = []
    for name in only:
        if name not in METRICS:
            raise InvalidInputError(
                f"unknown metric {name!r}; known: {', '.join(METRICS)}", field="metrics", value=name
            )
        if METRICS[name].kind == "operational":
            continue
        if name not in available:
            why = "needs a judge route (--judge)" if generate else "needs generated answers"
            raise InvalidInputError(f"metric {name!r} {why}", field="metrics", value=name)
        chosen.append(name)
    return tuple(dict.fromkeys(chosen))


# -- scorers ---------------------------------------------------------------------------------------


class _Pure:
    def __init__(self, name: str, fn: Callable[[Sequence[str], Sequence[str], int], float | None]) -> None:
        self.name = name
        self._fn = fn

    async def score(self, sample: ScoringInput) -> float | None:
        return self._fn(sample.retrieved_sources, sample.reference_sources, sample.k)


class _SingleTurn:
    """A classic ragas single-turn metric over retrieved and reference contexts."""

    def __init__(self, name: str, metric: Any, sample_type: Any) -> None:
        self.name = name
        self._metric = metric
        self._sample = sample_type

    async def score(self, sample: ScoringInput) -> float | None:
        if not sample.reference_contexts:
            return None
        if not sample.contexts:
            return 0.0  # nothing retrieved: nothing relevant was found
        turn = self._sample(
            retrieved_contexts=list(sample.contexts), reference_contexts=list(sample.reference_contexts)
        )
        # Computed here, not by a judge: on a thread of its own, off the server's loop.
        return float(await asyncio.to_thread(lambda: asyncio.run(self._metric.single_turn_ascore(turn))))


Arguments = Callable[[ScoringInput], "dict[str, Any] | float | None"]


class _Collection:
    """A ``ragas.metrics.collections`` metric; ``arguments`` maps a sample to its ``ascore`` kwargs.

    ``arguments`` may instead return a number (the value without asking ragas) or None. A
    ``local`` metric (no judge) runs on a thread with a loop of its own: ragas computes it, and
    imports its library on first use, inside ``ascore``, which would hold the server's loop.
    A judge's metric stays on the caller's loop, where the gateway's client lives.
    """

    def __init__(self, name: str, metric: Any, arguments: Arguments, *, local: bool) -> None:
        self.name = name
        self._metric = metric
        self._arguments = arguments
        self._local = local

    async def score(self, sample: ScoringInput) -> float | None:
        arguments = self._arguments(sample)
        if arguments is None or isinstance(arguments, float):
            return arguments
        if self._local:
            result = await asyncio.to_thread(lambda: asyncio.run(self._metric.ascore(**arguments)))
        else:
            result = await self._metric.ascore(**arguments)
        return float(result.value)


def _answer_vs_reference(sample: ScoringInput) -> dict[str, Any] | float | None:
    if sample.answer is None:
        return None
    return {"reference": sample.reference, "response": sample.answer}


def _faithfulness(sample: ScoringInput) -> dict[str, Any] | float | None:
    if not sample.answer or not sample.answer.strip() or not sample.answer_contexts:
        return None  # no claims, or nothing they could be faithful to
    return {
        "user_input": sample.question,
        "response": sample.answer,
        "retrieved_contexts": list(sample.answer_contexts),
    }


def _relevancy(sample: ScoringInput) -> dict[str, Any] | float | None:
    if sample.answer is None:
        return None
    if not sample.answer.strip():
        return 0.0
    return {"user_input": sample.question, "response": sample.answer}


def _context_precision(sample: ScoringInput) -> dict[str, Any] | float | None:
    if not sample.contexts:
        return None
    return {
        "user_input": sample.question,
        "reference": sample.reference,
        "retrieved_contexts": list(sample.contexts),
    }


def _factual(sample: ScoringInput) -> dict[str, Any] | float | None:
    if sample.answer is None:
        return None
    if not sample.answer.strip():
        return 0.0
    return {"response": sample.answer, "reference": sample.reference}


def _offline_ragas() -> None:
    """Keep ragas from posting usage events (opsloop runs offline by design) before it loads.

    ragas reads RAGAS_DO_NOT_TRACK once and caches it, so this must run before its first
    metric; a user who set the variable keeps their choice.
    """
    os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")
    try:
        import ragas  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            "evals need ragas: pip install 'ragas>=0.4,<0.5' 'langchain-community<0.4' "
            "rapidfuzz rouge_score sacrebleu",
            setting="evals",
        ) from exc


def preload() -> None:
    """Import ragas and the libraries its local metrics import on first use (NLTK, ROUGE, BLEU).

    About 3.5 s of CPU that holds the GIL; a server with scheduled evals does it at start, on a
    thread, so that its first eval run does not pay it while requests are being served.
    """
    _offline_ragas()
    import rouge_score.rouge_scorer  # noqa: F401
    import sacrebleu  # noqa: F401
    from ragas.metrics import collections  # noqa: F401


def build_scorers(
    names: Sequence[str],
    *,
    embedder: Embedder | None = None,
    judge: LLMClient | None = None,
    judge_options: JudgeOptions | None = None,
    judge_cost: CostFn | None = None,
) -> list[Scorer]:
    """The scorers of ``names`` (see :func:`select_metrics`), in that order.

    Raises:
        ConfigError: ragas is not installed, or a metric needs an embedder or judge not given.
    """
    _offline_ragas()
    scorers: list[Scorer] = []
    llm: JudgeLLM | None = None
    embeddings: Any = None

    def need_embeddings() -> Any:
        nonlocal embeddings
        if embedder is None:
            raise ConfigError("semantic metrics need an embedder", setting="embedder")
        if embeddings is None:
            from evals.judge import MiniLMEmbeddings

            embeddings = MiniLMEmbeddings(embedder)
        return embeddings

    def need_llm() -> JudgeLLM:
        nonlocal llm
        if judge is None:
            raise ConfigError("judge metrics need a judge route", setting="judge")
        if llm is None:
            from evals.judge import JudgeLLM

            options = judge_options or JudgeOptions()
            llm = JudgeLLM(
                judge,
                max_tokens=options.max_tokens,
                timeout_s=options.timeout_s,
                retries=options.retries,
                cost=judge_cost,
            )
        return llm

    for name in names:
        scorers.append(_scorer(name, need_embeddings, need_llm))
    return scorers


def _scorer(name: str, embeddings: Callable[[], Any], llm: Callable[[], JudgeLLM]) -> Scorer:
    if name == "hit_rate":
        return _Pure(name, hit_at_k)
    if name == "mrr":
        return _Pure(name, reciprocal_rank_at_k)
    if name in ("non_llm_context_precision_with_reference", "non_llm_context_recall"):
        from ragas.dataset_schema import SingleTurnSample
        from ragas.metrics._context_precision import NonLLMContextPrecisionWithReference
        from ragas.metrics._context_recall import NonLLMContextRecall

        classic = NonLLMContextPrecisionWithReference if "precision" in name else NonLLMContextRecall
        return _SingleTurn(name, classic(), SingleTurnSample)
    from ragas.metrics import collections as rc

    factories: dict[str, Callable[[], tuple[Any, Arguments]]] = {
        "rouge_score": lambda: (rc.RougeScore(), _answer_vs_reference),
        "bleu_score": lambda: (rc.BleuScore(), _answer_vs_reference),
        "non_llm_string_similarity": lambda: (rc.NonLLMStringSimilarity(), _answer_vs_reference),
        "semantic_similarity": lambda: (rc.SemanticSimilarity(embeddings=embeddings()), _answer_vs_reference),
        "faithfulness": lambda: (rc.Faithfulness(llm=llm()), _faithfulness),
        "answer_relevancy": lambda: (
            rc.AnswerRelevancy(llm=llm(), embeddings=embeddings(), strictness=1),
            _relevancy,
        ),
        "llm_context_precision_with_reference": lambda: (
            rc.ContextPrecisionWithReference(llm=llm()),
            _context_precision,
        ),
        "factual_correctness": lambda: (rc.FactualCorrectness(llm=llm()), _factual),
    }
    if name not in factories:
        raise ConfigError(f"no scorer for metric {name!r}", setting="metrics")
    metric, arguments = factories[name]()
    return _Collection(name, metric, arguments, local=getattr(metric, "llm", None) is None)
