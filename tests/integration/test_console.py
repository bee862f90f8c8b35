"""The web console through HTTP as a browser sends it: login, cookies, CSRF, roles and tenants, pages.

A real app (SQLite, MLflow, the demo credit-risk model as champion). The browser-driven walk
is tests/e2e/test_console_browser.py; here each rule is checked on its own, with the exact
requests a forged form or another site's page would send.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from opsloop.auth import Role
from opsloop.settings import load_settings
from serving.app import create_app
from serving.platform import Platform, cli_principal
from tests.integration.challengers import save_wrapper
from workflows.registration import register

PAGES = ("chat", "models", "experiments", "drift", "costs", "evals", "audit")


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    home = tmp_path_factory.mktemp("console") / "home"
    return create_app(load_settings(home=home, drift_check_seconds=0, experiment_decide_seconds=0))


@pytest.fixture(scope="module")
def second_version(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> int:
    """A version 2 of credit-risk (a wrapper of the champion), registered and not champion."""
    folder = save_wrapper("models:/credit-risk/1", tmp_path_factory.mktemp("v2") / "wrapper")
    return int(
        register(
            cli_principal(), platform.registry, platform.audit, "credit-risk", str(folder)
        ).version.version
    )


def _key(platform: Platform, role: Role, tenant: str = "default") -> str:
    return platform.keys.create(tenant, role, actor="test").secret.get_secret_value()


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


class Browser:
    """A browser of its own (its own cookies) on the module's started app."""

    def __init__(self, client: TestClient) -> None:
        self._client = client
        self._empty = type(client.cookies)
        self._jar = self._empty()

    def request(self, method: str, url: str, **kwargs: Any) -> Any:
        # One client for every browser: the app's event loop (and the chat checkpoints on it) is
        # the client's, so each request runs with this browser's cookies swapped in.
        self._client.cookies = self._jar
        try:
            return self._client.request(method, url, **kwargs)
        finally:
            self._jar = self._client.cookies
            self._client.cookies = self._empty()

    def get(self, url: str, **kwargs: Any) -> Any:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> Any:
        return self.request("POST", url, **kwargs)


def _browser(client: TestClient) -> Browser:
    return Browser(client)


def _login(client: TestClient, key: str) -> Browser:
    browser = _browser(client)
    form = browser.get("/ui/login")
    answer = browser.post(
        "/ui/login", data={"key": key, "csrf": _csrf(form.text), "next": "/ui/models"}, follow_redirects=False
    )
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == "/ui/models"
    return browser


def test_a_page_without_a_session_goes_to_the_login_form_and_comes_back_after(
    client: TestClient, platform: Platform
) -> None:
    browser = _browser(client)
    answer = browser.get("/ui/costs?since=24h", follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/login?next=/ui/costs%3Fsince%3D24h"
    form = browser.get(answer.headers["location"])
    assert 'name="next" value="/ui/costs?since=24h"' in form.text
    key = _key(platform, Role.OPERATOR)
    done = browser.post(
        "/ui/login",
        data={"key": key, "csrf": _csrf(form.text), "next": "/ui/costs?since=24h"},
        follow_redirects=False,
    )
    assert done.headers["location"] == "/ui/costs?since=24h"


def test_the_session_cookie_is_http_only_same_site_strict_and_scoped_to_the_console(
    client: TestClient, platform: Platform
) -> None:
    browser = _browser(client)
    form = browser.get("/ui/login")
    answer = browser.post(
        "/ui/login",
        data={"key": _key(platform, Role.VIEWER), "csrf": _csrf(form.text)},
        follow_redirects=False,
    )
    cookie = next(c for c in answer.headers.get_list("set-cookie") if c.startswith("opsloop_console="))
    attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/ui"} <= attributes


def test_a_wrong_key_or_a_forged_login_form_is_refused(client: TestClient, platform: Platform) -> None:
    browser = _browser(client)
    form = browser.get("/ui/login")
    wrong = browser.post("/ui/login", data={"key": "olk_nope_nope", "csrf": _csrf(form.text)})
    assert wrong.status_code == 401
    assert "invalid or revoked API key" in wrong.text
    forged = _browser(client).post("/ui/login", data={"key": _key(platform, Role.ADMIN), "csrf": "x" * 43})
    assert forged.status_code == 403
    assert "opsloop_console=" not in forged.headers.get("set-cookie", "")


def test_login_never_redirects_to_another_host(client: TestClient, platform: Platform) -> None:
    for target in ("https://evil.example/ui", "//evil.example/ui", "/\\evil.example", "/elsewhere"):
        browser = _browser(client)
        form = browser.get("/ui/login")
        answer = browser.post(
            "/ui/login",
            data={"key": _key(platform, Role.VIEWER), "csrf": _csrf(form.text), "next": target},
            follow_redirects=False,
        )
        assert answer.headers["location"] == "/ui/", target


def test_every_page_renders_for_an_admin_and_references_no_other_host(
    client: TestClient, platform: Platform
) -> None:
    browser = _login(client, _key(platform, Role.ADMIN))
    for page in PAGES:
        answer = browser.get(f"/ui/{page}")
        assert answer.status_code == 200, (page, answer.text[:500])
        assert answer.headers["content-security-policy"].startswith("default-src 'self'")
        for url in re.findall(r'(?:src|href|action)="([^"]*)"', answer.text):
            assert not urlsplit(url).netloc, (page, url)
    for asset in ("console.css", "console.js"):
        assert browser.get(f"/ui/static/{asset}").status_code == 200


def test_pages_and_navigation_follow_the_role(client: TestClient, platform: Platform) -> None:
    viewer = _login(client, _key(platform, Role.VIEWER))
    chat = viewer.get("/ui/chat")
    assert chat.status_code == 200
    assert viewer.get("/ui/chat?thread=../x").status_code == 400  # a thread id is a token, not a path
    assert 'href="/ui/audit"' not in chat.text and 'href="/ui/costs"' not in chat.text
    for page, status in {
        "models": 200,
        "experiments": 200,
        "drift": 403,
        "costs": 403,
        "evals": 403,
        "audit": 403,
    }.items():
        assert viewer.get(f"/ui/{page}").status_code == status, page
    operator = _login(client, _key(platform, Role.OPERATOR))
    assert operator.get("/ui/costs").status_code == 200
    assert operator.get("/ui/audit").status_code == 403
    assert "needs role &#39;admin&#39;" in operator.get("/ui/audit").text


def test_an_action_without_the_session_token_or_from_another_site_is_refused(
    client: TestClient, platform: Platform
) -> None:
    browser = _login(client, _key(platform, Role.OPERATOR))
    token = _csrf(browser.get("/ui/chat").text)
    missing = browser.post("/ui/chat", data={"message": "how is credit-risk doing?"})
    assert missing.status_code == 400
    wrong = browser.post("/ui/chat", data={"message": "how is credit-risk doing?", "csrf": "0" * 64})
    assert wrong.status_code == 403
    cross = browser.post(
        "/ui/chat",
        data={"message": "how is credit-risk doing?", "csrf": token},
        headers={"Origin": "https://evil.example"},
    )
    assert cross.status_code == 403
    # another session's token is no good either: it is bound to the key
    other = _login(client, _key(platform, Role.OPERATOR))
    stolen = other.post("/ui/chat", data={"message": "how is credit-risk doing?", "csrf": token})
    assert stolen.status_code == 403


def test_a_revoked_key_ends_its_session_at_once(client: TestClient, platform: Platform) -> None:
    created = platform.keys.create("default", Role.OPERATOR, actor="test")
    browser = _login(client, created.secret.get_secret_value())
    assert browser.get("/ui/models").status_code == 200
    platform.keys.revoke(created.info.id, actor="test")
    answer = browser.get("/ui/models", follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"].startswith("/ui/login")


def test_logout_forgets_the_session(client: TestClient, platform: Platform) -> None:
    browser = _login(client, _key(platform, Role.VIEWER))
    token = _csrf(browser.get("/ui/chat").text)
    out = browser.post("/ui/logout", data={"csrf": token}, follow_redirects=False)
    assert out.status_code == 303
    assert browser.get("/ui/chat", follow_redirects=False).status_code == 303


def test_a_viewer_cannot_approve_even_with_a_valid_form_and_another_tenant_cannot_see_the_thread(
    client: TestClient, platform: Platform, second_version: int
) -> None:
    operator = _login(client, _key(platform, Role.OPERATOR))
    token = _csrf(operator.get("/ui/chat").text)
    message = f"promote credit-risk version {second_version}"
    asked = operator.post("/ui/chat", data={"message": message, "csrf": token})
    assert asked.status_code == 200, asked.text
    thread = re.search(r"thread=([0-9a-f]+)", str(asked.url))
    assert thread, asked.url
    thread_id = thread.group(1)
    assert "Waiting for approval" in asked.text and ">Approve</button>" in asked.text

    viewer = _login(client, _key(platform, Role.VIEWER))
    seen = viewer.get(f"/ui/chat?thread={thread_id}")
    assert "Waiting for approval" in seen.text
    assert ">Approve</button>" not in seen.text
    forged = viewer.post(
        f"/ui/chat/{thread_id}/decision", data={"decision": "approve", "csrf": _csrf(seen.text)}
    )
    assert forged.status_code == 403
    assert "needs role &#39;operator&#39;" in forged.text
    assert "Waiting for approval" in operator.get(f"/ui/chat?thread={thread_id}").text

    stranger = _login(client, _key(platform, Role.ADMIN, tenant="bravo"))
    listed = stranger.get("/ui/chat")
    assert thread_id not in listed.text
    assert "no chat thread" in stranger.get(f"/ui/chat?thread={thread_id}").text
    refused = stranger.post(
        f"/ui/chat/{thread_id}/decision", data={"decision": "approve", "csrf": _csrf(listed.text)}
    )
    assert refused.status_code == 404

    denied = operator.post(
        f"/ui/chat/{thread_id}/decision", data={"decision": "deny", "comment": "not now", "csrf": token}
    )
    assert denied.status_code == 200
    assert "denied by" in denied.text and "not now" in denied.text


def test_an_admins_action_shows_its_buttons_to_admins_only(client: TestClient, platform: Platform) -> None:
    _key(platform, Role.USER, tenant="bravo")  # a tenant the admin's catalog knows
    admin = _login(client, _key(platform, Role.ADMIN))
    token = _csrf(admin.get("/ui/chat").text)
    asked = admin.post("/ui/chat", data={"message": "cap bravo at 5 dollars a day", "csrf": token})
    thread = re.search(r"thread=([0-9a-f]+)", str(asked.url))
    assert thread, asked.text
    assert "Waiting for approval: <code>set_budget</code>" in asked.text and ">Approve</button>" in asked.text
    operator = _login(client, _key(platform, Role.OPERATOR))
    seen = operator.get(f"/ui/chat?thread={thread.group(1)}")
    assert ">Approve</button>" not in seen.text and "An admin decides" in seen.text
    forged = operator.post(
        f"/ui/chat/{thread.group(1)}/decision", data={"decision": "approve", "csrf": _csrf(seen.text)}
    )
    assert forged.status_code == 403
    assert platform.budgets.list(tenant="bravo") == []


def test_an_experiment_page_charts_each_variants_traffic_and_shows_its_decision(
    client: TestClient, platform: Platform, second_version: int
) -> None:
    from workflows.experiments.service import ExperimentPlan

    operator_key = _key(platform, Role.OPERATOR)
    operator = platform.keys.authenticate(operator_key)
    service = platform.experiments.service
    service.create(operator, ExperimentPlan("console-ab", "ab", "model", "credit-risk", str(second_version)))
    platform.experiments.router.refresh()  # route to it now, not at the next poll
    try:
        user = {"Authorization": f"Bearer {_key(platform, Role.USER)}"}
        example = client.get("/models/credit-risk", headers=user).json()["example"]
        for unit in range(40):
            answer = client.post(
                "/predict/credit-risk", json=example, headers={**user, "X-Opsloop-Unit": f"u{unit}"}
            )
            assert answer.status_code == 200, answer.text
        browser = _login(client, operator_key)
        traffic = re.search(r"\((\d+) requests\)", browser.get("/ui/models").text)
        assert traffic and int(traffic.group(1)) >= 40  # the model's live rate counts them
        listed = browser.get("/ui/experiments")
        assert 'href="/ui/experiments/console-ab"' in listed.text and "running" in listed.text
        page = browser.get("/ui/experiments/console-ab")
        assert page.status_code == 200, page.text
        assert page.text.count('<svg class="chart"') == 3  # requests, latency and errors over time
        assert "champion" in page.text and "challenger" in page.text
        service.stop(operator, "console-ab")
        ended = browser.get("/ui/experiments/console-ab").text
        assert "stopped" in ended and "No decision yet" not in ended
        # another tenant does not see it
        stranger = _login(client, _key(platform, Role.OPERATOR, tenant="bravo"))
        assert "console-ab" not in stranger.get("/ui/experiments").text
        assert stranger.get("/ui/experiments/console-ab").status_code == 404
    finally:
        if service.store.get("console-ab").status == "running":
            service.stop(operator, "console-ab")


def test_the_evals_page_shows_runs_with_intervals_and_a_trend_per_data_set(
    client: TestClient, platform: Platform
) -> None:
    operator_key = _key(platform, Role.OPERATOR)
    guide = b"# Rotating keys\n\nCreate a new key, move clients to it, then revoke the old key.\n"
    platform.rag.upload(platform.keys.authenticate(operator_key), "evalbook", [("keys.md", guide)])
    item = {
        "question": "How do I rotate a key?",
        "reference": "Create a new key.",
        "reference_sources": ["keys.md"],
    }
    body = {
        "dataset": {"name": "keys", "items": [item]},
        "collection": "evalbook",
        "generate": False,
        "resume": "never",
    }
    headers = {"Authorization": f"Bearer {operator_key}"}
    runs = [client.post("/admin/evals/runs", json=body, headers=headers) for _ in range(2)]
    assert all(r.status_code == 200 for r in runs), runs[0].text
    page = _login(client, operator_key).get("/ui/evals")
    assert page.status_code == 200
    for run in runs:
        assert run.json()["run_id"][:12] in page.text
    assert "hit_rate" in page.text and '<svg class="chart"' in page.text
    stranger = _login(client, _key(platform, Role.OPERATOR, tenant="bravo")).get("/ui/evals")
    assert runs[0].json()["run_id"][:12] not in stranger.text


def test_the_costs_page_shows_a_gateway_call_to_its_tenant_only(
    client: TestClient, platform: Platform
) -> None:
    user = {"Authorization": f"Bearer {_key(platform, Role.USER, tenant='acme')}"}
    chat = {"model": "smollm2", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4}
    assert client.post("/v1/chat/completions", json=chat, headers=user).status_code == 200
    platform.ledger.flush()
    acme = _login(client, _key(platform, Role.OPERATOR, tenant="acme")).get("/ui/costs?since=24h")
    assert acme.status_code == 200
    assert "smollm2" in acme.text and "No gateway calls in this window" not in acme.text
    assert "Budgets" not in acme.text  # budgets are an admin's
    other = _login(client, _key(platform, Role.OPERATOR, tenant="bravo")).get("/ui/costs?since=24h")
    assert "smollm2" not in other.text
    admin = _login(client, _key(platform, Role.ADMIN)).get("/ui/costs?since=24h")
    assert "acme" in admin.text and "Budgets" in admin.text


def test_a_versions_model_card_is_one_click_from_the_models_page(
    client: TestClient, platform: Platform, second_version: int
) -> None:
    registry = platform.registry
    run = registry.open_run("card")
    registry.log_run(run, artifacts={"model_card.md": "# credit-risk v2\n\n<b>holdout</b> log_loss 0.44\n"})
    registry.end_run(run)
    # Retraining tags its versions so; MLflow's client sets the tag here.
    registry._started().set_model_version_tag(
        "credit-risk", str(second_version), "model_card", f"runs:/{run}/model_card.md"
    )
    browser = _login(client, _key(platform, Role.VIEWER))
    models = browser.get("/ui/models").text
    link = f"/ui/models/credit-risk/{second_version}/card"
    assert f'href="{link}"' in models
    card = browser.get(link)
    assert card.status_code == 200
    assert "# credit-risk v2" in card.text and "&lt;b&gt;holdout&lt;/b&gt;" in card.text
    assert browser.get("/ui/models/credit-risk/1/card").status_code == 404
