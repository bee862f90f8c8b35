"""``python -m bench.rag``: RAG ingestion throughput, retrieval latency against a peer, and quality.

Modules: :mod:`bench.rag.corpus` generates text (a Markdown corpus, chunk-sized texts);
:mod:`bench.rag.ingestion` times ``Ingestor`` on the corpus into Qdrant Edge, and an unchanged
re-run; :mod:`bench.rag.synthetic` makes the points and queries of the latency part;
:mod:`bench.rag.latency` times dense and hybrid search on Qdrant Edge against qdrant-client's
local mode; :mod:`bench.rag.quality` scores dense-only and hybrid retrieval on the labelled
questions about ``docs/``; :mod:`bench.rag.report` prints the tables; :mod:`bench.rag.run` ties
them together and writes the JSON.
"""

from __future__ import annotations

__all__ = ["BenchError"]


class BenchError(Exception):
    """The benchmark could not run or its run is invalid (a message says what to do)."""
