"""/predict, /feedback and /models through the real app, MLflow registry and store."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from mlflow.models import infer_signature
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from opsloop.auth import Role
from opsloop.registry import Lineage, Registry
from opsloop.settings import load_settings
from serving.app import create_app
from tests.integration.ready import wait_ready

ROW = {"income": 52000.0, "late_payments": 1, "housing": "rent"}


def _register(registry: Registry, flip: bool = False) -> int:
    """Train a small pipeline (numeric + categorical, columns by position) and make it champion."""
    rng = np.random.default_rng(1 if flip else 0)
    frame = pd.DataFrame(
        {
            "income": rng.normal(50_000, 15_000, 400),
            "late_payments": rng.integers(0, 6, 400),
            "housing": rng.choice(["rent", "own", "mortgage"], 400),
        }
    )
    label = (frame["late_payments"] + (frame["housing"] == "rent") * 2 > 3).astype(int)
    pipeline = Pipeline(
        [
            ("prep", ColumnTransformer([("num", StandardScaler(), [0, 1]), ("cat", OneHotEncoder(), [2])])),
            ("clf", LogisticRegression()),
        ]
    ).fit(frame.to_numpy(dtype=object), 1 - label if flip else label)
    with mlflow.start_run(experiment_id=registry.experiment_id):
        info = mlflow.sklearn.log_model(
            pipeline,
            name="model",
            signature=infer_signature(frame, pipeline.predict_proba(frame.to_numpy(dtype=object))),
            pip_requirements=["scikit-learn"],
        )
    version = registry.register_model("risk", info.model_uri, Lineage(params={"flip": flip})).version
    registry.set_alias("risk", "champion", version)
    return version


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    settings = load_settings(
        home=tmp_path_factory.mktemp("predict") / "home",
        bootstrap_demo=False,
        bootstrap_docs=False,
        model_poll_seconds=0.2,
        max_instances=50,
    )
    return create_app(settings)


@pytest.fixture(scope="module")
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(client, 60)
        _register(app.state.platform.registry)
        yield client


@pytest.fixture(scope="module")
def user(app: FastAPI, client: TestClient) -> dict[str, str]:
    key = app.state.platform.keys.create("acme", Role.USER, actor="test").secret.get_secret_value()
    return {"Authorization": f"Bearer {key}"}


def _predict(client: TestClient, headers: dict[str, str], instances: Any, model: str = "risk") -> Any:
    return client.post(f"/predict/{model}", json={"instances": instances}, headers=headers)


def test_predict_returns_labels_probabilities_and_version(client: TestClient, user: dict[str, str]) -> None:
    response = _predict(client, user, [ROW, {**ROW, "housing": "own", "late_payments": 0}])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "risk" and body["version"] == 1 and body["variant"] == "champion"
    assert body["request_id"] == response.headers["x-request-id"]
    assert len(body["predictions"]) == 2 and set(body["predictions"]) <= {0, 1}
    for probabilities in body["probabilities"]:
        assert set(probabilities) == {"0", "1"} and sum(probabilities.values()) == pytest.approx(1)


@pytest.mark.parametrize(
    ("instances", "field", "message"),
    [
        ([{"income": 1.0, "late_payments": 1}], "instances[0].housing", "missing field"),
        ([ROW, {**ROW, "colour": "red"}], "instances[1].colour", "unknown field"),
        ([{**ROW, "income": "lots"}], "instances[0].income", "expected a number"),
        ([{**ROW, "late_payments": 1.5}], "instances[0].late_payments", "expected an integer"),
        ([{**ROW, "late_payments": True}], "instances[0].late_payments", "expected an integer"),
        ([{**ROW, "housing": "castle"}], "instances[0].housing", "unknown category 'castle'"),
        ([ROW, ROW, 7], "instances[2]", "expected an object"),
        ([], "instances", "must not be empty"),
        ([ROW] * 51, "instances", "exceed the limit of 50"),
    ],
)
def test_bad_instances_get_422_naming_index_and_field(
    client: TestClient, user: dict[str, str], instances: Any, field: str, message: str
) -> None:
    response = _predict(client, user, instances)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_input"
    assert error["message"].startswith(field) or error["details"].get("field") == field
    assert message in error["message"]


@pytest.mark.parametrize("token", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_numbers_get_422(client: TestClient, user: dict[str, str], token: bytes) -> None:
    body = b'{"instances": [{"income": ' + token + b', "late_payments": 1, "housing": "own"}]}'
    response = client.post(
        "/predict/risk", content=body, headers={**user, "Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["error"]["details"]["errors"][0]["field"] == "instances[0].income"


def test_unknown_model_no_key_and_low_role(app: FastAPI, client: TestClient, user: dict[str, str]) -> None:
    missing = _predict(client, user, [ROW], model="nope")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"
    assert _predict(client, {}, [ROW]).status_code == 401
    viewer = app.state.platform.keys.create("acme", Role.VIEWER, actor="t").secret.get_secret_value()
    assert _predict(client, {"Authorization": f"Bearer {viewer}"}, [ROW]).status_code == 403
    not_a_list = client.post("/predict/risk", json={"instances": {"a": 1}}, headers=user)
    assert not_a_list.status_code == 422


def test_champion_move_is_picked_up_without_restart(
    app: FastAPI, client: TestClient, user: dict[str, str]
) -> None:
    registry: Registry = app.state.platform.registry
    before = _predict(client, user, [ROW]).json()
    second = _register(registry, flip=True)
    assert second == before["version"] + 1
    deadline = time.monotonic() + 2.0
    while (after := _predict(client, user, [ROW]).json())["version"] != second:
        assert time.monotonic() < deadline, "new champion not served within 2 s"
        time.sleep(0.05)
    assert after["predictions"] != before["predictions"]  # the flipped model answers otherwise
    metrics = client.get("/metrics").text
    assert f'opsloop_model_champion_version{{model="risk"}} {second}.0' in metrics
    assert f'opsloop_predictions_total{{model="risk",version="{before["version"]}"}}' in metrics
    registry.set_alias("risk", "champion", before["version"])  # leave version 1 to the other tests
    deadline = time.monotonic() + 2.0
    while _predict(client, user, [ROW]).json()["version"] != before["version"]:
        assert time.monotonic() < deadline, "rollback not served within 2 s"
        time.sleep(0.05)


def test_predictions_are_logged_and_take_feedback(
    app: FastAPI, client: TestClient, user: dict[str, str]
) -> None:
    first = _predict(client, user, [ROW, ROW]).json()["request_id"]
    second = _predict(client, user, [ROW]).json()["request_id"]
    response = client.post(
        "/feedback/risk",
        json={
            "feedback": [
                {"request_id": first, "labels": [1, 0]},
                {"request_id": second, "labels": [1, 1]},
                {"request_id": "never-seen", "labels": [0]},
            ]
        },
        headers=user,
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "attached": [first],
        "unknown": ["never-seen"],
        "rejected": {second: "expected 1 labels (one per instance), got 2"},
    }
    logged = {r.request_id: r for r in app.state.platform.predictions.recent("risk")}
    assert logged[first].labels == [1, 0] and logged[first].tenant == "acme"
    assert logged[first].inputs == [ROW, ROW] and logged[first].version == 1
    assert len(logged[first].outputs) == 2 and logged[second].labels is None


def test_model_metadata_gives_schema_and_a_postable_example(
    app: FastAPI, client: TestClient, user: dict[str, str]
) -> None:
    served = app.state.platform.runtime.get("risk")
    assert served.accepts_arrays and served.scorer is not None  # no pandas, no sklearn per call
    described = client.get("/models/risk", headers=user).json()
    assert described["champion"] == 1
    assert described["versions"][0]["aliases"] == ["champion"]
    schema = {f["name"]: f for f in described["input_schema"]}
    assert schema["income"]["type"] == "double" and schema["late_payments"]["type"] == "long"
    assert schema["housing"]["categories"] == ["mortgage", "own", "rent"]
    response = client.post("/predict/risk", json=described["example"], headers=user)
    assert response.status_code == 200, response.text
    assert client.get("/models", headers=user).json() == [{"name": "risk", "version": 1}]


def test_unknown_model_names_do_not_grow_the_metrics(client: TestClient, user: dict[str, str]) -> None:
    sample = 'opsloop_prediction_errors_total{model="<unknown>",type="not_found"}'

    def unknown() -> float:
        lines = client.get("/metrics").text.splitlines()
        return next((float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(sample + " ")), 0.0)

    before = unknown()
    for n in range(3):
        assert _predict(client, user, [ROW], model=f"nope-{n}").status_code == 404
    assert "nope-" not in client.get("/metrics").text
    assert unknown() == before + 3
