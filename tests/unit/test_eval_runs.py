"""The eval run operation: the caller's tenant and role, the baseline, the audit entry, scheduled jobs.

The tracked-run shell (``EvalService``: MLflow, run directories) is faked here; it runs for real
in tests/integration/test_eval_runs.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from evals.dataset import EvalDataset, load_dataset
from evals.gate import GateReport
from evals.runner import EvalConfig, EvalOutcome, EvalRunner
from evals.runs import EvalRuns, eval_config
from evals.schedule import EvalJob
from evals.service import TrackedRun
from opsloop.auth import Principal, Role, system_principal
from opsloop.errors import ForbiddenError
from opsloop.llm.protocol import Usage

GOLDEN = Path(__file__).resolve().parents[2] / "evals" / "datasets" / "docs_golden.jsonl"


class FakeService:
    """Records what it was asked to run; no baseline run is ever found."""

    def __init__(self) -> None:
        self.runs: list[tuple[EvalRunner, EvalConfig, Mapping[str, str] | None]] = []

    async def run(
        self,
        runner: EvalRunner,
        dataset: EvalDataset,
        config: EvalConfig,
        *,
        resume: str = "auto",
        tags: Mapping[str, str] | None = None,
    ) -> TrackedRun:
        self.runs.append((runner, config, tags))
        outcome = EvalOutcome([], {}, (), 0, 0.5)
        return TrackedRun(f"run-{len(self.runs)}", Path("/nowhere"), config, outcome, resumed_run=False)

    def find_baseline(
        self, dataset: EvalDataset, config: EvalConfig, alias: str, *, exclude: str | None = None
    ) -> tuple[EvalConfig, None]:
        return replace(config, prompt=alias), None

    def compare(self, candidate: str, baseline: str, *, rules: Any) -> GateReport:
        return GateReport([], 0.95, 0, 0, 0)


class FakeRag:
    embedder = None

    async def query(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the fake service runs no sample")


class FakeLLMs:
    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    def client(self, route: str, tenant: str) -> Any:
        self.asked.append((route, tenant))
        return object()

    def cost(self, backend: str, usage: Usage, latency_ms: float) -> float:
        return 0.0


class FakeAudit:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def append(self, **event: Any) -> None:
        self.events.append(event)


@pytest.fixture
def parts() -> tuple[EvalRuns, FakeService, FakeLLMs, FakeAudit]:
    service, llms, audit = FakeService(), FakeLLMs(), FakeAudit()
    runs = EvalRuns(
        service,  # type: ignore[arg-type]
        FakeRag,
        llms,
        audit,  # type: ignore[arg-type]
        default_top_k=4,
        default_route="rag",
    )
    return runs, service, llms, audit


DATASET = load_dataset(GOLDEN).subset(limit=2)
CONFIG = EvalConfig(collection="docs", tenant="default", generate=False)


def test_a_run_is_the_callers_in_its_tenant_and_audited(
    parts: tuple[EvalRuns, FakeService, FakeLLMs, FakeAudit],
) -> None:
    runs, service, llms, audit = parts
    caller = Principal("key-1", "acme", Role.OPERATOR)
    result = asyncio.run(runs.run(caller, DATASET, CONFIG, request_id="req-1"))
    ((runner, config, _),) = service.runs
    assert config.tenant == "acme" and runner.caller == caller
    assert llms.asked == [("rag", "acme")]  # the default route, for the caller's tenant
    assert result.gate is None and result.run.run_id == "run-1"
    (event,) = audit.events
    assert (event["actor"], event["tenant"], event["action"]) == ("key-1", "acme", "eval.run")
    assert (event["target"], event["request_id"]) == ("eval-run:run-1", "req-1")
    assert event["after"]["dataset_sha256"] == DATASET.sha256 and event["after"]["params"]["tenant"] == "acme"


def test_a_caller_below_operator_runs_nothing(
    parts: tuple[EvalRuns, FakeService, FakeLLMs, FakeAudit],
) -> None:
    runs, service, _, audit = parts
    with pytest.raises(ForbiddenError, match="running an eval"):
        asyncio.run(runs.run(Principal("key-1", "acme", Role.USER), DATASET, CONFIG))
    assert service.runs == [] and audit.events == []


def test_a_baseline_without_a_finished_run_is_evaluated_first(
    parts: tuple[EvalRuns, FakeService, FakeLLMs, FakeAudit],
) -> None:
    runs, service, _, audit = parts
    told: list[str] = []
    config = replace(CONFIG, generate=True, prompt="candidate")
    result = asyncio.run(
        runs.run(system_principal("default"), DATASET, config, baseline="production", notice=told.append)
    )
    assert [c.prompt for _, c, _ in service.runs] == ["candidate", "production"]
    assert result.baseline_ran and result.baseline_run == "run-2" and result.gate is not None
    assert told and "production" in told[0]
    (event,) = audit.events
    assert event["after"]["baseline_run"] == "run-2" and event["after"]["gate_passed"] is True


def test_a_job_runs_as_the_system_caller_of_its_tenant(
    parts: tuple[EvalRuns, FakeService, FakeLLMs, FakeAudit],
) -> None:
    runs, service, _, audit = parts
    job = EvalJob.model_validate(
        {"name": "nightly", "cron": "0 3 * * *", "dataset": GOLDEN, "collection": "docs", "tenant": "acme"}
        | {"limit": 3, "generate": False, "prompt": "2"}
    )
    result = asyncio.run(runs.run_job(job))
    ((runner, config, tags),) = service.runs
    assert runner.caller == system_principal("acme") and config.tenant == "acme"
    assert (config.top_k, config.prompt) == (4, 2)
    assert tags == {"opsloop.eval.job": "nightly"} and result.run_id == "run-1"
    assert audit.events[0]["actor"] == "system" and audit.events[0]["after"]["tags"] == tags


def test_eval_config_reads_options_as_the_cli_gives_them() -> None:
    config = eval_config(collection="docs", default_top_k=5, prompt_version="3", generate=False)
    assert (config.prompt, config.top_k, config.max_answer_tokens) == (3, 5, None)
    assert (
        eval_config(collection="docs", default_top_k=5, prompt_version="staging", top_k=2).prompt == "staging"
    )
