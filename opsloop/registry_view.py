"""A read-only view of MLflow's registry tables, for the commands that only list and show.

Importing MLflow costs a second of CPU and opening its SQL store half a second more: most of
what ``opsloop models list`` or ``opsloop prompts show`` took. When the registry lives in a
SQL database (the embedded ``sqlite:///`` store, or PostgreSQL) that MLflow has already set up,
those commands read MLflow's registry tables here, with SQLAlchemy, and answer with the same
dataclasses as :class:`opsloop.registry.Registry`. Everything else (writes, loading models,
other registry URIs, a store MLflow has not created yet) goes through ``Registry``.

The tables are MLflow's (``mlflow/store/model_registry/dbmodels``), at the version
``requirements.lock`` pins; tests/integration/test_registry_view.py compares every read here
with MLflow's own, so an upgrade that changes them fails there first.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from opsloop.errors import InvalidInputError, NotFoundError
from opsloop.registry import ModelVersionInfo, PromptVersionInfo, is_version, version_number

if TYPE_CHECKING:
    from sqlalchemy import Engine

__all__ = ["RegistryView", "open_view"]

# MLflow's names (mlflow.prompt.constants, mlflow.utils.workspace_utils,
# mlflow.entities.model_registry.model_version_stages).
_IS_PROMPT = "mlflow.prompt.is_prompt"
_PROMPT_TEXT = "mlflow.prompt.text"
_PROMPT_TYPE = "_mlflow_prompt_type"
# Tags MLflow keeps for itself on a prompt version; PromptVersion.tags leaves them out.
_PROMPT_INTERNAL_TAGS = frozenset(
    {_IS_PROMPT, _PROMPT_TEXT, _PROMPT_TYPE, "_mlflow_prompt_response_format", "_mlflow_prompt_model_config"}
)
_WORKSPACE = "default"
_DELETED = "Deleted_Internal"
_TABLES = ("registered_models", "registered_model_tags", "registered_model_aliases", "model_versions")


def open_view(tracking_uri: str) -> RegistryView | None:
    """A view of the registry at ``tracking_uri``; None when it is no SQL store MLflow has set up."""
    if tracking_uri.startswith("sqlite:///"):
        if not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
            return None
    elif not tracking_uri.startswith(("postgresql", "mysql")):
        return None
    from sqlalchemy import create_engine, inspect
    from sqlalchemy.exc import SQLAlchemyError

    engine = create_engine(tracking_uri)
    try:
        present = set(inspect(engine).get_table_names())
    except SQLAlchemyError:
        engine.dispose()
        return None
    if not present.issuperset(_TABLES):
        engine.dispose()
        return None
    return RegistryView(engine)


class RegistryView:
    """Registered models and prompts, read from MLflow's tables.

    Args:
        engine: An engine on MLflow's tracking and registry database.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def close(self) -> None:
        """Release the engine's connections."""
        self._engine.dispose()

    # -- models ----------------------------------------------------------------------------

    def models(self) -> list[str]:
        """The names of all registered models (prompts excluded), sorted."""
        return sorted(set(self._names()) - set(self.prompts()))

    def versions(self, name: str) -> list[ModelVersionInfo]:
        """Every version of a model, oldest first, each with its aliases.

        Raises:
            NotFoundError: No model has this name.
        """
        if name not in self._names() or name in self.prompts():
            raise NotFoundError(f"model {name!r}: Registered Model with name={name} not found", model=name)
        aliases = self._aliases(name)
        tags = self._version_tags(name)
        return [
            ModelVersionInfo(
                name=name,
                version=row.version,
                source=str(row.source),
                run_id=row.run_id or None,
                description=row.description or None,
                aliases=aliases.get(row.version, ()),
                tags=tags.get(row.version, {}),
                created_ms=row.creation_time,
            )
            for row in self._versions(name)
        ]

    # -- prompts ---------------------------------------------------------------------------

    def prompts(self) -> list[str]:
        """The names of all registered prompts, sorted."""
        return sorted(
            row.name for row in self._rows("registered_model_tags", "name", key=_IS_PROMPT, value="true")
        )

    def prompt_versions(self, name: str) -> list[PromptVersionInfo]:
        """Every version of a prompt, oldest first, each with its aliases.

        Raises:
            NotFoundError: No prompt has this name.
            InvalidInputError: A version is a chat prompt (only text prompts are supported).
        """
        self._check_prompt(name, f"prompt {name!r}")
        aliases = self._aliases(name)
        tags = self._version_tags(name)
        return [_prompt(name, row, tags.get(row.version, {}), aliases) for row in self._versions(name)]

    def load_prompt(self, name: str, alias_or_version: str | int) -> PromptVersionInfo:
        """A prompt version by alias or version number.

        Raises:
            NotFoundError: No such prompt, version or alias.
        """
        # The messages are the ones Registry gives (MLflow's after opsloop's), word for word.
        by_alias = isinstance(alias_or_version, str) and not is_version(alias_or_version)
        number = None if by_alias else version_number(alias_or_version)
        what = (
            f"prompt {name!r} alias {alias_or_version!r}" if by_alias else f"prompt {name!r} version {number}"
        )
        self._check_prompt(name, what)
        aliases = self._aliases(name)
        if by_alias:
            number = next((v for v, names in aliases.items() if alias_or_version in names), None)
            if number is None:
                message = f"{what}: Prompt alias {alias_or_version} not found."
                raise NotFoundError(message, prompt=name, alias=alias_or_version)
        rows = [row for row in self._versions(name) if row.version == number]
        if not rows:
            message = f"{what}: Prompt (name={name}, version={number}) not found"
            raise NotFoundError(message, prompt=name, version=number)
        return _prompt(name, rows[0], self._version_tags(name).get(rows[0].version, {}), aliases)

    # -- reads -----------------------------------------------------------------------------

    def _rows(self, table: str, columns: str, **equal: Any) -> list[Any]:
        """``columns`` of the rows of ``table`` in the default workspace whose columns equal ``equal``."""
        from sqlalchemy import text

        # Table and column names come from this module, never from a caller; values are bound.
        where = "".join(f" AND {column} = :{column}" for column in equal)
        statement = text(f"SELECT {columns} FROM {table} WHERE workspace = :workspace{where}")  # noqa: S608
        with self._engine.connect() as connection:
            return list(connection.execute(statement, {"workspace": _WORKSPACE, **equal}))

    def _names(self) -> list[str]:
        return [row.name for row in self._rows("registered_models", "name")]

    def _check_prompt(self, name: str, what: str) -> None:
        if name not in self.prompts():
            raise NotFoundError(f"{what}: Prompt with name={name} not found", prompt=name)

    def _versions(self, name: str) -> list[Any]:
        columns = "version, source, run_id, description, creation_time, current_stage"
        rows = self._rows("model_versions", columns, name=name)
        return sorted((row for row in rows if row.current_stage != _DELETED), key=lambda row: row.version)

    def _aliases(self, name: str) -> dict[int, tuple[str, ...]]:
        by_version: dict[int, list[str]] = {}
        for row in self._rows("registered_model_aliases", "alias, version", name=name):
            by_version.setdefault(int(row.version), []).append(row.alias)
        return {version: tuple(sorted(names)) for version, names in by_version.items()}

    def _version_tags(self, name: str) -> dict[int, dict[str, str]]:
        tags: dict[int, dict[str, str]] = {}
        for row in self._rows("model_version_tags", "version, key, value", name=name):
            tags.setdefault(int(row.version), {})[row.key] = row.value
        return tags


def _prompt(
    name: str, row: Any, tags: dict[str, str], aliases: dict[int, tuple[str, ...]]
) -> PromptVersionInfo:
    if tags.get(_PROMPT_TYPE) == "chat":
        raise InvalidInputError(
            f"prompt {name!r} version {row.version} is a chat prompt; only text prompts are supported",
            prompt=name,
            version=row.version,
        )
    return PromptVersionInfo(
        name=name,
        version=int(row.version),
        template=tags.get(_PROMPT_TEXT, ""),
        commit_message=row.description or None,
        aliases=aliases.get(int(row.version), ()),
        tags={key: value for key, value in tags.items() if key not in _PROMPT_INTERNAL_TAGS},
    )
