"""Registering and promoting for a caller, against a real MLflow sqlite store and audit log.

A model saved to a folder (as a user brings one) is registered with and without a
reference; the reference feeds the drift monitor, which otherwise skips the model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry

from opsloop.audit import AuditFilter, AuditLog
from opsloop.auth import Principal, Role
from opsloop.db import Database
from opsloop.errors import ConflictError, ForbiddenError, InvalidInputError, NotFoundError
from opsloop.predictions import PredictionLog, PredictionRecord
from opsloop.registry import Registry
from opsloop.telemetry import DriftMetrics
from workflows.drift_monitor import DriftMonitor
from workflows.promotion import promote, rollback
from workflows.registration import register

ADMIN = Principal("cli:tester", "default", Role.ADMIN)
VIEWER = Principal("k-viewer", "acme", Role.VIEWER)


@dataclass
class Store:
    registry: Registry
    db: Database
    audit: AuditLog
    predictions: PredictionLog


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    home = tmp_path_factory.mktemp("registration")
    registry = Registry(f"sqlite:///{home / 'mlflow.db'}", (home / "art").as_uri()).start()
    db = Database(f"sqlite:///{home / 'store.db'}").start()
    db.upgrade()
    predictions = PredictionLog(db).start()
    yield Store(registry, db, AuditLog(db), predictions)
    predictions.close()
    db.close()
    registry.close()


@pytest.fixture(scope="module")
def training() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"a": rng.normal(0, 1, 400), "b": rng.integers(0, 7, 400)})
    return frame.assign(label=(frame["a"] + rng.normal(0, 0.5, 400)) > 0)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, training: pd.DataFrame) -> str:
    """A scikit-learn model saved with MLflow to a folder, outside any run."""
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    inputs = training[["a", "b"]]
    path = tmp_path_factory.mktemp("saved") / "model"
    model = LogisticRegression().fit(inputs, training["label"])
    mlflow.sklearn.save_model(
        model, path, signature=infer_signature(inputs), pip_requirements=["scikit-learn"]
    )
    return str(path)


def test_register_with_a_reference_stores_it_and_audits_the_caller(
    store: Store, folder: str, training: pd.DataFrame
) -> None:
    done = register(ADMIN, store.registry, store.audit, "byo", folder, reference=training)
    assert (done.version.name, done.version.version, done.reference_rows) == ("byo", 1, 400)
    assert done.version.lineage.params == {"source": folder}
    profile = store.registry.reference("byo", 1)
    assert list(profile["features"]) == ["a", "b"]  # the label is not a model input
    assert {f["kind"] for f in profile["features"].values()} == {"numeric"}
    assert len(profile["sample"]["a"]) == 400
    entry = store.audit.query(AuditFilter(action="model.register", target="model:byo"))[0]
    assert (entry.actor, entry.tenant) == ("cli:tester", "default")
    assert entry.after == {"version": 1, "source": done.version.source, "reference_rows": 400}


def test_a_bad_reference_is_refused_before_anything_is_registered(
    store: Store, folder: str, training: pd.DataFrame
) -> None:
    with pytest.raises(InvalidInputError, match=r"lacks the model's input columns \['b'\]"):
        register(ADMIN, store.registry, store.audit, "refused", folder, reference=training[["a"]])
    with pytest.raises(InvalidInputError, match="has no rows"):
        register(ADMIN, store.registry, store.audit, "refused", folder, reference=training.iloc[:0])
    with pytest.raises(InvalidInputError, match=r"column 'b' .* takes long"):
        register(ADMIN, store.registry, store.audit, "refused", folder, reference=training.assign(b="x"))
    assert "refused" not in store.registry.models()
    assert not store.audit.query(AuditFilter(action="model.register", target="model:refused"))


def test_without_a_reference_there_is_none_to_read(store: Store, folder: str) -> None:
    done = register(ADMIN, store.registry, store.audit, "bare", folder)
    assert done.reference_rows is None
    with pytest.raises(NotFoundError, match="has no reference profile"):
        store.registry.reference("bare", 1)


def test_drift_checks_run_for_a_model_registered_with_a_reference(
    store: Store, training: pd.DataFrame
) -> None:
    promote(ADMIN, store.registry, store.audit, "byo", 1)
    promote(ADMIN, store.registry, store.audit, "bare", 1)
    rows = json.loads(training[["a", "b"]].iloc[:100].to_json(orient="records"))
    for model in ("byo", "bare"):
        store.predictions.record(PredictionRecord(f"r-{model}", "acme", model, 1, "champion", rows, [], 1.0))
    store.predictions.flush()
    collectors = CollectorRegistry()
    monitor = DriftMonitor(store.db, store.registry, store.predictions, store.audit, DriftMetrics(collectors))
    checked = monitor.check("byo")
    assert checked is not None and checked.report["reference_rows"] == 400
    assert checked.report["current_rows"] == 100 and not checked.dataset_drift
    assert monitor.check("bare") is None  # nothing to compare with
    skipped = {"model": "bare", "outcome": "skipped"}
    assert collectors.get_sample_value("opsloop_drift_checks_total", skipped) == 1.0


def test_promote_and_rollback_act_for_the_caller(store: Store, folder: str) -> None:
    register(ADMIN, store.registry, store.audit, "moves", folder)
    register(ADMIN, store.registry, store.audit, "moves", folder)
    operator = Principal("k-op", "acme", Role.OPERATOR)
    assert promote(operator, store.registry, store.audit, "moves", 1).after == 1
    assert promote(operator, store.registry, store.audit, "moves", 2).before == 1
    back = rollback(ADMIN, store.registry, store.audit, "moves")
    assert (back.before, back.after) == (2, 1)
    trail = store.audit.query(AuditFilter(target="model:moves"))
    assert [(e.action, e.actor, e.tenant) for e in trail[:3]] == [
        ("model.rollback", "cli:tester", "default"),
        ("model.promote", "k-op", "acme"),
        ("model.promote", "k-op", "acme"),
    ]
    with pytest.raises(ConflictError):
        rollback(ADMIN, store.registry, store.audit, "bare")  # its first champion: nothing before


def test_a_viewer_may_not_register_or_move_models(store: Store, folder: str, training: pd.DataFrame) -> None:
    with pytest.raises(ForbiddenError, match="registering model 'viewed'"):
        register(VIEWER, store.registry, store.audit, "viewed", folder, reference=training)
    with pytest.raises(ForbiddenError):
        promote(VIEWER, store.registry, store.audit, "byo", 1)
    with pytest.raises(ForbiddenError):
        rollback(VIEWER, store.registry, store.audit, "byo")
    assert "viewed" not in store.registry.models()
    assert store.registry.get_alias("byo", "champion").version == 1


def test_a_reference_can_be_stored_again_for_an_existing_version(
    store: Store, training: pd.DataFrame
) -> None:
    from workflows.reference import profile_for_signature

    profile = profile_for_signature(training.iloc[:50], store.registry.input_columns("bare", 1))
    run = store.registry.log_reference("bare", 1, profile)
    assert store.registry.get_version("bare", 1).tags["opsloop.reference_run"] == run
    assert store.registry.reference("bare", "champion")["rows"] == 50
