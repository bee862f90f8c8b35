"""Hybrid retrieval over a real collection: Qdrant Edge, MiniLM dense vectors, BM25 sparse vectors."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from opsloop.errors import InvalidInputError
from rag.chunking import HFTokenizer
from rag.embedder import SentenceTransformerEmbedder
from rag.ingest import Ingestor
from rag.retriever import HybridRetriever, reciprocal_rank_fusion
from rag.sparse import BM25Encoder
from rag.stores import EdgeStore

CORPUS = {
    "gpu.md": """\
# GPU memory

## Out of memory

A CUDA out-of-memory error means the model, its activations and the KV cache need more device
memory than the card has. Lower the batch size, shorten the context, or quantise the weights.
""",
    "billing.md": """\
# Billing and budgets

Every tenant has a monthly budget in dollars. When a request would push spending past the budget,
the gateway refuses it with error code ERR_QUOTA_7731 and the tenant's admin gets an email.
""",
    "gardening.md": """\
# Growing tomatoes

Tomatoes need six to eight hours of direct sun and deep, infrequent watering. Stake the plants
early and pinch the side shoots so the fruit ripens before autumn.
""",
    "canary.md": """\
# Canary releases

A new model version first serves five percent of the traffic. If its error rate and latency stay
within the limits for an hour, the rollout continues; otherwise it rolls back by itself.
""",
    "errors.md": """\
# Gateway error codes

The gateway answers with a JSON error body. Rate limits give HTTP 429, authentication problems 401,
and an upstream model failure 502. Each body names the field that was wrong.
""",
}


@pytest.fixture(scope="module")
def retriever(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HybridRetriever]:
    root = tmp_path_factory.mktemp("retriever")
    for name, text in CORPUS.items():
        (root / "docs" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "docs" / name).write_text(text, encoding="utf-8")
    embedder = SentenceTransformerEmbedder()
    encoder = BM25Encoder()
    with EdgeStore(root / "qdrant") as store:
        Ingestor(store, embedder, HFTokenizer(), sparse_encoder=encoder).ingest("docs", root / "docs")
        yield HybridRetriever(store, embedder, encoder)


def test_an_error_code_is_found_by_its_keyword(retriever: HybridRetriever) -> None:
    [top, *_] = retriever.retrieve("docs", "ERR_QUOTA_7731")
    assert top.source == "billing.md"
    assert top.sparse_rank == 1
    assert top.sparse_score is not None and top.sparse_score > 0
    assert "ERR_QUOTA_7731" in top.text
    assert top.title == "Billing and budgets"


def test_a_paraphrase_is_found_by_meaning(retriever: HybridRetriever) -> None:
    hits = retriever.retrieve("docs", "my graphics card does not have enough VRAM for the LLM")
    assert hits[0].source == "gpu.md"
    assert hits[0].dense_rank == 1
    assert hits[0].headings == ("GPU memory", "Out of memory")


def test_results_are_fused_by_reciprocal_rank(retriever: HybridRetriever) -> None:
    hits = retriever.retrieve("docs", "gateway error code when the budget is exceeded", top_k=5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    for hit in hits:
        expected = sum(1 / (60 + rank) for rank in (hit.dense_rank, hit.sparse_rank) if rank is not None)
        assert hit.score == pytest.approx(expected)
        assert -1.0 <= hit.dense_score <= 1.0
    assert reciprocal_rank_fusion([["a", "b"], ["b", "c"]], k=60) == pytest.approx(
        {"a": 1 / 61, "b": 1 / 62 + 1 / 61, "c": 1 / 62}
    )


def test_filter_applies_to_both_searches(retriever: HybridRetriever) -> None:
    hits = retriever.retrieve("docs", "ERR_QUOTA_7731 error", filter={"source": "canary.md"})
    assert hits and {h.source for h in hits} == {"canary.md"}
    hits = retriever.retrieve("docs", "error", filter={"source": ["errors.md", "gpu.md"]}, top_k=10)
    assert hits and {h.source for h in hits} <= {"errors.md", "gpu.md"}


def test_score_threshold_drops_weak_hits_including_keyword_only_ones(retriever: HybridRetriever) -> None:
    # Unrelated to the corpus except for "hour", which only the canary page has.
    query = "chocolate cake recipe: bake at 180 degrees for one hour"
    hits = retriever.retrieve("docs", query, top_k=3, candidates=3)
    [keyword_only] = [h for h in hits if h.dense_rank is None]
    assert (keyword_only.source, keyword_only.sparse_rank) == ("canary.md", 1)
    # Its cosine, computed from the stored vector, is what a wider dense search reports for it.
    everything = {h.id: h for h in retriever.retrieve("docs", query, top_k=5)}
    assert keyword_only.dense_score == pytest.approx(everything[keyword_only.id].dense_score, abs=1e-5)

    assert retriever.retrieve("docs", query, score_threshold=0.5) == []
    others = [h.dense_score for h in hits if h is not keyword_only]
    floor = (keyword_only.dense_score + min(others)) / 2
    kept = retriever.retrieve("docs", query, top_k=3, candidates=3, score_threshold=floor)
    assert kept and keyword_only.id not in {h.id for h in kept}
    assert all(h.dense_score >= floor for h in kept)

    strict = retriever.retrieve("docs", "tomato plants need sun and water", score_threshold=0.3, top_k=10)
    assert strict and strict[0].source == "gardening.md"
    assert all(h.dense_score >= 0.3 for h in strict)


def test_top_k_is_honoured(retriever: HybridRetriever) -> None:
    assert len(retriever.retrieve("docs", "model", top_k=1)) == 1
    assert len(retriever.retrieve("docs", "model", top_k=3)) == 3
    assert len(retriever.retrieve("docs", "model")) == 5
    assert len(retriever.retrieve("docs", "model", top_k=50, candidates=2)) == 5  # pool grows to top_k


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"query": "  "}, "query"),
        ({"query": "x", "top_k": 0}, "top_k"),
        ({"query": "x", "candidates": -1}, "candidates"),
        ({"query": "x", "score_threshold": float("nan")}, "score_threshold"),
    ],
)
def test_bad_arguments_name_the_field(
    retriever: HybridRetriever, kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(InvalidInputError) as info:
        retriever.retrieve("docs", **kwargs)  # type: ignore[arg-type]
    assert info.value.details["field"] == field
