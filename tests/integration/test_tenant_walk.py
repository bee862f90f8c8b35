"""Every route of the app, called with tenant B's keys of every role, against tenant A's data.

Tenant ``alpha`` owns a collection, a model's predictions and labels, a scheduled eval job,
ledger rows, query log rows and a budget. Tenant ``bravo``'s viewer, user and operator keys
call every route (taken from ``app.routes``, so a new route is walked too) with ``alpha``'s
names in the path and, where a route takes one, ``tenant=alpha``: they must get 401, 403 or
404 where the data is alpha's, never a 500, never a body that shows alpha's data, and
alpha's data must be unchanged afterwards. Bravo's admin key may, by design, see everything:
for it only "no 500" holds.

A route missing from :data:`REQUESTS` is walked with alpha's names in its path and no body,
and must refuse bravo's non-admin keys: a new route that answers them fails here until its
entry says why that is right.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient

from opsloop.audit import AuditFilter
from opsloop.auth import Role
from opsloop.settings import load_settings
from serving.app import create_app
from serving.console.session import SESSION_COOKIE, csrf_for
from serving.platform import Platform
from tests.integration.demo_inputs import APPLICANT
from tests.integration.ready import wait_ready
from workflows.demo import train_demo

A, B = "alpha", "bravo"
MODEL = "credit-risk"
COLLECTION = "alpha-handbook"
JOB = "alpha-nightly"
EXPERIMENT = "alpha-canary"
SECRET = "alpha-secret-rotation-guide"
QUESTION = "How does alpha rotate a key?"
SKIPPED = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/static-offline-docs", "/ui/static"}
"""Documentation and static files (the console's too): the same for everyone, and no tenant's data."""

Expect = Literal["denied", "own", "public"]
"""``denied``: 401/403/404 for bravo's non-admin keys. ``own``: the call acts on bravo's own
data or on shared things (a model), so it may succeed, but its answer must not show alpha's
data. ``public``: operational data for everyone (probes, Prometheus metrics)."""


@dataclass(frozen=True)
class Call:
    """One request of the walk; ``{key_id}`` in a path is alpha's key id."""

    expect: Expect
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    files: list[tuple[str, tuple[str, bytes]]] | None = None


V2_APPLICANT = {
    "inputs": [{"name": k, "datatype": "BYTES", "shape": [1], "data": [v]} for k, v in APPLICANT.items()]
}

REQUESTS: dict[tuple[str, str], list[Call]] = {
    ("GET", "/healthz"): [Call("public")],
    ("GET", "/readyz"): [Call("public")],
    ("GET", "/metrics"): [Call("public")],
    # Models are shared by tenants; a prediction or feedback is the caller's own.
    ("POST", "/predict/{model}"): [Call("own", json={"instances": [APPLICANT]})],
    ("POST", "/feedback/{model}"): [
        Call("own", json={"feedback": [{"request_id": "{a_request}", "labels": [1]}]})
    ],
    ("GET", "/models"): [Call("own")],
    ("GET", "/models/{model}"): [Call("own")],
    # The Open Inference Protocol over the same models and predictions.
    ("GET", "/v2/health/live"): [Call("public")],
    ("GET", "/v2/health/ready"): [Call("public")],
    ("GET", "/v2/models/{model}"): [Call("own")],
    ("GET", "/v2/models/{model}/versions/{version}"): [Call("own")],
    ("GET", "/v2/models/{model}/ready"): [Call("own")],
    ("GET", "/v2/models/{model}/versions/{version}/ready"): [Call("own")],
    ("POST", "/v2/models/{model}/infer"): [Call("own", json=V2_APPLICANT)],
    ("POST", "/v2/models/{model}/versions/{version}/infer"): [Call("own", json=V2_APPLICANT)],
    ("POST", "/query"): [
        Call("denied", json={"question": QUESTION, "collection": COLLECTION, "generate": False})
    ],
    # A score goes to the caller's own query of that id: alpha's is "unknown" to bravo.
    ("POST", "/feedback/query"): [Call("own", json={"feedback": [{"request_id": "{a_query}", "score": 0}]})],
    # Collections are per tenant: bravo's upload makes bravo's own collection of that name.
    ("POST", "/collections/{name}/documents"): [
        Call("own", files=[("files", ("keys.md", b"# Bravo\n\nb.\n"))])
    ],
    ("DELETE", "/collections/{name}/documents/{source:path}"): [Call("own")],
    ("POST", "/collections/{name}/optimize"): [Call("own")],
    ("GET", "/collections"): [Call("own")],
    ("GET", "/collections/{name}"): [Call("own")],
    ("POST", "/v1/chat/completions"): [
        Call("own", json={"model": "{llm}", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    ],
    ("GET", "/v1/models"): [Call("own")],
    ("POST", "/v1/embeddings"): [Call("own", json={"input": "hello", "model": "all-MiniLM-L6-v2"})],
    ("GET", "/admin/costs"): [Call("own"), Call("denied", params={"tenant": A})],
    ("GET", "/admin/keys"): [Call("denied"), Call("denied", params={"tenant": A})],
    ("POST", "/admin/keys"): [Call("denied", json={"tenant": A, "role": "admin"})],
    ("DELETE", "/admin/keys/{key_id}"): [Call("denied")],
    ("GET", "/admin/audit"): [Call("denied", params={"tenant": A})],
    # Reports of bravo's own traffic of the shared model (404 while there is none).
    ("GET", "/admin/drift/{model}"): [Call("own"), Call("denied", params={"tenant": A})],
    ("GET", "/admin/drift/{model}/concept"): [Call("own"), Call("denied", params={"tenant": A})],
    ("GET", "/admin/drift/{model}/history"): [Call("denied")],
    ("GET", "/admin/queries"): [Call("own"), Call("denied", params={"tenant": A})],
    ("PUT", "/admin/budgets"): [Call("denied", json={"tenant": A, "kind": "daily_usd", "limit": 1000.0})],
    ("GET", "/admin/budgets"): [Call("denied", params={"tenant": A})],
    ("DELETE", "/admin/budgets"): [Call("denied", params={"tenant": A, "kind": "daily_usd"})],
    ("GET", "/admin/evals/jobs"): [Call("own"), Call("denied", params={"tenant": A})],
    ("POST", "/admin/evals/jobs/{name}/trigger"): [Call("denied")],
    # Runs in bravo's tenant: on bravo's own collection of that name (the walk's upload made it).
    ("POST", "/admin/evals/runs"): [
        Call(
            "own",
            json={
                "dataset": {
                    "name": "x",
                    "items": [{"question": "rotate?", "reference": "r", "reference_sources": ["keys.md"]}],
                },
                "collection": COLLECTION,
                "generate": False,
            },
        )
    ],
    # Eval runs in the server: bravo's own (the run above), never alpha's (a 404 by id).
    ("GET", "/admin/evals/tasks"): [Call("own"), Call("denied", params={"tenant": A})],
    ("GET", "/admin/evals/tasks/{task_id}"): [Call("denied")],
    # Experiments are their creator's tenant's. Models are shared, so bravo's operator may start
    # one on a model, but not while alpha's runs on it (a 409 that must not name alpha's).
    # A chat thread is its opener's tenant's: bravo's own request runs; alpha's thread is a 404.
    ("POST", "/chat"): [Call("own", json={"message": "is everything healthy?"})],
    ("GET", "/chat/{thread_id}"): [Call("denied")],
    ("POST", "/chat/{thread_id}/approve"): [Call("denied", json={"approve": True})],
    ("GET", "/admin/experiments"): [Call("own")],
    ("POST", "/admin/experiments"): [
        Call("own", json={"name": "bravo-canary", "model": MODEL, "challenger": "2"})
    ],
    ("GET", "/admin/experiments/{name}"): [Call("denied")],
    # Models are shared: bravo's operator may retrain one (its run is audited in bravo's tenant;
    # too few labels here, so it ends refused). The runs' history is for admins.
    ("POST", "/admin/models/{model}/retrain"): [Call("own", json={"handoff": "none", "trials": 1})],
    ("POST", "/admin/experiments/{name}/{action}"): [Call("denied")],
    # The web console, walked with the key's session cookie and its CSRF token (a form's fields
    # as ``json``): its pages read the same services, so the same rules hold.
    ("GET", "/ui/login"): [Call("public")],
    ("POST", "/ui/login"): [Call("denied", json={"key": "olk_x_y"})],  # no login form was served
    ("POST", "/ui/logout"): [Call("own")],
    ("GET", "/ui/"): [Call("own")],
    ("GET", "/ui/chat"): [Call("own")],
    ("POST", "/ui/chat"): [Call("own", json={"message": "is everything healthy?"})],
    ("POST", "/ui/chat/{thread_id}/decision"): [Call("denied", json={"decision": "approve"})],
    ("GET", "/ui/models"): [Call("own")],
    ("GET", "/ui/models/{model}/{version}/card"): [Call("denied")],  # no card: retraining makes them
    ("GET", "/ui/experiments"): [Call("own")],
    ("GET", "/ui/experiments/{name}"): [Call("denied")],
    ("GET", "/ui/drift"): [Call("own")],
    ("GET", "/ui/costs"): [Call("own")],
    ("GET", "/ui/evals"): [Call("own")],
    ("GET", "/ui/audit"): [Call("denied")],
}


@dataclass
class World:
    """The app, alpha's data and both tenants' keys."""

    client: TestClient
    platform: Platform
    a_keys: dict[Role, tuple[str, dict[str, str]]]
    b_keys: dict[Role, tuple[str, dict[str, str]]]
    a_request: str
    a_query: str
    """The request id of alpha's query."""
    a_task: str
    """An eval run alpha's operator started in the server."""
    a_thread: str
    """A chat thread of alpha's operator, waiting for approval of a promotion."""
    llm: str
    admin: dict[str, str]
    """A platform admin's headers (tenant ``default``), to read alpha's data as the operator would."""


def _routes(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path) of every route; included routers are flattened (``app.routes`` nests them)."""
    found = []
    for route in iter_route_contexts(app.routes):
        if route.path in SKIPPED:
            continue
        for method in sorted(route.methods or {"*"}):
            if method != "HEAD":
                found.append((method, route.path))
    return found


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("walk")
    dataset = root / "alpha.jsonl"
    item = {"question": QUESTION, "reference": SECRET, "reference_sources": ["keys.md"]}
    dataset.write_text(json.dumps(item) + "\n")
    job = {"name": JOB, "cron": "0 3 * * *", "dataset": str(dataset), "collection": COLLECTION}
    settings = load_settings(
        home=root / "home",
        bootstrap_docs=False,
        drift_check_seconds=0,
        eval_jobs=[{**job, "tenant": A, "generate": False}],
    )
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(client)
        platform: Platform = app.state.platform

        def keys(tenant: str) -> dict[Role, tuple[str, dict[str, str]]]:
            made = {role: platform.keys.create(tenant, role, actor="test") for role in Role}
            return {
                role: (new.info.id, {"Authorization": f"Bearer {new.secret.get_secret_value()}"})
                for role, new in made.items()
            }

        a_keys, b_keys = keys(A), keys(B)
        operator, user = a_keys[Role.OPERATOR][1], a_keys[Role.USER][1]
        guide = f"# Rotating keys\n\n{SECRET}: create a new key, move clients, revoke the old.\n"
        uploaded = client.post(
            f"/collections/{COLLECTION}/documents",
            files=[("files", ("keys.md", guide.encode()))],
            headers=operator,
        )
        assert uploaded.status_code == 200, uploaded.text
        asked = client.post(
            "/query", json={"question": QUESTION, "collection": COLLECTION, "generate": False}, headers=user
        )
        assert asked.status_code == 200, asked.text
        predicted = client.post(f"/predict/{MODEL}", json={"instances": [APPLICANT] * 3}, headers=user)
        assert predicted.status_code == 200, predicted.text
        a_request = predicted.json()["request_id"]
        labelled = client.post(
            f"/feedback/{MODEL}",
            json={"feedback": [{"request_id": a_request, "labels": [0, 1, 0]}]},
            headers=user,
        )
        assert labelled.status_code == 200, labelled.text
        llm = client.get("/v1/models", headers=user).json()["data"][0]["id"]
        chat = {"model": llm, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        assert client.post("/v1/chat/completions", json=chat, headers=user).status_code == 200
        admin = platform.keys.create("default", Role.ADMIN, actor="test").secret.get_secret_value()
        budget = {"tenant": A, "kind": "daily_usd", "limit": 50.0}
        put = client.put("/admin/budgets", json=budget, headers={"Authorization": f"Bearer {admin}"})
        assert put.status_code == 200, put.text
        admin_headers = {"Authorization": f"Bearer {admin}"}
        run = {
            "dataset": {"name": "alpha-golden", "items": [item]},
            "collection": COLLECTION,
            "generate": False,
        }
        started = client.post("/admin/evals/runs", params={"wait": "false"}, json=run, headers=operator)
        assert started.status_code == 202, started.text
        a_task = started.json()["id"]
        until = time.monotonic() + 120
        while client.get(f"/admin/evals/tasks/{a_task}", headers=operator).json()["state"] == "running":
            assert time.monotonic() < until, "alpha's eval task never ended"
            time.sleep(0.2)
        challenger = train_demo(platform.registry, rows=500, alias=None).version
        experiment = {"name": EXPERIMENT, "model": MODEL, "challenger": str(challenger)}
        created = client.post("/admin/experiments", json=experiment, headers=operator)
        assert created.status_code == 201, created.text
        a_query = asked.json()["request_id"]
        waiting = client.post(
            "/chat", json={"message": f"promote {MODEL} version {challenger}"}, headers=operator
        )
        assert waiting.json()["status"] == "pending_approval", waiting.text
        a_thread = waiting.json()["thread_id"]
        yield World(
            client, platform, a_keys, b_keys, a_request, a_query, a_task, a_thread, llm, admin_headers
        )


def _snapshot(world: World) -> dict[str, Any]:
    """Alpha's data as alpha and a platform admin read it."""
    client, (_, operator) = world.client, world.a_keys[Role.OPERATOR]
    queries = client.get("/admin/queries", headers=operator).json()
    costs = client.get("/admin/costs", params={"by": "key"}, headers=operator).json()
    predictions = world.platform.predictions.recent(MODEL, tenant=A)
    return {
        "collection": client.get(f"/collections/{COLLECTION}", headers=operator).json(),
        "collections": client.get("/collections", headers=operator).json(),
        "queries": [(q["id"], q["question"], q["answer"], q["feedback_score"]) for q in queries],
        "costs": costs["rows"],
        "budgets": client.get("/admin/budgets", params={"tenant": A}, headers=world.admin).json(),
        "keys": client.get(
            "/admin/keys", params={"tenant": A, "include_revoked": True}, headers=world.admin
        ).json(),
        "predictions": [(p.request_id, p.outputs, p.labels) for p in predictions],
        "jobs": client.get("/admin/evals/jobs", headers=operator).json(),
        "tasks": client.get("/admin/evals/tasks", headers=operator).json(),
        # Not the outcome counts: bravo's predictions of the shared model are routed by it too.
        "experiments": [
            (e["name"], e["status"], e["decision"])
            for e in client.get("/admin/experiments", headers=operator).json()
        ],
    }


def _request(world: World, method: str, path: str, call: Call, headers: dict[str, str]) -> Any:
    filled = {
        "{model}": MODEL,
        "{name}": {"/collections": COLLECTION, "/admin/experiments": EXPERIMENT}.get(
            path[: len("/admin/experiments")]
            if path.startswith("/admin/exp")
            else path[: len("/collections")],
            JOB,
        ),
        "{action}": "stop",
        "{version}": "1",
        "{source:path}": "keys.md",
        "{key_id}": world.a_keys[Role.VIEWER][0],
        "{task_id}": world.a_task,
        "{thread_id}": world.a_thread,
    }
    url = path
    for placeholder, value in filled.items():
        url = url.replace(placeholder, value)
    if path.startswith("/ui/"):
        return _console_request(world, method, url, call, headers)
    body = json.loads(
        json.dumps(call.json)
        .replace("{a_request}", world.a_request)
        .replace("{a_query}", world.a_query)
        .replace("{llm}", world.llm)
    )
    return world.client.request(
        method,
        url,
        params=call.params,
        json=body if call.json is not None else None,
        files=call.files,
        headers=headers,
    )


def _console_request(world: World, method: str, url: str, call: Call, headers: dict[str, str]) -> Any:
    """A console page or form post as the key's browser sends it: session cookie, CSRF token."""
    key = headers["Authorization"].removeprefix("Bearer ")
    client = world.client
    client.cookies.set(SESSION_COOKIE, key, domain="testserver.local", path="/ui")
    try:
        data = {**(call.json or {}), "csrf": csrf_for(key)} if method == "POST" else None
        response = client.request(method, url, params=call.params, data=data)
        if method == "GET" and url != "/ui/login":  # the walk is logged in: no page sends it to log in
            assert "/ui/login" not in str(response.url), f"{url} asked {key[:16]} to log in"
        return response
    finally:
        client.cookies.clear()


def _calls(method: str, path: str) -> list[Call]:
    return REQUESTS.get((method, path), [Call("denied")])


def test_every_route_is_walked(world: World) -> None:
    """The table names real routes only (a renamed route must not silently drop out of the walk)."""
    routes = set(_routes(world.client.app))  # type: ignore[arg-type]
    assert set(REQUESTS) <= routes, set(REQUESTS) - routes


@pytest.mark.parametrize("role", [Role.VIEWER, Role.USER, Role.OPERATOR])
def test_tenant_b_never_reads_or_changes_tenant_a(world: World, role: Role) -> None:
    before = _snapshot(world)
    audit_before = len(world.platform.audit.query(AuditFilter(tenant=A, limit=1000)))
    _, headers = world.b_keys[role]
    a_key_ids = [key_id for key_id, _ in world.a_keys.values()]
    problems = []
    for method, path in _routes(world.client.app):  # type: ignore[arg-type]
        for call in _calls(method, path):
            response = _request(world, method, path, call, headers)
            where = (
                f"{role} {method} {path} {call.params or ''}: {response.status_code} {response.text[:300]}"
            )
            if response.status_code >= 500:
                problems.append(f"server error: {where}")
            elif call.expect == "denied" and response.status_code not in (401, 403, 404):
                problems.append(f"not refused: {where}")
            elif call.expect == "own" and response.is_success:
                # Not alpha's request id: /feedback echoes the ids it was sent as "unknown".
                markers = (SECRET, QUESTION, JOB, EXPERIMENT, f'"{A}"', *a_key_ids)
                shown = [m for m in markers if m in response.text]
                if shown:
                    problems.append(f"shows alpha's {shown}: {where}")
    assert not problems, "\n".join(problems)
    assert _snapshot(world) == before
    # Nothing bravo did was recorded as something done to alpha's data.
    assert len(world.platform.audit.query(AuditFilter(tenant=A, limit=1000))) == audit_before


def test_a_platform_admin_of_b_may_see_everything_but_never_gets_a_500(world: World) -> None:
    _, headers = world.b_keys[Role.ADMIN]
    errors = []
    for method, path in _routes(world.client.app):  # type: ignore[arg-type]
        for call in _calls(method, path):
            response = _request(world, method, path, call, headers)
            if response.status_code >= 500 and response.status_code != 503:
                errors.append(f"{method} {path}: {response.status_code} {response.text[:300]}")
    assert not errors, "\n".join(errors)


def test_eval_jobs_are_seen_and_triggered_only_in_their_tenant(world: World) -> None:
    client = world.client
    a_id, a_operator = world.a_keys[Role.OPERATOR]
    _, b_operator = world.b_keys[Role.OPERATOR]
    _, b_admin = world.b_keys[Role.ADMIN]
    assert [j["name"] for j in client.get("/admin/evals/jobs", headers=a_operator).json()] == [JOB]
    assert client.get("/admin/evals/jobs", headers=b_operator).json() == []
    assert client.get("/admin/evals/jobs", params={"tenant": A}, headers=b_operator).status_code == 403
    assert [
        j["tenant"] for j in client.get("/admin/evals/jobs", params={"tenant": A}, headers=b_admin).json()
    ] == [A]
    refused = client.post(f"/admin/evals/jobs/{JOB}/trigger", headers=b_operator)
    assert refused.status_code == 404 and JOB not in refused.json()["error"]["details"].get("known", [])

    triggered = client.post(f"/admin/evals/jobs/{JOB}/trigger", headers=a_operator)
    assert triggered.status_code < 500, triggered.text
    entries = world.platform.audit.query(AuditFilter(action="eval.trigger", actor=a_id))
    assert [(e.tenant, e.target) for e in entries] == [(A, f"eval_job:{JOB}")]


def test_drift_reports_use_only_the_callers_tenants_predictions(world: World) -> None:
    client = world.client
    _, a_operator = world.a_keys[Role.OPERATOR]
    _, b_user = world.b_keys[Role.USER]
    _, b_operator = world.b_keys[Role.OPERATOR]
    _, b_admin = world.b_keys[Role.ADMIN]
    mine = client.get(f"/admin/drift/{MODEL}", headers=a_operator)
    assert mine.status_code == 200, mine.text
    assert mine.json()["tenant"] == A
    concept = client.get(f"/admin/drift/{MODEL}/concept", headers=a_operator)
    assert concept.status_code == 200 and concept.json()["tenant"] == A and concept.json()["instances"] == 3

    assert mine.json()["current_rows"] == 3
    assert (
        client.post(f"/predict/{MODEL}", json={"instances": [APPLICANT]}, headers=b_user).status_code == 200
    )
    b_rows = sum(len(p.inputs) for p in world.platform.predictions.recent(MODEL, tenant=B))
    theirs = client.get(f"/admin/drift/{MODEL}", headers=b_operator)
    assert theirs.status_code == 200 and theirs.json()["tenant"] == B
    assert theirs.json()["current_rows"] == b_rows
    assert client.get(f"/admin/drift/{MODEL}", headers=b_admin).json()["current_rows"] == 3 + b_rows
    assert client.get(f"/admin/drift/{MODEL}/concept", headers=b_operator).status_code == 404  # no labels
    assert client.get(f"/admin/drift/{MODEL}/history", headers=b_operator).status_code == 403

    everyone = client.get(f"/admin/drift/{MODEL}/concept", headers=b_admin)
    assert everyone.status_code == 200 and everyone.json()["tenant"] is None
    one = client.get(f"/admin/drift/{MODEL}/concept", params={"tenant": A}, headers=b_admin)
    assert one.json()["tenant"] == A and one.json()["instances"] == 3
    assert client.get(f"/admin/drift/{MODEL}/history", headers=b_admin).status_code == 200
