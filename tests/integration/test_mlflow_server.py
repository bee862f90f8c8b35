"""opsloop on the registry's scale-out twin: an MLflow tracking server on PostgreSQL, on loopback.

Every step is an ``opsloop`` CLI process pointed at the server (``OPSLOOP_MLFLOW_TRACKING_URI``,
artifacts uploaded through its proxy); MLflow's own client then reads back what the server holds:
model versions with their champion alias through promote and rollback, prompt versions and
aliases, and an eval run with its metrics. The server is shared by the session, so each test
counts from what was there before it.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from tests.integration.twins import MlflowServer, opsloop

pytestmark = pytest.mark.postgres

REPO = Path(__file__).resolve().parents[2]
MODEL = "credit-risk"
DOC = "rag.md"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CLI's home: its own relational store (the audit trail rollback reads), no MLflow in it."""
    return tmp_path_factory.mktemp("mlflow-cli") / "home"


@pytest.fixture(scope="module")
def client(mlflow_server: MlflowServer) -> MlflowClient:
    return MlflowClient(tracking_uri=mlflow_server.url, registry_uri=mlflow_server.url)


def _ok(home: Path, server: MlflowServer, *args: str) -> str:
    done = opsloop(home, *args, env=server.env)
    assert done.returncode == 0, f"opsloop {' '.join(args)}:\n{done.stderr[-3000:]}"
    return done.stdout


def _versions(client: MlflowClient) -> list[int]:
    return sorted(int(v.version) for v in client.search_model_versions(f"name = '{MODEL}'"))


def _champion(client: MlflowClient) -> int:
    return int(client.get_model_version_by_alias(MODEL, "champion").version)


def test_models_train_register_promote_and_roll_back_on_the_server(
    home: Path, mlflow_server: MlflowServer, client: MlflowClient
) -> None:
    before = _versions(client)
    _ok(home, mlflow_server, "models", "train", "--demo", "--rows", "300", "--seed", "1")
    trained = max(before, default=0) + 1
    assert _versions(client) == [*before, trained]
    assert _champion(client) == trained
    version = client.get_model_version(MODEL, str(trained))
    assert version.tags["opsloop.data_hash"].startswith("sha256:")
    # The model went through the server's artifact proxy; nothing was written under the home.
    source = version.source or ""
    assert source.startswith("models:/")
    assert any(mlflow_server.artifacts.rglob("MLmodel")), "no model artifacts behind the server"
    assert not (home / "mlartifacts").exists()

    _ok(home, mlflow_server, "models", "register", MODEL, "--from", source)
    registered = trained + 1
    assert _versions(client) == [*before, trained, registered]
    assert _champion(client) == trained  # registering moves no alias

    _ok(home, mlflow_server, "models", "promote", MODEL, str(registered))
    assert _champion(client) == registered
    _ok(home, mlflow_server, "models", "rollback", MODEL)
    assert _champion(client) == trained


def test_a_model_folder_registers_on_the_server(
    tmp_path: Path, home: Path, mlflow_server: MlflowServer, client: MlflowClient
) -> None:
    if not _versions(client):
        _ok(home, mlflow_server, "models", "train", "--demo", "--rows", "300", "--no-promote")
    latest = max(_versions(client))
    # A model saved on this machine, as a user has one.
    folder = mlflow.artifacts.download_artifacts(
        artifact_uri=client.get_model_version_download_uri(MODEL, str(latest)),
        dst_path=str(tmp_path / "model"),
        tracking_uri=mlflow_server.url,
    )
    assert (Path(folder) / "MLmodel").is_file()
    done = opsloop(home, "models", "register", MODEL, "--from", folder, env=mlflow_server.env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert max(_versions(client)) == latest + 1
    # The version is a copy the server holds (a run's artifacts), not a path on this machine.
    registered = client.get_model_version(MODEL, str(latest + 1))
    assert registered.run_id and not registered.source.startswith("file:")


def test_prompts_register_and_alias_on_the_server(
    tmp_path: Path, home: Path, mlflow_server: MlflowServer, client: MlflowClient
) -> None:
    name = f"reply-{uuid.uuid4().hex[:8]}"
    templates = ["Answer {{ question }} briefly.", "Answer {{ question }} in one sentence."]
    for number, template in enumerate(templates, start=1):
        path = tmp_path / f"v{number}.txt"
        path.write_text(template, encoding="utf-8")
        _ok(home, mlflow_server, "prompts", "register", name, "-t", str(path), "-m", f"take {number}")
    _ok(home, mlflow_server, "prompts", "alias", name, "production", "2")

    stored = [client.get_prompt_version(name, number) for number in (1, 2)]
    assert [v.template if v else None for v in stored] == templates
    assert [v.commit_message if v else None for v in stored] == ["take 1", "take 2"]
    assert client.get_prompt_version_by_alias(name, "production").version == 2


def test_an_eval_run_is_tracked_on_the_server(
    tmp_path: Path, home: Path, mlflow_server: MlflowServer, client: MlflowClient
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(REPO / "docs" / DOC, docs / DOC)
    _ok(home, mlflow_server, "ingest", str(docs), "--collection", "docs")
    golden = (REPO / "evals" / "datasets" / "docs_golden.jsonl").read_text(encoding="utf-8").splitlines()
    items = [line for line in golden if line.strip() and json.loads(line)["reference_sources"] == [DOC]]
    dataset = tmp_path / "set.jsonl"
    dataset.write_text("\n".join(items[:3]) + "\n", encoding="utf-8")

    args = ["--dataset", str(dataset), "--collection", "docs", "--no-generate", "--metric", "hit_rate"]
    body = json.loads(_ok(home, mlflow_server, "eval", "run", *args, "--format", "json"))

    run = client.get_run(body["run_id"])
    assert run.info.status == "FINISHED"
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == "opsloop-evals"
    assert run.data.metrics["samples"] == 3
    assert run.data.metrics["hit_rate"] == pytest.approx(body["summaries"]["hit_rate"]["mean"])
    assert client.list_artifacts(run.info.run_id), "the run's artifacts are not on the server"
