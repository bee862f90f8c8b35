"""The classical-model loop as a user drives it: demo bootstrap, CLI, hot-swap under load."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow import MlflowClient

from tests.e2e.server import Server, cli


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("models") / "home", env={"OPSLOOP_DRIFT_CHECK_SECONDS": "2"})
    server.wait_for("/readyz", 200, seconds=180)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def user(server: Server) -> dict[str, str]:
    created = cli(server.home, "keys", "create", "--tenant", "acme", "--role", "user")
    assert created.returncode == 0, created.stderr
    return {"Authorization": f"Bearer {created.stdout.strip()}"}


def _example(server: Server, user: dict[str, str]) -> dict[str, Any]:
    described = server.http.get("/models/credit-risk", headers=user)
    assert described.status_code == 200, described.text
    example: dict[str, Any] = described.json()["example"]
    return example


# The swap itself takes well under 2 s (measured under this test's load); the bound is loose
# because CI shares 2 cores between the server, the CLI and the load threads.
SWAP_SECONDS = 10


def _not_swapped(server: Server, version: int) -> str:
    log = "".join(server.output[-40:])
    return f"version {version} not served within {SWAP_SECONDS} s; server log:\n{log}"


def _wait_for_version(server: Server, user: dict[str, str], version: int) -> None:
    deadline = time.monotonic() + SWAP_SECONDS
    body = _example(server, user)
    while server.http.post("/predict/credit-risk", json=body, headers=user).json()["version"] != version:
        assert time.monotonic() < deadline, _not_swapped(server, version)
        time.sleep(0.1)


def test_demo_model_is_served_right_after_first_start(server: Server, user: dict[str, str]) -> None:
    body = _example(server, user)
    response = server.http.post("/predict/credit-risk", json=body, headers=user)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["version"] == 1 and result["predictions"][0] in (0, 1)
    assert set(result["probabilities"][0]) == {"0", "1"}

    request_id = result["request_id"]
    feedback = server.http.post(
        "/feedback/credit-risk",
        json={"feedback": [{"request_id": request_id, "labels": [1]}, {"request_id": "x", "labels": [0]}]},
        headers=user,
    )
    assert feedback.json() == {"attached": [request_id], "unknown": ["x"], "rejected": {}}
    listed = cli(server.home, "models", "list")
    assert listed.returncode == 0 and "credit-risk" in listed.stdout


def test_promotion_under_load_fails_no_request_and_rollback_restores(
    server: Server, user: dict[str, str]
) -> None:
    trained = cli(server.home, "models", "train", "--demo", "--shift", "--rows", "2000", "--no-promote")
    assert trained.returncode == 0, trained.stderr
    assert "version 2 (not promoted)" in trained.stderr
    body = _example(server, user)
    statuses: Counter[int] = Counter()
    versions: Counter[int] = Counter()
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for _ in range(3000):  # bounded; stopped much earlier
                if stop.is_set():
                    return
                response = http.post("/predict/credit-risk", json=body, headers=user)
                statuses[response.status_code] += 1
                if response.status_code == 200:
                    versions[response.json()["version"]] += 1

    workers = [threading.Thread(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        time.sleep(1.0)
        promoted = cli(server.home, "models", "promote", "credit-risk", "2")
        assert promoted.returncode == 0, promoted.stderr
        promoted_at = time.monotonic()
        while versions[2] == 0:
            assert time.monotonic() - promoted_at < SWAP_SECONDS, _not_swapped(server, 2)
            time.sleep(0.05)
        time.sleep(0.5)
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=60)
    assert set(statuses) == {200}, statuses
    assert versions[1] > 0 and versions[2] > 0

    rolled_back = cli(server.home, "models", "rollback", "credit-risk")
    assert rolled_back.returncode == 0, rolled_back.stderr
    assert "champion 2 -> 1" in rolled_back.stderr
    _wait_for_version(server, user, 1)

    versions_table = cli(server.home, "models", "versions", "credit-risk")
    assert versions_table.returncode == 0 and "champion" in versions_table.stdout
    trail = cli(server.home, "audit", "tail", "--json", "--action", "model.promote")
    assert '"before": {"alias": "champion", "version": 1}' in trail.stdout
    assert '"after": {"alias": "champion", "version": 2}' in trail.stdout
    metrics = server.http.get("/metrics").text
    assert 'opsloop_model_champion_version{model="credit-risk"} 1.0' in metrics


def test_bring_your_own_model(server: Server, user: dict[str, str], tmp_path: Path) -> None:
    import mlflow.sklearn
    import numpy as np
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    frame = pd.DataFrame({"a": np.arange(50.0), "b": np.arange(50.0) % 7})
    model = LogisticRegression(C=100.0).fit(frame, frame["a"] > 20)  # fitted with column names
    path = tmp_path / "byo"
    mlflow.sklearn.save_model(
        model, path, signature=infer_signature(frame), pip_requirements=["scikit-learn"]
    )
    frame.assign(label=frame["a"] > 20).to_csv(tmp_path / "train.csv", index=False)
    frame[["a"]].to_csv(tmp_path / "no_b.csv", index=False)
    register = ("models", "register", "byo", "--from", str(path), "--reference")
    refused = cli(server.home, *register, str(tmp_path / "no_b.csv"))
    assert refused.returncode == 1 and "lacks the model's input columns ['b']" in refused.stderr
    assert "byo" not in cli(server.home, "models", "list").stdout  # refused before registering
    registered = cli(server.home, *register, str(tmp_path / "train.csv"))
    assert registered.returncode == 0, registered.stderr
    assert "version 1 with a reference of 50 rows" in registered.stderr
    unpromoted = server.http.post("/predict/byo", json={"instances": [{"a": 1.0, "b": 2.0}]}, headers=user)
    assert unpromoted.status_code == 404
    assert cli(server.home, "models", "promote", "byo", "1").returncode == 0
    written = server.metric("opsloop_prediction_log_written_total")
    response = server.http.post(
        "/predict/byo", json={"instances": [{"a": 1.0, "b": 2.0}, {"a": 40.0, "b": 5.0}]}, headers=user
    )
    assert response.status_code == 200, response.text
    assert response.json()["predictions"] == [False, True]
    bad = cli(server.home, "models", "promote", "byo", "7")
    assert bad.returncode == 1 and "version 7" in bad.stderr

    deadline = time.monotonic() + 30  # the prediction log writes in the background
    while server.metric("opsloop_prediction_log_written_total") <= written:
        assert time.monotonic() < deadline, "the prediction log did not catch up within 30 s"
        time.sleep(0.1)
    report = cli(server.home, "drift", "report", "--model", "byo", "--format", "json")
    assert report.returncode == 0, report.stderr
    body = json.loads(report.stdout)
    assert (body["reference_rows"], body["current_rows"]) == (50, 2) and list(body["features"]) == ["a", "b"]
    # The scheduled check (every 2 s here) compares byo too; without a reference it would
    # only ever count it as skipped. Two rows are too few for a verdict: insufficient_data.
    checked = 'opsloop_drift_checks_total{model="byo",outcome="%s"}'
    while server.metric(checked % "insufficient_data") == 0:
        assert time.monotonic() < deadline + 20, "no scheduled drift check of byo ran"
        time.sleep(0.5)


def _said(done: subprocess.CompletedProcess[str]) -> str:
    """A CLI run's stderr with rich's line wrapping undone."""
    return " ".join(done.stderr.split())


def _save(path: Path, *, signed: bool = True, broken: bool = False) -> Path:
    """A scikit-learn model saved with MLflow to ``path``; ``broken``: its estimator file is garbage."""
    import mlflow.sklearn
    import numpy as np
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    frame = pd.DataFrame({"a": np.arange(50.0), "b": np.arange(50.0) % 7})
    model = LogisticRegression(C=100.0).fit(frame, frame["a"] > 20)
    signature = infer_signature(frame) if signed else None
    mlflow.sklearn.save_model(model, path, signature=signature, pip_requirements=["scikit-learn"])
    if broken:
        for artifact in ("model.skops", "model.pkl"):
            if (path / artifact).exists():
                (path / artifact).write_bytes(b"not a model")
    frame.to_csv(path.parent / f"{path.name}-inputs.csv", index=False)
    return path


def _mlflow(server: Server) -> MlflowClient:
    store = f"sqlite:///{server.home / 'mlflow.db'}"
    return MlflowClient(tracking_uri=store, registry_uri=store)


def _break_stored(server: Server, model: str, version: int) -> None:
    """Break the registered copy of a version after registering it (a disk fault, a bad upload)."""
    stored = _mlflow(server).get_model_version_download_uri(model, str(version))
    (Path(stored.removeprefix("file://")) / "model.skops").write_bytes(b"not a model")


def test_a_model_that_cannot_serve_is_refused_at_register_and_promote(
    server: Server, user: dict[str, str], tmp_path: Path
) -> None:
    register = ("models", "register", "fragile", "--from")
    missing = cli(server.home, *register, "path/to/mlflow-model")  # the README's placeholder
    assert missing.returncode == 1 and "path/to/mlflow-model" in _said(missing)
    assert "does not exist" in _said(missing)
    (tmp_path / "plain").mkdir()
    plain = cli(server.home, *register, str(tmp_path / "plain"))
    assert plain.returncode == 1 and "no MLmodel file" in _said(plain)
    unsigned = _save(tmp_path / "unsigned", signed=False)
    refused = cli(server.home, *register, str(unsigned))
    assert refused.returncode == 1 and "--signature-from" in _said(refused)
    broken = cli(server.home, *register, str(_save(tmp_path / "broken", broken=True)))
    assert broken.returncode == 1 and "does not load" in _said(broken)
    assert "fragile" not in cli(server.home, "models", "list").stdout  # nothing registered

    inferred = cli(
        server.home, *register, str(unsigned), "--signature-from", str(tmp_path / "unsigned-inputs.csv")
    )
    assert inferred.returncode == 0 and "version 1" in _said(inferred), _said(inferred)
    assert cli(server.home, "models", "promote", "fragile", "1").returncode == 0
    later = _save(tmp_path / "later")
    assert cli(server.home, *register, str(later)).returncode == 0  # version 2, fine when registered
    _break_stored(server, "fragile", 2)
    promoted = cli(server.home, "models", "promote", "fragile", "2")
    assert promoted.returncode == 1 and "version 2 of model 'fragile' cannot be served" in _said(promoted)
    body = {"instances": [{"a": 1.0, "b": 2.0}]}
    response = server.http.post("/predict/fragile", json=body, headers=user)
    assert response.status_code == 200 and response.json()["version"] == 1, response.text


def test_a_champion_that_cannot_load_shows_in_readyz_and_metrics_until_unset(
    server: Server, user: dict[str, str], tmp_path: Path
) -> None:
    register = ("models", "register", "unloadable", "--from")
    assert cli(server.home, *register, str(_save(tmp_path / "good"))).returncode == 0
    assert cli(server.home, "models", "promote", "unloadable", "1").returncode == 0
    second = _save(tmp_path / "second")
    assert cli(server.home, *register, str(second)).returncode == 0
    _break_stored(server, "unloadable", 2)
    # Promotion refuses it, so move the alias as another tool (or an older opsloop) would.
    _mlflow(server).set_registered_model_alias("unloadable", "champion", "2")

    failing = 'opsloop_model_load_failing{model="unloadable"}'
    deadline = time.monotonic() + SWAP_SECONDS
    while server.metric(failing) != 1.0:
        assert time.monotonic() < deadline, _not_swapped(server, 2)
        time.sleep(0.2)
    ready = server.http.get("/readyz")
    assert ready.status_code == 200, ready.text  # the other models keep serving
    report = ready.json()
    assert report["degraded"] and report["components"]["models"] == "degraded"
    why = report["why"]["models"]["unloadable"]
    assert why["version"] == 2 and why["reason"], report
    assert server.http.get("/readyz", params={"strict": "true"}).status_code == 503
    assert server.metric('opsloop_model_load_failures_total{model="unloadable"}') == 1.0
    body = {"instances": [{"a": 1.0, "b": 2.0}]}
    response = server.http.post("/predict/unloadable", json=body, headers=user)
    assert response.status_code == 200 and response.json()["version"] == 1  # still the one before
    time.sleep(3)  # several polls: still one warning, and no traceback
    log = "".join(server.output)
    assert log.count("could not load unloadable version 2") == 1, log[-3000:]
    assert "still serving version 1" in log

    unset = cli(server.home, "models", "alias", "unset", "unloadable", "champion")
    assert unset.returncode == 0 and "version 2" in _said(unset), _said(unset)
    deadline = time.monotonic() + SWAP_SECONDS
    while server.http.post("/predict/unloadable", json=body, headers=user).status_code != 404:
        assert time.monotonic() < deadline, "the model was still served after its champion was unset"
        time.sleep(0.2)
    assert "unloadable" not in server.http.get("/readyz").json()["why"].get("models", {})
    assert server.metric(failing) == 0.0
    trail = cli(server.home, "audit", "tail", "--json", "--action", "model.alias_unset")
    assert '"target": "model:unloadable"' in trail.stdout, trail.stdout


def _send(server: Server, user: dict[str, str], shift: bool, seed: int) -> None:
    from workflows.demo import FEATURE_NAMES, generate_credit_data

    frame = generate_credit_data(600, seed=seed, shift=shift)[list(FEATURE_NAMES)]
    rows = json.loads(frame.to_json(orient="records"))
    written = server.metric("opsloop_prediction_log_written_total")
    for start in range(0, len(rows), 50):
        response = server.http.post(
            "/predict/credit-risk", json={"instances": rows[start : start + 50]}, headers=user
        )
        assert response.status_code == 200, response.text
    deadline = time.monotonic() + 30  # the prediction log writes in the background
    while server.metric("opsloop_prediction_log_written_total") < written + len(rows) / 50:
        assert time.monotonic() < deadline, "the prediction log did not catch up within 30 s"
        time.sleep(0.1)


def test_drift_report_on_live_traffic(server: Server, user: dict[str, str]) -> None:
    _send(server, user, shift=False, seed=11)
    calm = cli(server.home, "drift", "report", "--model", "credit-risk", "--last", "600", "--format", "json")
    assert calm.returncode == 0, calm.stderr
    assert json.loads(calm.stdout)["dataset_drift"] is False

    _send(server, user, shift=True, seed=12)
    drifted = cli(
        server.home, "drift", "report", "--model", "credit-risk", "--last", "600", "--format", "json"
    )
    report = json.loads(drifted.stdout)
    assert report["dataset_drift"] is True, report
    assert report["features"]["income"]["drifted"] and not report["features"]["age"]["drifted"]

    operator = cli(server.home, "keys", "create", "--tenant", "acme", "--role", "operator").stdout.strip()
    api = server.http.get(
        "/admin/drift/credit-risk",
        params={"last": 600, "window": "1h"},
        headers={"Authorization": f"Bearer {operator}"},
    )
    assert api.status_code == 200, api.text
    assert api.json()["dataset_drift"] is True
    assert server.http.get("/admin/drift/credit-risk", headers=user).status_code == 403
    bad = server.http.get(
        "/admin/drift/credit-risk", params={"window": "soon"}, headers={"Authorization": f"Bearer {operator}"}
    )
    assert bad.status_code == 422 and "window" in bad.json()["error"]["message"]
    unknown = cli(server.home, "drift", "report", "--model", "nope")
    assert unknown.returncode == 1 and "nope" in unknown.stderr

    # The scheduled check (every 2 s here) exports the verdict and keeps its history.
    deadline = time.monotonic() + 20
    while 'opsloop_drift_dataset{model="credit-risk"} 1.0' not in server.http.get("/metrics").text:
        assert time.monotonic() < deadline, "scheduled drift check did not report drift"
        time.sleep(0.5)
    # The scheduled checks span every tenant's traffic: only an admin reads their history.
    admin = {"Authorization": f"Bearer {(server.home / 'admin.key').read_text().strip()}"}
    assert (
        server.http.get(
            "/admin/drift/credit-risk/history", headers={"Authorization": f"Bearer {operator}"}
        ).status_code
        == 403
    )
    history = server.http.get("/admin/drift/credit-risk/history", headers=admin)
    assert history.status_code == 200 and history.json()[0]["dataset_drift"] is True
    trail = cli(server.home, "audit", "tail", "--json", "--action", "drift.detected")
    assert '"target": "model:credit-risk"' in trail.stdout


def test_concept_drift_from_feedback_labels(server: Server, user: dict[str, str]) -> None:
    """The true relationship flips halfway: ADWIN finds where the error rate rose."""
    from workflows.demo import FEATURE_NAMES, LABEL, generate_credit_data

    frame = generate_credit_data(2000, seed=21)
    rows = json.loads(frame[list(FEATURE_NAMES)].to_json(orient="records"))
    truth = frame[LABEL].tolist()
    feedback = []
    for start in range(0, len(rows), 100):
        response = server.http.post(
            "/predict/credit-risk", json={"instances": rows[start : start + 100]}, headers=user
        )
        assert response.status_code == 200, response.text
        labels = truth[start : start + 100]
        if start >= 1000:  # the world changed: what was a default no longer is, and vice versa
            labels = [1 - label for label in labels]
        feedback.append({"request_id": response.json()["request_id"], "labels": labels})
    sent = server.http.post("/feedback/credit-risk", json={"feedback": feedback}, headers=user)
    assert sent.status_code == 200 and len(sent.json()["attached"]) == 20, sent.text

    concept = cli(server.home, "drift", "concept", "--model", "credit-risk", "--format", "json")
    assert concept.returncode == 0, concept.stderr
    report = json.loads(concept.stdout)
    assert report["drifted"] is True and report["instances"] >= 2000, report
    rise = next(p for p in report["change_points"] if p["worse"])
    assert rise["error_after"] > rise["error_before"] + 0.3
    assert "concept drift: the error rate rose" in concept.stderr
    table = cli(server.home, "drift", "concept", "--model", "credit-risk", "--fail-on-drift")
    assert table.returncode == 3 and "worse" in table.stdout

    operator = cli(server.home, "keys", "create", "--tenant", "acme", "--role", "operator").stdout.strip()
    api = server.http.get("/admin/drift/credit-risk/concept", headers={"Authorization": f"Bearer {operator}"})
    assert api.status_code == 200 and api.json()["drifted"] is True, api.text
    missing = cli(server.home, "drift", "concept", "--model", "credit-risk", "--version", "2")
    assert missing.returncode == 1 and "no labelled predictions" in missing.stderr

    deadline = time.monotonic() + 20  # the scheduled check (every 2 s here) exports it too
    while server.metric('opsloop_concept_drift{model="credit-risk",version="1"}') != 1.0:
        assert time.monotonic() < deadline, "the scheduled check did not export concept drift"
        time.sleep(0.5)
    assert server.metric('opsloop_model_error_rate{model="credit-risk",version="1"}') > 0.5
    history = cli(server.home, "drift", "history", "--model", "credit-risk")
    assert history.returncode == 0 and "Drift checks of credit-risk" in history.stdout
