"""What every CLI command shares: the resolved settings, consoles and error output."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from opsloop.errors import OpsloopError
from opsloop.registry import Registry
from opsloop.settings import Settings, load_settings
from serving.platform import Platform

__all__ = ["State", "err", "fail", "out", "when"]

out = Console()
err = Console(stderr=True)


class State:
    """What the top-level options decided, for the subcommands."""

    def __init__(self, config: Path | None, home: Path | None) -> None:
        self.config = config
        self.home = home

    def settings(self, **overrides: Any) -> Settings:
        """Settings from the options, the environment, the config file and defaults."""
        try:
            return load_settings(self.config, home=self.home, **overrides)
        except OpsloopError as exc:
            raise fail(exc) from exc

    def platform(self) -> Platform:
        """A Platform with its store open (enough for keys and audit)."""
        try:
            return Platform.build(self.settings()).start_store()
        except OpsloopError as exc:
            raise fail(exc) from exc

    def registry(self) -> tuple[Platform, Registry]:
        """A Platform and its started MLflow registry."""
        platform = self.platform()
        try:
            return platform, platform.registry.start()
        except OpsloopError as exc:
            raise fail(exc) from exc


def fail(exc: OpsloopError) -> typer.Exit:
    """Print ``exc`` for a person and return the exit to raise."""
    err.print(f"[red]error:[/red] {exc.message}", highlight=False)
    return typer.Exit(code=1)


def when(at: datetime) -> str:
    """A timestamp as the CLI prints it."""
    return at.strftime("%Y-%m-%d %H:%M:%S")
