"""The RAG runtime of one process: store, models, retriever, ingestor and answerer, per tenant.

``Platform.rag`` builds one :class:`RagService` on first use. Models load lazily on their
first call, so building it is cheap; with the embedded store it takes the store lock (below).
Every answered query (also ``generate=False`` ones) is handed to the :class:`QueryLog`.

Tenant isolation. A tenant names collections in its own namespace: the store holds tenant
``acme``'s collection ``docs`` under the physical name ``t_<16 hex of sha256(tenant)>__docs``.
The prefix has a fixed width, so no (tenant, collection) pair can produce another pair's name,
and every read and write goes through :meth:`RagService.physical_name`: a key of another tenant
asking for ``docs`` looks in its own namespace and gets 404.

Store lock. A Qdrant Edge shard can be open in one process only (its WAL is locked), and
``EdgeStore`` keeps shards open until it closes. So the embedded store belongs to one process
at a time: the first RagService of a process takes an exclusive ``flock`` on
``$OPSLOOP_HOME/qdrant/.lock`` and holds it until :meth:`RagService.close`. A second process
(``opsloop ingest`` while ``opsloop serve`` has answered a query, or a second server worker)
gets a ``ConflictError`` naming the lock file and the holder's pid, instead of a WAL error
halfway through a run. Ingest with the CLI before the server's first query, stop the server,
or use ``vector_store: qdrant``, which has no such limit.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from opsloop.audit import AuditLog
from opsloop.auth import check_tenant
from opsloop.errors import ConflictError, InvalidInputError, NotFoundError
from opsloop.llm.llamacpp import LlamaCppClient
from opsloop.query_log import QueryLog, QueryLogEntry
from opsloop.registry import PromptVersionInfo, Registry
from opsloop.settings import Settings
from rag.answer import Answer, Answerer, Source, build_context, ensure_answer_prompt, load_answer_prompt
from rag.chunking import HFTokenizer
from rag.embedder import SentenceTransformerEmbedder
from rag.ingest import Ingestor, IngestReport, ProgressCallback
from rag.loaders import load_bytes
from rag.retriever import HybridRetriever, RetrievedChunk
from rag.sparse import BM25Encoder
from rag.stores import EdgeStore, VectorStore

__all__ = ["COLLECTION_PATTERN", "QueryResult", "RagService", "physical_name"]

COLLECTION_PATTERN = r"[a-z0-9][a-z0-9_-]{0,43}"
"""A tenant's collection name: lowercase (so case-insensitive file systems cannot merge two)."""

_COLLECTION = re.compile(COLLECTION_PATTERN)
_LOCK_FILE = ".lock"


def physical_name(tenant: str, collection: str) -> str:
    """The store's name for ``tenant``'s ``collection`` (at most 64 characters).

    Raises:
        InvalidInputError: ``tenant`` or ``collection`` is not a valid name; the field is named.
    """
    check_tenant(tenant)
    if not isinstance(collection, str) or not _COLLECTION.fullmatch(collection):
        raise InvalidInputError(
            "collection must be 1-44 characters of a-z, 0-9, '_' and '-', starting with a letter or digit",
            field="collection",
            value=repr(collection),
        )
    return f"t_{hashlib.sha256(tenant.encode('utf-8')).hexdigest()[:16]}__{collection}"


@dataclass(frozen=True)
class QueryResult:
    """The outcome of one query: the answer (None when not generated), its sources and timings.

    ``sources`` are numbered as the model sees them (a prefix of ``chunks`` that fits the context
    budget); ``chunks`` is everything retrieved, best first. Times are in milliseconds;
    ``prompt_ms`` and ``generation_ms`` are None for a retrieval-only query.
    """

    answer: Answer | None
    sources: list[Source]
    chunks: list[RetrievedChunk]
    request_id: str
    latency_ms: float
    retrieval_ms: float
    prompt_ms: float | None
    generation_ms: float | None

    def chunk_id(self, source: Source) -> str:
        """The store id of the chunk a source was cut from (sources number ``chunks`` from 1)."""
        return self.chunks[source.n - 1].id


class _StoreLock:
    """An exclusive ``flock`` on the embedded store's directory, held while the store is open."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / _LOCK_FILE
        self._file: IO[str] | None = open(self.path, "a+")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            self._file.seek(0)
            holder = self._file.read().strip() or "unknown"
            self._file.close()
            self._file = None
            raise ConflictError(
                f"the Qdrant Edge store is in use by another process (pid {holder}, lock {self.path}); "
                "an `opsloop serve` holds it once it has answered a RAG request. Stop that process, "
                "ingest through POST /collections/{name}/documents, or use vector_store=qdrant",
                lock=str(self.path),
                pid=holder,
            ) from exc
        self._file.seek(0)
        self._file.truncate()
        self._file.write(str(os.getpid()))
        self._file.flush()

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the flock
            self._file = None


class RagService:
    """Ingests folders and answers questions over one tenant-partitioned vector store.

    Args:
        settings: The ``vector_store``, ``qdrant_*``, ``rag_*`` and ``llm_model_path`` settings.
        registry: Where the ``rag-answer`` prompt lives; started on first query.
        audit: Records each ingest run.
        queries: Where every answered query is logged (a started :class:`QueryLog`).
        start_registry: Starts ``registry`` (the Platform serialises this with its own start).

    Raises:
        ConflictError: Another process holds the embedded store (see the module docs).
    """

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        audit: AuditLog,
        queries: QueryLog,
        start_registry: Callable[[], Registry] | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.audit = audit
        self.queries = queries
        self._start_registry = start_registry or registry.start
        self._lock: _StoreLock | None = None
        if settings.vector_store == "qdrant":
            from rag.stores import QdrantServerStore

            self.store: VectorStore = QdrantServerStore(settings.qdrant_url, api_key=settings.qdrant_api_key)
        else:
            self._lock = _StoreLock(settings.home / "qdrant")
            self.store = EdgeStore(settings.home / "qdrant")
        self.embedder = SentenceTransformerEmbedder()
        self.tokenizer = HFTokenizer()
        self.sparse = BM25Encoder()
        self.retriever = HybridRetriever(self.store, self.embedder, self.sparse, top_k=settings.rag_top_k)
        self.ingestor = Ingestor(self.store, self.embedder, self.tokenizer, sparse_encoder=self.sparse)
        self.llm = LlamaCppClient(settings.llm_model_path)
        self.answerer = Answerer(
            self.llm,
            self.tokenizer,
            context_tokens=settings.rag_context_tokens,
            max_answer_tokens=settings.rag_max_answer_tokens,
        )
        self._prompt_ready = False
        self._prompt_lock = threading.Lock()

    # -- ingest ----------------------------------------------------------------------

    def ingest(
        self,
        tenant: str,
        collection: str,
        root: Path | str,
        *,
        delete_missing: bool = False,
        progress: ProgressCallback | None = None,
        actor: str = "system",
    ) -> IngestReport:
        """Bring ``tenant``'s ``collection`` up to date with the files under ``root`` (see Ingestor)."""
        report = self.ingestor.ingest(
            physical_name(tenant, collection), root, delete_missing=delete_missing, progress=progress
        )
        self.audit.append(
            actor=actor,
            tenant=tenant,
            action="rag.ingest",
            target=collection,
            after={
                "added": len(report.added),
                "replaced": len(report.replaced),
                "unchanged": len(report.unchanged),
                "deleted": len(report.deleted),
                "skipped": len(report.skipped),
            },
        )
        return report

    def upload(
        self,
        tenant: str,
        collection: str,
        source: str,
        data: bytes,
        *,
        actor: str,
        request_id: str | None = None,
    ) -> IngestReport:
        """Add or replace one document, given as the bytes of a file named ``source``.

        Raises:
            InvalidInputError: Unsupported suffix or unparsable file (``field="source"``), or no text.
        """
        name = physical_name(tenant, collection)
        document = load_bytes(data, source=source)
        if not document.sections:
            raise InvalidInputError(f"{source} has no extractable text", field="body", source=source)
        report = self.ingestor.ingest_documents(name, [document])
        self.audit.append(
            actor=actor,
            tenant=tenant,
            action="rag.upload",
            target=f"{collection}/{source}",
            after={"chunks_written": report.chunks_written, "chunks_deleted": report.chunks_deleted},
            request_id=request_id,
        )
        return report

    # -- query -----------------------------------------------------------------------

    async def query(
        self,
        tenant: str,
        question: str,
        collection: str,
        top_k: int | None = None,
        *,
        generate: bool = True,
        request_id: str | None = None,
    ) -> QueryResult:
        """Answer ``question`` from ``tenant``'s ``collection`` and log the query.

        With ``generate=False`` only retrieval runs: no prompt read, no LLM call, ``answer`` None.
        Failed queries are not logged (they raise before there is anything to log).

        Raises:
            InvalidInputError: Empty question, bad collection name or top_k; the field is named.
            NotFoundError: The tenant has no such collection.
            BackendError: The store, the embedding model, the registry or the LLM failed.
        """
        if not isinstance(question, str) or not question.strip():
            raise InvalidInputError(
                "question must be a non-empty string", field="question", value=repr(question)
            )
        name = physical_name(tenant, collection)
        started = time.perf_counter()
        chunks = await asyncio.to_thread(self._retrieve, name, collection, question, top_k)
        retrieved = time.perf_counter()
        answer: Answer | None = None
        prompt_ms: float | None = None
        generation_ms: float | None = None
        if generate:
            prompt = await asyncio.to_thread(self._prompt)
            prompted = time.perf_counter()
            answer = await self.answerer.answer(question, chunks, prompt.template, prompt.version)
            prompt_ms = (prompted - retrieved) * 1000
            generation_ms = (time.perf_counter() - prompted) * 1000
            sources = answer.sources
        else:
            # The sources the model would have been given: same numbering, same cut texts.
            _, sources = await asyncio.to_thread(
                build_context, chunks, self.answerer.tokenizer, self.answerer.context_tokens
            )
        result = QueryResult(
            answer=answer,
            sources=sources,
            chunks=chunks,
            request_id=request_id or uuid.uuid4().hex,
            latency_ms=(time.perf_counter() - started) * 1000,
            retrieval_ms=(retrieved - started) * 1000,
            prompt_ms=prompt_ms,
            generation_ms=generation_ms,
        )
        self.queries.record(_log_entry(tenant, collection, question, result))
        return result

    def _retrieve(self, name: str, collection: str, question: str, top_k: int | None) -> list[RetrievedChunk]:
        if name not in self.store.collections():
            raise NotFoundError(f"no collection {collection!r} in this tenant", collection=collection)
        return self.retriever.retrieve(
            name, question, top_k=top_k, score_threshold=self.settings.rag_score_threshold
        )

    def _prompt(self) -> PromptVersionInfo:
        """The prompt at ``production``, read on every query so a moved alias takes effect."""
        with self._prompt_lock:
            if not self._prompt_ready:
                self._start_registry()
                ensure_answer_prompt(self.registry)
                self._prompt_ready = True
        return load_answer_prompt(self.registry)

    # -- lifecycle -------------------------------------------------------------------

    def close(self) -> None:
        """Free the model, close the store and release the store lock (from any thread)."""
        try:
            _run_coroutine(self.llm.aclose())
            self.store.close()
        finally:
            if self._lock is not None:
                self._lock.release()


def _log_entry(tenant: str, collection: str, question: str, result: QueryResult) -> QueryLogEntry:
    answer = result.answer
    return QueryLogEntry(
        request_id=result.request_id,
        tenant=tenant,
        collection=collection,
        question=question,
        chunk_ids=[c.id for c in result.chunks],
        scores=[c.score for c in result.chunks],
        dense_scores=[c.dense_score for c in result.chunks],
        answer=None if answer is None else answer.answer,
        prompt_version=None if answer is None else str(answer.prompt_version),
        prompt_tokens=0 if answer is None else answer.usage.prompt_tokens,
        completion_tokens=0 if answer is None else answer.usage.completion_tokens,
        latency_ms=result.latency_ms,
        retrieval_ms=result.retrieval_ms,
        generation_ms=result.generation_ms,
    )


def _run_coroutine(coroutine: Coroutine[Any, Any, None]) -> None:
    # close() runs from sync code that may itself sit inside an event loop (the server's
    # lifespan), where asyncio.run is refused; a short-lived thread has a loop of its own.
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(coroutine)
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=run, name="rag-close")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
