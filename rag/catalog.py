"""The catalog of RAG collections: each tenant's collections, how they chunk, their last ingestion.

The vector store holds the points; this table holds what the store has no place for. Chunk
settings belong to a collection, not to a run: every later ingest and upload of the collection
cuts files the same way (changing them re-chunks every file, since chunk ids follow the text).
A collection ingested before the catalog existed has no row and uses the defaults.

It knows rows, not stores or embedders.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from opsloop.db import Database
from opsloop.tables import RagCollection, utcnow

__all__ = ["CollectionCatalog", "CollectionInfo"]


@dataclass(frozen=True)
class CollectionInfo:
    """One collection's row: chunk settings and the summary of its last ingestion (if any)."""

    tenant: str
    name: str
    chunk_tokens: int
    overlap_tokens: int
    created_at: datetime
    last_ingest_at: datetime | None
    last_ingest: dict[str, Any] | None


def _info(row: RagCollection) -> CollectionInfo:
    return CollectionInfo(
        row.tenant,
        row.name,
        row.chunk_tokens,
        row.overlap_tokens,
        row.created_at,
        row.last_ingest_at,
        row.last_ingest,
    )


class CollectionCatalog:
    """Reads and writes ``rag_collections`` (migration ``0005``) in a started database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, tenant: str, name: str) -> CollectionInfo | None:
        """The collection's row, or None when it was never ingested through the catalog."""
        with self.db.read() as session:
            row = session.get(RagCollection, (tenant, name))
            return None if row is None else _info(row)

    def list(self, tenant: str) -> list[CollectionInfo]:
        """The tenant's collections, by name."""
        with self.db.read() as session:
            rows = session.scalars(
                select(RagCollection).where(RagCollection.tenant == tenant).order_by(RagCollection.name)
            )
            return [_info(row) for row in rows]

    def configure(self, tenant: str, name: str, *, chunk_tokens: int, overlap_tokens: int) -> CollectionInfo:
        """Create the row, or set new chunk settings on it; returns what is stored."""

        def upsert(session: Session) -> CollectionInfo:
            row = session.get(RagCollection, (tenant, name))
            if row is None:
                row = RagCollection(tenant=tenant, name=name, created_at=utcnow())
                session.add(row)
            row.chunk_tokens = chunk_tokens
            row.overlap_tokens = overlap_tokens
            session.flush()
            return _info(row)

        return self.db.write(upsert)

    def record_ingest(self, tenant: str, name: str, summary: dict[str, Any]) -> None:
        """Keep ``summary`` as the collection's last ingestion (the row must exist)."""

        def update(session: Session) -> None:
            row = session.get(RagCollection, (tenant, name))
            if row is not None:
                row.last_ingest_at = utcnow()
                row.last_ingest = summary

        self.db.write(update)
