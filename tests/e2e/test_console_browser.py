"""The console in a real browser: Playwright drives Debian's chromium against ``opsloop serve``.

The walk of the issue: an admin logs in, sees the drift alert that shifted traffic raised,
asks in chat for a promotion, approves it beside its evidence and sees the alias move on the
models page; a viewer sees no approve button, a forged approval is refused, and the page
follows the thread without a reload; a key of another tenant sees none of it. Every page of
every role renders without a console error or a request to another host, at a laptop's width
and a phone's. Screenshots go to ``test-artifacts/console/`` (``OPSLOOP_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.server import Server, cli

sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium")
if CHROMIUM is None and not os.environ.get("CI"):
    pytest.skip("Debian's chromium is not installed (./dev setup installs it)", allow_module_level=True)

ARTIFACTS = (
    Path(os.environ.get("OPSLOOP_TEST_ARTIFACTS", Path(__file__).parents[2] / "test-artifacts")) / "console"
)
# Without these, chromium calls Google's hosts at start, which this network refuses.
QUIET = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PAGES = {
    "admin": ("chat", "models", "experiments", "drift", "costs", "evals", "audit"),
    "viewer": ("chat", "models", "experiments"),
    "stranger": ("chat", "models", "experiments", "drift", "costs", "evals"),
}
WAIT_MS = 120_000


@dataclass
class Keys:
    admin: str
    viewer: str
    user: str
    stranger: str
    """An operator of another tenant."""


@dataclass
class Browsing:
    """A logged-in page, and what went wrong in it."""

    page: Any
    errors: list[str] = field(default_factory=list)
    elsewhere: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {"OPSLOOP_DRIFT_CHECK_SECONDS": "2", "OPSLOOP_RETRAIN_TRIGGERS": "[]"}
    server = Server(tmp_path_factory.mktemp("console") / "home", env=env)
    server.wait_for("/readyz", 200, seconds=180)
    yield server
    server.stop()


def _create(server: Server, tenant: str, role: str) -> str:
    created = cli(server.home, "keys", "create", "--tenant", tenant, "--role", role)
    assert created.returncode == 0, created.stderr
    return created.stdout.strip()


@pytest.fixture(scope="module")
def keys(server: Server) -> Keys:
    trained = cli(server.home, "models", "train", "--demo", "--shift", "--no-promote")
    assert trained.returncode == 0, trained.stderr
    return Keys(
        admin=(server.home / "admin.key").read_text().strip(),
        viewer=_create(server, "default", "viewer"),
        user=_create(server, "default", "user"),
        stranger=_create(server, "bravo", "operator"),
    )


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=QUIET)
        yield browser
        browser.close()


@pytest.fixture
def login(chromium: Any, server: Server) -> Iterator[Any]:
    """Log a key in, in a browser context of its own; every context is closed after the test."""
    contexts = []

    def log_in(key: str, width: int = 1280) -> Browsing:
        context = chromium.new_context(base_url=server.url, viewport={"width": width, "height": 900})
        contexts.append(context)
        context.set_default_timeout(WAIT_MS)
        page = context.new_page()
        seen = Browsing(page)
        page.on("console", lambda m: seen.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: seen.errors.append(str(e)))

        def guard(route: Any) -> None:
            if route.request.url.startswith(server.url):
                route.continue_()
            else:
                seen.elsewhere.append(route.request.url)
                route.abort()

        context.route("**/*", guard)
        page.goto("/ui/")
        assert page.url.startswith(f"{server.url}/ui/login")
        page.fill("#key", key)
        page.click("button[type=submit]")
        page.wait_for_url("**/ui/chat")
        return seen

    yield log_in
    for context in contexts:
        context.close()


def _shot(seen: Browsing, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    seen.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _clean(seen: Browsing) -> None:
    assert seen.errors == [], seen.errors
    assert seen.elsewhere == [], seen.elsewhere


def _champion(server: Server, keys: Keys, expect: int | None = None) -> int:
    """The version that answers /predict; with ``expect``, waits (a bounded while) for the hot-swap to it."""
    deadline = time.monotonic() + 30
    while True:
        described = server.http.get("/models/credit-risk", headers={"Authorization": f"Bearer {keys.viewer}"})
        assert described.status_code == 200, described.text
        version = int(described.json()["champion"])
        if expect is None or version == expect or time.monotonic() > deadline:
            return version
        time.sleep(0.5)


def test_an_admin_walks_from_a_drift_alert_to_an_approved_promotion(
    server: Server, keys: Keys, login: Any
) -> None:
    sent = cli(
        server.home, "demo", "traffic", "--url", server.url, "--key", keys.user, "--rows", "600", "--shift"
    )
    assert sent.returncode == 0, sent.stdout + sent.stderr
    admin = login(keys.admin)
    page = admin.page

    page.goto("/ui/models")
    # The scheduled check runs every 2 s; the page follows without a reload.
    sync_api.expect(page.locator("[aria-label='model credit-risk'] h2")).to_contain_text(
        "drift (", timeout=60_000
    )
    _shot(admin, "admin-models-drift-alert")
    page.goto("/ui/drift?model=credit-risk")
    sync_api.expect(page.locator("[aria-label='live drift'] h2")).to_contain_text("drift")
    assert page.locator("svg.chart").count() >= 2  # the features' distributions, the checks over time

    page.goto("/ui/chat")
    page.fill("#message", "promote credit-risk version 2")
    page.click("form[action='/ui/chat'] button[type=submit]")
    pending = page.locator("[aria-label='pending approval']")
    sync_api.expect(pending).to_contain_text("promote_model")
    sync_api.expect(pending).to_contain_text('"version": 2')
    sync_api.expect(pending.locator("text=Evidence")).to_be_visible()
    _shot(admin, "admin-chat-pending-approval")
    assert _champion(server, keys) == 1

    pending.locator("button[value=approve]").click()
    sync_api.expect(page.locator("#thread")).to_contain_text("approved by")
    sync_api.expect(page.locator("#thread .badge").first).to_have_text("done")
    assert _champion(server, keys, expect=2) == 2

    page.goto("/ui/models")
    row = page.locator("[aria-label='model credit-risk'] tr", has_text="v2")
    sync_api.expect(row.locator("[data-alias=champion]")).to_be_visible()
    for name in PAGES["admin"]:
        page.goto(f"/ui/{name}")
        _shot(admin, f"admin-{name}")
    _clean(admin)


def test_a_running_experiment_fills_its_page_without_a_reload(server: Server, keys: Keys, login: Any) -> None:
    admin_api = {"Authorization": f"Bearer {keys.admin}"}
    body = {
        "name": "browser-ab",
        "kind": "ab",
        "model": "credit-risk",
        "challenger": str(3 - _champion(server, keys)),
    }
    started = server.http.post("/admin/experiments", json=body, headers=admin_api)
    assert started.status_code == 201, started.text
    try:
        admin = login(keys.admin)
        page = admin.page
        page.goto("/ui/experiments")
        page.click("a[href='/ui/experiments/browser-ab']")
        sync_api.expect(page.locator("main h1")).to_have_text("Experiment browser-ab")
        sent = cli(
            server.home,
            "demo",
            "traffic",
            "--url",
            server.url,
            "--key",
            keys.user,
            "--rows",
            "200",
            "--units",
            "50",
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr
        # The live block redraws the charts as the outcomes arrive.
        sync_api.expect(page.locator("#experiment svg.chart")).to_have_count(3, timeout=30_000)
        _shot(admin, "admin-experiment-running")
        _clean(admin)
    finally:
        server.http.post("/admin/experiments/browser-ab/stop", headers=admin_api)


def test_a_viewer_sees_no_approve_button_cannot_forge_one_and_watches_the_thread_end(
    server: Server, keys: Keys, login: Any
) -> None:
    champion = _champion(server, keys)
    other = 1 if champion == 2 else 2
    admin_api = {"Authorization": f"Bearer {keys.admin}"}
    asked = server.http.post(
        "/chat",
        json={"message": f"promote credit-risk version {other}"},
        headers=admin_api,
        timeout=WAIT_MS / 1000,
    )
    assert asked.status_code == 200 and asked.json()["status"] == "pending_approval", asked.text
    thread = asked.json()["thread_id"]

    viewer = login(keys.viewer)
    page = viewer.page
    page.goto(f"/ui/chat?thread={thread}")
    sync_api.expect(page.locator("[aria-label='pending approval']")).to_contain_text("promote_model")
    assert page.locator("button[value=approve]").count() == 0
    _shot(viewer, "viewer-chat-pending-no-buttons")

    # The viewer's own session and token, posting the form the page does not offer.
    status = page.evaluate(
        """async (thread) => {
            const csrf = document.querySelector("input[name=csrf]").value;
            const body = new URLSearchParams({csrf, decision: "approve"});
            const answer = await fetch(`/ui/chat/${thread}/decision`, {method: "POST", body});
            return answer.status;
        }""",
        thread,
    )
    assert status == 403
    assert _champion(server, keys) == champion
    viewer.errors = [e for e in viewer.errors if "403" not in e]  # the refused fetch itself

    denied = server.http.post(
        f"/chat/{thread}/approve", json={"approve": False, "comment": "not now"}, headers=admin_api
    )
    assert denied.status_code == 200, denied.text
    # No reload: the live block picks the decision up.
    sync_api.expect(page.locator("#thread")).to_contain_text("denied by", timeout=20_000)
    assert page.locator("[aria-label='pending approval']").count() == 0

    for name in PAGES["viewer"]:
        page.goto(f"/ui/{name}")
        _shot(viewer, f"viewer-{name}")
    page.goto("/ui/audit")
    sync_api.expect(page.locator("main h1")).to_contain_text("needs role 'admin'")
    viewer.errors = [e for e in viewer.errors if "403" not in e]
    _clean(viewer)


def test_a_key_of_another_tenant_sees_none_of_this_tenants_threads_or_traffic(
    server: Server, keys: Keys, login: Any
) -> None:
    asked = server.http.post(
        "/chat",
        json={"message": "how is credit-risk doing?"},
        headers={"Authorization": f"Bearer {keys.admin}"},
    )
    thread = asked.json()["thread_id"]
    stranger = login(keys.stranger)
    page = stranger.page
    assert page.locator(f"a[href='/ui/chat?thread={thread}']").count() == 0
    page.goto(f"/ui/chat?thread={thread}")
    sync_api.expect(page.locator("[role=alert]")).to_contain_text("no chat thread")
    page.goto("/ui/models")
    sync_api.expect(page.locator("main")).to_contain_text("tenant bravo's requests")
    sync_api.expect(page.locator("[aria-label='model credit-risk']")).to_contain_text("(0 requests)")
    page.goto("/ui/costs?since=24h")
    assert "default" not in page.locator("main table").first.inner_text()
    for name in PAGES["stranger"]:
        page.goto(f"/ui/{name}")
        _shot(stranger, f"other-tenant-{name}")
    _clean(stranger)


def test_every_page_fits_a_narrow_window(server: Server, keys: Keys, login: Any) -> None:
    narrow = login(keys.admin, width=390)
    page = narrow.page
    for name in PAGES["admin"]:
        page.goto(f"/ui/{name}")
        overflow = page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 1, f"/ui/{name} is {overflow}px wider than a 390px window"
        _shot(narrow, f"narrow-{name}")
    _clean(narrow)


def test_assets_come_from_the_server_itself(server: Server) -> None:
    for asset in ("console.css", "console.js"):
        answer = httpx.get(f"{server.url}/ui/static/{asset}")
        assert answer.status_code == 200
        assert "http://" not in answer.text and "https://" not in answer.text
