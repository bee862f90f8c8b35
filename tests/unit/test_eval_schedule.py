"""Eval jobs: validation, next fire times, the exported gauges, and triggering by name."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import ValidationError

from evals.gate import GateReport, MetricComparison
from evals.results import MetricSummary
from evals.schedule import EvalJob, EvalScheduler, JobResult, next_fire_times, parse_jobs, run_job
from opsloop.auth import system_principal
from opsloop.errors import BackendError, ConfigError, NotFoundError
from opsloop.scheduler import Scheduler
from opsloop.telemetry import EvalMetrics

SYSTEM = system_principal("default")


def _job(**fields: object) -> EvalJob:
    data: dict[str, object] = {
        "name": "nightly",
        "cron": "0 3 * * *",
        "dataset": Path("g.jsonl"),
        "collection": "docs",
    }
    data.update(fields)
    return EvalJob.model_validate(data)


def _summary(name: str, mean: float | None, failed: int = 0) -> MetricSummary:
    return MetricSummary(name, mean, mean, mean, 0 if mean is None else 3, failed, 0, 0, {})


def test_jobs_validate_cron_name_and_gate() -> None:
    assert _job().prompt == "production"
    with pytest.raises(ValidationError, match="not a valid cron expression"):
        _job(cron="every night")
    with pytest.raises(ValidationError, match="name"):
        _job(name="Nightly Job")
    with pytest.raises(ValidationError, match="unknown gate metric"):
        _job(gate=("accuracy",))
    with pytest.raises(ValidationError, match="extra"):
        _job(schedule="daily")
    assert _job(gate=("mrr:0.05",)).gate_rules()[0].max_drop == 0.05  # type: ignore[index]


def test_next_fire_times_follow_the_cron_in_utc() -> None:
    after = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    fires = next_fire_times(_job(cron="30 */6 * * *"), after=after, count=3)
    assert [f.isoformat() for f in fires] == [
        "2025-01-01T12:30:00+00:00",
        "2025-01-01T18:30:00+00:00",
        "2025-01-02T00:30:00+00:00",
    ]


def _metrics() -> tuple[EvalMetrics, CollectorRegistry]:
    registry = CollectorRegistry()
    return EvalMetrics(registry), registry


def test_run_job_exports_scores_failures_success_time_and_gate() -> None:
    metrics, registry = _metrics()
    comparison = MetricComparison("hit_rate", 3, 0.5, 0.9, -0.4, -0.6, -0.2, True, 0.0, "regressed")
    gate = GateReport([comparison], 0.95, 3, 0, 0)

    async def execute(job: EvalJob) -> JobResult:
        return JobResult(
            "run1",
            {"hit_rate": _summary("hit_rate", 0.5), "faithfulness": _summary("faithfulness", None, 3)},
            gate,
        )

    outcome, result = asyncio.run(run_job(_job(), execute, metrics, clock=lambda: 1234.0))
    assert outcome == "gate_failed" and result is not None and result.run_id == "run1"
    text = generate_latest(registry).decode()
    assert 'opsloop_eval_score{eval_job="nightly",metric="hit_rate"} 0.5' in text
    assert (
        'metric="faithfulness"} ' not in text.split("opsloop_eval_metric_failures")[0]
    )  # no score: no gauge
    assert 'opsloop_eval_metric_failures{eval_job="nightly",metric="faithfulness"} 3.0' in text
    assert 'opsloop_eval_last_success_timestamp_seconds{eval_job="nightly"} 1234.0' in text
    assert 'opsloop_eval_gate_passed{eval_job="nightly"} 0.0' in text
    assert 'opsloop_eval_runs_total{eval_job="nightly",outcome="gate_failed"} 1.0' in text


def test_a_failing_job_is_counted_and_keeps_its_last_success_time() -> None:
    metrics, registry = _metrics()

    async def broken(job: EvalJob) -> JobResult:
        raise BackendError("the store is down")

    scheduler = EvalScheduler([_job()], broken, metrics)
    with pytest.raises(BackendError):
        asyncio.run(scheduler.trigger(SYSTEM, "nightly"))
    status = scheduler.jobs(SYSTEM)[0]
    assert (status.last_outcome, status.last_error, status.running) == ("failed", "the store is down", False)
    assert status.next_run is not None
    text = generate_latest(registry).decode()
    assert 'opsloop_eval_runs_total{eval_job="nightly",outcome="failed"} 1.0' in text
    assert "opsloop_eval_last_success_timestamp_seconds{" not in text
    with pytest.raises(NotFoundError, match="known jobs: nightly"):
        asyncio.run(scheduler.trigger(SYSTEM, "weekly"))


def test_settings_entries_are_checked_naming_the_entry() -> None:
    entry = {"name": "nightly", "cron": "0 3 * * *", "dataset": "g.jsonl", "collection": "docs"}
    assert [job.name for job in parse_jobs([entry])] == ["nightly"]
    with pytest.raises(ConfigError, match="unique: nightly"):
        parse_jobs([entry, entry])
    with pytest.raises(ConfigError, match=r"invalid eval_jobs\[1\]: cron"):
        parse_jobs([entry, {**entry, "name": "weekly", "cron": "every day"}])


def test_the_scheduler_fires_on_the_running_loop() -> None:
    metrics, _ = _metrics()
    fired: list[str] = []

    async def execute(job: EvalJob) -> JobResult:
        fired.append(job.name)
        return JobResult("r1", {"mrr": _summary("mrr", 1.0)})

    async def main() -> None:
        evals = EvalScheduler([_job(cron="* * * * *")], execute, metrics)
        scheduler = Scheduler()
        evals.schedule(scheduler)
        scheduler.start()
        try:
            assert scheduler.jobs() == ["eval:nightly"] and evals.jobs(SYSTEM)[0].next_run is not None
            job = scheduler._scheduler.get_job("eval:nightly")
            job.modify(next_run_time=datetime.now(UTC))  # fire now instead of at the next minute
            for _ in range(100):
                if fired:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.05)
            assert evals.jobs(SYSTEM)[0].last_run_id == "r1"
        finally:
            scheduler.shutdown()

    asyncio.run(main())
    assert fired == ["nightly"]
