"""Ingestion throughput: ``rag.ingest.Ingestor`` over a generated Markdown corpus into Qdrant Edge.

The same path as ``opsloop ingest``: load every file, chunk it with the embedding model's
tokenizer, embed the chunks with all-MiniLM-L6-v2 (the packaged model, CPU), encode them as BM25
sparse vectors and upsert them into an ``EdgeStore`` collection in a temporary directory. The
model is loaded (and run once) before the clock starts, so the time is that of ingesting, not of
reading weights from disk; the load is reported on its own.

Then the same folder is ingested again, unchanged. That run must write nothing: every file is
chunked again (tokenizer only) and compared with the ids stored for it, and that is its whole
cost. A run that writes or deletes anything makes the benchmark invalid.

The embedder and sparse encoder are wrapped to time their calls, which splits the first run
into embedding, BM25 encoding, and the rest (loading, chunking, the store's writes and reads).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.rag import BenchError
from bench.rag.corpus import write_corpus
from opsloop.settings import Settings
from rag.chunking import HFTokenizer
from rag.embedder import Embedder, make_embedder
from rag.ingest import Ingestor, IngestReport
from rag.sparse import BM25Encoder
from rag.stores import EdgeStore, SparseVector

__all__ = ["IngestionResult", "TimedEmbedder", "TimedEncoder", "load_model", "measure_ingestion"]

COLLECTION = "bench"


class TimedEmbedder:
    """An ``Embedder`` that adds the seconds each ``embed`` call takes to ``seconds``."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.seconds = 0.0
        self.texts = 0

    @property
    def dimension(self) -> int:
        """The wrapped embedder's dimension."""
        return self.inner.dimension

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed with the wrapped model, timing the call."""
        start = time.perf_counter()
        try:
            return self.inner.embed(texts)
        finally:
            self.seconds += time.perf_counter() - start
            self.texts += len(texts)


class TimedEncoder(BM25Encoder):
    """The default ``BM25Encoder`` whose ``encode_documents`` calls are timed into ``seconds``."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds = 0.0

    def encode_documents(self, texts: Sequence[str]) -> list[SparseVector]:
        """Encode as the parent does, timing the call."""
        start = time.perf_counter()
        try:
            return super().encode_documents(texts)
        finally:
            self.seconds += time.perf_counter() - start


@dataclass(frozen=True)
class IngestionResult:
    """What the two ingest runs did and how long they took (seconds)."""

    files: int
    corpus_bytes: int
    chunks: int
    first_run_s: float
    embed_s: float
    sparse_s: float
    other_s: float
    chunks_per_s: float
    rerun_s: float
    rerun_unchanged: int
    rerun_chunks_written: int
    rerun_chunks_deleted: int

    @property
    def rerun_clean(self) -> bool:
        """The unchanged re-run wrote and deleted nothing and found every file unchanged."""
        return (
            self.rerun_chunks_written == 0
            and self.rerun_chunks_deleted == 0
            and self.rerun_unchanged == self.files
        )

    def to_dict(self) -> dict[str, Any]:
        """The fields, plus ``rerun_clean``."""
        return asdict(self) | {"rerun_clean": self.rerun_clean}


def load_model() -> tuple[Embedder, HFTokenizer, float]:
    """The packaged MiniLM as opsloop runs it by default, and its tokenizer, loaded and run once.

    The default is ``embedder_backend: auto``: ONNX Runtime with int8 weights on a CPU (exported
    into the embedder cache on first use), torch on a GPU. ``bench/embedder.py`` sets the two
    side by side. Also the seconds the loading took.
    """
    start = time.perf_counter()
    settings = Settings()
    embedder = make_embedder(settings.embedder_backend, settings.embedder_cache_path)
    tokenizer = HFTokenizer()
    embedder.embed(["warm up the model"])
    tokenizer.count("warm up the tokenizer")
    return embedder, tokenizer, time.perf_counter() - start


def measure_ingestion(
    work: Path, embedder: Embedder, tokenizer: HFTokenizer, *, files: int, seed: int
) -> IngestionResult:
    """Write the corpus under ``work``, ingest it twice into an Edge store there, and time both."""
    corpus = work / "corpus"
    corpus_bytes = write_corpus(corpus, files, seed)
    timed_embedder = TimedEmbedder(embedder)
    encoder = TimedEncoder()
    with EdgeStore(work / "qdrant") as store:
        ingestor = Ingestor(store, timed_embedder, tokenizer, sparse_encoder=encoder)
        start = time.perf_counter()
        first = ingestor.ingest(COLLECTION, corpus)
        first_s = time.perf_counter() - start
        _check_first(first, files)
        start = time.perf_counter()
        again = ingestor.ingest(COLLECTION, corpus)
        rerun_s = time.perf_counter() - start
        stored = store.count(COLLECTION)
    if stored != first.chunks_written:
        raise BenchError(f"the store holds {stored} points after writing {first.chunks_written}")
    return IngestionResult(
        files=files,
        corpus_bytes=corpus_bytes,
        chunks=first.chunks_written,
        first_run_s=first_s,
        embed_s=timed_embedder.seconds,
        sparse_s=encoder.seconds,
        other_s=first_s - timed_embedder.seconds - encoder.seconds,
        chunks_per_s=first.chunks_written / first_s,
        rerun_s=rerun_s,
        rerun_unchanged=len(again.unchanged),
        rerun_chunks_written=again.chunks_written,
        rerun_chunks_deleted=again.chunks_deleted,
    )


def _check_first(report: IngestReport, files: int) -> None:
    if len(report.added) != files or report.skipped:
        raise BenchError(
            f"the first ingest added {len(report.added)} of {files} files and skipped {len(report.skipped)}"
        )
