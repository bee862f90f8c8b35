"""Where experiments and their outcomes live: the relational store, shared by every process.

Each ``serve`` process routes with its own copy of the running experiments (re-read every
fraction of a second) and records outcomes through a batched writer; the one process that
holds the decider's lease reads the outcomes back and moves the experiments on. Nothing
but the database is shared, so several processes on PostgreSQL agree, and so does the CLI.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any, Literal

import numpy as np
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from opsloop.batch_writer import BatchedLog
from opsloop.db import Database
from opsloop.errors import ConflictError, NotFoundError
from opsloop.tables import ExperimentLease, ExperimentOutcome, ExperimentRow, utcnow
from opsloop.traffic import Outcome, TargetKind

__all__ = [
    "ENDED",
    "Experiment",
    "ExperimentStore",
    "Kind",
    "OutcomeLog",
    "Status",
    "VariantSamples",
]

Kind = Literal["ab", "canary", "shadow"]
Status = Literal["running", "pending_approval", "promoted", "rolled_back", "stopped"]
ENDED: frozenset[str] = frozenset({"promoted", "rolled_back", "stopped"})


@dataclass(frozen=True)
class Experiment:
    """One experiment as stored: what it compares, its plan, and where it stands."""

    name: str
    tenant: str
    kind: Kind
    target_kind: TargetKind
    target: str
    champion: str
    """What the champion variant runs (a model version, prompt version or route)."""
    challenger: str
    status: Status
    weight: float
    """The challenger's share of traffic now, in percent (a shadow's copies are not counted)."""
    step: int
    """Index into the canary's ``steps``; 0 for other kinds."""
    step_started_at: datetime
    salt: str
    config: dict[str, Any]
    """The plan: ``steps``, ``primary``, ``guardrails``, ``min_samples``, ``require_approval``, ..."""
    checks: dict[str, Any]
    """The decider's running state: failed checks in a row, the last check's results."""
    decision: dict[str, Any] | None
    created_at: datetime
    created_by: str
    ended_at: datetime | None = None

    @property
    def running(self) -> bool:
        """Still routing traffic (a pending approval keeps its weights)."""
        return self.ended_at is None


def _experiment(row: ExperimentRow) -> Experiment:
    return Experiment(**{f.name: getattr(row, f.name) for f in fields(Experiment)})


@dataclass
class VariantSamples:
    """What one variant's routed requests did, in arrival order."""

    ok: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    latency_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    cost_usd: np.ndarray = field(default_factory=lambda: np.zeros(0))
    request_ids: list[str] = field(default_factory=list)
    agreed: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    """A shadow's copies that it answered: whether each answer equalled the champion's."""
    at: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """When each outcome was recorded, in seconds since the epoch."""
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """Each outcome's row id, in the order the outcomes reached the store."""

    def since(self, when: datetime) -> VariantSamples:
        """The outcomes recorded at or after ``when``."""
        return self._where(self.at >= when.timestamp())

    def after(self, seen: int) -> VariantSamples:
        """The outcomes stored after row ``seen``."""
        return self._where(self.ids > seen)

    def _where(self, keep: np.ndarray) -> VariantSamples:
        # ``agreed`` is not cut: it has no times.
        return VariantSamples(
            ok=self.ok[keep],
            latency_ms=self.latency_ms[keep],
            cost_usd=self.cost_usd[keep],
            request_ids=[r for r, k in zip(self.request_ids, keep, strict=True) if k],
            agreed=self.agreed,
            at=self.at[keep],
            ids=self.ids[keep],
        )

    @property
    def requests(self) -> int:
        """How many requests the variant handled (answered or failed)."""
        return int(self.ok.size)


class OutcomeLog(BatchedLog[Outcome]):
    """Outcomes of routed requests, written off the request path in batches."""

    table = ExperimentOutcome
    name = "experiment-outcomes"


class ExperimentStore:
    """Experiments and their outcomes in the relational store.

    Args:
        db: The started relational store.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def create(self, experiment: Experiment) -> Experiment:
        """Store a new experiment.

        Raises:
            ConflictError: The name is taken, or an experiment already runs on the target.
        """

        def insert(session: Session) -> None:
            if session.get(ExperimentRow, experiment.name) is not None:
                raise ConflictError(f"an experiment named {experiment.name!r} exists", name=experiment.name)
            busy = session.scalar(
                select(ExperimentRow).where(
                    ExperimentRow.target_kind == experiment.target_kind,
                    ExperimentRow.target == experiment.target,
                    ExperimentRow.ended_at.is_(None),
                )
            )
            if busy is not None:
                target = f"{experiment.target_kind} {experiment.target!r}"
                if busy.tenant != experiment.tenant:  # its name is the other tenant's business
                    raise ConflictError(f"an experiment of another tenant already runs on {target}")
                raise ConflictError(
                    f"experiment {busy.name!r} already runs on {target}; stop it first", running=busy.name
                )
            session.add(ExperimentRow(**{f.name: getattr(experiment, f.name) for f in fields(Experiment)}))

        try:
            self._db.write(insert)
        except IntegrityError as exc:  # another process created one between the check and the insert
            raise ConflictError(
                f"an experiment on {experiment.target_kind} {experiment.target!r} or named"
                f" {experiment.name!r} was created at the same time",
                name=experiment.name,
            ) from exc
        return experiment

    def get(self, name: str, *, tenant: str | None = None) -> Experiment:
        """The experiment ``name`` (of ``tenant``, when given).

        Raises:
            NotFoundError: No such experiment (in that tenant).
        """
        with self._db.read() as session:
            row = session.get(ExperimentRow, name)
        if row is None or (tenant is not None and row.tenant != tenant):
            where = f" in tenant {tenant!r}" if tenant is not None else ""
            raise NotFoundError(f"no experiment {name!r}{where}", name=name)
        return _experiment(row)

    def list(self, *, tenant: str | None = None, running: bool = False) -> list[Experiment]:
        """Experiments, newest first: of ``tenant`` (None: all), only the running ones if asked."""
        query = select(ExperimentRow).order_by(ExperimentRow.created_at.desc())
        if tenant is not None:
            query = query.where(ExperimentRow.tenant == tenant)
        if running:
            query = query.where(ExperimentRow.ended_at.is_(None))
        with self._db.read() as session:
            return [_experiment(row) for row in session.scalars(query)]

    def update(self, name: str, *, expect: Status | None = None, **values: Any) -> Experiment:
        """Change an experiment's state; with ``expect``, only if its status still is that.

        Raises:
            NotFoundError: No such experiment.
            ConflictError: Its status is no longer ``expect`` (someone else acted first).
        """
        if values.get("status") in ENDED:
            values.setdefault("ended_at", utcnow())

        def change(session: Session) -> Experiment:
            query = update(ExperimentRow).where(ExperimentRow.name == name)
            if expect is not None:
                query = query.where(ExperimentRow.status == expect)
            if session.execute(query.values(**values)).rowcount == 0:  # type: ignore[attr-defined]
                row = session.get(ExperimentRow, name)
                if row is None:
                    raise NotFoundError(f"no experiment {name!r}", name=name)
                raise ConflictError(
                    f"experiment {name!r} is {row.status}, not {expect}", name=name, status=row.status
                )
            return _experiment(session.get_one(ExperimentRow, name))

        return self._db.write(change)

    def samples(self, name: str, *, since: datetime | None = None) -> dict[str, VariantSamples]:
        """Every outcome of the experiment (since ``since``), by variant."""
        query = select(
            ExperimentOutcome.variant,
            ExperimentOutcome.ok,
            ExperimentOutcome.latency_ms,
            ExperimentOutcome.cost_usd,
            ExperimentOutcome.request_id,
            ExperimentOutcome.agreed,
            ExperimentOutcome.at,
            ExperimentOutcome.id,
        ).where(ExperimentOutcome.experiment == name)
        if since is not None:
            query = query.where(ExperimentOutcome.at >= since)
        with self._db.read() as session:
            rows = session.execute(query.order_by(ExperimentOutcome.id)).all()
        by_variant: dict[str, list[Any]] = {}
        for row in rows:
            by_variant.setdefault(row.variant, []).append(row)
        return {
            variant: VariantSamples(
                ok=np.fromiter((r.ok for r in found), dtype=bool, count=len(found)),
                latency_ms=np.fromiter((r.latency_ms for r in found), dtype=float, count=len(found)),
                cost_usd=np.fromiter((r.cost_usd for r in found), dtype=float, count=len(found)),
                request_ids=[r.request_id for r in found],
                agreed=np.array([r.agreed for r in found if r.agreed is not None], dtype=bool),
                at=np.fromiter((r.at.timestamp() for r in found), dtype=float, count=len(found)),
                ids=np.fromiter((r.id for r in found), dtype=np.int64, count=len(found)),
            )
            for variant, found in by_variant.items()
        }

    def take_lease(self, holder: str, seconds: float, *, name: str = "decider") -> bool:
        """Hold the lease ``name`` for ``seconds`` if it is free, expired or already ours."""
        now = utcnow()

        def take(session: Session) -> bool:
            lease = session.get(ExperimentLease, name, with_for_update=True)
            if lease is None:
                session.add(
                    ExperimentLease(name=name, holder=holder, expires_at=now + timedelta(seconds=seconds))
                )
                return True
            if lease.holder != holder and lease.expires_at > now:
                return False
            lease.holder, lease.expires_at = holder, now + timedelta(seconds=seconds)
            return True

        try:
            return self._db.write(take)
        except IntegrityError:  # another process inserted the first lease at the same moment
            return False

    def release_lease(self, holder: str, *, name: str = "decider") -> None:
        """Give the lease up if ``holder`` has it, so another process can take over at once."""
        self._db.write(
            lambda session: session.execute(
                delete(ExperimentLease).where(ExperimentLease.name == name, ExperimentLease.holder == holder)
            )
        )


def new_salt() -> str:
    """A fresh salt: a new experiment re-shuffles which units get which variant."""
    return secrets.token_hex(8)
