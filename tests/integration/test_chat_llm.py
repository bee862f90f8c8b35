"""The LLM planner through a real gateway route: a llama.cpp server on loopback that calls tools.

SmolLM2 picks the workflow by a function call (grammar-constrained by llama.cpp's
``chatml-function-calling``) and, being small, proposes wrong names; the planner keeps only
names the catalog knows and reads the rest from the request. The call is metered in the ledger
under the caller's key and refused by the caller's budget like any gateway call.

Every test runs twice: with the route's backend called by opsloop's own client (``native``) and
by LangChain's ``ChatOpenAI`` (``client: langchain``), against the same server.
"""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from opsloop.auth import Role
from opsloop.settings import load_settings
from serving.app import create_app
from serving.platform import Platform
from workflows.demo import train_demo

MODEL = "credit-risk"


@pytest.fixture(scope="module", params=["native", "langchain"])
def app(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, llama_tools_url: str
) -> FastAPI:
    planner = {
        "name": "llama-tools",
        "kind": "openai",
        "client": request.param,
        "base_url": llama_tools_url,
        "model": "smollm2",
        "cost_per_token": 1e-6,
        "max_retries": 0,
        "timeout_s": 120,
    }
    settings = load_settings(
        home=tmp_path_factory.mktemp(f"chat-llm-{request.param}") / "home",
        bootstrap_docs=False,
        drift_check_seconds=0,
        chat_planner="llm",
        chat_planner_route="planner",
        budget_cache_seconds=0,
        llm_routes={
            "smollm2": [{"name": "local", "kind": "llamacpp"}],
            "planner": {"backends": [planner], "queue_timeout_s": 120},
        },
    )
    return create_app(settings)


def _key(platform: Platform, role: Role, tenant: str) -> tuple[str, dict[str, str]]:
    new = platform.keys.create(tenant, role, actor="test")
    return new.info.id, {"Authorization": f"Bearer {new.secret.get_secret_value()}"}


def test_the_model_picks_the_workflow_and_its_call_is_metered(client: TestClient, platform: Platform) -> None:
    version = train_demo(platform.registry, rows=500, alias=None).version
    key_id, headers = _key(platform, Role.OPERATOR, "default")
    body = client.post(
        "/chat", json={"message": f"promote credit-risk version {version}"}, headers=headers
    ).json()
    assert body["status"] == "pending_approval", body
    assert body["plan"]["workflow"] == "promote"
    assert body["pending"]["args"] == {"model": MODEL, "version": version}
    calls = [c for c in platform.ledger.calls(tenant="default") if c.route == "planner"]
    assert len(calls) == 1
    assert calls[0].key_id == key_id
    assert calls[0].prompt_tokens > 0
    assert calls[0].cost_usd > 0


def test_a_spent_budget_refuses_the_planner_call(client: TestClient, platform: Platform) -> None:
    _, admin = _key(platform, Role.ADMIN, "default")
    _, headers = _key(platform, Role.OPERATOR, "tight")
    budget = {"tenant": "tight", "kind": "daily_tokens", "limit": 1}
    assert client.put("/admin/budgets", json=budget, headers=admin).status_code == 200
    first = client.post("/chat", json={"message": "status of credit-risk"}, headers=headers)
    refused = client.post("/chat", json={"message": "status of credit-risk"}, headers=headers)
    assert 429 in (first.status_code, refused.status_code), (first.text, refused.text)


def test_the_planner_route_is_called_by_the_configured_client(platform: Platform) -> None:
    (spec,) = platform.settings.llm_routes["planner"].backends
    backend = platform.gateway.router._backends[spec.name].client
    expected = {"native": "OpenAICompatClient", "langchain": "LangChainClient"}[spec.client]
    assert type(backend).__name__ == expected
