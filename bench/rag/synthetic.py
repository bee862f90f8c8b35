"""Synthetic points and queries for the retrieval-latency benchmark, the same for every store.

Points look like what ``Ingestor`` writes: a seeded random unit vector of 384 dimensions (the
all-MiniLM-L6-v2 size), the BM25 sparse vector of a chunk-sized text (``rag.sparse.BM25Encoder``,
the ingest default) and a payload with the same keys and about the same size as a real chunk's,
the text included.

The vectors are clustered, as embeddings of real text are (chunks on one topic lie close
together): each point is a random unit "topic" vector of 1,000 plus as much random noise again
(cosine about 0.7 to its topic, 0.5 to another point of the topic, about 0 to the rest).
Uniform random vectors would be a poor stand-in: in 384 dimensions every point is then about
equally far from every other, nearest neighbours beyond the first are noise, and an HNSW index
can neither find nor be judged on them.

Queries are what a retriever sends: the dense vector is a noisy copy of one stored point's
vector (cosine about 0.8 to it, so the point is the true nearest neighbour and its topic fills
the rest of the top 10), and the query text is four words of that point's text plus one random
word, which the retriever encodes with BM25 itself.

Everything is a pure function of the seed and the index, so a collection can be grown in steps
(10k, then to 100k) and every store gets byte-identical points in the same order.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.rag.corpus import Vocabulary, chunk_texts
from rag.sparse import BM25Encoder
from rag.stores import Point

__all__ = ["DIMENSION", "Dataset", "Query", "TableEmbedder", "point_id"]

DIMENSION = 384
BATCH = 1024
TOPICS = 1_000
TOPIC_NOISE = 1.0  # norm of the noise added to a topic vector: cosine 1 / sqrt(1 + 1) = 0.71
QUERY_NOISE = 0.75  # norm of the noise added to a point: cosine 1 / sqrt(1 + 0.75**2) = 0.8
_ID_NAMESPACE = uuid.UUID("0b6a3f4e-2c1d-5e8f-9a7b-3c4d5e6f7a8b")


@dataclass(frozen=True)
class Query:
    """One query: its text (BM25 side), its dense vector, and the point it was made from."""

    text: str
    vector: np.ndarray
    target: int


class Dataset:
    """Up to ``size`` synthetic points and the queries against a prefix of them.

    Args:
        size: The largest collection that will be loaded.
        seed: Seed of every random draw.
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.vocabulary = Vocabulary(seed)
        self.encoder = BM25Encoder()
        # One stream per kind of draw, so that the first n points are the same whatever ``size``.
        topics = _unit(np.random.default_rng([seed, 2, 0]).standard_normal((TOPICS, DIMENSION), np.float32))
        self.topics = np.random.default_rng([seed, 2, 1]).integers(TOPICS, size=size)
        noise = _unit(np.random.default_rng([seed, 2, 2]).standard_normal((size, DIMENSION), np.float32))
        self.vectors = _unit(topics[self.topics] + TOPIC_NOISE * noise)
        self._texts: dict[int, list[str]] = {}

    def batches(self, start: int, stop: int) -> Iterator[list[Point]]:
        """The points ``start`` to ``stop - 1`` in batches of at most ``BATCH``."""
        for first in range(start, stop, BATCH):
            last = min(first + BATCH, stop)
            texts = [self.text(i) for i in range(first, last)]
            sparse = self.encoder.encode_documents(texts)
            yield [
                Point(point_id(i), self.vectors[i], sparse[i - first], _payload(i, texts[i - first]))
                for i in range(first, last)
            ]

    def text(self, index: int) -> str:
        """The text of point ``index`` (drawn in blocks of ``BATCH``, so the same whatever the order)."""
        block = index // BATCH
        if block not in self._texts:
            rng = np.random.default_rng([self.seed, 3, block])
            self._texts[block] = chunk_texts(self.vocabulary, rng, BATCH)
        return self._texts[block][index % BATCH]

    def queries(self, count: int, within: int) -> list[Query]:
        """``count`` distinct queries, each made from a random point among the first ``within``."""
        rng = np.random.default_rng([self.seed, 4, within])
        queries: list[Query] = []
        seen: set[str] = set()
        while len(queries) < count:
            target = int(rng.integers(within))
            words = self.text(target).split()
            picked = [words[int(i)] for i in rng.choice(len(words), size=4, replace=False)]
            text = " ".join([*picked, *self.vocabulary.sample(rng, 1)])
            if text in seen:
                continue
            seen.add(text)
            noise = _unit(rng.standard_normal((1, DIMENSION), np.float32))[0]
            queries.append(Query(text, _unit(self.vectors[target] + QUERY_NOISE * noise), target))
        return queries


def _unit(vectors: np.ndarray) -> np.ndarray:
    """``vectors`` scaled to unit length along the last axis, as float32."""
    return (vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)).astype(np.float32)


def point_id(index: int) -> str:
    """The UUID of point ``index``."""
    return str(uuid.uuid5(_ID_NAMESPACE, str(index)))


def _payload(index: int, text: str) -> dict[str, Any]:
    document, chunk = divmod(index, 8)
    return {
        "kind": "chunk",
        "source": f"topic-{document % 10:02d}/doc-{document:06d}.md",
        "title": f"Document {document}",
        "headings": [f"Document {document}", f"Section {chunk // 2}"],
        "text": text,
        "chunk": chunk,
        "chunks": 8,
        "token_count": 200,
        "doc_sha256": hashlib.sha256(str(document).encode()).hexdigest(),
        "format": "markdown",
    }


class TableEmbedder:
    """An ``Embedder`` that looks query vectors up by text, so retrieval is timed without a model.

    Args:
        queries: The queries whose texts it will be asked to embed.
    """

    def __init__(self, queries: Sequence[Query]) -> None:
        self._vectors = {q.text: q.vector for q in queries}

    @property
    def dimension(self) -> int:
        """The synthetic vectors' size."""
        return DIMENSION

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """The stored vectors of ``texts``, one row each."""
        return np.stack([self._vectors[text] for text in texts])
