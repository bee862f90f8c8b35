"""Folder ingestion into a vector store: incremental, and safe to kill at any moment.

``Ingestor.ingest(collection, root)`` loads every file under ``root``, cuts it into chunks,
embeds them (dense, in batches) and encodes them (BM25 sparse), and writes one point per chunk.
Run again, it writes only what changed:

* unchanged file: nothing is embedded or written;
* changed file: its new chunks are upserted, then its old chunks that are not among them are
  deleted, so a reader never sees the file with no chunks at all;
* file that disappeared from ``root``: its chunks are deleted when ``delete_missing=True``;
* file that fails to load (unsupported, corrupt, no text): reported in ``skipped``; chunks an
  earlier run stored for it are kept, since the file still exists.

Point ids are deterministic: ``uuid5(collection, source, chunk index, chunk text)``. Each point's
payload holds ``kind="chunk"``, ``source``, ``title``, ``headings``, ``text``, ``chunk`` (its
index), ``chunks`` (how many the file has), ``token_count``, ``doc_sha256`` and ``format`` (plus
``page`` for PDFs).

Kill safety. A run killed at any point (SIGKILL, power loss) and run again ends with exactly the
points of an uninterrupted run, with no marker or journal to keep consistent, because:

1. Upserts are idempotent: the same chunk always gets the same id, so re-writing it replaces it
   and a half-written batch written again leaves no duplicate.
2. A file's stale chunks are deleted only after all its new chunks are written.
3. A file counts as done only when the ids stored for its source are exactly the ids its current
   content chunks into, *and* all of them carry its current ``doc_sha256``. Any interruption
   between (or inside) the upserts and the delete leaves a different id set, or points with an
   older digest, so the next run redoes that file: upsert all, delete the rest.
4. Deleting missing files is one filter delete, itself idempotent.

The store itself must make each upsert or delete durable when it returns (Qdrant Edge's
write-ahead log does; so does a Qdrant server). The completeness check costs one chunking pass
(tokenizer only, no model) per file on every run; that is what lets it detect an interrupted
file whose bytes did not change. Changing chunk settings changes the ids, so every file is then
redone; changing the embedding model does not: ingest into a new collection instead.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from opsloop.errors import InvalidInputError
from rag.chunking import Chunk, Tokenizer, chunk_document
from rag.embedder import Embedder
from rag.loaders import Document, Skipped, load_folder
from rag.sparse import BM25Encoder
from rag.stores.protocol import Point, VectorStore

__all__ = [
    "CHUNK_ID_NAMESPACE",
    "IngestProgress",
    "IngestReport",
    "Ingestor",
    "Status",
    "StoredDocument",
    "chunk_id",
]

CHUNK_ID_NAMESPACE = uuid.UUID("6f1c7a52-3d0e-5b8a-9c47-0e2b5d8f4a13")
"""Namespace of the uuid5 chunk ids; changing it would make every stored chunk look stale."""

KEYWORD_FIELDS = ("kind", "source", "doc_sha256")
_GET_PAGE = 256

Status = Literal["added", "replaced", "unchanged", "deleted", "skipped"]
_FILE_STATUSES = ("added", "replaced", "unchanged", "deleted")


@dataclass(frozen=True)
class IngestReport:
    """What one ``ingest`` run did, by source; lists are in the order the sources finished.

    ``replaced`` also lists a file redone because an earlier run was interrupted inside it.
    """

    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    chunks_written: int = 0
    chunks_deleted: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready values (what the API answers and the catalog keeps)."""
        return {
            **{status: list(getattr(self, status)) for status in _FILE_STATUSES},
            "skipped": [{"source": s.source, "reason": s.reason} for s in self.skipped],
            "chunks_written": self.chunks_written,
            "chunks_deleted": self.chunks_deleted,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IngestReport:
        """The inverse of :meth:`to_dict`."""
        return cls(
            **{status: list(data.get(status, [])) for status in _FILE_STATUSES},
            skipped=[Skipped(s["source"], s["reason"]) for s in data.get("skipped", [])],
            chunks_written=int(data.get("chunks_written", 0)),
            chunks_deleted=int(data.get("chunks_deleted", 0)),
        )

    def __add__(self, other: IngestReport) -> IngestReport:
        """Both runs' reports in one, as if they were one run."""
        return IngestReport(
            **{status: getattr(self, status) + getattr(other, status) for status in _FILE_STATUSES},
            skipped=self.skipped + other.skipped,
            chunks_written=self.chunks_written + other.chunks_written,
            chunks_deleted=self.chunks_deleted + other.chunks_deleted,
        )


@dataclass(frozen=True)
class IngestProgress:
    """One source finished: its points are in the store as ``status`` says.

    ``chunks`` is the number of chunks it now has (0 for deleted or skipped); ``done`` counts
    finished sources out of ``total`` (files found plus files deleted, once known).
    """

    source: str
    status: Status
    chunks: int
    done: int
    total: int


ProgressCallback = Callable[[IngestProgress], None]


@dataclass(frozen=True)
class StoredDocument:
    """One source as the store holds it: its title, chunk count and content digest."""

    source: str
    title: str
    chunks: int
    sha256: str


def chunk_id(collection: str, source: str, chunk: Chunk) -> str:
    """The deterministic point id of ``chunk``: same collection, source, index and text, same id."""
    return str(uuid.uuid5(CHUNK_ID_NAMESPACE, f"{collection}\x00{source}\x00{chunk.index}\x00{chunk.text}"))


@dataclass
class _Plan:
    """One document to write: its chunks and ids, what the store held for it, and progress."""

    document: Document
    chunks: list[Chunk]
    ids: list[str]
    stored: set[str]
    unchanged: bool
    written: int = 0


class Ingestor:
    """Loads, chunks, embeds and writes folders into a collection (see the module docs).

    Args:
        store: Where points go; the collection is created on first use (cosine dense + sparse).
        embedder: Dense embedder; its ``dimension`` sizes a new collection.
        tokenizer: The embedder's tokenizer, which measures chunks.
        sparse_encoder: BM25 encoder for the sparse vectors; default ``BM25Encoder()``. The
            retriever must encode queries with the same settings.
        max_tokens: Chunk size bound, in ``tokenizer`` tokens.
        overlap_tokens: Tokens consecutive chunks of a section share.
        batch_size: Chunks per embedding call and per upsert (chunks of several files share a
            batch).

    Raises:
        InvalidInputError: A chunking setting or ``batch_size`` is out of range.
    """

    def __init__(
        self,
        store: VectorStore,
        embedder: Embedder,
        tokenizer: Tokenizer,
        *,
        sparse_encoder: BM25Encoder | None = None,
        max_tokens: int = 256,
        overlap_tokens: int = 32,
        batch_size: int = 64,
    ) -> None:
        if batch_size < 1:
            raise InvalidInputError("batch_size must be at least 1", field="batch_size", value=batch_size)
        # Chunking checks its settings before it reads any section: fail here, not mid-run.
        chunk_document(
            Document("", "", ()), tokenizer=tokenizer, max_tokens=max_tokens, overlap_tokens=overlap_tokens
        )
        self.store = store
        self.embedder = embedder
        self.tokenizer = tokenizer
        self.sparse_encoder = sparse_encoder if sparse_encoder is not None else BM25Encoder()
        self.max_tokens = max_tokens
        self.overlap_tokens = overlap_tokens
        self.batch_size = batch_size

    def ingest(
        self,
        collection: str,
        root: Path | str,
        *,
        patterns: Sequence[str] | None = None,
        delete_missing: bool = False,
        progress: ProgressCallback | None = None,
    ) -> IngestReport:
        """Bring ``collection`` up to date with the files under ``root``.

        Args:
            collection: Target collection, created when missing.
            root: Folder to load (see ``load_folder``); sources are paths relative to it.
            patterns: ``fnmatch`` patterns selecting files, as in ``load_folder``.
            delete_missing: Also delete the chunks of every stored source that is no longer a
                file under ``root``. The collection then mirrors this one folder.
            progress: Called once per finished source, after its points are written.

        Raises:
            InvalidInputError: ``root`` is not a folder.
            BackendError: The store or the embedding model failed; what was written stays and
                the next run finishes the job.
        """
        root = Path(root)
        loaded = load_folder(root, patterns=patterns)
        missing: list[str] = []
        if delete_missing and collection in self.store.collections():
            missing = sorted(s for s in self._stored_sources(collection) if not (root / s).is_file())
        return self._run(collection, loaded.documents, loaded.skipped, missing, progress)

    def ingest_documents(
        self,
        collection: str,
        documents: Sequence[Document],
        *,
        skipped: Sequence[Skipped] = (),
        progress: ProgressCallback | None = None,
    ) -> IngestReport:
        """Write already loaded documents (e.g. uploads), with the same rules as ``ingest``.

        Each document needs ``metadata["sha256"]``, as ``load_bytes`` sets it. ``skipped`` are
        files the caller could not load, reported as ``ingest`` reports its own.

        Raises:
            InvalidInputError: Two documents share a source, or one has no ``sha256``.
        """
        return self._run(collection, documents, list(skipped), [], progress)

    # -- the run ---------------------------------------------------------------------

    def _run(
        self,
        collection: str,
        documents: Sequence[Document],
        skipped: list[Skipped],
        missing: list[str],
        progress: ProgressCallback | None,
    ) -> IngestReport:
        _check_documents(documents)
        by_status: dict[Status, list[str]] = {
            "added": [], "replaced": [], "unchanged": [], "deleted": [], "skipped": []
        }  # fmt: skip
        total = len(documents) + len(skipped) + len(missing)
        counts = {"written": 0, "deleted": 0}

        def finished(source: str, status: Status, chunks: int) -> None:
            by_status[status].append(source)
            if progress is not None:
                progress(IngestProgress(source, status, chunks, sum(map(len, by_status.values())), total))

        for item in skipped:
            finished(item.source, "skipped", 0)

        shape_checked = collection not in self.store.collections()
        if shape_checked:
            self._create(collection)
        pending: list[tuple[_Plan, Chunk, str]] = []

        def finish(plan: _Plan) -> None:
            stale = plan.stored - set(plan.ids)
            if stale:
                self.store.delete(collection, sorted(stale))
                counts["deleted"] += len(stale)
            finished(plan.document.source, "replaced" if plan.stored else "added", len(plan.chunks))

        def flush() -> None:
            nonlocal shape_checked
            if not pending:
                return
            if not shape_checked:
                # An existing collection's shape is checked once there is something to write, so
                # that a run with nothing to do never loads the embedding model.
                self._create(collection)
                shape_checked = True
            texts = [chunk.text for _, chunk, _ in pending]
            vectors = self.embedder.embed(texts)
            sparse = self.sparse_encoder.encode_documents(texts)
            points = [
                Point(point_id, vectors[i], sparse[i], _payload(plan.document, chunk, len(plan.chunks)))
                for i, (plan, chunk, point_id) in enumerate(pending)
            ]
            self.store.upsert(collection, points)
            counts["written"] += len(points)
            batch = list(pending)
            pending.clear()
            for plan, _, _ in batch:
                plan.written += 1
                if plan.written == len(plan.chunks):
                    finish(plan)

        for document in documents:
            plan = self._plan(collection, document)
            if plan.unchanged:
                finished(document.source, "unchanged", len(plan.chunks))
            elif not plan.chunks:
                finish(plan)
            for chunk, point_id in zip(plan.chunks, plan.ids, strict=True):
                if plan.unchanged:
                    break
                pending.append((plan, chunk, point_id))
                if len(pending) >= self.batch_size:
                    flush()
        flush()

        counts["deleted"] += self.delete_sources(collection, missing)
        for source in missing:
            finished(source, "deleted", 0)

        return IngestReport(
            added=by_status["added"],
            replaced=by_status["replaced"],
            unchanged=by_status["unchanged"],
            deleted=by_status["deleted"],
            skipped=list(skipped),
            chunks_written=counts["written"],
            chunks_deleted=counts["deleted"],
        )

    def delete_sources(self, collection: str, sources: Sequence[str]) -> int:
        """Delete every chunk of ``sources``; returns how many chunks there were."""
        deleted = 0
        for start in range(0, len(sources), _GET_PAGE):
            page = list(sources[start : start + _GET_PAGE])
            deleted += len(self.store.ids_where(collection, "source", page))
            self.store.delete_where(collection, "source", page)
        return deleted

    def documents(self, collection: str) -> list[StoredDocument]:
        """The sources stored in ``collection``, by source, read from each one's first chunk.

        Every stored source has a chunk 0: a file's chunks are written in order, and its stale
        chunks are deleted only after its new ones are in.
        """
        ids = sorted(self.store.ids_where(collection, "chunk", 0))
        found: dict[str, StoredDocument] = {}
        for start in range(0, len(ids), _GET_PAGE):
            for point in self.store.get(collection, ids[start : start + _GET_PAGE]):
                payload = point.payload
                source = str(payload.get("source", ""))
                if source:
                    found[source] = StoredDocument(
                        source,
                        str(payload.get("title", "")),
                        int(payload.get("chunks", 0)),
                        str(payload.get("doc_sha256", "")),
                    )
        return [found[source] for source in sorted(found)]

    def _plan(self, collection: str, document: Document) -> _Plan:
        """What to write for ``document``; ``unchanged`` when the store already holds exactly it."""
        chunks = self._chunks(document)
        ids = [chunk_id(collection, document.source, chunk) for chunk in chunks]
        stored = self.store.ids_where(collection, "source", document.source)
        expected = set(ids)
        unchanged = stored == expected and expected <= self.store.ids_where(
            collection, "doc_sha256", document.metadata["sha256"]
        )
        return _Plan(document, chunks, ids, stored, unchanged)

    def _chunks(self, document: Document) -> list[Chunk]:
        return chunk_document(
            document, tokenizer=self.tokenizer, max_tokens=self.max_tokens, overlap_tokens=self.overlap_tokens
        )

    def _create(self, collection: str) -> None:
        self.store.create_collection(
            collection, self.embedder.dimension, sparse=True, keyword_fields=KEYWORD_FIELDS
        )

    def _stored_sources(self, collection: str) -> set[str]:
        """Every source with chunks in ``collection`` (reads all chunk payloads)."""
        ids = sorted(self.store.ids_where(collection, "kind", "chunk"))
        sources: set[str] = set()
        for start in range(0, len(ids), _GET_PAGE):
            for point in self.store.get(collection, ids[start : start + _GET_PAGE]):
                sources.add(str(point.payload.get("source", "")))
        sources.discard("")
        return sources


def _check_documents(documents: Sequence[Document]) -> None:
    seen: set[str] = set()
    for document in documents:
        if document.source in seen:
            raise InvalidInputError(
                f"two documents have the source {document.source!r}", field="source", value=document.source
            )
        seen.add(document.source)
        if not isinstance(document.metadata.get("sha256"), str):
            raise InvalidInputError(
                f"document {document.source!r} has no metadata['sha256']",
                field="metadata.sha256",
                value=document.source,
            )


def _payload(document: Document, chunk: Chunk, count: int) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "kind": "chunk",
        "source": document.source,
        "title": chunk.title,
        "headings": list(chunk.headings),
        "text": chunk.text,
        "chunk": chunk.index,
        "chunks": count,
        "token_count": chunk.token_count,
        "doc_sha256": document.metadata["sha256"],
        "format": str(document.metadata.get("format", "")),
    }
    # Only known JSON-safe metadata: YAML front matter may hold dates and other non-JSON values.
    page = chunk.metadata.get("page")
    if isinstance(page, int):
        payload["page"] = page
    return payload
