"""The ``rag-answer`` prompt in a real MLflow prompt registry on a temporary sqlite store."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from opsloop.errors import NotFoundError
from opsloop.registry import Registry
from opsloop.settings import load_settings
from rag.answer import (
    ANSWER_PROMPT,
    DEFAULT_PROMPT,
    ensure_answer_prompt,
    load_answer_prompt,
    render_prompt,
)


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Registry]:
    monkeypatch.chdir(tmp_path)  # a stray ./mlruns would land here, not in the repository
    settings = load_settings(home=tmp_path / "home")
    reg = Registry(settings.tracking_uri, settings.artifact_root).start()
    yield reg
    reg.close()


def test_ensure_registers_version_1_with_alias_production(registry: Registry) -> None:
    prompt = ensure_answer_prompt(registry)
    assert (prompt.name, prompt.version, prompt.aliases) == (ANSWER_PROMPT, 1, ("production",))
    assert prompt.template == DEFAULT_PROMPT
    assert prompt.variables == ("context", "question")
    assert registry.prompts() == [ANSWER_PROMPT]


def test_ensure_is_idempotent(registry: Registry) -> None:
    first = ensure_answer_prompt(registry)
    second = ensure_answer_prompt(registry)
    assert (second.version, second.template, second.aliases) == (1, first.template, ("production",))
    with pytest.raises(NotFoundError):
        registry.load_prompt(ANSWER_PROMPT, 2)


def test_load_by_alias_and_a_moved_alias(registry: Registry) -> None:
    ensure_answer_prompt(registry)
    assert load_answer_prompt(registry).version == 1
    changed = DEFAULT_PROMPT.replace("Answer:", "Answer in one sentence:")
    v2 = registry.register_prompt(ANSWER_PROMPT, changed, commit_message="shorter answers")
    assert v2.version == 2
    assert load_answer_prompt(registry).version == 1  # registering does not move the alias

    assert registry.set_prompt_alias(ANSWER_PROMPT, "production", 2) == 1
    loaded = load_answer_prompt(registry)
    assert (loaded.version, loaded.template) == (2, changed)
    assert render_prompt(loaded.template, context="[1] T (a.md)\nx", question="q").endswith(
        "Question: q\nAnswer in one sentence:"
    )
    assert load_answer_prompt(registry, 1).template == DEFAULT_PROMPT
    assert load_answer_prompt(registry, "1").version == 1
    # ensure leaves an operator's choice alone.
    assert ensure_answer_prompt(registry).version == 2


def test_ensure_finishes_what_a_racing_process_started(registry: Registry) -> None:
    # Another process registered the default prompt but has not set the alias yet.
    registry.register_prompt(ANSWER_PROMPT, DEFAULT_PROMPT, tags={"opsloop.default": "true"})
    prompt = ensure_answer_prompt(registry)
    assert (prompt.version, prompt.aliases) == (1, ("production",))
    with pytest.raises(NotFoundError):
        registry.load_prompt(ANSWER_PROMPT, 2)


def test_ensure_does_not_alias_a_prompt_it_did_not_register(registry: Registry) -> None:
    registry.register_prompt(ANSWER_PROMPT, "Own prompt: {{context}} {{question}}")
    with pytest.raises(NotFoundError, match="no alias 'production'"):
        ensure_answer_prompt(registry)
    with pytest.raises(NotFoundError):
        load_answer_prompt(registry)


def test_concurrent_ensure_agrees_on_one_version(tmp_path: Path, registry: Registry) -> None:
    settings = load_settings(home=tmp_path / "home")
    others = [Registry(settings.tracking_uri, settings.artifact_root).start() for _ in range(3)]
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(ensure_answer_prompt, others))
    assert {(p.version, p.template) for p in results} == {(1, DEFAULT_PROMPT)}
    assert load_answer_prompt(registry).version == 1
