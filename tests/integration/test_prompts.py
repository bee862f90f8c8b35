"""``workflows.prompts`` and ``Registry.prompt_versions`` on a real MLflow sqlite store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from opsloop.audit import AuditFilter, AuditLog
from opsloop.auth import Principal, Role
from opsloop.db import Database
from opsloop.errors import ForbiddenError, InvalidInputError, NotFoundError
from opsloop.registry import Registry
from opsloop.settings import load_settings
from workflows.prompts import register, set_alias

OPERATOR = Principal("key-op", "acme", Role.OPERATOR)


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Registry]:
    monkeypatch.chdir(tmp_path)  # a stray ./mlruns would land here, not in the repository
    settings = load_settings(home=tmp_path / "home")
    reg = Registry(settings.tracking_uri, settings.artifact_root).start()
    yield reg
    reg.close()


@pytest.fixture
def audit(tmp_path: Path) -> Iterator[AuditLog]:
    db = Database(f"sqlite:///{tmp_path / 'store.db'}").start()
    db.upgrade()
    yield AuditLog(db)
    db.close()


def _needs_x(template: str) -> None:
    if "{{x}}" not in template:
        raise InvalidInputError("needs {{x}}", field="template")


def test_register_and_alias_are_audited_and_listed(registry: Registry, audit: AuditLog) -> None:
    v1 = register(OPERATOR, registry, audit, "greet", "Hi {{x}}", message="first")
    v2 = register(OPERATOR, registry, audit, "greet", "Hello {{x}} {{y}}", check=_needs_x)
    assert (v1.version, v2.version, v2.variables) == (1, 2, ("x", "y"))

    first = set_alias(OPERATOR, registry, audit, "greet", "candidate", 2)
    moved = set_alias(OPERATOR, registry, audit, "greet", "candidate", 1)
    assert (first.before, first.after, moved.before, moved.after) == (None, 2, 2, 1)

    versions = registry.prompt_versions("greet")
    assert [(v.version, v.aliases, v.commit_message) for v in versions] == [
        (1, ("candidate",), "first"),
        (2, (), None),
    ]
    entries = list(reversed(audit.query(AuditFilter(target="prompt:greet"))))
    assert [(e.action, e.actor, e.tenant) for e in entries] == [
        ("prompt.register", "key-op", "acme"),
        ("prompt.register", "key-op", "acme"),
        ("prompt.alias", "key-op", "acme"),
        ("prompt.alias", "key-op", "acme"),
    ]
    assert entries[1].after == {"version": 2, "message": None, "variables": ["x", "y"]}
    assert (entries[3].before, entries[3].after) == (
        {"alias": "candidate", "version": 2},
        {"alias": "candidate", "version": 1},
    )


def test_refusals_change_nothing(registry: Registry, audit: AuditLog) -> None:
    register(OPERATOR, registry, audit, "greet", "Hi {{x}}")
    viewer = Principal("key-view", "acme", Role.USER)
    with pytest.raises(ForbiddenError):
        register(viewer, registry, audit, "greet", "Hi {{x}} again")
    with pytest.raises(ForbiddenError):
        set_alias(viewer, registry, audit, "greet", "production", 1)
    with pytest.raises(InvalidInputError, match="needs"):
        register(OPERATOR, registry, audit, "greet", "no variable", check=_needs_x)
    with pytest.raises(InvalidInputError, match="empty"):
        register(OPERATOR, registry, audit, "greet", "  \n")
    with pytest.raises(NotFoundError):
        set_alias(OPERATOR, registry, audit, "greet", "production", 7)
    with pytest.raises(InvalidInputError, match="digits"):
        set_alias(OPERATOR, registry, audit, "greet", "12", 1)

    # An alias is not pointed at an existing version the renderer would refuse either.
    register(OPERATOR, registry, audit, "other", "plain")
    with pytest.raises(InvalidInputError, match="needs"):
        set_alias(OPERATOR, registry, audit, "other", "production", 1, check=_needs_x)

    assert [v.version for v in registry.prompt_versions("greet")] == [1]
    assert [e.action for e in audit.query(AuditFilter())] == ["prompt.register", "prompt.register"]


def test_versions_of_a_missing_prompt(registry: Registry) -> None:
    with pytest.raises(NotFoundError):
        registry.prompt_versions("nope")
