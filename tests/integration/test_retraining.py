"""Retraining through the platform a user runs: real MLflow, SQLite, optuna and the HTTP API.

Labelled traffic goes in through ``/predict`` and ``/feedback``; each test retrains its own
copy of the demo model (so one test's traffic is not another's window) and checks what a user
would: the status and its numbers, the registered version's tags and card as MLflow's own
client reads them, the champion left alone, the audit trail, and the refusals' reports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from mlflow import MlflowClient

from opsloop.audit import AuditFilter
from opsloop.auth import Principal, Role
from opsloop.errors import ConflictError, ForbiddenError, InvalidInputError, NotFoundError
from opsloop.settings import load_settings
from opsloop.tables import utcnow
from serving.app import create_app
from serving.platform import Platform
from workflows.demo import FEATURE_NAMES, LABEL, generate_credit_data, train_demo
from workflows.retraining.data import rebuild
from workflows.retraining.pipeline import RetrainRequest
from workflows.retraining.store import new_holder
from workflows.retraining.training import SearchSpec

OPERATOR = Principal("k-operator", "default", Role.OPERATOR)
FAST = SearchSpec(trials=6, time_budget=30)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    home = tmp_path_factory.mktemp("retraining") / "home"
    settings = load_settings(
        home=home,
        bootstrap_docs=False,
        drift_check_seconds=0,
        experiment_decide_seconds=0,
        retrain_triggers=[],
        retrain_trials=6,
    )
    return create_app(settings)


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def send(
    client: TestClient, headers: dict[str, str], model: str, rows: int, *, seed: int, shift: bool
) -> None:
    """Predict ``rows`` demo rows through the API (50 a request) and send their true labels."""
    frame = generate_credit_data(max(rows, 100), seed=seed, shift=shift).head(rows)
    records = frame.to_dict(orient="records")
    feedback = []
    for start in range(0, rows, 50):
        batch = records[start : start + 50]
        instances = [{name: _plain(row[name]) for name in FEATURE_NAMES} for row in batch]
        answer = client.post(f"/predict/{model}", json={"instances": instances}, headers=headers)
        assert answer.status_code == 200, answer.text
        feedback.append({"request_id": answer.json()["request_id"], "labels": [int(r[LABEL]) for r in batch]})
    done = client.post(f"/feedback/{model}", json={"feedback": feedback}, headers=headers)
    assert done.status_code == 200 and not done.json()["unknown"], done.text


@pytest.fixture
def model(platform: Platform, request: pytest.FixtureRequest) -> str:
    """A fresh copy of the demo model, champion version 1, named after the test."""
    name = "cr-" + request.node.name.removeprefix("test_").replace("_", "-")[:40]
    train_demo(platform.start_registry(), name=name, rows=2000, seed=3)
    platform.runtime.refresh(name)
    return name


def test_shifted_labelled_traffic_gives_a_registered_challenger_with_card_and_lineage(
    client: TestClient, platform: Platform, operator: dict[str, str], model: str
) -> None:
    send(client, operator, model, 3000, seed=21, shift=True)
    retraining = platform.retraining
    result = retraining.retrainer.retrain(
        OPERATOR, RetrainRequest(model, search=FAST, handoff="none"), progress=lambda step, line: None
    )

    assert result.status == "registered", result.reason
    assert result.version == 2 and result.parent_version == 1
    assert result.metrics["metric"] == "log_loss" and result.metrics["ci"][0] > 0
    assert result.data["counts"]["production"] == 3000 and result.data["counts"]["holdout"] == 600
    assert result.data["quality_score"] == 1.0 and result.data["failures"] == []
    # MLflow's own client reads the lineage tags and the card.
    client_ = MlflowClient(
        tracking_uri=platform.settings.tracking_uri, registry_uri=platform.settings.tracking_uri
    )
    version = client_.get_model_version(model, "2")
    assert version.tags["parent_version"] == "1" and version.tags["trigger"] == "manual"
    assert version.tags["data_hash"] == result.data["hash"]
    assert version.tags["training_run_id"] == result.mlflow_run_id == version.run_id
    assert version.tags["code_version"]
    card_dir = Path(
        client_.download_artifacts(version.run_id, "model_card.json", str(platform.settings.home))
    )
    card = json.loads(card_dir.read_text())
    assert (
        card["version"] == 2 and card["parent_version"] == 1 and card["data"]["hash"] == result.data["hash"]
    )
    markdown = Path(client_.download_artifacts(version.run_id, "model_card.md", str(platform.settings.home)))
    assert f"# Model card: {model} version 2" in markdown.read_text()
    run = client_.get_run(version.run_id)
    assert run.info.status == "FINISHED" and run.data.params["data.hash"] == result.data["hash"]
    assert run.inputs.dataset_inputs, "the data set is logged as the run's input"
    # Nothing moved in serving (no hand-off), and the new version loads as servers load it.
    assert platform.registry.get_alias(model, "champion").version == 1
    from opsloop.models.runtime import load_version

    assert load_version(platform.registry, model, 2).classes == (0, 1)
    # Its drift reference is the new world it learned: the trained production rows, not the old ones.
    counts = result.data["counts"]
    assert platform.registry.reference(model, 2)["rows"] == counts["train"] - counts["reference"] == 2400
    # The exact rows come back from the manifest, hash and all.
    manifest = json.loads(
        Path(
            client_.download_artifacts(version.run_id, "data/manifest.json", str(platform.settings.home))
        ).read_text()
    )
    assert rebuild(manifest, platform.registry, platform.predictions).hash == result.data["hash"]
    actions = [e.action for e in platform.audit.query(AuditFilter(target=f"model:{model}"))]
    assert "retrain.start" in actions and "retrain.registered" in actions


def test_one_class_window_is_refused_naming_the_label_balance(
    client: TestClient, platform: Platform, operator: dict[str, str], model: str
) -> None:
    frame = generate_credit_data(400, seed=5, shift=True)
    rows = frame[frame[LABEL] == 0].head(150)
    instances = [{name: _plain(r[name]) for name in FEATURE_NAMES} for r in rows.to_dict(orient="records")]
    answer = client.post(f"/predict/{model}", json={"instances": instances}, headers=operator).json()
    client.post(
        f"/feedback/{model}",
        json={"feedback": [{"request_id": answer["request_id"], "labels": [0] * len(instances)}]},
        headers=operator,
    )
    result = platform.retraining.retrainer.retrain(OPERATOR, RetrainRequest(model, search=FAST))

    assert result.status == "refused"
    assert any("every labelled row is class 0" in failure for failure in result.data["failures"])
    assert "label balance" in (result.reason or "")
    assert result.version is None and [v.version for v in platform.registry.versions(model)] == [1]


def test_mostly_missing_data_file_is_refused_naming_each_column(
    platform: Platform, model: str, tmp_path: Path
) -> None:
    frame = generate_credit_data(400, seed=8, shift=True)
    rng = np.random.default_rng(0)
    for column in ("income", "age", "purpose"):
        frame.loc[rng.random(len(frame)) < 0.7, column] = None
    path = tmp_path / "labelled.csv"
    frame.to_csv(path, index=False)
    result = platform.retraining.retrainer.retrain(
        OPERATOR, RetrainRequest(model, search=FAST, user_data=path)
    )

    assert result.status == "refused"
    failed = " ".join(result.data["failures"])
    for column in ("income", "age", "purpose"):
        assert f"{column}: " in failed and "missing" in failed
    assert result.data["quality_score"] < 0.95
    assert result.data["counts"]["data"] == 400 and result.data["counts"]["production"] == 0


def test_unchanged_world_gives_not_better_and_changes_nothing(
    client: TestClient, platform: Platform, operator: dict[str, str], model: str
) -> None:
    send(client, operator, model, 600, seed=31, shift=False)
    result = platform.retraining.retrainer.retrain(OPERATOR, RetrainRequest(model, search=FAST))

    assert result.status == "not_better", result.metrics
    assert result.metrics["ci"][0] <= 0 and result.reason and "not better" in result.reason
    assert [v.version for v in platform.registry.versions(model)] == [1]
    assert result.model_card and result.model_card.startswith("runs:/")


def test_bad_requests_are_refused_before_anything_runs(
    platform: Platform, model: str, tmp_path: Path
) -> None:
    retrainer = platform.retraining.retrainer
    viewer = Principal("k-viewer", "default", Role.VIEWER)
    with pytest.raises(ForbiddenError):
        retrainer.retrain(viewer, RetrainRequest(model))
    with pytest.raises(NotFoundError):
        retrainer.retrain(OPERATOR, RetrainRequest("no-such-model"))
    with pytest.raises(NotFoundError):
        retrainer.retrain(OPERATOR, RetrainRequest(model, user_data=tmp_path / "absent.csv"))
    (tmp_path / "narrow.csv").write_text("age,default\n30,1\n")
    with pytest.raises(InvalidInputError, match="lacks columns"):
        retrainer.retrain(OPERATOR, RetrainRequest(model, user_data=tmp_path / "narrow.csv"))
    platform.registry.set_model_tag(model, "opsloop.trainer", "")
    with pytest.raises(InvalidInputError, match="declares no trainer"):
        retrainer.retrain(OPERATOR, RetrainRequest(model))
    assert platform.retraining.store.history(model) == []


def test_one_retraining_per_model_and_a_dead_holder_frees_it(platform: Platform, model: str) -> None:
    from opsloop.tables import RetrainingLease

    store = platform.retraining.store
    first_holder = new_holder()
    first, _ = store.begin(model, "manual", {}, tenant="default", actor="a", holder=first_holder)
    with pytest.raises(ConflictError, match="is being retrained"):
        store.begin(model, "manual", {}, tenant="default", actor="b", holder=new_holder())
    # The holder was a process on this host that is gone: its lease is void before it expires.
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead = f"{new_holder().split(':')[0]}:{gone.stdout.strip()}:dead"

    def hand_to_the_dead(session: Any) -> None:
        session.get(RetrainingLease, model).holder = dead

    platform.db.write(hand_to_the_dead)
    taken, abandoned = store.begin(model, "manual", {}, tenant="default", actor="c", holder=new_holder())
    assert [run.id for run in abandoned] == [first.id]
    assert store.get(first.id).status == "failed" and store.get(taken.id).status == "running"
    # Were the first holder alive after all, its late "registered" could not undo the verdict.
    store.finish(first, first_holder, "registered", {"status": "registered"}, version=7)
    late = store.get(first.id)
    assert late.status == "failed" and late.version == 7  # the version it made stays on record
    # A holder on another host is trusted until its lease expires.
    platform.db.write(lambda session: setattr(session.get(RetrainingLease, model), "holder", "elsewhere:1:x"))
    with pytest.raises(ConflictError):
        store.begin(model, "manual", {}, tenant="default", actor="d", holder=new_holder())


def test_a_retraining_killed_halfway_leaves_the_champion_and_the_next_run_succeeds(
    client: TestClient, platform: Platform, operator: dict[str, str], model: str
) -> None:
    send(client, operator, model, 3000, seed=41, shift=True)
    settings = platform.settings
    env = {**os.environ, "OPSLOOP_HOME": str(settings.home)}
    opsloop = Path(sys.executable).with_name("opsloop")
    # A search that would run for minutes: the process is killed in its train step.
    process = subprocess.Popen(
        [str(opsloop), "retrain", model, "--trials", "100000", "--time-budget", "10m"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 120
        for line in process.stdout:
            if "trial 3/" in line or time.monotonic() > deadline:
                break
    finally:
        process.kill()
        process.wait(timeout=30)
    killed = platform.retraining.store.history(model)[0]
    assert killed.status == "running" and killed.step == "train"
    assert platform.registry.get_alias(model, "champion").version == 1
    assert [v.version for v in platform.registry.versions(model)] == [1]

    result = platform.retraining.retrainer.retrain(
        OPERATOR, RetrainRequest(model, search=FAST, handoff="none")
    )
    assert result.status == "registered" and result.version == 2
    abandoned = platform.retraining.store.get(killed.id)
    assert abandoned.status == "failed" and "abandoned" in (abandoned.result or {})["error"]
    assert killed.mlflow_run_id is not None
    assert (
        MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
        .get_run(killed.mlflow_run_id)
        .info.status
        == "KILLED"
    )


def test_http_retrain_starts_a_run_and_history_follows_it(
    client: TestClient, platform: Platform, operator: dict[str, str], model: str
) -> None:
    send(client, operator, model, 3000, seed=51, shift=True)
    viewer = platform.keys.create("default", Role.VIEWER, actor="test").secret.get_secret_value()
    admin_key = platform.keys.create("default", Role.ADMIN, actor="test").secret.get_secret_value()
    admin = {"Authorization": f"Bearer {admin_key}"}
    refused = client.post(
        f"/admin/models/{model}/retrain", json={}, headers={"Authorization": f"Bearer {viewer}"}
    )
    assert refused.status_code == 403
    missing = client.post("/admin/models/nope/retrain", json={}, headers=operator)
    assert missing.status_code == 404 and missing.json()["error"]["type"]

    started = client.post(
        f"/admin/models/{model}/retrain", json={"trials": 4, "handoff": "none"}, headers=operator
    )
    assert started.status_code == 202, started.text
    run = started.json()
    assert run["status"] == "running" and run["model"] == model
    busy = client.post(f"/admin/models/{model}/retrain", json={}, headers=operator)
    assert busy.status_code == 409
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        now = client.get(f"/admin/retraining/{run['id']}", headers=admin).json()
        if now["status"] != "running":
            break
        time.sleep(0.5)
    assert now["status"] == "registered", now
    assert now["result"]["version"] == now["version"] == 2
    assert client.get("/admin/retraining", headers=operator).status_code == 403
    listed = client.get("/admin/retraining", params={"model": model}, headers=admin).json()
    assert [r["id"] for r in listed] == [run["id"]]
    waited = client.post(
        f"/admin/models/{model}/retrain",
        json={"trials": 2, "wait": True, "window": "nonsense"},
        headers=operator,
    )
    assert waited.status_code == 422 and "window" in waited.text
    metrics = client.get("/metrics").text
    assert f'opsloop_retraining_runs_total{{model="{model}",status="registered"}} 1.0' in metrics
    assert f'opsloop_retraining_last_run_timestamp_seconds{{model="{model}"}}' in metrics


@pytest.fixture(autouse=True)
def _no_retraining_left(platform: Platform) -> Iterator[None]:
    yield
    platform.retraining.triggers.join(timeout=60)


def test_triggers_wait_for_labels_start_once_then_cool_down(
    client: TestClient, platform: Platform, operator: dict[str, str], model: str
) -> None:
    from datetime import timedelta

    from opsloop.auth import system_principal
    from serving.retraining_wiring import retrain_request
    from workflows.concept_drift import concept_report
    from workflows.drift_monitor import DriftCheckResult
    from workflows.retraining.triggers import RetrainTriggers

    retrainer = platform.retraining.retrainer
    outcomes: list[tuple[str, str]] = []
    triggers = RetrainTriggers(
        retrainer,
        system_principal("default"),
        lambda name, trigger, cause, span: retrain_request(
            platform.settings, name, trigger, cause, span=span, trials=4, handoff="none"
        ),
        enabled=["drift", "concept_drift"],
        cooldown=timedelta(hours=1),
        min_labels=20,
        labelled_since=lambda name, since: platform.predictions.count_labelled(name, since=since),
        on_outcome=lambda name, trigger, outcome: outcomes.append((trigger, outcome)),
    )
    drifted = DriftCheckResult(model, 1, utcnow(), True, 0.6, {"features": {"income": {"drifted": True}}})

    assert triggers.fire("no-trainer-here", "drift", {}) == "no_trainer"
    judging = RetrainTriggers(
        retrainer,
        system_principal("default"),
        lambda name, trigger, cause, span: retrain_request(platform.settings, name, trigger, cause),
        enabled=["drift"],
        cooldown=timedelta(0),
        in_experiment=lambda name: name == model,  # a canary of the model is being judged
    )
    assert judging.fire(model, "drift", {}) == "in_experiment"
    assert triggers.fire(model, "accuracy", {}) == "disabled"
    triggers.on_drift(drifted)  # the first signal: no labels since it came
    assert outcomes[-1] == ("drift", "waiting_for_labels")
    send(client, operator, model, 3000, seed=61, shift=True)  # 60 labelled predictions
    triggers.on_drift(drifted)
    assert outcomes[-1] == ("drift", "started")
    triggers.join(timeout=120)
    run = platform.retraining.store.history(model)[0]
    assert run.trigger == "drift" and run.cause["drifted"] == ["income"] and run.status == "registered"
    assert "episode_began" in run.cause and run.result is not None
    assert run.result["data"]["counts"]["production"] == 3000  # the episode's rows only
    audited = platform.audit.query(AuditFilter(target=f"model:{model}", action="retrain.start"))
    assert audited[0].actor == "system" and audited[0].after["trigger"] == "drift"

    # One episode, one retraining: the next signals meet the cool-down, concept drift included.
    triggers.on_drift(drifted)
    report = concept_report(platform.predictions, model, 1)
    triggers.fire(model, "concept_drift", {"error_rate": report.current_error_rate})
    assert outcomes[-2:] == [("drift", "cooldown"), ("concept_drift", "cooldown")]
    assert len(platform.retraining.store.history(model)) == 1


def test_labels_outside_the_models_classes_are_refused_and_text_labels_match_numbers(
    client: TestClient, platform: Platform, operator: dict[str, str], model: str
) -> None:
    frame = generate_credit_data(300, seed=71, shift=True)
    instances = [{name: _plain(r[name]) for name in FEATURE_NAMES} for r in frame.to_dict(orient="records")]
    labels: list[Any] = [str(v) for v in frame[LABEL]]  # "0"/"1": the same classes, as text
    labels[:20] = ["yes"] * 20  # not a class of the model
    labels[20:25] = [None] * 5  # left out of the feedback: not labelled rows
    answer = client.post(f"/predict/{model}", json={"instances": instances}, headers=operator).json()
    client.post(
        f"/feedback/{model}",
        json={"feedback": [{"request_id": answer["request_id"], "labels": labels}]},
        headers=operator,
    )
    result = platform.retraining.retrainer.retrain(OPERATOR, RetrainRequest(model, search=FAST))

    assert result.status == "refused", result.reason
    assert result.data["counts"]["production"] == 295
    failed = " ".join(result.data["failures"])
    assert "20 of 295 labels are not among the model's classes (0, 1): 'yes'" in failed
    assert "label balance" not in failed  # "0" and "1" counted as the classes 0 and 1
