"""The key and audit commands find the store where Settings would, without building Settings.

``StoreSettings.from_environment`` answers only where the environment alone decides (no config
file, no ``OPSLOOP_`` variable but the store's); each answer here is compared with what
``load_settings`` gives in the same environment, and everything else must be left to Settings.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from opsloop.errors import ConfigError
from opsloop.settings import load_settings
from serving.local import StoreSettings


@pytest.fixture(autouse=True)
def _no_opsloop_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ``OPSLOOP_`` variable of the test run (tests/conftest.py sets OPSLOOP_TRACING), cwd a tmp dir."""
    for name in list(os.environ):
        if name.upper().startswith("OPSLOOP_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "user"))


def _same_as_settings(home: Path | None) -> StoreSettings:
    quick = StoreSettings.from_environment(None, home)
    assert quick is not None
    full = load_settings(None, home=home)
    assert quick == StoreSettings(
        home=full.home,
        db_url=full.db_url,
        tracking_uri=full.tracking_uri,
        key_cache_seconds=full.key_cache_seconds,
        log_level=full.log_level,
    )
    return quick


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"OPSLOOP_HOME": "state"},
        {"OPSLOOP_HOME": "~/state"},
        {"OPSLOOP_HOME": "/var/../tmp/opsloop"},
        {"OPSLOOP_HOME": ""},
        {"opsloop_home": "lower"},  # pydantic-settings reads the names in any case
        {"OPSLOOP_DATABASE_URL": "postgresql+psycopg://opsloop:pw@db:5432/opsloop"},
        {"OPSLOOP_DATABASE_URL": ""},
        {"OPSLOOP_MLFLOW_TRACKING_URI": "http://mlflow:5000"},
        {"Opsloop_Mlflow_Tracking_Uri": "sqlite:////srv/mlflow.db"},
        {"OPSLOOP_LOG_LEVEL": "debug"},
        {"OPSLOOP_LOG_LEVEL": "warning"},
        {
            "OPSLOOP_HOME": "state",
            "OPSLOOP_DATABASE_URL": "sqlite:////srv/opsloop.db",
            "OPSLOOP_MLFLOW_TRACKING_URI": "http://mlflow:5000",
            "OPSLOOP_LOG_LEVEL": "error",
        },
    ],
)
@pytest.mark.parametrize("home", [None, Path("from-flag")])
def test_the_store_settings_are_those_of_settings(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], home: Path | None
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    quick = _same_as_settings(home)
    assert quick.home.is_absolute()


def test_the_flag_wins_over_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("OPSLOOP_HOME", "from-env")
    assert _same_as_settings(Path("from-flag")).home == tmp_path / "from-flag"


@pytest.mark.parametrize(
    "env",
    [
        {"OPSLOOP_TRACING": "false"},  # any other setting, valid or not, is Settings' to judge
        {"OPSLOOP_PORT": "abc"},
        {"OPSLOOP_KEY_CACHE_SECONDS": "0"},
        {"OPSLOOP_LOG_LEVEL": "DEBUG"},
        {"OPSLOOP_LOG_LEVEL": "verbose"},
        {"OPSLOOP_QDRANT_API_KEE": "misspelled"},
        {"OPSLOOP_CONFIG": ""},
    ],
)
def test_anything_else_in_the_environment_is_left_to_settings(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert StoreSettings.from_environment(None, None) is None


def test_invalid_store_settings_are_left_to_settings_which_names_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPSLOOP_LOG_LEVEL", "loud")
    assert StoreSettings.from_environment(None, None) is None
    with pytest.raises(ConfigError, match="OPSLOOP_LOG_LEVEL"):
        load_settings(None)


def test_a_config_file_is_left_to_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "opsloop.yaml"
    config.write_text("home: from-yaml\n")
    assert StoreSettings.from_environment(config, None) is None
    assert load_settings(config).home == tmp_path / "from-yaml"  # what the command then uses
    monkeypatch.setenv("OPSLOOP_CONFIG", str(config))
    assert StoreSettings.from_environment(None, None) is None


def test_a_variable_set_twice_in_different_cases_is_left_to_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSLOOP_HOME", "one")
    monkeypatch.setenv("opsloop_home", "two")
    assert StoreSettings.from_environment(None, None) is None
