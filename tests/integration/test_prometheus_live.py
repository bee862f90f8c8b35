"""A real Prometheus scrapes two ``opsloop serve`` processes and fires the 5xx SLO alert of alerts.yml.

Each server runs on its embedded defaults in a temporary home, with one LLM route whose backend
is a closed loopback port, so each chat completion is a real 502. The errors are split between
them, and the rule, which sums by route over replicas, fires one alert for the route. Prometheus (from ``./dev
setup``, or PATH) scrapes /metrics every second and evaluates ``OpsloopErrorRateAboveSLO`` with
its expression as deployed, only over a shorter range and without the ``for`` wait. Without the
prometheus binary this skips locally and fails in CI.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.integration.llama_server import free_port
from tests.integration.twins import OpsloopServer, Process, dead_route, executable

REPO = Path(__file__).resolve().parents[2]
ALERT = "OpsloopErrorRateAboveSLO"
ROUTE = "/v1/chat/completions"


@pytest.fixture(scope="module")
def prometheus() -> str:
    return executable("prometheus", "run ./dev setup (it installs prometheus into .venv/bin)")


def _fast_rule(source: Path) -> dict[str, Any]:
    """The deployed rule, made to fire within seconds: a 15 s range for 5m, and ``for: 0s``.

    The expression is otherwise the one in alerts.yml (loaded, not copied), so the live test
    checks what production evaluates: the metric and label names the server exports, and a
    ratio that Prometheus computes over real scrapes. 5m over 1 s scrapes would need minutes of
    errors; 15 s still spans many scrapes, which rate() needs.
    """
    groups = yaml.safe_load(source.read_text())["groups"]
    (rule,) = [r for g in groups for r in g["rules"] if r.get("alert") == ALERT]
    assert rule["expr"].count("[5m]") == 2, rule["expr"]  # numerator and denominator
    return {**rule, "expr": rule["expr"].replace("[5m]", "[15s]"), "for": "0s"}


def _configure(root: Path, targets: list[str]) -> Path:
    rules = root / "rules.yml"
    rule = _fast_rule(REPO / "deploy" / "prometheus" / "alerts.yml")
    rules.write_text(yaml.safe_dump({"groups": [{"name": "opsloop-live", "rules": [rule]}]}))
    config = root / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(rules)],
                "scrape_configs": [{"job_name": "opsloop", "static_configs": [{"targets": targets}]}],
            }
        )
    )
    return config


def _errors_until_firing(servers: list[OpsloopServer], api: httpx.Client) -> list[dict[str, Any]]:
    """Send failing chat completions until the alert fires (at most 60 s); the firing alerts.

    Errors keep coming until then: rate() needs the counter to grow between scrapes, and a
    series that appears with its first error has no increase yet.
    """
    hello = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    keys = [(server.home / "admin.key").read_text().strip() for server in servers]
    deadline = time.monotonic() + 60
    alerts: list[dict[str, Any]] = []
    for sent in range(1, 601):
        server, key = servers[sent % 2], keys[sent % 2]
        answer = server.http.post(ROUTE, json=hello, headers={"Authorization": f"Bearer {key}"})
        assert answer.status_code == 502, answer.text
        if sent % 4 == 0:
            alerts = api.get("/api/v1/alerts").json()["data"]["alerts"]
            firing = [a for a in alerts if a["labels"]["alertname"] == ALERT and a["state"] == "firing"]
            if firing:
                return firing
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    series = api.get("/api/v1/query", params={"query": "opsloop_http_requests_total"}).json()["data"]
    pytest.fail(f"{ALERT} not firing after {sent} errors; alerts: {alerts}, series: {series}")


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[OpsloopServer]]:
    """Two ``opsloop serve`` on their embedded defaults, route ``chat`` on a closed port; ready."""
    env = {"OPSLOOP_LLM_ROUTES": dead_route("chat")}
    started = [OpsloopServer(tmp_path / f"home-{i}", env) for i in range(2)]
    try:
        for server in started:
            server.wait_ready()
        yield started
    finally:
        for server in started:
            server.stop()


def test_a_burst_of_5xx_over_two_replicas_fires_one_error_rate_alert(
    tmp_path: Path, servers: list[OpsloopServer], prometheus: str
) -> None:
    config = _configure(tmp_path, [server.url.removeprefix("http://") for server in servers])
    address = f"127.0.0.1:{free_port()}"
    command = [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}"]
    scraper = Process(
        [*command, f"--web.listen-address={address}"], env=os.environ, cwd=tmp_path, log=tmp_path / "prom.log"
    )
    try:
        targets = scraper.wait_http(
            f"http://{address}/api/v1/targets",
            seconds=30,
            ok=lambda r: (
                r.status_code == 200
                and [t["health"] for t in r.json()["data"]["activeTargets"]] == ["up", "up"]
            ),
        )
        scraped = {target["scrapeUrl"] for target in targets.json()["data"]["activeTargets"]}
        assert scraped == {f"{server.url}/metrics" for server in servers}  # without a key, and up

        with httpx.Client(base_url=f"http://{address}", timeout=5) as api:
            firing = _errors_until_firing(servers, api)
    finally:
        scraper.stop()
    (alert,) = [a for a in firing if a["labels"]["route"] == ROUTE]
    assert alert["labels"]["severity"] == "critical"
    assert float(alert["value"]) == pytest.approx(1.0)  # every request of the route failed
