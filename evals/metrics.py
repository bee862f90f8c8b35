"""The metrics an eval run reports: their names, kinds and directions, and the pure ones.

=================================================  ===========  ========================================
metric                                             kind         computed by
=================================================  ===========  ========================================
``hit_rate``, ``mrr``                              retrieval    here, from ``reference_sources`` (at k)
``non_llm_context_precision_with_reference``       retrieval    ragas, string similarity of contexts
``non_llm_context_recall``                         retrieval    ragas, string similarity of contexts
``rouge_score``, ``bleu_score``                    generation   ragas, answer against ``reference``
``non_llm_string_similarity``                      generation   ragas (Levenshtein)
``semantic_similarity``                            generation   ragas with the MiniLM embedder
``faithfulness``                                   judge        ragas, an LLM judge through the gateway
``answer_relevancy`` (ragas ResponseRelevancy)     judge        ragas, judge + MiniLM
``llm_context_precision_with_reference``           judge        ragas
``factual_correctness``                            judge        ragas (F1 of claims)
``latency_ms``, ``cost_usd``                       operational  the pipeline's timings and prices
=================================================  ===========  ========================================

Every metric is higher-is-better except the operational ones. Retrieval metrics need no answer
(``--no-generate`` runs them alone); judge metrics run only when a judge route is given.

Hit rate at k is 1 when any of the first k retrieved chunks comes from a reference source;
MRR at k is 1/rank of the first such chunk (0 when none is in the first k). Both are
undefined (the sample is skipped for them) when the item names no reference source.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "GENERATION_METRICS",
    "JUDGE_METRICS",
    "METRICS",
    "OPERATIONAL_METRICS",
    "RETRIEVAL_METRICS",
    "MetricKind",
    "MetricSpec",
    "hit_at_k",
    "metric_spec",
    "reciprocal_rank_at_k",
]

MetricKind = Literal["retrieval", "generation", "judge", "operational"]


@dataclass(frozen=True)
class MetricSpec:
    """A metric's name (as reported and logged to MLflow), kind and direction."""

    name: str
    kind: MetricKind
    description: str
    higher_is_better: bool = True


METRICS: dict[str, MetricSpec] = {
    spec.name: spec
    for spec in (
        MetricSpec("hit_rate", "retrieval", "a reference source among the top k chunks"),
        MetricSpec("mrr", "retrieval", "1 / rank of the first chunk from a reference source"),
        MetricSpec(
            "non_llm_context_precision_with_reference",
            "retrieval",
            "ragas: ranked share of retrieved chunks that match a reference context",
        ),
        MetricSpec(
            "non_llm_context_recall", "retrieval", "ragas: share of reference contexts that were retrieved"
        ),
        MetricSpec("rouge_score", "generation", "ragas: ROUGE-L F1 of the answer against the reference"),
        MetricSpec("bleu_score", "generation", "ragas: BLEU of the answer against the reference"),
        MetricSpec(
            "non_llm_string_similarity", "generation", "ragas: Levenshtein similarity to the reference"
        ),
        MetricSpec("semantic_similarity", "generation", "ragas: MiniLM cosine of answer and reference"),
        MetricSpec("faithfulness", "judge", "ragas: share of the answer's claims the sources support"),
        MetricSpec(
            "answer_relevancy", "judge", "ragas ResponseRelevancy: does the answer address the question"
        ),
        MetricSpec(
            "llm_context_precision_with_reference",
            "judge",
            "ragas: ranked share of retrieved chunks useful for the reference answer",
        ),
        MetricSpec("factual_correctness", "judge", "ragas: F1 of the answer's claims against the reference"),
        MetricSpec("latency_ms", "operational", "the pipeline's time per question", higher_is_better=False),
        MetricSpec("cost_usd", "operational", "answer and judge cost per question", higher_is_better=False),
    )
}
"""Every metric by name, in report order."""

RETRIEVAL_METRICS = tuple(n for n, s in METRICS.items() if s.kind == "retrieval")
GENERATION_METRICS = tuple(n for n, s in METRICS.items() if s.kind == "generation")
JUDGE_METRICS = tuple(n for n, s in METRICS.items() if s.kind == "judge")
OPERATIONAL_METRICS = tuple(n for n, s in METRICS.items() if s.kind == "operational")


def metric_spec(name: str) -> MetricSpec:
    """The spec of metric ``name``.

    Raises:
        KeyError: No such metric; the message lists the known ones.
    """
    try:
        return METRICS[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; known: {', '.join(METRICS)}") from None


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")


def reciprocal_rank_at_k(retrieved: Sequence[str], relevant: Collection[str], k: int) -> float | None:
    """1 / rank of the first of ``retrieved`` (sources, best first) in ``relevant``, within k.

    0.0 when none of the first ``k`` is relevant; None when ``relevant`` is empty (undefined).
    """
    _check_k(k)
    if not relevant:
        return None
    for rank, source in enumerate(retrieved[:k], start=1):
        if source in relevant:
            return 1.0 / rank
    return 0.0


def hit_at_k(retrieved: Sequence[str], relevant: Collection[str], k: int) -> float | None:
    """1.0 when any of the first ``k`` of ``retrieved`` is in ``relevant``, else 0.0.

    None when ``relevant`` is empty (undefined).
    """
    rr = reciprocal_rank_at_k(retrieved, relevant, k)
    return None if rr is None else float(rr > 0)
