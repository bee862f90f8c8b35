"""Retrieval quality on the bundled user docs: dense-only against hybrid, hit rate and MRR at k.

``docs/*.md`` is ingested with ``rag.ingest.Ingestor`` (MiniLM, its tokenizer, BM25) into a
fresh Qdrant Edge collection, and every question of ``evals/datasets/docs_golden.jsonl`` is
asked three ways, each returning ``top_k`` chunks:

* ``dense``: ``HybridRetriever`` without a sparse encoder (its documented dense-only mode);
* ``hybrid``: ``HybridRetriever`` with the ``BM25Encoder`` the collection was written with,
  as ``opsloop query`` and ``POST /query`` retrieve;
* ``sparse``: BM25 alone (``store.search_sparse``), for reference.

A retrieved chunk is a hit when its ``source`` is among the item's ``reference_sources``. Hit
rate at k is the share of questions with a hit among the first k chunks; MRR at k the mean of
``1 / rank`` of the first hit (0 without one). Both are also given per phrasing tag:
``keyword`` questions use the docs' own words, ``paraphrase`` ones do not.

The same run times MiniLM embedding one question at a time (what a query pays before any
search), over the set's questions.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.rag.latency import latency_stats
from rag.chunking import HFTokenizer
from rag.embedder import Embedder
from rag.ingest import Ingestor
from rag.retriever import HybridRetriever
from rag.sparse import BM25Encoder
from rag.stores import EdgeStore

__all__ = ["MODES", "GoldenItem", "ItemResult", "load_golden", "measure_quality", "score"]

MODES = ("dense", "hybrid", "sparse")
PHRASINGS = ("keyword", "paraphrase")
COLLECTION = "docs"


@dataclass(frozen=True)
class GoldenItem:
    """One labelled question (the fields the benchmark uses)."""

    question: str
    reference_sources: tuple[str, ...]
    tags: tuple[str, ...]


@dataclass(frozen=True)
class ItemResult:
    """One question's first-hit rank (None: no hit in the top k) and retrieved sources, per mode."""

    item: GoldenItem
    ranks: dict[str, int | None]
    retrieved: dict[str, list[str]]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "question": self.item.question,
            "reference_sources": list(self.item.reference_sources),
            "tags": list(self.item.tags),
            "rank": self.ranks,
            "retrieved_sources": self.retrieved,
        }


def load_golden(path: Path) -> list[GoldenItem]:
    """The items of a golden JSONL file."""
    items = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            raw = json.loads(line)
            items.append(GoldenItem(raw["question"], tuple(raw["reference_sources"]), tuple(raw["tags"])))
    return items


def first_hit(sources: Sequence[str], wanted: Sequence[str]) -> int | None:
    """1-based rank of the first of ``sources`` that is in ``wanted``; None if none is."""
    for rank, source in enumerate(sources, start=1):
        if source in wanted:
            return rank
    return None


def score(ranks: Sequence[int | None]) -> dict[str, float]:
    """Hit rate and MRR of first-hit ranks (already cut at k)."""
    if not ranks:
        return {"n": 0, "hit_rate": float("nan"), "mrr": float("nan")}
    return {
        "n": len(ranks),
        "hit_rate": sum(r is not None for r in ranks) / len(ranks),
        "mrr": sum(1.0 / r for r in ranks if r is not None) / len(ranks),
    }


def measure_quality(
    work: Path,
    embedder: Embedder,
    tokenizer: HFTokenizer,
    *,
    docs: Path,
    golden: Path,
    top_k: int,
    score_threshold: float | None,
) -> dict[str, Any]:
    """Ingest ``docs``, ask every golden question in every mode, and score the modes."""
    items = load_golden(golden)
    encoder = BM25Encoder()
    with EdgeStore(work / "qdrant-docs") as store:
        report = Ingestor(store, embedder, tokenizer, sparse_encoder=encoder).ingest(COLLECTION, docs)
        dense = HybridRetriever(store, embedder, None, top_k=top_k)
        hybrid = HybridRetriever(store, embedder, encoder, top_k=top_k)

        def sparse_only(question: str) -> list[str]:
            hits = store.search_sparse(COLLECTION, encoder.encode_query(question), limit=top_k)
            return [str(h.payload.get("source", "")) for h in hits]

        modes: dict[str, Callable[[str], list[str]]] = {
            "dense": lambda q: [
                c.source for c in dense.retrieve(COLLECTION, q, score_threshold=score_threshold)
            ],
            "hybrid": lambda q: [
                c.source for c in hybrid.retrieve(COLLECTION, q, score_threshold=score_threshold)
            ],
            "sparse": sparse_only,
        }
        per_item = []
        for item in items:
            retrieved = {mode: search(item.question) for mode, search in modes.items()}
            ranks = {mode: first_hit(s, item.reference_sources) for mode, s in retrieved.items()}
            per_item.append(ItemResult(item, ranks, retrieved))
    scores: dict[str, Any] = {}
    for mode in MODES:
        scores[mode] = {"all": score([p.ranks[mode] for p in per_item])} | {
            tag: score([p.ranks[mode] for p in per_item if tag in p.item.tags]) for tag in PHRASINGS
        }
    return {
        "docs_files": len(report.added),
        "docs_chunks": report.chunks_written,
        "questions": len(items),
        "top_k": top_k,
        "score_threshold": score_threshold,
        "scores": scores,
        "hybrid_better": [p.item.question for p in per_item if _better(p.ranks["hybrid"], p.ranks["dense"])],
        "hybrid_worse": [p.item.question for p in per_item if _better(p.ranks["dense"], p.ranks["hybrid"])],
        "query_embedding": time_embedding(embedder, [item.question for item in items]),
        "items": [p.to_dict() for p in per_item],
    }


def time_embedding(embedder: Embedder, questions: Sequence[str]) -> dict[str, float]:
    """Latency of embedding one question at a time (the model is already loaded and warm)."""
    samples = []
    for question in questions:
        begin = time.perf_counter_ns()
        embedder.embed([question])
        samples.append((time.perf_counter_ns() - begin) / 1e6)
    return latency_stats(samples)


def _better(a: int | None, b: int | None) -> bool:
    """Rank ``a`` beats rank ``b`` (a hit beats a miss; a smaller rank beats a larger one)."""
    return a is not None and (b is None or a < b)
