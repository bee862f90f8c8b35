"""The RAG query log: every query (``POST /query`` and ``opsloop query``), recorded off its path.

Why a background writer, when a query already takes hundreds of milliseconds of retrieval and
generation and one more INSERT would hardly show? Because the cost of the INSERT is not bounded
by the query: on SQLite it queues for the one write lock (up to the 30 s busy timeout) behind
the prediction log's batches and the CLI, and a failed write must not turn an answered question
into an error. So, as the prediction log does, it writes through
:class:`opsloop.batch_writer.BatchWriter`: a query hands its entry to a queue and returns.
Readers call :meth:`QueryLog.flush` first, so a query answered a moment ago is visible.

It knows rows and numbers, not retrievers or answerers; reads are scoped to the caller's tenant.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from opsloop.auth import Principal
from opsloop.batch_writer import BatchedLog
from opsloop.db import Database
from opsloop.tables import RagQuery, utcnow

__all__ = ["WITHHELD", "QueryLog", "QueryLogEntry"]

log = logging.getLogger(__name__)

WITHHELD = "<withheld: PII redaction failed>"
"""Stored instead of a question or answer that could not be redacted."""


@dataclass(frozen=True)
class QueryLogEntry:
    """What one RAG query did.

    ``chunk_ids``, ``scores`` (reciprocal-rank-fusion) and ``dense_scores`` (cosine) are parallel
    lists over every retrieved chunk, best first. ``answer``, ``prompt_version`` and
    ``generation_ms`` are None for a retrieval-only query (``generate=false``). ``answer_mode``
    is ``rag.answer.AnswerMode`` (None on rows logged before it was recorded).
    """

    request_id: str
    tenant: str
    collection: str
    question: str
    chunk_ids: list[str]
    scores: list[float]
    dense_scores: list[float]
    answer: str | None
    prompt_version: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    retrieval_ms: float
    generation_ms: float | None
    answer_mode: str | None = None
    experiment: str | None = None
    """The prompt experiment that routed the query, if one did."""
    variant: str | None = None
    """Which of its variants answered: ``champion`` or ``challenger``."""
    feedback_score: float | None = None
    """How good the answer was, in [0, 1], once ``POST /feedback/query`` said so."""
    at: datetime = field(default_factory=utcnow)
    id: int | None = None
    """Set on entries read back from the store."""

    def to_dict(self) -> dict[str, Any]:
        """The entry as plain JSON-ready values (``at`` as ISO 8601)."""
        return {**vars(self), "at": self.at.isoformat()}


class QueryLog(BatchedLog[QueryLogEntry]):
    """Batched, asynchronous writes of RAG queries; reads of the newest ones.

    Its table needs the store migrated to ``0004`` or later; options as :class:`BatchedLog`,
    and ``redact(text, tenant, "query")``, which the question and the answer go through on the
    writer's thread before they are stored (PII redaction; None stores them as asked).
    """

    table = RagQuery
    name = "query-log"

    def __init__(
        self, db: Database, *, redact: Callable[[str, str, str], str] | None = None, **options: Any
    ) -> None:
        self.redact = redact
        super().__init__(db, **options)

    def _row(self, record: QueryLogEntry) -> dict[str, Any]:
        row = super()._row(record)
        if self.redact is None:
            return row
        for column in ("question", "answer"):
            if row[column] is not None:
                try:
                    row[column] = self.redact(row[column], record.tenant, "query")
                except Exception:  # the row is kept, the text it might leak is not
                    log.exception("could not redact the %s of query %s", column, record.request_id)
                    row[column] = WITHHELD
        return row

    def feedback(self, tenant: str, scores: dict[str, float]) -> tuple[list[str], list[str]]:
        """Score earlier answers of ``tenant`` by request id; returns (scored, unknown) request ids.

        A later score of the same answer replaces the earlier one.
        """
        self.flush()  # a query answered a moment ago may still be queued

        def attach(session: Session) -> tuple[list[str], list[str]]:
            found = set(
                session.scalars(
                    select(RagQuery.request_id).where(
                        RagQuery.tenant == tenant, RagQuery.request_id.in_(list(scores))
                    )
                )
            )
            now = utcnow()
            for request_id in found:
                session.execute(
                    update(RagQuery)
                    .where(RagQuery.tenant == tenant, RagQuery.request_id == request_id)
                    .values(feedback_score=scores[request_id], feedback_at=now)
                )
            return [r for r in scores if r in found], [r for r in scores if r not in found]

        return self._db.write(attach)

    def recent(
        self,
        caller: Principal,
        *,
        tenant: str | None = None,
        collection: str | None = None,
        since: datetime | None = None,
        limit: int = 1000,
    ) -> list[QueryLogEntry]:
        """The newest logged queries matching every given filter (at or after ``since``), newest first.

        An admin reads any tenant's queries (every tenant's when ``tenant`` is None); anyone
        else reads their own tenant's.

        Raises:
            ForbiddenError: A non-admin asked for another tenant's queries.
        """
        tenant = caller.scope(tenant, "queries")
        self.flush()
        query = select(RagQuery)
        if tenant is not None:
            query = query.where(RagQuery.tenant == tenant)
        if collection is not None:
            query = query.where(RagQuery.collection == collection)
        if since is not None:
            query = query.where(RagQuery.at >= since)
        with self._db.read() as session:
            rows = session.scalars(query.order_by(RagQuery.id.desc()).limit(limit)).all()
        return [_entry(row) for row in rows]


def _entry(row: RagQuery) -> QueryLogEntry:
    return QueryLogEntry(
        request_id=row.request_id,
        tenant=row.tenant,
        collection=row.collection,
        question=row.question,
        chunk_ids=list(row.chunk_ids),
        scores=list(row.scores),
        dense_scores=list(row.dense_scores),
        answer=row.answer,
        prompt_version=row.prompt_version,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        latency_ms=row.latency_ms,
        retrieval_ms=row.retrieval_ms,
        generation_ms=row.generation_ms,
        answer_mode=row.answer_mode,
        experiment=row.experiment,
        variant=row.variant,
        feedback_score=row.feedback_score,
        at=row.at,
        id=row.id,
    )
