"""The demo model trained, logged, registered and loaded back through a real MLflow sqlite store."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from opsloop.errors import NotFoundError
from opsloop.registry import ModelVersionInfo, Registry
from workflows.demo import FEATURE_NAMES, FEATURES, generate_credit_data, train_demo

NAME = "credit-risk"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    home = tmp_path_factory.mktemp("demo")
    reg = Registry(f"sqlite:///{home / 'mlflow.db'}", (home / "art").as_uri()).start()
    yield reg
    reg.close()


@pytest.fixture(scope="module")
def first(registry: Registry) -> tuple[ModelVersionInfo, list[str], float]:
    steps: list[str] = []
    started = time.perf_counter()
    version = train_demo(registry, rows=2000, seed=7, progress=steps.append)
    return version, steps, time.perf_counter() - started


@pytest.fixture(scope="module")
def second(registry: Registry, first: tuple[ModelVersionInfo, list[str], float]) -> ModelVersionInfo:
    return train_demo(registry, rows=2000, seed=8, shift=True, alias="challenger")


def test_first_training_registers_champion_with_lineage(
    registry: Registry, first: tuple[ModelVersionInfo, list[str], float]
) -> None:
    version, steps, seconds = first
    assert (version.name, version.version, version.aliases) == (NAME, 1, ("champion",))
    assert registry.get_alias(NAME, "champion").version == 1
    assert version.run_id
    lineage = version.lineage
    assert lineage.data_hash is not None and lineage.data_hash.startswith("sha256:")
    assert lineage.params["rows"] == 2000 and lineage.params["seed"] == 7 and lineage.params["shift"] is False
    assert lineage.params["classifier"] == "LogisticRegression"
    assert "opsloop.params" in version.tags and "opsloop.data_hash" in version.tags
    assert version.description is not None and "roc_auc=" in version.description
    assert lineage.data_hash in version.description
    assert len(steps) >= 5 and any("roc_auc" in step for step in steps)
    assert seconds < 60, f"train_demo took {seconds:.1f} s"


def test_holdout_metrics_are_logged_and_good(
    registry: Registry, first: tuple[ModelVersionInfo, list[str], float]
) -> None:
    import mlflow

    run = mlflow.MlflowClient(registry.tracking_uri).get_run(str(first[0].run_id))
    metrics = run.data.metrics
    assert set(metrics) >= {"roc_auc", "accuracy", "log_loss", "brier"}
    assert metrics["roc_auc"] > 0.7
    assert 0.0 < metrics["brier"] < 0.25 and metrics["accuracy"] > 0.7
    assert run.data.params["rows"] == "2000" and "classifier.C" in run.data.params
    assert run.info.experiment_id == registry.experiment_id


def test_champion_loads_and_predicts_on_object_arrays(
    registry: Registry, first: tuple[ModelVersionInfo, list[str], float]
) -> None:
    estimator = registry.load_model(NAME, "champion", flavor="sklearn")
    frame = generate_credit_data(200, seed=99)
    matrix = frame[list(FEATURE_NAMES)].to_numpy(dtype=object)
    proba = estimator.predict_proba(matrix)
    assert proba.shape == (200, 2)
    assert not hasattr(estimator, "feature_names_in_")  # so serving feeds it arrays
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_allclose(estimator.predict_proba(frame[list(FEATURE_NAMES)]), proba)
    # pyfunc answers probabilities too, so both flavours agree.
    pyfunc = registry.load_model(NAME, "champion")
    np.testing.assert_allclose(np.asarray(pyfunc.predict(frame[list(FEATURE_NAMES)])), proba)


def test_signature_names_every_feature_with_its_type(
    registry: Registry, first: tuple[ModelVersionInfo, list[str], float]
) -> None:
    from mlflow.models import get_model_info

    signature = get_model_info(registry.model_uri(NAME, 1)).signature
    assert signature is not None
    columns = [(spec.name, spec.type.name) for spec in signature.inputs.inputs]
    assert columns == [(f.name, f.dtype) for f in FEATURES]


def test_second_training_makes_version_two(
    registry: Registry, first: tuple[ModelVersionInfo, list[str], float], second: ModelVersionInfo
) -> None:
    assert (second.version, second.aliases) == (2, ("challenger",))
    assert second.lineage.params["shift"] is True
    assert second.lineage.data_hash != first[0].lineage.data_hash
    assert registry.get_alias(NAME, "champion").version == 1
    assert [v.version for v in registry.versions(NAME)] == [1, 2]


def test_reference_profile_round_trips(registry: Registry, second: ModelVersionInfo) -> None:
    profile = registry.reference(NAME, 1)
    assert profile["rows"] == 1600  # the 80% training split
    assert list(profile["features"]) == list(FEATURE_NAMES)
    assert sum(profile["predictions"]["histogram"]["counts"]) == 1600
    assert registry.reference(NAME, "champion") == profile
    shifted = registry.reference(NAME, "2")
    assert shifted["features"]["income"]["mean"] < profile["features"]["income"]["mean"]
    json.dumps(profile, allow_nan=False)


def test_reference_profile_errors(registry: Registry, second: ModelVersionInfo) -> None:
    with pytest.raises(NotFoundError):
        registry.reference(NAME, 99)
    with pytest.raises(NotFoundError):
        registry.reference(NAME, "no-such-alias")
    with pytest.raises(NotFoundError):
        registry.reference("no-such-model", 1)


def test_a_demo_model_from_before_retraining_gets_its_trainer_at_start(
    registry: Registry, first: tuple[ModelVersionInfo, list[str], float], tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    from opsloop.audit import AuditLog
    from opsloop.db import Database
    from workflows.demo import DEMO_TRAINER, bootstrap_demo
    from workflows.retraining.training import TRAINER_TAG

    MlflowClient(
        tracking_uri=registry.tracking_uri, registry_uri=registry.tracking_uri
    ).delete_registered_model_tag(NAME, TRAINER_TAG)
    assert TRAINER_TAG not in registry.model_tags(NAME)
    db = Database(f"sqlite:///{tmp_path / 'store.db'}").start()
    try:
        assert bootstrap_demo(registry, AuditLog(db), tmp_path / "bootstrap.lock") is None  # not retrained
    finally:
        db.close()
    assert registry.model_tags(NAME)[TRAINER_TAG] == DEMO_TRAINER
