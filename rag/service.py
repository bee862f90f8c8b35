"""RAG as a service: ingest, upload, delete, optimize, list and query, each for a caller.

Every operation takes the caller (:class:`~opsloop.auth.Principal`) and acts in the caller's
tenant, checks the caller's role (writes need ``operator``, queries ``user``, listings
``viewer``) and audits what it changed, so the HTTP routes, the CLI and the agents' tools
get the same behaviour by calling it. The composition root (``serving.platform``) builds one
:class:`RagService` per process on first use. Models load lazily on their
first call, so building it is cheap; with the embedded store it takes the store lock (below).
Every answered query (also ``generate=False`` ones) is handed to the :class:`QueryLog`.

Tenant isolation. A tenant names collections in its own namespace: the store holds tenant
``acme``'s collection ``docs`` under the physical name ``t_<16 hex of sha256(tenant)>__docs``.
The prefix has a fixed width, so no (tenant, collection) pair can produce another pair's name,
and every read and write goes through :func:`physical_name`: a key of another tenant
asking for ``docs`` looks in its own namespace and gets 404.

Store lock. A Qdrant Edge shard can be open in one process only (its WAL is locked), and
``EdgeStore`` keeps shards open until it closes. So the embedded store belongs to one process
at a time: the first RagService of a process takes an exclusive ``flock`` on
``$OPSLOOP_HOME/qdrant/.lock`` and holds it until :meth:`RagService.close`. The lock file says
who holds it: ``{"pid": ...}``, and for an ``opsloop serve`` also the URL the server listens on
and a token of that server process (the file is readable by its owner only). ``opsloop serve``
takes the store at start, and the CLI, finding it held, hands its work to that server over HTTP
(:func:`store_holder`, ``serving.cli.remote``). A second process that is no server (another CLI
run, a second server worker) gets a ``ConflictError`` naming the lock file and the holder's pid,
instead of a WAL error halfway through a run. ``vector_store: qdrant`` has no such limit.

Collections. Chunk settings are the collection's (``rag.catalog``): the first ingest or
upload fixes them (the request's, else ``rag_chunk_tokens``/``rag_overlap_tokens``), later ones
use them unless they ask for others, which re-chunks every file of the collection.

Upload names. An uploaded file's name becomes its document's source, which clients later put in
URL paths (``DELETE /collections/{name}/documents/{source}``). A name that reads like a path out of
the collection (``../../other/documents/victim.md``) would address another document once a client
library normalises the URL, so :meth:`RagService.upload` refuses such names outright
(:func:`check_source_name`) instead of rewriting them into something the uploader did not send.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import logging
import os
import re
import threading
import time
import unicodedata
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from opsloop import tracing
from opsloop.audit import AuditLog
from opsloop.auth import Principal, Role, check_tenant
from opsloop.errors import ConflictError, InvalidInputError, NotFoundError
from opsloop.llm.gateway import EmbeddingMeter
from opsloop.llm.protocol import LLMClient
from opsloop.registry import PromptVersionInfo, Registry
from opsloop.settings import Settings
from opsloop.tracing import Tracer
from opsloop.traffic import CHALLENGER, CHAMPION, Assignment, ExperimentVariant, Outcome, TrafficSplit
from opsloop.watched import Watched
from rag.answer import (
    ANSWER_PROMPT,
    Answer,
    Answerer,
    AnswerMode,
    Source,
    build_context,
    ensure_answer_prompt,
    load_answer_prompt,
)
from rag.catalog import CollectionCatalog
from rag.chunking import HFTokenizer
from rag.embedder import make_embedder
from rag.ingest import Ingestor, IngestReport, ProgressCallback, StoredDocument
from rag.loaders import Skipped, load_bytes
from rag.query_log import QueryLog, QueryLogEntry
from rag.retriever import HybridRetriever, RetrievedChunk
from rag.sparse import BM25Encoder
from rag.stores import EdgeStore, VectorStore

__all__ = [
    "COLLECTION_PATTERN",
    "MAX_SOURCE_CHARS",
    "AnswerLLM",
    "CollectionView",
    "IngestRun",
    "QueryResult",
    "RagService",
    "StoreLock",
    "check_source_name",
    "physical_name",
    "store_holder",
]

COLLECTION_PATTERN = r"[a-z0-9][a-z0-9_-]{0,43}"
"""A tenant's collection name: lowercase (so case-insensitive file systems cannot merge two)."""

AnswerLLM = Callable[[Principal, str, ExperimentVariant | None], LLMClient]
"""The LLM answering one query, given who asked, the request id, and the experiment variant answering."""

EmbeddingMeterFactory = Callable[..., AbstractContextManager[EmbeddingMeter]]
"""``Gateway.meter_embedding``: admits an embedding by the caller's budgets and records it."""

T = TypeVar("T")
log = logging.getLogger(__name__)

_COLLECTION = re.compile(COLLECTION_PATTERN)
_LOCK_FILE = ".lock"
_AUDITED_NAMES = 1000  # file names per status in one rag.ingest audit entry
_QUIET_SECONDS = 2.0  # no ingestion for this long: a bulk load has paused, build the index


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
    return f"{_tenant_prefix(tenant)}{collection}"


MAX_SOURCE_CHARS = 1024
"""The longest uploaded file name (its source); each ``/``-separated segment is at most 255 bytes."""
_MAX_SEGMENT_BYTES = 255  # NAME_MAX of common file systems: a folder ingest never makes longer ones


def check_source_name(name: str) -> str:
    """Return ``name`` if it may be an uploaded document's source: a plain relative name.

    ``guide/setup.md`` or ``notes 100% #1?.md`` pass. Refused are names that are empty, longer
    than :data:`MAX_SOURCE_CHARS`, absolute, or that hold backslashes, control characters
    (NUL included), empty segments (``a//b``, a trailing ``/``), ``.`` or ``..`` segments, or a
    segment over 255 bytes: each could read as, or be normalised into, another path.

    Raises:
        InvalidInputError: The message names the rule broken and the name (``field="files"``).
    """
    rule = _broken_source_rule(name)
    if rule is not None:
        raise InvalidInputError(
            f"file name {name!r} is refused: {rule}; send a relative name such as 'guide/setup.md'",
            field="files",
            value=repr(name),
            rule=rule,
        )
    return name


def _broken_source_rule(name: str) -> str | None:
    if not isinstance(name, str) or not name:
        return "a file name must not be empty"
    if len(name) > MAX_SOURCE_CHARS:
        return f"a file name must be at most {MAX_SOURCE_CHARS} characters"
    if any(unicodedata.category(c) == "Cc" for c in name):
        return "a file name must not contain NUL or other control characters"
    if "\\" in name:
        return "a file name must not contain backslashes"
    if name.startswith("/"):
        return "a file name must be relative, not absolute"
    for segment in name.split("/"):
        if not segment:
            return "a file name must not have empty segments ('//' or a trailing '/')"
        if segment in (".", ".."):
            return "a file name must not have '.' or '..' segments"
        if len(segment.encode("utf-8")) > _MAX_SEGMENT_BYTES:
            return f"each '/'-separated part of a file name must be at most {_MAX_SEGMENT_BYTES} bytes"
    return None


def _tenant_prefix(tenant: str) -> str:
    return f"t_{hashlib.sha256(tenant.encode('utf-8')).hexdigest()[:16]}__"


def store_holder(home: Path) -> dict[str, Any] | None:
    """Who holds the embedded store: its lock file's ``pid`` (a server's also has ``url``, ``token``).

    None when no process holds it. The holder writes the file just after taking the lock, so
    an empty or half-written file is read again for up to a second before it counts as unknown.
    """
    path = home / "qdrant" / _LOCK_FILE
    try:
        with open(path) as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                pass
            else:
                return None  # nobody holds it (closing drops the shared lock again)
            for _ in range(50):
                lock.seek(0)
                try:
                    holder = json.loads(lock.read())
                except json.JSONDecodeError:
                    time.sleep(0.02)
                    continue
                return holder if isinstance(holder, dict) else {"pid": "unknown"}
    except FileNotFoundError:
        return None
    return {"pid": "unknown"}


@dataclass(frozen=True)
class IngestRun:
    """One ingest or upload into a collection: what it did and how long it took."""

    collection: str
    report: IngestReport
    seconds: float
    chunk_tokens: int
    overlap_tokens: int

    def summary(self) -> dict[str, Any]:
        """The JSON summary the API answers with and the catalog keeps as the last ingestion."""
        return {
            "collection": self.collection,
            **self.report.to_dict(),
            "seconds": round(self.seconds, 3),
            "chunk_tokens": self.chunk_tokens,
            "overlap_tokens": self.overlap_tokens,
        }


@dataclass(frozen=True)
class CollectionView:
    """A tenant's collection as ``GET /collections`` shows it."""

    name: str
    chunks: int
    documents: list[StoredDocument]
    chunk_tokens: int
    overlap_tokens: int
    last_ingest_at: str | None
    last_ingest: dict[str, Any] | None = field(default=None)


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
    variant: str | None = None
    """``champion`` or ``challenger`` when a prompt experiment routed the query, else None."""
    experiment: str | None = None
    """The prompt experiment that routed the query, if one did."""

    @property
    def answer_mode(self) -> AnswerMode:
        """How the answer was made (``retrieval_only`` when none was)."""
        return "retrieval_only" if self.answer is None else self.answer.mode

    def chunk_id(self, source: Source) -> str:
        """The store id of the chunk a source was cut from (sources number ``chunks`` from 1)."""
        return self.chunks[source.n - 1].id


class StoreLock:
    """An exclusive ``flock`` on the embedded store's directory, held while the store is open."""

    def __init__(self, directory: Path, holder: dict[str, str]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / _LOCK_FILE
        # Owner-only: a server's entry holds the token that lets the CLI act through it.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        self._file: IO[str] | None = os.fdopen(fd, "r+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            self._file.close()
            self._file = None
            holder = store_holder(directory.parent) or {}
            pid = holder.get("pid", "unknown")
            who = f"opsloop serve at {holder['url']}" if holder.get("url") else "another process"
            raise ConflictError(
                # The lock's path relative to the home: this message can reach API clients.
                f"the Qdrant Edge store is in use by {who} (pid {pid}, lock qdrant/{_LOCK_FILE} in the "
                "home folder); wait for it to finish, stop it, or use vector_store=qdrant",
                pid=pid,
            ) from exc
        os.fchmod(fd, 0o600)
        self._file.seek(0)
        self._file.truncate()
        self._file.write(json.dumps({"pid": os.getpid(), **holder}))
        self._file.flush()

    def release(self) -> None:
        """Give the store up (another process may take it now)."""
        if self._file is not None:
            self._file.close()  # closing drops the flock
            self._file = None


class RagService:
    """Ingests folders and answers questions over one tenant-partitioned vector store.

    Args:
        settings: The ``vector_store``, ``qdrant_*``, ``rag_*`` and ``llm_model_path`` settings.
        registry: Where the ``rag-answer`` prompt lives; started on first query.
        audit: Records each ingest, upload and deletion.
        queries: Where every answered query is logged (a started :class:`QueryLog`).
        catalog: The collections' chunk settings and last ingestions.
        start_registry: Starts ``registry`` (the Platform serialises this with its own start).
        holder: What the embedded store's lock file says besides the pid (a server's URL and
            token, see the module docs).
        store: The vector store to use instead of opening the configured one: a
            :class:`~rag.stores.shared.SocketStore` to the process holding the embedded store.
        answer_llm: The LLM that writes a query's answer, given who asked and the request id:
            the gateway's ``rag_llm_route``, so answers are routed, budgeted and costed like any
            gateway call (``opsloop.llm.gateway.GatewayClient``).
        meter: Admits and records the question's embedding of a retrieval-only query (which
            makes no LLM call) by the caller's budgets, rate limits and the ledger
            (``Gateway.meter_embedding``); None meters nothing.
        traffic: The running experiments: one on the ``rag-answer`` prompt decides which
            version answers each query, and hears how it went. None: always ``production``.

    Raises:
        ConflictError: Another process holds the embedded store (see the module docs).
    """

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        audit: AuditLog,
        queries: QueryLog,
        catalog: CollectionCatalog,
        start_registry: Callable[[], Registry] | None = None,
        holder: dict[str, str] | None = None,
        *,
        answer_llm: AnswerLLM,
        store: VectorStore | None = None,
        meter: EmbeddingMeterFactory | None = None,
        traffic: TrafficSplit | None = None,
        auto_index: bool = False,
        tracer: Tracer | None = None,
    ) -> None:
        self.settings = settings
        self.tracer = tracer or Tracer(None)
        self.traffic = traffic
        self.registry = registry
        self.audit = audit
        self.queries = queries
        self.catalog = catalog
        self._start_registry = start_registry or registry.start
        self._lock: StoreLock | None = None
        self.store: VectorStore
        if store is not None:  # the embedded store another process holds (rag.stores.shared)
            self.store = store
        elif settings.vector_store == "qdrant":
            from rag.stores import QdrantServerStore

            self.store = QdrantServerStore(
                settings.qdrant_url,
                api_key=settings.qdrant_api_key,
                replication_factor=settings.qdrant_replication_factor,
            )
        else:
            self._lock = StoreLock(settings.home / "qdrant", holder or {})
            self.store = EdgeStore(settings.home / "qdrant")
        self.embedder = make_embedder(settings.embedder_backend, settings.embedder_cache_path)
        self.tokenizer = HFTokenizer()
        self.sparse = BM25Encoder()
        self.retriever = HybridRetriever(self.store, self.embedder, self.sparse, top_k=settings.rag_top_k)
        self.answer_llm = answer_llm
        self.meter = meter
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rag-writer")
        self.auto_index_points = settings.rag_auto_index_points if auto_index else 0
        self._indexer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rag-indexer")
        self._closing = threading.Event()
        self._last_write = 0.0
        self._prompt_ready = False
        self._prompt_lock = threading.Lock()
        # Read per query, the alias cost each query a registry round trip (12-26 ms here).
        self._production_prompt = Watched(
            lambda: load_answer_prompt(self.registry), settings.model_poll_seconds, name="prompt-watcher"
        )
        self._prompt_versions: dict[int, PromptVersionInfo] = {}  # a version never changes

    # -- ingest ----------------------------------------------------------------------

    def ingest(
        self,
        caller: Principal,
        collection: str,
        root: Path | str,
        *,
        delete_missing: bool = False,
        chunk_tokens: int | None = None,
        overlap_tokens: int | None = None,
        progress: ProgressCallback | None = None,
    ) -> IngestRun:
        """Bring the caller's ``collection`` up to date with the files under ``root`` (see Ingestor).

        ``chunk_tokens``/``overlap_tokens``: new chunk settings for the collection (see the module docs).

        Raises:
            ForbiddenError: The caller is no operator.
        """
        caller.require(Role.OPERATOR, "ingesting documents")
        started = time.perf_counter()
        name = physical_name(caller.tenant, collection)
        ingestor = self._ingestor(caller.tenant, collection, chunk_tokens, overlap_tokens)
        report = ingestor.ingest(name, root, delete_missing=delete_missing, progress=progress)
        return self._finish(caller, collection, ingestor, report, started, "folder", None)

    def upload(
        self,
        caller: Principal,
        collection: str,
        files: Sequence[tuple[str, bytes]],
        *,
        chunk_tokens: int | None = None,
        overlap_tokens: int | None = None,
        request_id: str | None = None,
    ) -> IngestRun:
        """Add or replace documents, each given as a file name (its source) and the file's bytes.

        A file that cannot be loaded is reported in ``skipped``; the others are ingested. A
        name that :func:`check_source_name` refuses fails the whole upload before anything is
        stored (see the module docs).

        Raises:
            ForbiddenError: The caller is no operator.
            InvalidInputError: No files, a refused file name (the rule and the name are in the
                message), two with one name, or none that could be loaded (the reasons are in
                ``details["skipped"]``).
        """
        caller.require(Role.OPERATOR, "uploading documents")
        started = time.perf_counter()
        name = physical_name(caller.tenant, collection)
        if not files:
            raise InvalidInputError("no files in the upload", field="files")
        for source, _ in files:
            check_source_name(source)
        documents = []
        skipped: list[Skipped] = []
        for source, data in files:
            try:
                document = load_bytes(data, source=source)
            except InvalidInputError as exc:
                skipped.append(Skipped(source, exc.message))
                continue
            size = sum(len(section.text) for section in document.sections)
            if size > self.settings.rag_max_document_chars:
                limit = self.settings.rag_max_document_chars
                skipped.append(
                    Skipped(source, f"{source} has {size} characters of text, above the limit of {limit}")
                )
            elif document.sections:
                documents.append(document)
            else:
                skipped.append(Skipped(source, f"{source} has no extractable text"))
        if not documents:
            raise InvalidInputError(
                "no uploaded file could be loaded: " + "; ".join(s.reason for s in skipped),
                field="files",
                skipped=[{"source": s.source, "reason": s.reason} for s in skipped],
            )
        ingestor = self._ingestor(caller.tenant, collection, chunk_tokens, overlap_tokens)
        report = ingestor.ingest_documents(name, documents, skipped=skipped)
        return self._finish(caller, collection, ingestor, report, started, "upload", request_id)

    def delete_document(
        self, caller: Principal, collection: str, source: str, *, request_id: str | None = None
    ) -> int:
        """Delete every chunk of ``source``; returns how many there were.

        Raises:
            ForbiddenError: The caller is no operator.
            NotFoundError: No such collection in the tenant, or no such source in it.
        """
        caller.require(Role.OPERATOR, "deleting documents")
        name = self._existing(caller.tenant, collection)
        deleted = Ingestor(self.store, self.embedder, self.tokenizer).delete_sources(name, [source])
        if not deleted:
            raise NotFoundError(f"no document {source!r} in collection {collection!r}", source=source)
        self.audit.append(
            actor=caller.actor,
            tenant=caller.tenant,
            action="rag.delete",
            target=f"{collection}/{source}",
            after={"chunks_deleted": deleted},
            request_id=request_id,
        )
        return deleted

    def optimize(self, caller: Principal, collection: str, *, request_id: str | None = None) -> float:
        """Build the collection's search index now; returns the seconds it took.

        Qdrant Edge has no background optimizer: until this runs, new points are searched
        exactly (brute force), which at 100k chunks costs tens of milliseconds a query instead
        of one or two. The index is built beside the live collection; queries go on meanwhile.

        Raises:
            ForbiddenError: The caller is no operator.
            NotFoundError: The tenant has no such collection.
        """
        caller.require(Role.OPERATOR, "building a search index")
        name = self._existing(caller.tenant, collection)
        started = time.perf_counter()
        self.store.optimize(name)
        seconds = time.perf_counter() - started
        self.audit.append(
            actor=caller.actor,
            tenant=caller.tenant,
            action="rag.optimize",
            target=collection,
            after={"chunks": self.store.count(name), "seconds": round(seconds, 3)},
            request_id=request_id,
        )
        return seconds

    def _ingestor(
        self, tenant: str, collection: str, chunk_tokens: int | None, overlap_tokens: int | None
    ) -> Ingestor:
        """An Ingestor with the collection's chunk settings, storing new ones first."""
        info = self.catalog.get(tenant, collection)
        chunk = chunk_tokens or (info.chunk_tokens if info else self.settings.rag_chunk_tokens)
        if overlap_tokens is not None:
            overlap = overlap_tokens
        else:
            overlap = info.overlap_tokens if info else self.settings.rag_overlap_tokens
        # Built first: it checks the settings, so bad ones are refused before they are stored.
        ingestor = Ingestor(
            self.store, self.embedder, self.tokenizer, sparse_encoder=self.sparse,
            max_tokens=chunk, overlap_tokens=overlap,
        )  # fmt: skip
        if info is None or (info.chunk_tokens, info.overlap_tokens) != (chunk, overlap):
            self.catalog.configure(tenant, collection, chunk_tokens=chunk, overlap_tokens=overlap)
        return ingestor

    def _finish(
        self,
        caller: Principal,
        collection: str,
        ingestor: Ingestor,
        report: IngestReport,
        started: float,
        via: str,
        request_id: str | None,
    ) -> IngestRun:
        """Keep the run as the collection's last ingestion and audit it as one ``rag.ingest``.

        A folder ingest and an upload of several files are one entry each, whichever entry point
        sent them: the counts, and the names of the files that changed or were skipped
        (unchanged files only counted). Names are capped per status so a huge first ingest
        cannot bloat the append-only log; the counts stay exact and ``last_ingest`` has them all.
        """
        run = IngestRun(
            collection, report, time.perf_counter() - started, ingestor.max_tokens, ingestor.overlap_tokens
        )
        summary = run.summary()
        self.catalog.record_ingest(caller.tenant, collection, summary)
        counts = {s: len(v) if isinstance(v, list) else v for s, v in summary.items() if s != "collection"}
        named = {
            "added": report.added,
            "replaced": report.replaced,
            "deleted": report.deleted,
            "skipped": [s.source for s in report.skipped],
        }
        files = {status: names[:_AUDITED_NAMES] for status, names in named.items() if names}
        self.audit.append(
            actor=caller.actor,
            tenant=caller.tenant,
            action="rag.ingest",
            target=collection,
            after={"via": via, **counts, "files": files},
            request_id=request_id,
        )
        self._last_write = time.monotonic()
        if self.auto_index_points and report.chunks_written:
            self._indexer.submit(self._index_when_quiet, caller.tenant, collection)
        return run

    def _index_when_quiet(self, tenant: str, collection: str) -> None:
        """Build the collection's index once ingestion has paused, if enough chunks lack one.

        A bulk load comes as many uploads: waiting for a pause builds once, after the last.
        Runs on the indexer thread; failures are logged (nobody waits for this).
        """
        while time.monotonic() - self._last_write < _QUIET_SECONDS:
            if self._closing.wait(_QUIET_SECONDS):
                return
        name = physical_name(tenant, collection)
        try:
            unindexed = self.store.unindexed(name)
            if unindexed < self.auto_index_points:
                return  # built meanwhile, or what the last build could not index (see unindexed)
            log.info("building the search index of %s (%d chunks unindexed)", collection, unindexed)
            started = time.perf_counter()
            self.store.optimize(name)
            seconds = time.perf_counter() - started
            self.audit.append(
                actor="system",
                tenant=tenant,
                action="rag.optimize",
                target=collection,
                after={
                    "chunks": self.store.count(name),
                    "unindexed": unindexed,
                    "seconds": round(seconds, 3),
                },
            )
            log.info("built the search index of %s in %.1f s", collection, seconds)
        except Exception as exc:  # a collection dropped meanwhile, a closed store, a failed build
            if not self._closing.is_set():
                log.warning("could not build the search index of %s: %s", collection, exc)

    # -- collections -----------------------------------------------------------------

    def collections(self, caller: Principal) -> list[CollectionView]:
        """The caller's tenant's collections, by name, with their documents."""
        prefix = _tenant_prefix(caller.tenant)
        names = [n[len(prefix) :] for n in self.store.collections() if n.startswith(prefix)]
        return [self.collection(caller, name) for name in names]

    def collection(self, caller: Principal, collection: str) -> CollectionView:
        """One of the caller's tenant's collections: documents, chunk count, settings, last ingestion.

        Raises:
            NotFoundError: The tenant has no such collection.
        """
        tenant = caller.tenant
        name = self._existing(tenant, collection)
        info = self.catalog.get(tenant, collection)
        return CollectionView(
            name=collection,
            chunks=self.store.count(name),
            documents=Ingestor(self.store, self.embedder, self.tokenizer).documents(name),
            chunk_tokens=info.chunk_tokens if info else self.settings.rag_chunk_tokens,
            overlap_tokens=info.overlap_tokens if info else self.settings.rag_overlap_tokens,
            last_ingest_at=info.last_ingest_at.isoformat() if info and info.last_ingest_at else None,
            last_ingest=info.last_ingest if info else None,
        )

    def _existing(self, tenant: str, collection: str) -> str:
        name = physical_name(tenant, collection)
        if name not in self.store.collections():
            raise NotFoundError(
                f"no collection {collection!r} in tenant {tenant!r}", collection=collection, tenant=tenant
            )
        return name

    # -- query -----------------------------------------------------------------------

    async def query(
        self,
        caller: Principal,
        question: str,
        collection: str,
        top_k: int | None = None,
        *,
        generate: bool = True,
        request_id: str | None = None,
        prompt: str | int | None = None,
        llm: LLMClient | None = None,
        max_answer_tokens: int | None = None,
        log_query: bool = True,
        fallback: bool | None = None,
        unit: str | None = None,
    ) -> QueryResult:
        """Answer ``question`` from the caller's tenant's ``collection`` and log the query.

        With ``generate=False`` only retrieval runs: no prompt read, no LLM call, ``answer`` None.
        Failed queries are not logged (they raise before there is anything to log). The answer's
        LLM call is the ledger's and the budgets' under the caller's tenant and key; a
        retrieval-only query makes no LLM call, so its question's embedding is metered instead
        (``meter``).

        The keyword arguments after ``request_id`` are for evals: ``prompt`` answers with that
        alias or version of the answer prompt instead of ``production``, ``llm`` with that client
        (a gateway route) instead of ``answer_llm``, ``max_answer_tokens`` caps the answer,
        ``fallback=False`` returns the LLM's answer even when it cites nothing or repeats itself
        (an eval of a prompt must see what the prompt makes), and ``log_query=False`` keeps the
        query out of the query log and unmetered (eval questions
        are not user traffic, and would skew query drift; an eval run is costed on its own).

        While a prompt experiment runs, ``unit`` (default: the caller's key) decides which
        version of the prompt answers, unless ``prompt`` names one. A candidate version that
        fails is counted against it and the ``production`` version answers instead.

        Raises:
            ForbiddenError: The caller is a viewer.
            InvalidInputError: Empty question, bad collection name or top_k; the field is named.
            NotFoundError: The tenant has no such collection.
            BackendError: The store, the embedding model, the registry or the LLM failed.
        """
        caller.require(Role.USER, "querying a collection")
        tenant = caller.tenant
        if not isinstance(question, str) or not question.strip():
            raise InvalidInputError(
                "question must be a non-empty string", field="question", value=repr(question)
            )
        physical_name(tenant, collection)  # a bad name is a 422 before any work
        request_id = request_id or uuid.uuid4().hex
        with self.tracer.trace(
            "query", "CHAIN", request_id=request_id, tenant=tenant,
            inputs={"question": question, "collection": collection, "top_k": top_k}, generate=generate,
        ) as traced:  # fmt: skip
            started = time.perf_counter()
            if generate or not log_query or self.meter is None:
                chunks = await asyncio.to_thread(self._retrieve, tenant, collection, question, top_k)
            else:  # no LLM call to meter this query: its embedding is the model call that counts
                with self.meter(caller, [question], request_id=request_id) as metered:
                    chunks = await asyncio.to_thread(self._retrieve, tenant, collection, question, top_k)
                    metered.prompt_tokens = self.tokenizer.count(question)
            retrieved = time.perf_counter()
            answer: Answer | None = None
            prompt_ms: float | None = None
            generation_ms: float | None = None
            assignment: Assignment | None = None
            variant: str | None = None
            if generate:

                def answerer(variant: ExperimentVariant | None) -> Answerer:
                    """An answerer whose LLM calls are ``variant``'s in the ledger."""
                    return Answerer(
                        llm or self.answer_llm(caller, request_id, variant),
                        self.tokenizer,
                        context_tokens=self.settings.rag_context_tokens,
                        max_answer_tokens=max_answer_tokens or self.settings.rag_max_answer_tokens,
                        temperature=self.settings.rag_answer_temperature,
                        frequency_penalty=self.settings.rag_answer_frequency_penalty,
                        fallback=self.settings.rag_answer_fallback if fallback is None else fallback,
                        embedder=self.embedder,
                    )

                if prompt is None and self.traffic is not None:
                    assignment = self.traffic.assign(
                        "prompt", ANSWER_PROMPT, unit or caller.key_id or request_id
                    )
                answer, prompted, variant = await self._answer(
                    answerer, question, chunks, prompt, assignment, request_id
                )
                prompt_ms = (prompted - retrieved) * 1000
                generation_ms = (time.perf_counter() - prompted) * 1000
                sources = answer.sources
            else:
                # The sources the model would have been given: same numbering, same cut texts.
                _, sources = await asyncio.to_thread(
                    build_context, chunks, self.tokenizer, self.settings.rag_context_tokens
                )
            result = QueryResult(
                answer=answer,
                sources=sources,
                chunks=chunks,
                request_id=request_id,
                latency_ms=(time.perf_counter() - started) * 1000,
                retrieval_ms=(retrieved - started) * 1000,
                prompt_ms=prompt_ms,
                generation_ms=generation_ms,
                variant=variant,
                experiment=None if assignment is None else assignment.experiment,
            )
            if log_query:
                self.queries.record(_log_entry(tenant, collection, question, result))
            traced.set(answer_mode=result.answer_mode, variant=variant)
            traced.end(
                {"answer": None if answer is None else answer.answer, "sources": [s.source for s in sources]}
            )
        return result

    def feedback(self, caller: Principal, scores: dict[str, float]) -> tuple[list[str], list[str]]:
        """Score earlier answers of the caller's tenant, by request id, from 0 (useless) to 1 (right).

        The scores are the ``answer_score`` a prompt experiment decides on. Returns the request
        ids that took their score and those the tenant never asked.

        Raises:
            ForbiddenError: The caller is a viewer.
            InvalidInputError: A score outside [0, 1] or not a number, naming its request id.
        """
        caller.require(Role.USER, "scoring an answer")
        for request_id, score in scores.items():
            if isinstance(score, bool) or not (isinstance(score, int | float) and 0.0 <= score <= 1.0):
                raise InvalidInputError(
                    f"the score of {request_id!r} must be a number from 0 to 1, got {score!r}",
                    field="score",
                    request_id=request_id,
                )
        return self.queries.feedback(caller.tenant, {r: float(s) for r, s in scores.items()})

    async def _answer(
        self,
        answerer: Callable[[ExperimentVariant | None], Answerer],
        question: str,
        chunks: list[RetrievedChunk],
        prompt: str | int | None,
        assignment: Assignment | None,
        request_id: str,
    ) -> tuple[Answer, float, str | None]:
        """The answer, when its prompt was read, and the experiment variant that answered (if any).

        An experiment's outcome times the prompt read and the generation: what a prompt changes.
        """
        started = time.perf_counter()

        async def answer_with(version: str | int | None, variant: str) -> tuple[Answer, float]:
            with tracing.span("prompt", "PARSER", inputs={"prompt": version or "production"}) as traced:
                template = await asyncio.to_thread(self._prompt, version)
                traced.end({"name": ANSWER_PROMPT, "version": template.version})
            prompted = time.perf_counter()
            tagged = answerer(None if assignment is None else (assignment.experiment, variant))
            return await tagged.answer(question, chunks, template.template, template.version), prompted

        if assignment is not None and assignment.variant == CHALLENGER:
            try:
                answer, prompted = await answer_with(int(assignment.target), CHALLENGER)
            except Exception as exc:  # the caller still gets an answer: production's, below
                self._outcome(assignment, CHALLENGER, request_id, started, error=exc)
            else:
                self._outcome(assignment, CHALLENGER, request_id, started, cost_usd=answer.cost_usd)
                return answer, prompted, CHALLENGER
        try:
            answer, prompted = await answer_with(prompt, CHAMPION)
        except Exception as exc:
            if assignment is not None and assignment.variant == CHAMPION:
                self._outcome(assignment, CHAMPION, request_id, started, error=exc)
            raise
        if assignment is not None and assignment.variant == CHAMPION:
            self._outcome(assignment, CHAMPION, request_id, started, cost_usd=answer.cost_usd)
        return answer, prompted, None if assignment is None else CHAMPION

    def _outcome(
        self,
        assignment: Assignment,
        variant: str,
        request_id: str,
        started: float,
        *,
        error: Exception | None = None,
        cost_usd: float = 0.0,
    ) -> None:
        if self.traffic is not None:
            error_type = None if error is None else getattr(error, "type", type(error).__name__)
            self.traffic.record(Outcome.since(assignment, variant, request_id, started, error_type, cost_usd))

    def _retrieve(
        self, tenant: str, collection: str, question: str, top_k: int | None
    ) -> list[RetrievedChunk]:
        with tracing.span("retrieve", "RETRIEVER", inputs={"query": question, "top_k": top_k}) as traced:
            chunks = self.retriever.retrieve(
                self._existing(tenant, collection),
                question,
                top_k=top_k,
                score_threshold=self.settings.rag_score_threshold,
            )
            if traced.recording:
                traced.end([_document(chunk) for chunk in chunks])
        return chunks

    def _prompt(self, alias_or_version: str | int | None = None) -> PromptVersionInfo:
        """The prompt asked for (default ``production``, re-read every ``model_poll_seconds``)."""
        with self._prompt_lock:
            if not self._prompt_ready:
                self._start_registry()
                ensure_answer_prompt(self.registry)
                self._prompt_ready = True
        if alias_or_version is None:
            return self._production_prompt.get()
        if isinstance(alias_or_version, int):
            found = self._prompt_versions.get(alias_or_version)
            if found is None:
                found = self._prompt_versions[alias_or_version] = load_answer_prompt(
                    self.registry, alias_or_version
                )
            return found
        return load_answer_prompt(self.registry, alias_or_version)

    # -- lifecycle -------------------------------------------------------------------

    async def in_background(self, work: Callable[[], T]) -> T:
        """Run ``work`` (an ingest, upload, delete or index build) on the service's own worker thread.

        Loading, chunking and embedding take seconds to minutes of CPU. On their own single
        thread, writes queue behind each other instead of filling the server's thread pool, which
        also answers ``/predict`` and the gateway's blocking calls.
        """
        return await asyncio.get_running_loop().run_in_executor(self._worker, work)

    def warm_up(self) -> None:
        """Do now what the first query would: run the embedder once, read the answer prompt.

        Reading the prompt registers version 1 when the registry has none, and starts the
        watcher that keeps ``production`` current.
        """
        self.embedder.embed(["warm up"])
        self._prompt()

    def close(self) -> None:
        """Close the store and release the store lock (from any thread)."""
        self._production_prompt.close()
        self._closing.set()
        self._worker.shutdown(wait=True)
        try:
            self.store.close()  # stops an index build (the indexer thread then ends)
            self._indexer.shutdown(wait=True, cancel_futures=True)
        finally:
            if self._lock is not None:
                self._lock.release()


def _document(chunk: RetrievedChunk) -> dict[str, Any]:
    """A retrieved chunk as MLflow's trace UI shows a retriever's documents."""
    metadata = {"source": chunk.source, "chunk": chunk.chunk, "score": chunk.score}
    return {"id": chunk.id, "page_content": chunk.text, "metadata": metadata}


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
        answer_mode=result.answer_mode,
        experiment=result.experiment,
        variant=result.variant,
    )
