"""`opsloop jobs run` pushes what its run measured to a real Pushgateway, as a CronJob must.

A CronJob's pod ends before Prometheus scrapes it, so the drift checks it ran would otherwise
never reach the alert rules. The Pushgateway is Debian's (``./dev setup`` links it into the
venv); without it this skips locally and fails in CI.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.llama_server import free_port
from tests.integration.twins import Process, executable, opsloop


@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[str]:
    binary = executable("pushgateway", "run ./dev setup (it installs pushgateway into .venv/bin)")
    address = f"127.0.0.1:{free_port()}"
    gateway = Process(
        [binary, f"--web.listen-address={address}"], env=os.environ, cwd=tmp_path, log=tmp_path / "gw.log"
    )
    try:
        gateway.wait_http(f"http://{address}/-/ready", seconds=30)
        yield f"http://{address}"
    finally:
        gateway.stop()


def _pushed(url: str, metric: str) -> dict[str, float]:
    """The pushed samples of ``metric`` on the gateway: their label sets (as text) and values."""
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return {
        labels: float(value)
        for labels, value in re.findall(rf"^{metric}\{{([^}}]*)\}} (\S+)$", text, re.MULTILINE)
    }


def test_a_drift_check_run_by_the_cli_reaches_the_pushgateway(tmp_path: Path, pushgateway: str) -> None:
    home = tmp_path / "home"
    trained = opsloop(home, "models", "train", "--demo", "--rows", "300")
    assert trained.returncode == 0, trained.stderr[-2000:]
    env = {"OPSLOOP_PUSHGATEWAY_URL": pushgateway}
    ran = opsloop(home, "jobs", "run", "drift-checks", env=env)
    assert ran.returncode == 0, ran.stderr[-2000:]

    checks = _pushed(pushgateway, "opsloop_drift_checks_total")
    # No traffic yet: the check of the champion is skipped, and says so under the job's group.
    [(labels, value)] = [(k, v) for k, v in checks.items() if 'outcome="skipped"' in k]
    assert value == 1.0
    for label in ('job="opsloop-jobs"', 'periodic_job="drift-checks"', 'model="credit-risk"'):
        assert label in labels
    pushed_at = _pushed(pushgateway, "push_time_seconds")
    assert any('periodic_job="drift-checks"' in k and 'job="opsloop-jobs"' in k for k in pushed_at)

    # The next run of the same job replaces the group (counters start again in each pod).
    again = opsloop(home, "jobs", "run", "drift-checks", "--force", env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert _pushed(pushgateway, "opsloop_drift_checks_total")[labels] == 1.0


def test_a_gateway_that_is_down_is_reported_and_does_not_fail_the_job(tmp_path: Path) -> None:
    home = tmp_path / "home"
    closed = f"http://127.0.0.1:{free_port()}"
    ran = opsloop(home, "jobs", "run", "drift-checks", env={"OPSLOOP_PUSHGATEWAY_URL": closed})
    assert ran.returncode == 0, ran.stderr[-2000:]
    said = " ".join(ran.stderr.split())
    assert f"could not push drift-checks's metrics to {closed}" in said
