"""The registry facade against a real MLflow sqlite store and real scikit-learn models."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import mlflow.sklearn
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from opsloop.errors import ConflictError, InvalidInputError, NotFoundError, OpsloopError
from opsloop.registry import (
    Lineage,
    ModelVersionInfo,
    Registry,
    current_git_sha,
)
from opsloop.settings import Settings, load_settings

MODEL = "churn"
PROMPT = "rag-answer"
OTHER_PROMPT = "summarise"
X = np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 3.0], [3.0, 2.0], [4.0, 5.0], [5.0, 4.0]])
Y = np.array([0, 0, 0, 1, 1, 1])


@dataclass(frozen=True)
class Registered:
    v1: ModelVersionInfo
    v2: ModelVersionInfo
    lineage1: Lineage
    lineage2: Lineage
    model1: LogisticRegression
    model2: LogisticRegression
    run1: str


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh, empty working directory, so a stray ./mlruns would show."""
    cwd = tmp_path_factory.mktemp("cwd")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        yield cwd


@pytest.fixture(scope="module")
def module_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return load_settings(home=tmp_path_factory.mktemp("registry") / "home")


@pytest.fixture(scope="module")
def registry(workdir: Path, module_settings: Settings) -> Iterator[Registry]:
    reg = Registry(module_settings.tracking_uri, module_settings.artifact_root).start()
    yield reg
    reg.close()


def _log(registry: Registry, model: LogisticRegression) -> tuple[str, str]:
    """Log ``model`` under a run in the opsloop experiment; return (run id, model URI)."""
    with mlflow.start_run(experiment_id=registry.experiment_id) as run:
        # Fixed requirements: inferring them imports the model in a subprocess, ~10 s a model.
        info = mlflow.sklearn.log_model(
            model, name="model", input_example=X[:2], pip_requirements=["scikit-learn", "numpy"]
        )
    return run.info.run_id, info.model_uri


@pytest.fixture(scope="module")
def registered(registry: Registry) -> Registered:
    """Two versions: the first registered from its runs:/ URI, the second from its models:/ URI."""
    model1 = LogisticRegression().fit(X, Y)
    model2 = LogisticRegression().fit(X, 1 - Y)  # predicts the opposite class, so loads are told apart
    lineage1 = Lineage(data_hash="sha256:aaa", git_sha="0" * 40, params={"C": 1.0, "penalty": "l2"})
    lineage2 = Lineage(data_hash="sha256:bbb", git_sha=None, params={"C": 0.5, "layers": [3, 2]})
    run1, _ = _log(registry, model1)
    v1 = registry.register_model(MODEL, f"runs:/{run1}/model", lineage1)
    _, uri2 = _log(registry, model2)
    v2 = registry.register_model(MODEL, uri2, lineage2, description="flipped labels")
    return Registered(v1, v2, lineage1, lineage2, model1, model2, run1)


@pytest.fixture(scope="module")
def other_prompt(registry: Registry) -> None:
    registry.register_prompt(OTHER_PROMPT, "Summarise: {{ text }}")


def test_register_returns_new_versions(registered: Registered) -> None:
    assert (registered.v1.name, registered.v1.version) == (MODEL, 1)
    assert (registered.v2.name, registered.v2.version) == (MODEL, 2)
    assert registered.v1.run_id == registered.run1
    assert registered.v2.description == "flipped labels"
    assert registered.v1.uri == f"models:/{MODEL}/1"


def test_versions_round_trip_lineage(registry: Registry, registered: Registered) -> None:
    assert MODEL in registry.models()
    versions = registry.versions(MODEL)
    assert [v.version for v in versions] == [1, 2]
    assert [v.lineage for v in versions] == [registered.lineage1, registered.lineage2]
    assert versions[0].tags["opsloop.data_hash"] == "sha256:aaa"
    assert "opsloop.git_sha" not in versions[1].tags  # unknown values are left out, not stored as ""
    assert versions[1].lineage.params == {"C": 0.5, "layers": [3, 2]}
    assert all(v.source for v in versions)
    assert registry.get_version(MODEL, "2").lineage == registered.lineage2


def test_alias_set_move_get_delete(registry: Registry, registered: Registered) -> None:
    assert registry.set_alias(MODEL, "champion", 1) is None
    assert registry.get_alias(MODEL, "champion").version == 1
    assert registry.get_alias(MODEL, "champion").aliases == ("champion",)

    assert registry.set_alias(MODEL, "champion", "2") == 1
    moved = registry.get_alias(MODEL, "champion")
    assert (moved.version, moved.lineage) == (2, registered.lineage2)
    by_version = {v.version: v.aliases for v in registry.versions(MODEL)}
    assert by_version == {1: (), 2: ("champion",)}

    assert registry.delete_alias(MODEL, "champion") == 2
    with pytest.raises(NotFoundError, match="champion"):
        registry.get_alias(MODEL, "champion")
    with pytest.raises(NotFoundError):
        registry.delete_alias(MODEL, "champion")
    assert all(v.aliases == () for v in registry.versions(MODEL))


def test_load_by_alias_and_version_predicts(registry: Registry, registered: Registered) -> None:
    registry.set_alias(MODEL, "serving", 2)
    by_alias = registry.load_model(MODEL, "serving")
    np.testing.assert_array_equal(by_alias.predict(X), registered.model2.predict(X))
    by_version = registry.load_model(MODEL, 1)
    np.testing.assert_array_equal(by_version.predict(X), registered.model1.predict(X))
    estimator = registry.load_model(MODEL, "serving", flavor="sklearn")
    np.testing.assert_allclose(estimator.predict_proba(X), registered.model2.predict_proba(X))
    assert registry.model_uri(MODEL, "serving") == f"models:/{MODEL}@serving"
    assert registry.model_uri(MODEL, 2) == f"models:/{MODEL}/2"
    np.testing.assert_array_equal(
        mlflow.pyfunc.load_model(registry.model_uri(MODEL, "serving")).predict(X),
        registered.model2.predict(X),
    )


@pytest.mark.parametrize(
    ("call", "error"),
    [
        pytest.param(lambda r: r.versions("no-such-model"), NotFoundError, id="versions-unknown-model"),
        pytest.param(
            lambda r: r.get_alias("no-such-model", "champion"), NotFoundError, id="alias-unknown-model"
        ),
        pytest.param(lambda r: r.get_alias(MODEL, "no-such-alias"), NotFoundError, id="unknown-alias"),
        pytest.param(lambda r: r.load_model(MODEL, "no-such-alias"), NotFoundError, id="load-unknown-alias"),
        pytest.param(lambda r: r.load_model("no-such-model", 1), NotFoundError, id="load-unknown-model"),
        pytest.param(lambda r: r.load_model(MODEL, 99), NotFoundError, id="load-unknown-version"),
        pytest.param(
            lambda r: r.set_alias(MODEL, "champion", 99), NotFoundError, id="alias-to-missing-version"
        ),
        pytest.param(
            lambda r: r.set_alias(MODEL, "champion", "abc"), InvalidInputError, id="version-not-int"
        ),
        pytest.param(lambda r: r.get_version(MODEL, 0), InvalidInputError, id="version-zero"),
        pytest.param(lambda r: r.set_alias(MODEL, "v1", 1), InvalidInputError, id="reserved-alias"),
        pytest.param(lambda r: r.set_alias(MODEL, "7", 1), InvalidInputError, id="all-digit-alias"),
        pytest.param(lambda r: r.register_prompt(MODEL, "x"), ConflictError, id="prompt-named-like-model"),
    ],
)
def test_errors_are_translated(
    registry: Registry, registered: Registered, call: Callable[[Registry], object], error: type[OpsloopError]
) -> None:
    with pytest.raises(error):
        call(registry)


def test_error_message_names_the_resource(registry: Registry, registered: Registered) -> None:
    with pytest.raises(NotFoundError) as caught:
        registry.set_alias(MODEL, "champion", 99)
    assert MODEL in caught.value.message and "99" in caught.value.message
    assert caught.value.details["model"] == MODEL
    assert isinstance(caught.value.__cause__, mlflow.exceptions.MlflowException)


def test_model_named_like_prompt_conflicts(registry: Registry, registered: Registered) -> None:
    registry.register_prompt("taken-by-prompt", "Hi {{ name }}")
    with pytest.raises(ConflictError):
        registry.register_model("taken-by-prompt", registered.v1.source, Lineage())
    assert "taken-by-prompt" not in registry.models()


def test_prompts_register_alias_load_and_format(registry: Registry) -> None:
    template1 = "Answer from the context.\nContext: {{ context }}\nQuestion: {{question}}"
    template2 = "Answer briefly, citing sources.\nContext: {{ context }}\nQ: {{ question }}"
    p1 = registry.register_prompt(PROMPT, template1, commit_message="first", tags={"team": "rag"})
    p2 = registry.register_prompt(PROMPT, template2, commit_message="shorter")
    assert (p1.version, p2.version) == (1, 2)
    assert (p1.template, p1.commit_message, p1.tags) == (template1, "first", {"team": "rag"})
    assert p2.variables == ("context", "question")
    assert PROMPT in registry.prompts() and PROMPT not in registry.models()

    assert registry.set_prompt_alias(PROMPT, "production", 1) is None
    assert registry.load_prompt(PROMPT, "production").template == template1
    assert registry.set_prompt_alias(PROMPT, "production", 2) == 1
    loaded = registry.load_prompt(PROMPT, "production")
    assert (loaded.version, loaded.aliases, loaded.uri) == (2, ("production",), f"prompts:/{PROMPT}/2")
    assert loaded.format(context="{{ question }} is literal", question="Why?") == (
        "Answer briefly, citing sources.\nContext: {{ question }} is literal\nQ: Why?"
    )
    assert registry.load_prompt(PROMPT, 1).format(context="c", question="q", unused=1).endswith("Question: q")
    with pytest.raises(InvalidInputError, match="question"):
        loaded.format(context="c")


@pytest.mark.parametrize(
    ("call", "error"),
    [
        pytest.param(lambda r: r.load_prompt("no-such-prompt", 1), NotFoundError, id="unknown-prompt"),
        pytest.param(
            lambda r: r.load_prompt("no-such-prompt", "production"), NotFoundError, id="unknown-prompt-alias"
        ),
        pytest.param(
            lambda r: r.load_prompt(OTHER_PROMPT, "no-such-alias"), NotFoundError, id="unknown-alias"
        ),
        pytest.param(lambda r: r.load_prompt(OTHER_PROMPT, 99), NotFoundError, id="unknown-version"),
        pytest.param(lambda r: r.load_prompt(MODEL, 1), NotFoundError, id="model-is-no-prompt"),
        pytest.param(
            lambda r: r.set_prompt_alias(OTHER_PROMPT, "prod", 99), NotFoundError, id="alias-to-missing"
        ),
        pytest.param(
            lambda r: r.set_prompt_alias(OTHER_PROMPT, "v2", 1), InvalidInputError, id="reserved-alias"
        ),
        pytest.param(lambda r: r.register_prompt("bad name!", "x"), InvalidInputError, id="bad-name"),
    ],
)
def test_prompt_errors(
    registry: Registry,
    registered: Registered,
    other_prompt: None,
    call: Callable[[Registry], object],
    error: type[OpsloopError],
) -> None:
    with pytest.raises(error):
        call(registry)


def test_second_registry_on_same_store_sees_same_state(
    registry: Registry, registered: Registered, module_settings: Settings
) -> None:
    other = Registry(module_settings.tracking_uri, module_settings.artifact_root).start()
    assert other.experiment_id == registry.experiment_id
    assert [v.version for v in other.versions(MODEL)] == [1, 2]
    registry.set_alias(MODEL, "shared", 1)
    assert other.get_alias(MODEL, "shared").version == 1
    other.close()
    with pytest.raises(RuntimeError, match="start"):
        other.models()


def test_registries_on_different_stores_do_not_mix(
    tmp_path: Path, registry: Registry, registered: Registered
) -> None:
    elsewhere = Registry(f"sqlite:///{tmp_path / 'other' / 'mlflow.db'}", (tmp_path / "art").as_uri()).start()
    assert elsewhere.models() == []
    # MLflow's loaders read the process-global URI, which ``elsewhere`` pointed at its own store.
    loaded = registry.load_model(MODEL, 1)
    np.testing.assert_array_equal(loaded.predict(X), registered.model1.predict(X))
    with pytest.raises(NotFoundError):
        elsewhere.load_model(MODEL, 1)


def test_nothing_lands_in_cwd_mlruns(
    workdir: Path, registry: Registry, registered: Registered, module_settings: Settings
) -> None:
    registry.load_model(MODEL, 1)
    assert not (workdir / "mlruns").exists()
    assert list(workdir.iterdir()) == []
    artifacts = Path(module_settings.home) / "mlartifacts"
    assert any(artifacts.rglob("MLmodel")), "model artifacts belong under the configured artifact root"


def test_lineage_tags_and_git_sha(tmp_path: Path) -> None:
    assert Lineage.from_tags(Lineage(params={"a": [1, 2]}).to_tags()) == Lineage(params={"a": [1, 2]})
    with pytest.raises(InvalidInputError) as caught:
        Lineage(params={"when": object()}).to_tags()
    assert caught.value.details["field"] == "params"
    assert isinstance(caught.value, OpsloopError)

    assert current_git_sha(tmp_path) is None
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], cwd=tmp_path, check=True)
    sha = current_git_sha(tmp_path)
    assert sha is not None and len(sha) == 40
    assert Lineage.capture(data_hash="h", params={"k": 1}, cwd=tmp_path).git_sha == sha
