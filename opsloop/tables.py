"""Table definitions of the relational store (SQLAlchemy 2 declarative).

The schema itself is created and changed only by the Alembic migrations in
``opsloop/migrations``; these classes must match them. Every table is on
:data:`opsloop.db.metadata`. Two are Core tables defined beside the code that owns them,
:data:`opsloop.auth.api_keys` and :data:`opsloop.audit.audit_events`, so that the CLI's key and
audit commands run without the ORM; :class:`ApiKey` and :class:`AuditEvent` map them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, BigInteger, Boolean, Float, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql import text

from opsloop.audit import audit_events
from opsloop.auth import api_keys
from opsloop.db import UTCDateTime, metadata, utcnow

__all__ = [
    "ApiKey",
    "AuditEvent",
    "Base",
    "BudgetRow",
    "DriftCheck",
    "ExperimentLease",
    "ExperimentOutcome",
    "ExperimentRow",
    "JobRunRow",
    "LLMCallRow",
    "Prediction",
    "RagCollection",
    "RagQuery",
    "RetrainingLease",
    "RetrainingRun",
    "RouteAlias",
    "UTCDateTime",
    "utcnow",
]


class Base(DeclarativeBase):
    """Declarative base of every opsloop table."""

    metadata = metadata
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime, dict[str, Any]: JSON}


class ApiKey(Base):
    """An API key: only its SHA-256 hash is stored, never the key itself (table ``opsloop.auth.api_keys``)."""

    __table__ = api_keys

    id: Mapped[str]
    tenant: Mapped[str]
    role: Mapped[str]
    name: Mapped[str]
    key_hash: Mapped[str]
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class AuditEvent(Base):
    """One mutating action, append-only (table ``opsloop.audit.audit_events``)."""

    __table__ = audit_events

    id: Mapped[int]
    at: Mapped[datetime]
    actor: Mapped[str]
    tenant: Mapped[str]
    action: Mapped[str]
    target: Mapped[str]
    before: Mapped[dict[str, Any] | None]
    after: Mapped[dict[str, Any] | None]
    request_id: Mapped[str | None]


class Prediction(Base):
    """One /predict request: its instances, outputs and, once known, the true labels."""

    __tablename__ = "predictions"
    __table_args__ = (
        Index("ix_predictions_request", "tenant", "model", "request_id"),
        Index("ix_predictions_model_at", "model", "version", "at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    tenant: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(256))
    version: Mapped[int] = mapped_column(Integer)
    variant: Mapped[str] = mapped_column(String(64))
    experiment: Mapped[str | None] = mapped_column(String(64), default=None)
    inputs: Mapped[list[Any]] = mapped_column(JSON)
    outputs: Mapped[list[Any]] = mapped_column(JSON)
    latency_ms: Mapped[float] = mapped_column(Float)
    labels: Mapped[list[Any] | None] = mapped_column(JSON, default=None)
    feedback_at: Mapped[datetime | None] = mapped_column(default=None)


class DriftCheck(Base):
    """The outcome of one scheduled drift check of a model."""

    __tablename__ = "drift_checks"
    __table_args__ = (Index("ix_drift_checks_model_at", "model", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    model: Mapped[str] = mapped_column(String(256))
    version: Mapped[int] = mapped_column(Integer)
    dataset_drift: Mapped[bool] = mapped_column(Boolean)
    share_drifted: Mapped[float] = mapped_column(Float)
    report: Mapped[dict[str, Any]] = mapped_column(JSON)


class RagQuery(Base):
    """One RAG query: what was retrieved (ids and scores), the answer, tokens and timings."""

    __tablename__ = "rag_queries"
    __table_args__ = (
        Index("ix_rag_queries_tenant_collection_at", "tenant", "collection", "at"),
        Index("ix_rag_queries_request", "tenant", "request_id"),  # /feedback/query finds answers by id
        Index("ix_rag_queries_experiment", "experiment", "variant"),  # the decider reads their scores
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    request_id: Mapped[str] = mapped_column(String(64))
    tenant: Mapped[str] = mapped_column(String(64))
    collection: Mapped[str] = mapped_column(String(64))
    question: Mapped[str] = mapped_column(Text)
    chunk_ids: Mapped[list[Any]] = mapped_column(JSON)
    scores: Mapped[list[Any]] = mapped_column(JSON)
    dense_scores: Mapped[list[Any]] = mapped_column(JSON)
    answer: Mapped[str | None] = mapped_column(Text, default=None)
    prompt_version: Mapped[str | None] = mapped_column(String(64), default=None)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    latency_ms: Mapped[float] = mapped_column(Float)
    retrieval_ms: Mapped[float] = mapped_column(Float)
    generation_ms: Mapped[float | None] = mapped_column(Float, default=None)
    answer_mode: Mapped[str | None] = mapped_column(String(16), default=None)
    experiment: Mapped[str | None] = mapped_column(String(64), default=None)
    """The prompt experiment that routed the query, if one did."""
    variant: Mapped[str | None] = mapped_column(String(16), default=None)
    """Which of its variants answered: ``champion`` or ``challenger``."""
    feedback_score: Mapped[float | None] = mapped_column(Float, default=None)
    """How good the answer was, in [0, 1], from ``POST /feedback/query``."""
    feedback_at: Mapped[datetime | None] = mapped_column(default=None)


class RagCollection(Base):
    """A tenant's RAG collection: how its files are chunked, and what its last ingestion did."""

    __tablename__ = "rag_collections"

    tenant: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    chunk_tokens: Mapped[int] = mapped_column(Integer)
    overlap_tokens: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_ingest_at: Mapped[datetime | None] = mapped_column(default=None)
    last_ingest: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)


class LLMCallRow(Base):
    """One LLM gateway call in the usage/cost ledger: who, which route and backend, tokens, cost, outcome."""

    __tablename__ = "llm_calls"
    __table_args__ = (
        Index("ix_llm_calls_tenant_at", "tenant", "at"),
        Index("ix_llm_calls_at", "at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    request_id: Mapped[str] = mapped_column(String(64))
    tenant: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str] = mapped_column(String(32))
    route: Mapped[str] = mapped_column(String(128))
    backend: Mapped[str] = mapped_column(String(128))
    model: Mapped[str] = mapped_column(String(256))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    cached_tokens: Mapped[int] = mapped_column(Integer)
    ttft_ms: Mapped[float | None] = mapped_column(Float, default=None)
    latency_ms: Mapped[float] = mapped_column(Float)
    cost_usd: Mapped[float] = mapped_column(Float)
    streamed: Mapped[bool] = mapped_column(Boolean)
    outcome: Mapped[str] = mapped_column(String(16))
    error_type: Mapped[str | None] = mapped_column(String(64), default=None)
    experiment: Mapped[str | None] = mapped_column(String(64), default=None)
    variant: Mapped[str | None] = mapped_column(String(16), default=None)


class BudgetRow(Base):
    """A budget or rate limit of a tenant, or of one of its keys (``key_id`` set)."""

    __tablename__ = "budgets"
    __table_args__ = (Index("ux_budgets_scope", "tenant", text("coalesce(key_id, '')"), "kind", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str | None] = mapped_column(String(32), default=None)
    kind: Mapped[str] = mapped_column(String(16))
    limit: Mapped[float] = mapped_column(Float)
    soft_ratio: Mapped[float] = mapped_column(Float, default=0.8)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(64))


class ExperimentRow(Base):
    """An experiment: what it compares, how traffic is split, and where it stands."""

    __tablename__ = "experiments"
    __table_args__ = (
        Index(
            "ux_experiments_active_target",
            "target_kind",
            "target",
            unique=True,
            sqlite_where=text("ended_at IS NULL"),
            postgresql_where=text("ended_at IS NULL"),
        ),
    )

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    target_kind: Mapped[str] = mapped_column(String(16))
    target: Mapped[str] = mapped_column(String(256))
    champion: Mapped[str] = mapped_column(String(128))
    challenger: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(32))
    weight: Mapped[float] = mapped_column(Float)
    step: Mapped[int] = mapped_column(Integer)
    step_started_at: Mapped[datetime] = mapped_column(default=utcnow)
    salt: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    checks: Mapped[dict[str, Any]] = mapped_column(JSON)
    decision: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(64))
    ended_at: Mapped[datetime | None] = mapped_column(default=None)


class ExperimentOutcome(Base):
    """One request an experiment routed: which variant, whether it answered, how fast, what it cost."""

    __tablename__ = "experiment_outcomes"
    __table_args__ = (Index("ix_experiment_outcomes_at", "experiment", "variant", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    experiment: Mapped[str] = mapped_column(String(64))
    variant: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    request_id: Mapped[str] = mapped_column(String(64))
    ok: Mapped[bool] = mapped_column(Boolean)
    latency_ms: Mapped[float] = mapped_column(Float)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    error_type: Mapped[str | None] = mapped_column(String(64), default=None)
    agreed: Mapped[bool | None] = mapped_column(Boolean, default=None)
    """A shadow's answer equalled the champion's (None: not a shadow copy, or it failed)."""


class ExperimentLease(Base):
    """Which process may act on experiments until when: exactly one decider acts at a time."""

    __tablename__ = "experiment_leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column()


class JobRunRow(Base):
    """One fire of a periodic job, claimed by the process that ran it (``opsloop.job_runs``)."""

    __tablename__ = "job_runs"

    job: Mapped[str] = mapped_column(String(128), primary_key=True)
    slot: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    holder: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column()
    ended_at: Mapped[datetime | None] = mapped_column(default=None)
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text, default=None)


class RouteAlias(Base):
    """Which configured route serves a gateway route's name, after an experiment promoted it."""

    __tablename__ = "route_aliases"

    route: Mapped[str] = mapped_column(String(256), primary_key=True)
    target: Mapped[str] = mapped_column(String(256))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(64))


class RetrainingRun(Base):
    """One retraining of a model: what started it, how far it got, and how it ended."""

    __tablename__ = "retraining_runs"
    __table_args__ = (Index("ix_retraining_runs_model", "model", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(256))
    status: Mapped[str] = mapped_column(String(16))
    step: Mapped[str] = mapped_column(String(32))
    trigger: Mapped[str] = mapped_column(String(32))
    cause: Mapped[dict[str, Any]] = mapped_column(JSON)
    tenant: Mapped[str] = mapped_column(String(64))
    started_by: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(default=None)
    holder: Mapped[str] = mapped_column(String(64))
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64), default=None)
    version: Mapped[int | None] = mapped_column(Integer, default=None)
    experiment: Mapped[str | None] = mapped_column(String(64), default=None)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)


class RetrainingLease(Base):
    """Which process retrains a model until when: one retraining per model at a time."""

    __tablename__ = "retraining_leases"

    model: Mapped[str] = mapped_column(String(256), primary_key=True)
    holder: Mapped[str] = mapped_column(String(64))
    run_id: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[datetime] = mapped_column()
