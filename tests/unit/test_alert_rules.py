"""The Prometheus alert rules in deploy/prometheus: promtool's checks and unit tests, and their metric names.

promtool comes from ``./dev setup`` (into ``.venv/bin``) or from PATH. Without it these tests skip
locally and fail in CI, so CI never passes by not running them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = "deploy/prometheus/alerts.yml"
RULE_TESTS = "deploy/prometheus/alerts_test.yml"
# Metrics the rules may use before opsloop/telemetry.py defines them; each needs its contract in
# deploy/prometheus/README.md. None at the moment (opsloop_budget_spent_ratio is in BudgetMetrics).
FUTURE_METRICS: set[str] = set()
_METRIC = re.compile(r"opsloop_[a-z_]+")
_HISTOGRAM_SERIES = re.compile(r"_(bucket|count|sum)$")


@pytest.fixture(scope="module")
def promtool() -> str:
    """The promtool that ./dev setup put beside this interpreter, else the one on PATH."""
    beside = Path(sys.executable).parent / "promtool"
    found = str(beside) if os.access(beside, os.X_OK) else shutil.which("promtool")
    if found is None:
        hint = "promtool not found: run ./dev setup (it installs promtool into .venv/bin)"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(hint)
        pytest.skip(hint)
    return found


@pytest.mark.parametrize(
    "args", [("check", "rules", RULES), ("test", "rules", RULE_TESTS)], ids=["check", "test"]
)
def test_promtool(promtool: str, args: tuple[str, ...]) -> None:
    done = subprocess.run(
        [promtool, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{done.stdout}{done.stderr}"


def _rules() -> list[dict[str, Any]]:
    document = yaml.safe_load((ROOT / RULES).read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_rules_use_only_metrics_the_code_exports() -> None:
    source = (ROOT / "opsloop" / "telemetry.py").read_text()
    used = {_HISTOGRAM_SERIES.sub("", name) for rule in _rules() for name in _METRIC.findall(rule["expr"])}
    assert used, "no opsloop_ metric found in any expr of alerts.yml"
    unknown = sorted(name for name in used - FUTURE_METRICS if f'"{name}"' not in source)
    assert not unknown, f"alerts.yml uses metrics opsloop/telemetry.py does not define: {unknown}"
    readme = (ROOT / "deploy" / "prometheus" / "README.md").read_text()
    undocumented = sorted(name for name in FUTURE_METRICS if name not in readme)
    assert not undocumented, f"future metrics missing from deploy/prometheus/README.md: {undocumented}"


def test_every_alert_waits_has_a_severity_and_explains_itself() -> None:
    alerts = [rule for rule in _rules() if "alert" in rule]
    assert len(alerts) >= 7
    for rule in alerts:
        assert "for" in rule, rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
