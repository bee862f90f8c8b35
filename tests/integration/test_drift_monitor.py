"""Scheduled drift checks: history, audit on first detection, metrics, subscribers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from opsloop.audit import AuditFilter, AuditLog
from opsloop.db import Database
from opsloop.predictions import PredictionLog, PredictionRecord
from opsloop.registry import Registry
from opsloop.telemetry import DriftMetrics
from workflows.demo import FEATURE_NAMES, generate_credit_data, train_demo
from workflows.drift_monitor import DriftCheckResult, DriftMonitor


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    home = tmp_path_factory.mktemp("drift")
    registry = Registry(f"sqlite:///{home / 'mlflow.db'}", (home / "art").as_uri()).start()
    train_demo(registry, rows=2000)
    yield registry
    registry.close()


def _log(predictions: PredictionLog, shift: bool, seed: int) -> None:
    frame = generate_credit_data(500, seed=seed, shift=shift)[list(FEATURE_NAMES)]
    rows = json.loads(frame.to_json(orient="records"))
    for start in range(0, 500, 50):
        predictions.record(
            PredictionRecord(
                f"r{seed}-{start}", "acme", "credit-risk", 1, "champion", rows[start : start + 50], [], 1.0
            )
        )
    predictions.flush()


def test_checks_are_kept_audited_once_exported_and_handed_on(registry: Registry, tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'store.db'}").start()
    db.upgrade()
    audit = AuditLog(db)
    predictions = PredictionLog(db).start()
    collectors = CollectorRegistry()
    monitor = DriftMonitor(db, registry, predictions, audit, DriftMetrics(collectors), last=500)
    heard: list[DriftCheckResult] = []
    monitor.subscribe(heard.append)

    assert monitor.check("credit-risk") is None  # no traffic yet
    _log(predictions, shift=False, seed=21)
    calm = monitor.check("credit-risk")
    assert calm is not None and not calm.dataset_drift and heard == []

    _log(predictions, shift=True, seed=22)
    first = monitor.check("credit-risk")
    second = monitor.check("credit-risk")
    assert first is not None and first.dataset_drift and second is not None and second.dataset_drift
    assert heard == [first, second]
    assert [c.dataset_drift for c in monitor.history("credit-risk")] == [True, True, False]
    assert monitor.history("credit-risk")[0].report["features"]["income"]["drifted"]

    detected = audit.query(AuditFilter(action="drift.detected"))
    assert len(detected) == 1 and detected[0].target == "model:credit-risk"
    assert detected[0].after is not None and "income" in detected[0].after["drifted"]

    assert collectors.get_sample_value("opsloop_drift_dataset", {"model": "credit-risk"}) == 1.0
    psi = collectors.get_sample_value(
        "opsloop_drift_score", {"model": "credit-risk", "feature": "income", "method": "psi"}
    )
    assert psi is not None and psi > 0.2
    outcomes = {
        o: collectors.get_sample_value("opsloop_drift_checks_total", {"model": "credit-risk", "outcome": o})
        for o in ("skipped", "no_drift", "drift")
    }
    assert outcomes == {"skipped": 1.0, "no_drift": 1.0, "drift": 2.0}
    predictions.close()
    db.close()


def test_three_identical_requests_are_insufficient_data_not_drift(registry: Registry, tmp_path: Path) -> None:
    """The README's three identical /predict requests: no verdict, no audit, no alerting gauge."""
    db = Database(f"sqlite:///{tmp_path / 'store.db'}").start()
    db.upgrade()
    audit = AuditLog(db)
    predictions = PredictionLog(db).start()
    collectors = CollectorRegistry()
    monitor = DriftMonitor(db, registry, predictions, audit, DriftMetrics(collectors), min_rows=300)
    heard: list[DriftCheckResult] = []
    monitor.subscribe(heard.append)
    row = json.loads(generate_credit_data(100, seed=5)[list(FEATURE_NAMES)].to_json(orient="records"))[0]
    for i in range(3):
        predictions.record(
            PredictionRecord(f"same-{i}", "acme", "credit-risk", 1, "champion", [row], [], 1.0)
        )
    predictions.flush()

    check = monitor.check("credit-risk")
    assert check is not None and not check.dataset_drift and heard == []
    assert check.report["status"] == "insufficient_data" and check.report["current_rows"] == 3
    assert check.report["reference_rows"] >= 300
    assert audit.query(AuditFilter(action="drift.detected")) == []
    assert collectors.get_sample_value("opsloop_drift_dataset", {"model": "credit-risk"}) != 1.0
    insufficient = {"model": "credit-risk", "outcome": "insufficient_data"}
    assert collectors.get_sample_value("opsloop_drift_checks_total", insufficient) == 1.0
    # Small-sample scores are not exported: a dashboard of them would show noise as drift.
    psi = {"model": "credit-risk", "feature": "income", "method": "psi"}
    assert collectors.get_sample_value("opsloop_drift_score", psi) is None

    # Enough drifted rows still detect drift through the same path.
    _log(predictions, shift=True, seed=23)
    drifted = monitor.check("credit-risk")
    assert drifted is not None and drifted.dataset_drift and drifted.report["status"] == "drift"
    assert len(audit.query(AuditFilter(action="drift.detected"))) == 1
    assert collectors.get_sample_value("opsloop_drift_dataset", {"model": "credit-risk"}) == 1.0
    predictions.close()
    db.close()
