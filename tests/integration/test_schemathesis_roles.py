"""Bad input never gives a 500: schemathesis sweeps every route with a key of each role.

Requests are generated from the app's own OpenAPI schema and sent in-process (ASGI) to one
real app (demo model, Qdrant Edge, SQLite, MLflow on SQLite), anonymous and with a valid key
of every role, so the sweep reaches the code behind authentication, not only the 401s. The
only check is schemathesis' ``not_a_server_error``: the answer to any input is never a 5xx
that says the server broke (a 503 for a backend that is not there is a real answer).

Examples and time are bounded (``max_examples`` per route and role, no shrinking): this is a
smoke sweep that runs in CI, not an exhaustive fuzz.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error

from opsloop.auth import Role
from opsloop.settings import load_settings
from serving.app import create_app
from tests.integration.ready import wait_ready

MAX_EXAMPLES = 4
ROLES = [None, Role.VIEWER, Role.USER, Role.OPERATOR, Role.ADMIN]


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FastAPI, dict[Role, str]]]:
    home = tmp_path_factory.mktemp("fuzz") / "home"
    app = create_app(load_settings(home=home, bootstrap_docs=False, drift_check_seconds=0))
    # The outer client runs the app's lifespan (the platform starts and stops once); the
    # requests schemathesis sends in-process reuse the started app.
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(client)
        keys = {
            role: app.state.platform.keys.create("fuzz", role, actor="test").secret.get_secret_value()
            for role in Role
        }
        yield app, keys


def test_no_input_gives_a_server_error(started: tuple[FastAPI, dict[Role, str]]) -> None:
    """Each generated request of each route is sent anonymously and with a key of every role.

    The operations are walked by hand rather than through schemathesis' pytest plugin, whose
    lazy fixture loader fails under pytest 9 ('Function' object has no attribute '_nodeid').
    """
    app, keys = started
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures: list[str] = []

    def sweep(case: Any) -> None:
        if case.path == "/v1/chat/completions" and isinstance(case.body, dict):
            # Generated max_tokens run to millions; the model's speed is not what this sweep tests.
            case.body["max_tokens"] = 4
            case.body["stream"] = False
        for role in ROLES:
            headers = {"Authorization": f"Bearer {keys[role]}"} if role is not None else {}
            response = case.call(headers=headers)
            case.validate_response(response, checks=[not_a_server_error])

    for result in schema.get_all_operations():
        operation = result.ok()
        run = settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,  # a first request may load a model; max_examples is the bound
            phases=[Phase.explicit, Phase.generate],  # no shrinking: the first failure is reported
            suppress_health_check=list(HealthCheck),
            database=None,
        )(given(case=operation.as_strategy())(sweep))
        try:
            run()
        except Exception as exc:  # collect every route's failure, then fail once
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)
