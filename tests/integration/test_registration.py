"""Registering and promoting for a caller, against a real MLflow sqlite store and audit log.

A model saved to a folder (as a user brings one) is registered with and without a
reference; the reference feeds the drift monitor, which otherwise skips the model.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from prometheus_client import CollectorRegistry

from opsloop.audit import AuditFilter, AuditLog
from opsloop.auth import Principal, Role
from opsloop.db import Database
from opsloop.errors import ConflictError, ForbiddenError, InvalidInputError, NotFoundError
from opsloop.predictions import PredictionLog, PredictionRecord
from opsloop.registry import Registry
from opsloop.telemetry import DriftMetrics
from workflows.drift_monitor import DriftMonitor
from workflows.promotion import promote, rollback, unset_alias
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
    assert store.registry.get_version("bare", 1).run_id == run  # a folder registers as a run's copy
    assert store.registry.reference("bare", "champion")["rows"] == 50


# -- what cannot serve is never registered or promoted ---------------------------------------


def _unsigned(tmp_path: Path, training: pd.DataFrame) -> Path:
    """A scikit-learn model saved without a signature."""
    import mlflow.sklearn
    from sklearn.linear_model import LogisticRegression

    path = tmp_path / "unsigned"
    model = LogisticRegression().fit(training[["a", "b"]], training["label"])
    mlflow.sklearn.save_model(model, path, pip_requirements=["scikit-learn"])
    return path


def _broken_copy(folder: str | Path, to: Path) -> Path:
    """Break a model's serialized estimator (in a copy, or in place when ``to`` is the folder)."""
    if Path(folder) != to:
        shutil.copytree(folder, to)
    for artifact in ("model.skops", "model.pkl"):
        if (to / artifact).exists():
            (to / artifact).write_bytes(b"not a model")
    return to


def test_a_source_that_cannot_serve_is_refused_with_the_reason(
    store: Store, tmp_path: Path, folder: str, training: pd.DataFrame
) -> None:
    missing = tmp_path / "path" / "to" / "mlflow-model"
    with pytest.raises(NotFoundError, match=f"no model at '{missing}': the path does not exist"):
        register(ADMIN, store.registry, store.audit, "cannot", str(missing))
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "model.pkl").write_bytes(b"not a pickle")
    with pytest.raises(InvalidInputError, match="is not an MLflow model: it has no MLmodel file"):
        register(ADMIN, store.registry, store.audit, "cannot", str(tmp_path / "plain"))
    unsigned = _unsigned(tmp_path, training)
    with pytest.raises(InvalidInputError, match=r"no column-based input signature.*--signature-from"):
        register(ADMIN, store.registry, store.audit, "cannot", str(unsigned))
    broken = _broken_copy(folder, tmp_path / "broken")
    with pytest.raises(InvalidInputError, match="does not load"):
        register(ADMIN, store.registry, store.audit, "cannot", str(broken))
    assert "cannot" not in store.registry.models()
    assert not store.audit.query(AuditFilter(action="model.register", target="model:cannot"))


def test_a_signature_can_be_inferred_from_input_rows(
    store: Store, tmp_path: Path, training: pd.DataFrame
) -> None:
    unsigned = _unsigned(tmp_path, training)
    done = register(
        ADMIN, store.registry, store.audit, "inferred", str(unsigned), signature_from=training[["a", "b"]]
    )
    assert store.registry.input_columns("inferred", done.version.version) == [("a", "double"), ("b", "long")]
    assert not (unsigned / "MLmodel").read_text().count("signature")  # the original is left as it was
    promote(ADMIN, store.registry, store.audit, "inferred", done.version.version)


def test_promote_refuses_a_version_that_does_not_load(store: Store, tmp_path: Path, folder: str) -> None:
    copy = tmp_path / "later-broken"
    shutil.copytree(folder, copy)
    version = register(ADMIN, store.registry, store.audit, "breaks", str(copy)).version.version
    stored = MlflowClient(store.registry.tracking_uri).get_model_version_download_uri("breaks", str(version))
    in_store = Path(stored.removeprefix("file://"))
    _broken_copy(in_store, in_store)  # the registered copy breaks later
    with pytest.raises(ConflictError, match=f"version {version} of model 'breaks' cannot be served"):
        promote(ADMIN, store.registry, store.audit, "breaks", version)
    with pytest.raises(NotFoundError):
        store.registry.get_alias("breaks", "champion")


def test_unset_alias_is_audited_and_needs_an_operator(store: Store, folder: str) -> None:
    version = register(ADMIN, store.registry, store.audit, "unset-me", folder).version.version
    promote(ADMIN, store.registry, store.audit, "unset-me", version)
    with pytest.raises(ForbiddenError):
        unset_alias(VIEWER, store.registry, store.audit, "unset-me", "champion")
    done = unset_alias(ADMIN, store.registry, store.audit, "unset-me", "champion")
    assert (done.model, done.alias, done.before) == ("unset-me", "champion", version)
    assert "unset-me" not in store.registry.alias_versions("champion")
    entry = store.audit.query(AuditFilter(action="model.alias_unset", target="model:unset-me"))[0]
    assert (entry.actor, entry.before, entry.after) == (
        "cli:tester",
        {"alias": "champion", "version": version},
        {"alias": "champion", "version": None},
    )
    with pytest.raises(NotFoundError, match="has no alias 'champion'"):
        unset_alias(ADMIN, store.registry, store.audit, "unset-me", "champion")
