"""The registry view reads what MLflow's client reads, from a store MLflow wrote.

A registry with models (versions, aliases, tags, a deleted version) and prompts (versions,
aliases, a commit message, user tags, a chat prompt) is built through MLflow and opsloop's
Registry; every read of :class:`opsloop.registry_view.RegistryView` must equal the Registry's.
When an MLflow upgrade changes its tables, this is the test that says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest

from opsloop.errors import InvalidInputError, NotFoundError
from opsloop.registry import Registry
from opsloop.registry_view import RegistryView, open_view
from opsloop.settings import load_settings


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    settings = load_settings(home=tmp_path_factory.mktemp("view") / "home")
    registry = Registry(settings.tracking_uri, settings.artifact_root).start()
    client = mlflow.MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    for name, count in (("churn", 3), ("credit-risk", 1)):
        client.create_registered_model(name)
        for i in range(count):
            client.create_model_version(
                name, source=f"file:///models/{name}/{i}", tags={"opsloop.data_hash": f"h{i}"}
            )
    client.set_registered_model_alias("churn", "champion", "2")
    client.set_registered_model_alias("churn", "challenger", "2")
    client.set_registered_model_alias("churn", "old", "1")
    client.delete_model_version("churn", "3")
    registry.register_prompt("rag-answer", "Answer {{ question }} from {{ context }}.")
    registry.register_prompt(
        "rag-answer", "Answer {{question}}, citing [n].", commit_message="cite", tags={"team": "search"}
    )
    registry.set_prompt_alias("rag-answer", "production", 1)
    registry.set_prompt_alias("rag-answer", "candidate", 2)
    client.register_prompt("chat", [{"role": "user", "content": "Hi {{ name }}"}])
    yield registry
    registry.close()


@pytest.fixture(scope="module")
def view(registry: Registry) -> Iterator[RegistryView]:
    opened = open_view(registry.tracking_uri)
    assert opened is not None
    yield opened
    opened.close()


def test_models_and_their_versions_read_as_mlflow_reads_them(registry: Registry, view: RegistryView) -> None:
    assert view.models() == registry.models() == ["churn", "credit-risk"]
    for name in registry.models():
        assert view.versions(name) == registry.versions(name)
    assert [v.aliases for v in view.versions("churn")] == [("old",), ("challenger", "champion")]


def test_prompts_and_their_versions_read_as_mlflow_reads_them(registry: Registry, view: RegistryView) -> None:
    assert view.prompts() == registry.prompts() == ["chat", "rag-answer"]
    assert view.prompt_versions("rag-answer") == registry.prompt_versions("rag-answer")
    for ref in ("production", "candidate", 1, "2"):
        assert view.load_prompt("rag-answer", ref) == registry.load_prompt("rag-answer", ref)
    assert view.load_prompt("rag-answer", 2).tags == {"team": "search"}


@pytest.mark.parametrize(
    ("read", "error"),
    [
        (lambda r: r.versions("nope"), NotFoundError),
        (lambda r: r.versions("rag-answer"), NotFoundError),  # a prompt is no model
        (lambda r: r.prompt_versions("churn"), NotFoundError),
        (lambda r: r.load_prompt("rag-answer", "staging"), NotFoundError),
        (lambda r: r.load_prompt("rag-answer", 9), NotFoundError),
        (lambda r: r.load_prompt("nope", 1), NotFoundError),
        (lambda r: r.load_prompt("nope", "production"), NotFoundError),
        (lambda r: r.load_prompt("rag-answer", "0"), InvalidInputError),
        (lambda r: r.prompt_versions("chat"), InvalidInputError),
    ],
)
def test_refusals_match(registry: Registry, view: RegistryView, read: object, error: type[Exception]) -> None:
    messages = []
    for reader in (registry, view):
        with pytest.raises(error) as raised:
            read(reader)  # type: ignore[operator]
        messages.append(raised.value.message)  # type: ignore[attr-defined]
    # The part opsloop words (what was asked for) is the same; MLflow's wording after it may differ.
    assert messages[0].split(": ")[0] == messages[1].split(": ")[0], messages


def test_no_view_where_mlflow_has_not_set_the_store_up(tmp_path: Path) -> None:
    assert open_view(f"sqlite:///{tmp_path / 'missing.db'}") is None
    (tmp_path / "empty.db").touch()
    assert open_view(f"sqlite:///{tmp_path / 'empty.db'}") is None
    assert open_view(f"file://{tmp_path}") is None
