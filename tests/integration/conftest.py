"""Fixtures shared by integration tests: real servers on loopback, and a module's running app.

A module that defines an ``app`` fixture (module-scoped) gets ``client`` (the app started and
ready), ``platform`` and an ``operator`` key's headers from here, unless it defines its own.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from opsloop.auth import Role
from serving.platform import Platform
from tests.integration import twins
from tests.integration.llama_server import llama_server
from tests.integration.ready import wait_ready


@pytest.fixture(scope="session")
def llama_server_url() -> Iterator[str]:
    """API root of a llama.cpp OpenAI-compatible server with SmolLM2, one per session."""
    with llama_server() as url:
        yield url


@pytest.fixture(scope="session")
def llama_tools_url() -> Iterator[str]:
    """API root of a llama.cpp server that answers with tool calls (``chatml-function-calling``)."""
    with llama_server(chat_format="chatml-function-calling") as url:
        yield url


@pytest.fixture(scope="module")
def client(app: FastAPI) -> Iterator[TestClient]:
    """The module's app, started and ready."""
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(client)
        yield client


@pytest.fixture(scope="module")
def platform(app: FastAPI, client: TestClient) -> Platform:
    """The started app's platform."""
    platform: Platform = app.state.platform
    return platform


@pytest.fixture(scope="module")
def operator(platform: Platform) -> dict[str, str]:
    """Headers of an operator key of tenant ``default``."""
    key = platform.keys.create("default", Role.OPERATOR, actor="test")
    return {"Authorization": f"Bearer {key.secret.get_secret_value()}"}


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[twins.MlflowServer]:
    """An ``mlflow server`` on a fresh PostgreSQL database, artifacts proxied; one per session."""
    with twins.mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as server:
        yield server
