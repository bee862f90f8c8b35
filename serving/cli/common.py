"""What every CLI command shares: the resolved settings, consoles and error output.

Every command module is imported for ``opsloop --help``, so at their top they import only
typer, rich and ``opsloop.errors``; settings (pydantic), the store (SQLAlchemy) and the
platform (MLflow, SciPy, ...) load in the methods below, when a command first asks. Commands
that need only the relational store or the registry open just that (:meth:`State.store`,
:meth:`State.store_and_registry`), not a whole Platform; commands that only read the registry
ask :meth:`State.registry_reader`, which skips importing MLflow where it can. The key and audit
commands, which read nothing of the settings but where the store is, ask
:meth:`State.quick_store`, which skips building the settings where it can.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from opsloop.errors import OpsloopError

if TYPE_CHECKING:
    from opsloop.registry import Registry
    from opsloop.registry_view import RegistryView
    from opsloop.settings import Settings
    from serving.local import SettingsT, Store, StoreSettings
    from serving.logs import LogLevel
    from serving.platform import Platform

__all__ = ["State", "err", "fail", "out", "when"]

out = Console()
err = Console(stderr=True)


class State:
    """What the top-level options decided, for the subcommands."""

    def __init__(self, config: Path | None, home: Path | None) -> None:
        self.config = config
        self.home = home
        self._opened: list[Store[Any] | Platform | RegistryView] = []

    def close(self) -> None:
        """Close what the command opened, newest first; the app calls it when the command ends."""
        while self._opened:
            self._opened.pop().close()

    def settings(self, **overrides: Any) -> Settings:
        """Settings from the options, the environment, the config file and defaults.

        Also where the command's logging starts (``serving.logs``): opsloop's warnings on stderr,
        the libraries' bars and chatter off unless ``log_level`` is debug, before a command
        imports them.
        """
        from opsloop.settings import load_settings

        try:
            settings = load_settings(self.config, home=self.home, **overrides)
        except OpsloopError as exc:
            raise fail(exc) from exc
        _start_logging(settings.log_level)
        return settings

    def store(self) -> Store[Settings]:
        """The migrated relational store: keys, budgets, the audit log, the ledger."""
        return self._open(self.settings())

    def quick_store(self) -> Store[Settings] | Store[StoreSettings]:
        """The store, for commands that use no other setting: :meth:`store`, built quicker where it can be.

        Where the environment alone decides where the store is (``StoreSettings.from_environment``),
        it is opened from that, without pydantic-settings; otherwise from the whole settings.
        """
        from serving.local import StoreSettings

        settings = StoreSettings.from_environment(self.config, self.home)
        if settings is None:
            return self.store()
        _start_logging(settings.log_level)
        return self._open(settings)

    def _open(self, settings: SettingsT) -> Store[SettingsT]:
        from serving.local import Store

        try:
            store = Store.open(settings)
        except OpsloopError as exc:
            raise fail(exc) from exc
        self._opened.append(store)
        return store

    def store_and_registry(self) -> tuple[Store, Registry]:
        """The store (for the audit log) and the started MLflow registry, without a Platform."""
        from opsloop.registry import Registry
        from serving.logs import quiet_mlflow

        store = self.store()
        settings = store.settings
        try:
            registry = Registry(settings.tracking_uri, settings.artifact_root).start()
        except OpsloopError as exc:
            raise fail(exc) from exc
        quiet_mlflow(settings.log_level)  # MLflow is imported now (as Platform.start_registry does)
        return store, registry

    def registry_reader(self) -> Registry | RegistryView:
        """What reads models and prompts, for commands that change nothing.

        MLflow's tables directly where its store is a SQL database it has set up (no MLflow
        import: about a second sooner), else the started registry.
        """
        from opsloop.registry_view import open_view

        view = open_view(self.settings().tracking_uri)
        if view is None:
            return self.store_and_registry()[1]
        self._opened.append(view)
        return view

    def platform(self) -> Platform:
        """A Platform with its store open, for commands that use more than the store and registry."""
        settings = self.settings()  # before the import: it quiets the libraries the platform loads
        from serving.platform import Platform

        try:
            platform = Platform.build(settings).start_store()
        except OpsloopError as exc:
            raise fail(exc) from exc
        self._opened.append(platform)  # closing it twice is harmless: some commands close it first
        return platform

    def registry(self) -> tuple[Platform, Registry]:
        """A Platform and its started MLflow registry."""
        platform = self.platform()
        try:
            return platform, platform.start_registry()
        except OpsloopError as exc:
            raise fail(exc) from exc


def _start_logging(level: LogLevel) -> None:
    from serving.logs import cli_logging, quiet_libraries

    quiet_libraries(level)
    cli_logging(level)


def fail(exc: OpsloopError) -> typer.Exit:
    """Print ``exc`` for a person and return the exit to raise."""
    err.print(f"[red]error:[/red] {exc.message}", highlight=False)
    return typer.Exit(code=1)


def when(at: datetime) -> str:
    """A timestamp as the CLI prints it."""
    return at.strftime("%Y-%m-%d %H:%M:%S")
