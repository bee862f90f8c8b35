"""The experiment store on SQLite and PostgreSQL: one running experiment per target, outcomes, the lease."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from opsloop.db import Database
from opsloop.errors import ConflictError, NotFoundError
from opsloop.tables import utcnow
from opsloop.traffic import CHALLENGER, CHAMPION, Outcome
from workflows.experiments.store import Experiment, ExperimentStore, OutcomeLog, new_salt


def _experiment(name: str = "e1", target: str = "credit-risk") -> Experiment:
    now = utcnow()
    return Experiment(
        name=name,
        tenant="default",
        kind="canary",
        target_kind="model",
        target=target,
        champion="1",
        challenger="2",
        status="running",
        weight=5.0,
        step=0,
        step_started_at=now,
        salt=new_salt(),
        config={"steps": [5, 25, 50, 100], "min_samples": 10},
        checks={"failed": 0},
        decision=None,
        created_at=now,
        created_by="test",
    )


def test_one_running_experiment_per_target(database: Database) -> None:
    store = ExperimentStore(database)
    store.create(_experiment())
    with pytest.raises(ConflictError, match="already runs on model 'credit-risk'"):
        store.create(_experiment("e2"))
    with pytest.raises(ConflictError, match="named 'e1' exists"):
        store.create(_experiment("e1", target="other"))
    # Once it ends, the target is free again; the ended one stays listed.
    ended = store.update("e1", expect="running", status="rolled_back", weight=0.0)
    assert ended.ended_at is not None and not ended.running
    store.create(_experiment("e2"))
    assert [e.name for e in store.list(running=True)] == ["e2"]
    assert {e.name for e in store.list()} == {"e1", "e2"}


def test_update_expecting_a_status_refuses_a_stale_one(database: Database) -> None:
    store = ExperimentStore(database)
    store.create(_experiment())
    store.update("e1", expect="running", status="promoted")
    with pytest.raises(ConflictError, match="is promoted, not running"):
        store.update("e1", expect="running", status="rolled_back")
    with pytest.raises(NotFoundError):
        store.update("nope", expect="running", status="stopped")


def test_tenant_scoped_reads(database: Database) -> None:
    store = ExperimentStore(database)
    store.create(replace(_experiment(), tenant="acme"))
    assert store.get("e1", tenant="acme").tenant == "acme"
    with pytest.raises(NotFoundError, match="no experiment 'e1' in tenant 'globex'"):
        store.get("e1", tenant="globex")
    assert store.list(tenant="globex") == []


def test_outcomes_come_back_by_variant_in_order(database: Database) -> None:
    store = ExperimentStore(database)
    store.create(_experiment())
    log = OutcomeLog(database).start()
    for i in range(30):
        variant = CHALLENGER if i % 3 == 0 else CHAMPION
        log.record(
            Outcome(
                "e1", variant, f"r{i}", ok=i != 3, latency_ms=float(i), error_type=None if i != 3 else "X"
            )
        )
    log.close()
    samples = store.samples("e1")
    assert samples[CHALLENGER].requests == 10 and samples[CHAMPION].requests == 20
    assert samples[CHALLENGER].latency_ms.tolist() == [float(i) for i in range(0, 30, 3)]
    assert int((~samples[CHALLENGER].ok).sum()) == 1
    assert store.samples("e1", since=utcnow() + timedelta(seconds=5)) == {}


def test_exactly_one_holder_of_the_lease(database: Database) -> None:
    store = ExperimentStore(database)
    assert store.take_lease("a", 30)
    assert not store.take_lease("b", 30)
    assert store.take_lease("a", 30)  # renewing
    store.release_lease("a")
    assert store.take_lease("b", 30)
    # An expired lease is taken over.
    assert store.take_lease("b", -1)
    assert store.take_lease("a", 30)
