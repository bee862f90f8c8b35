"""The RAG query log on the real store: round trip, filters, order, loss accounting."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import text

from opsloop.auth import Principal, Role, system_principal
from opsloop.db import Database
from opsloop.errors import ForbiddenError
from opsloop.tables import utcnow
from rag.query_log import QueryLog, QueryLogEntry

ADMIN = system_principal("default")


def _entry(request_id: str, tenant: str = "acme", collection: str = "docs") -> QueryLogEntry:
    return QueryLogEntry(
        request_id=request_id,
        tenant=tenant,
        collection=collection,
        question="Which port does the daemon listen on?",
        chunk_ids=["c1", "c2"],
        scores=[0.032, 0.016],
        dense_scores=[0.81, 0.42],
        answer="Port 7311 [1].",
        prompt_version="1",
        prompt_tokens=120,
        completion_tokens=8,
        latency_ms=250.5,
        retrieval_ms=20.0,
        generation_ms=230.0,
    )


def test_entries_round_trip_newest_first(database: Database) -> None:
    log = QueryLog(database, batch_size=3).start()
    for i in range(7):
        log.record(_entry(f"r{i}"))
    log.record(replace(_entry("plain"), answer=None, prompt_version=None, generation_ms=None))
    recent = log.recent(ADMIN)
    assert [e.request_id for e in recent] == ["plain", *(f"r{i}" for i in reversed(range(7)))]
    first = recent[-1]
    assert first.chunk_ids == ["c1", "c2"] and first.scores == [0.032, 0.016]
    assert first.dense_scores == [0.81, 0.42] and first.answer == "Port 7311 [1]."
    assert (first.prompt_version, first.prompt_tokens, first.completion_tokens) == ("1", 120, 8)
    assert (first.latency_ms, first.retrieval_ms, first.generation_ms) == (250.5, 20.0, 230.0)
    assert first.at.tzinfo is not None and first.id is not None
    plain = recent[0]
    assert (plain.answer, plain.prompt_version, plain.generation_ms) == (None, None, None)
    assert log.recent(ADMIN, limit=2)[1].request_id == "r6"
    log.close()


def test_filters_by_tenant_collection_and_time(database: Database) -> None:
    log = QueryLog(database).start()
    old = replace(_entry("old"), at=utcnow() - timedelta(days=2))
    for entry in (old, _entry("a"), _entry("b", tenant="globex"), _entry("c", collection="faq")):
        log.record(entry)
    assert [e.request_id for e in log.recent(ADMIN, tenant="acme")] == ["c", "a", "old"]
    assert [e.request_id for e in log.recent(ADMIN, tenant="acme", collection="docs")] == ["a", "old"]
    assert [e.request_id for e in log.recent(ADMIN, tenant="globex")] == ["b"]
    since = utcnow() - timedelta(days=1)
    assert [e.request_id for e in log.recent(ADMIN, tenant="acme", since=since)] == ["c", "a"]
    log.close()


def test_close_writes_what_is_queued(database: Database) -> None:
    log = QueryLog(database, flush_seconds=5).start()
    for i in range(5):
        log.record(_entry(f"r{i}"))
    log.close()
    assert log.pending == 0
    assert len(QueryLog(database).recent(ADMIN)) == 5


def test_a_full_queue_or_a_failing_store_drops_and_counts(database: Database) -> None:
    dropped: list[int] = []
    log = QueryLog(database, max_pending=2, on_dropped=dropped.append)  # writer not started
    for i in range(3):
        log.record(_entry(f"r{i}"))
    assert sum(dropped) == 1 and log.pending == 2
    log.start().flush()
    assert len(log.recent(ADMIN)) == 2
    with database.engine.begin() as conn:
        conn.execute(text("DROP TABLE rag_queries"))
    log.record(_entry("lost"))
    log.flush()
    assert sum(dropped) == 2
    log.close()


def test_a_tenants_operator_reads_only_its_own_queries(database: Database) -> None:
    log = QueryLog(database).start()
    for request_id, tenant in (("a", "acme"), ("b", "globex")):
        log.record(_entry(request_id, tenant=tenant))
    operator = Principal("k1", "acme", Role.OPERATOR)
    assert [e.request_id for e in log.recent(operator)] == ["a"]
    with pytest.raises(ForbiddenError, match="another tenant's queries"):
        log.recent(operator, tenant="globex")
    log.close()
