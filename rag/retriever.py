"""Hybrid retrieval: dense (semantic) and sparse (BM25 keyword) search fused by reciprocal rank.

Dense search finds paraphrases ("the GPU ran out of memory" for a chunk about CUDA OOM errors);
sparse search finds exact tokens a small embedding model blurs (error codes, flags, names). Each
returns up to ``candidates`` hits under the same filter, and reciprocal rank fusion (RRF, Cormack
et al. 2009) merges the two lists::

    score(chunk) = sum over lists containing it: 1 / (rrf_k + rank)      rank starting at 1

RRF uses ranks only, so cosine similarities and BM25 sums, which live on unrelated scales, need
no calibration; ``rrf_k = 60`` is the paper's constant, which damps the gap between the first
few ranks.

``score_threshold`` is a floor on the *dense cosine similarity* of each fused chunk, never on the
RRF score (whose values say nothing about relevance on their own). Chunks found only by sparse
search get their cosine from the store (a dense query restricted to their ids, which reads no
vectors back), so the floor drops keyword-only hits
that are semantically unrelated too; every result carries ``dense_score``. Payloads (the chunk's
text and source) are read for the ``top_k`` results only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from opsloop import tracing
from opsloop.errors import InvalidInputError
from rag.embedder import Embedder
from rag.sparse import BM25Encoder
from rag.stores.protocol import FilterValue, VectorStore

__all__ = ["RRF_K", "HybridRetriever", "RetrievedChunk", "reciprocal_rank_fusion"]

RRF_K = 60


@dataclass(frozen=True)
class RetrievedChunk:
    """One retrieved chunk, best first; ``score`` is its RRF score.

    ``dense_rank`` and ``sparse_rank`` (1-based) say where each search placed it, None where it
    did not return it; ``sparse_score`` is the BM25 score where sparse search found it.
    """

    id: str
    text: str
    source: str
    title: str
    headings: tuple[str, ...]
    chunk: int
    score: float
    dense_score: float
    dense_rank: int | None
    sparse_score: float | None
    sparse_rank: int | None
    payload: dict[str, Any] = field(default_factory=dict)


def reciprocal_rank_fusion(rankings: list[list[str]], *, k: int = RRF_K) -> dict[str, float]:
    """RRF score of every id in ``rankings`` (each list best first): sum of ``1 / (k + rank)``."""
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    return scores


class HybridRetriever:
    """Dense + sparse search over a collection written by ``Ingestor``, fused with RRF.

    Args:
        store: The vector store holding the collection.
        embedder: The embedder the collection was written with.
        sparse_encoder: The BM25 encoder the collection was written with (same settings); None
            searches dense only.
        top_k: Default number of results.
        candidates: Default hits taken from each search before fusion; None means
            ``max(20, 4 * top_k)``. More candidates help a chunk that ranks well in one list only.
        rrf_k: The RRF constant.

    Raises:
        InvalidInputError: A setting is out of range; ``details["field"]`` names it.
    """

    def __init__(
        self,
        store: VectorStore,
        embedder: Embedder,
        sparse_encoder: BM25Encoder | None = None,
        *,
        top_k: int = 5,
        candidates: int | None = None,
        rrf_k: int = RRF_K,
    ) -> None:
        _check_positive("top_k", top_k)
        if candidates is not None:
            _check_positive("candidates", candidates)
        _check_positive("rrf_k", rrf_k)
        self.store = store
        self.embedder = embedder
        self.sparse_encoder = sparse_encoder
        self.top_k = top_k
        self.candidates = candidates
        self.rrf_k = rrf_k

    def retrieve(
        self,
        collection: str,
        query: str,
        *,
        top_k: int | None = None,
        filter: Mapping[str, FilterValue] | None = None,
        score_threshold: float | None = None,
        candidates: int | None = None,
    ) -> list[RetrievedChunk]:
        """The ``top_k`` best chunks for ``query``, best first.

        Args:
            collection: The collection to search.
            query: The user's question or keywords.
            top_k: Results wanted; default the retriever's ``top_k``.
            filter: Payload equality filter for both searches, e.g. ``{"source": "a.md"}``.
            score_threshold: Drop chunks whose dense cosine similarity is below this (see the
                module docs); None keeps all.
            candidates: Hits per search before fusion; default the retriever's setting.

        Raises:
            InvalidInputError: Empty query or a bad number; ``details["field"]`` names it.
            NotFoundError: The collection does not exist.
        """
        if not isinstance(query, str) or not query.strip():
            raise InvalidInputError("query must be a non-empty string", field="query", value=repr(query))
        if score_threshold is not None and not (
            isinstance(score_threshold, int | float) and math.isfinite(score_threshold)
        ):
            raise InvalidInputError(
                "score_threshold must be a finite number",
                field="score_threshold",
                value=repr(score_threshold),
            )
        k = self.top_k if top_k is None else _check_positive("top_k", top_k)
        pool = candidates if candidates is not None else self.candidates
        pool = max(20, 4 * k) if pool is None else max(_check_positive("candidates", pool), k)

        # Payloads are read for the k chunks returned only: in Qdrant Edge, reading back the
        # payloads of both searches' candidates was most of a retrieval's time at 100k chunks.
        with tracing.span("embed", "EMBEDDING", inputs={"texts": [query]}):
            vector = self.embedder.embed([query])[0]
        with tracing.span(
            "search",
            "RETRIEVER",
            collection=collection,
            candidates=pool,
            hybrid=self.sparse_encoder is not None,
        ):
            dense = self.store.search_dense(collection, vector, limit=pool, filter=filter, with_payload=False)
            sparse = (
                self.store.search_sparse(
                    collection,
                    self.sparse_encoder.encode_query(query),
                    limit=pool,
                    filter=filter,
                    with_payload=False,
                )
                if self.sparse_encoder is not None
                else []
            )
        fused = reciprocal_rank_fusion([[h.id for h in dense], [h.id for h in sparse]], k=self.rrf_k)

        dense_rank = {h.id: rank for rank, h in enumerate(dense, start=1)}
        sparse_rank = {h.id: rank for rank, h in enumerate(sparse, start=1)}
        cosine = {h.id: h.score for h in dense}
        sparse_score = {h.id: h.score for h in sparse}
        only_sparse = [i for i in sparse_rank if i not in cosine]
        if only_sparse:
            cosine.update(self.store.dense_scores(collection, vector, only_sparse))

        floor = -math.inf if score_threshold is None else score_threshold
        # An id without a cosine or a payload was deleted after the search that found it.
        kept = [(score, cosine[i], i) for i, score in fused.items() if i in cosine and cosine[i] >= floor]
        best = sorted(kept, key=lambda c: (-c[0], -c[1], c[2]))[:k]
        payloads = self.store.payloads(collection, [i for _, _, i in best]) if best else {}
        return [
            _chunk(i, score, payloads[i], cos, dense_rank.get(i), sparse_score.get(i), sparse_rank.get(i))
            for score, cos, i in best
            if i in payloads
        ]


def _chunk(
    point_id: str,
    score: float,
    payload: dict[str, Any],
    dense_score: float,
    dense_rank: int | None,
    sparse_score: float | None,
    sparse_rank: int | None,
) -> RetrievedChunk:
    return RetrievedChunk(
        id=point_id,
        text=str(payload.get("text", "")),
        source=str(payload.get("source", "")),
        title=str(payload.get("title", "")),
        headings=tuple(str(h) for h in payload.get("headings") or ()),
        chunk=int(payload.get("chunk", 0)),
        score=score,
        dense_score=dense_score,
        dense_rank=dense_rank,
        sparse_score=sparse_score,
        sparse_rank=sparse_rank,
        payload=payload,
    )


def _check_positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInputError(f"{name} must be a positive integer", field=name, value=repr(value))
    return value
