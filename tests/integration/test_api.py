"""The HTTP surface of the kernel, through the real app and its lifespan."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from opsloop.auth import Role
from opsloop.settings import Settings, load_settings
from rag.service import store_holder
from serving.app import create_app


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    return create_app(
        load_settings(home=tmp_path / "home", max_body_bytes=4096, bootstrap_demo=False, bootstrap_docs=False)
    )


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def admin_key(app: FastAPI, client: TestClient) -> str:
    settings: Settings = app.state.platform.settings
    return settings.admin_key_path.read_text().strip()


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _key(app: FastAPI, role: Role, tenant: str = "acme") -> str:
    return str(app.state.platform.keys.create(tenant, role, actor="test").secret.get_secret_value())


def _assert_error(response_json: dict[str, object], kind: str) -> None:
    error = response_json["error"]
    assert isinstance(error, dict)
    assert error["type"] == kind
    assert set(error) == {"type", "message", "details"}


def test_first_start_writes_admin_key_with_mode_0600(app: FastAPI, admin_key: str) -> None:
    path = app.state.platform.settings.admin_key_path
    assert path.stat().st_mode & 0o777 == 0o600
    assert admin_key.startswith("olk_")


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    readiness = client.get("/readyz").json()
    assert readiness["components"]["store"] == "ready"
    assert readiness["components"]["registry"] in {"starting", "ready"}


def test_metrics_count_requests_by_route_template(client: TestClient, admin_key: str) -> None:
    client.delete("/admin/keys/doesnotexist", headers=_auth(admin_key))
    client.get("/healthz")
    text = client.get("/metrics").text
    assert (
        'opsloop_http_requests_total{method="DELETE",route="/admin/keys/{key_id}",status="404"} 1.0' in text
    )
    assert 'opsloop_http_requests_total{method="GET",route="/healthz",status="200"} 1.0' in text
    assert "opsloop_http_request_duration_seconds_bucket" in text
    assert "opsloop_http_requests_in_flight" in text
    assert "process_resident_memory_bytes" in text


def test_missing_and_bad_keys_get_401(client: TestClient) -> None:
    non_ascii = {"Authorization": "Bearer olk_\u00e9t\u00e9_x".encode()}
    for headers in [{}, _auth("olk_nope_nope"), {"Authorization": "Basic abc"}, non_ascii]:
        response = client.get("/admin/audit", headers=headers)
        assert response.status_code == 401
        _assert_error(response.json(), "unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"


def test_low_role_gets_403(app: FastAPI, client: TestClient) -> None:
    response = client.get("/admin/keys", headers=_auth(_key(app, Role.OPERATOR)))
    assert response.status_code == 403
    _assert_error(response.json(), "forbidden")
    assert response.json()["error"]["details"] == {"required": "admin", "role": "operator"}


def test_key_management_over_http_is_audited(client: TestClient, admin_key: str) -> None:
    created = client.post(
        "/admin/keys", json={"tenant": "acme", "role": "user", "name": "app"}, headers=_auth(admin_key)
    )
    assert created.status_code == 201
    new = created.json()
    assert new["key"].startswith(f"olk_{new['id']}_")
    listed = client.get("/admin/keys", params={"tenant": "acme"}, headers=_auth(admin_key)).json()
    assert [k["id"] for k in listed] == [new["id"]] and "key" not in listed[0]

    revoked = client.delete(f"/admin/keys/{new['id']}", headers=_auth(admin_key))
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    assert client.get("/healthz", headers=_auth(new["key"])).status_code == 200
    assert client.get("/admin/keys", headers=_auth(new["key"])).status_code == 401

    audit = client.get("/admin/audit", params={"tenant": "acme"}, headers=_auth(admin_key))
    entries = audit.json()
    assert [e["action"] for e in entries] == ["key.revoke", "key.create"]
    assert all(e["request_id"] and e["actor"] == admin_key.split("_")[1] for e in entries)
    assert new["key"] not in audit.text


def test_each_request_gets_its_own_id_and_the_clients_is_echoed(client: TestClient, admin_key: str) -> None:
    ids = []
    for _ in range(2):  # a client reusing its id must not make two requests one
        response = client.post(
            "/admin/keys",
            json={"tenant": "acme", "role": "viewer"},
            headers={**_auth(admin_key), "X-Request-ID": "req-123"},
        )
        assert response.headers["x-correlation-id"] == "req-123"
        ids.append(response.headers["x-request-id"])
    assert len(set(ids)) == 2 and "req-123" not in ids
    entries = client.get("/admin/audit", params={"action": "key.create"}, headers=_auth(admin_key)).json()
    assert [e["request_id"] for e in entries[:2]] == ids[::-1]


def test_bad_input_gets_specific_errors(client: TestClient, admin_key: str) -> None:
    headers = {**_auth(admin_key), "Content-Type": "application/json"}
    malformed = client.post("/admin/keys", content=b'{"tenant": "acme", "role":', headers=headers)
    assert malformed.status_code == 400
    _assert_error(malformed.json(), "bad_request")
    assert "not valid JSON" in malformed.json()["error"]["message"]

    missing = client.post("/admin/keys", json={"tenant": "acme"}, headers=headers)
    assert missing.status_code == 422
    assert missing.json()["error"]["details"]["errors"][0]["field"] == "role"

    bad_role = client.post("/admin/keys", json={"tenant": "acme", "role": "root"}, headers=headers)
    assert bad_role.status_code == 422
    assert bad_role.json()["error"]["details"] == {"field": "role", "value": "root"}

    bad_limit = client.get("/admin/audit", params={"limit": 0}, headers=headers)
    assert bad_limit.status_code == 422
    assert bad_limit.json()["error"]["details"]["errors"][0]["field"] == "query.limit"

    for since in ("999999999d", "9" * 400 + "w"):
        overlong = client.get("/admin/costs", params={"since": since}, headers=headers)
        assert overlong.status_code == 422, overlong.text
        assert overlong.json()["error"]["details"]["field"] == "since"

    unknown = client.get("/no/such/route")
    assert unknown.status_code == 404
    _assert_error(unknown.json(), "not_found")


def test_oversized_bodies_get_413(client: TestClient, admin_key: str) -> None:
    headers = {**_auth(admin_key), "Content-Type": "application/json"}
    body = json.dumps({"tenant": "acme", "role": "user", "name": "x" * 5000}).encode()
    sized = client.post("/admin/keys", content=body, headers=_auth(admin_key))
    assert sized.status_code == 413
    _assert_error(sized.json(), "payload_too_large")
    assert sized.json()["error"]["details"] == {"limit": 4096}

    chunked = client.post("/admin/keys", content=iter([body[:3000], body[3000:]]), headers=headers)
    assert chunked.status_code == 413

    small = client.post(
        "/admin/keys", content=iter([b'{"tenant": "acme", ', b'"role": "user"}']), headers=headers
    )
    assert small.status_code == 201, small.text


def test_unexpected_errors_hide_the_traceback(app: FastAPI, client: TestClient) -> None:
    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals")

    response = client.get("/boom", headers={"X-Request-ID": "r-9"})
    assert response.status_code == 500
    assert "secret internals" not in response.text and "Traceback" not in response.text
    # Sent by Starlette's outermost handler, past the middleware that adds X-Request-ID.
    assert re.fullmatch(r"[0-9a-f]{32}", response.json()["error"]["details"]["request_id"])


def test_api_docs_load_with_no_network(client: TestClient) -> None:
    """/docs and /redoc take their scripts and styles from this server, not a CDN."""
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        hosts = re.findall(r"""(?:src|href|url)\s*[=:(]\s*["']?(?:https?:)?//([^/"')\s]+)""", html)
        assert hosts == [], (page, hosts)
        assets = re.findall(r"""(?:src|href)=["'](/[^"']+)["']""", html)
        assert assets and all(client.get(asset).status_code == 200 for asset in assets), (page, assets)


def test_openapi_documents_the_routes(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/healthz", "/readyz", "/metrics", "/admin/keys", "/admin/audit"} <= set(paths)
    assert client.get("/docs").status_code == 200


def test_the_servers_local_token_acts_for_the_named_tenant(app: FastAPI, client: TestClient) -> None:
    # The token the CLI reads from the store's lock file (owner-only) to act through this server.
    deadline = time.monotonic() + 30  # the store is taken by a start-up thread
    while (holder := store_holder(app.state.platform.settings.home)) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert holder is not None and holder["token"] == app.state.platform.local_token
    lock = app.state.platform.settings.home / "qdrant" / ".lock"
    assert lock.stat().st_mode & 0o777 == 0o600
    headers = {**_auth(holder["token"]), "X-Opsloop-Tenant": "acme", "X-Opsloop-Actor": "cli:alice"}
    listed = client.get("/collections", headers=headers)
    assert listed.status_code == 200, listed.text
    assert listed.json() == {"collections": []}
    created = client.post("/admin/keys", json={"tenant": "acme", "role": "user"}, headers=headers)
    assert created.status_code == 201, created.text
    audit = client.get("/admin/audit?action=key.create", headers=headers).json()
    assert audit[0]["actor"] == "cli:alice"


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"X-Opsloop-Tenant": "acme"}, 401),  # someone else's token: not the server's
        ({}, 422),  # no tenant named
        ({"X-Opsloop-Tenant": "acme", "X-Opsloop-Actor": "olk_fake"}, 422),  # may not pose as a key
    ],
)
def test_the_local_token_needs_a_tenant_and_a_cli_actor(
    app: FastAPI, client: TestClient, headers: dict[str, str], status: int
) -> None:
    token = "wrong" if status == 401 else app.state.platform.local_token
    response = client.get("/collections", headers={**_auth(token), **headers})
    assert response.status_code == status, response.text


def test_a_server_stopped_while_still_starting_stops_cleanly(tmp_path: Path) -> None:
    """Its components start on threads (the demo model, the docs, the gateway): stopping waits for them.

    Before, a component that built the gateway after the lifespan had closed it left one for
    ``Platform.close`` to close with ``asyncio.run`` inside the running loop, and stopping failed.
    """
    app = create_app(load_settings(home=tmp_path / "home"))
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
    assert app.state.platform.components  # it did start; the exit above raised nothing
