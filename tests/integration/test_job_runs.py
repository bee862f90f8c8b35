"""Periodic jobs run once per fire across processes sharing the store (SQLite and PostgreSQL).

Several schedulers on one database stand in for replicas here; two `opsloop serve` processes
doing the same are in tests/integration/test_replicas.py.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from opsloop.db import Database
from opsloop.job_runs import KEEP, JobRuns
from opsloop.scheduler import Job, Scheduler


def test_one_claim_of_a_slot_wins_among_concurrent_processes(database: Database) -> None:
    holders = [JobRuns(database, holder=f"replica-{i}") for i in range(6)]
    won: list[str] = []
    barrier = threading.Barrier(len(holders))

    def claim(runs: JobRuns) -> None:
        barrier.wait()
        if runs.claim("drift-checks", 1000):
            won.append(runs.holder)

    threads = [threading.Thread(target=claim, args=(runs,)) for runs in holders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(won) == 1
    [run] = holders[0].recent("drift-checks")
    assert (run.holder, run.slot, run.status, run.ended_at) == (won[0], 1000, "running", None)
    assert holders[1].claim("drift-checks", 1001)  # the next slot is free again
    assert holders[2].claim("eval:docs", 1000)  # and each job has its own slots


def test_a_run_records_how_it_ended_and_its_error(database: Database) -> None:
    runs = JobRuns(database, holder="me")

    async def broken() -> None:
        raise RuntimeError("the registry is down")

    with pytest.raises(RuntimeError):
        asyncio.run(Job(broken, seconds=3600).run_once("retraining", runs))
    ran = asyncio.run(Job(broken, seconds=3600).run_once("retraining", runs))  # same hour: taken
    assert ran is False
    last = runs.latest()["retraining"]
    assert (last.status, last.error) == ("failed", "RuntimeError: the registry is down")
    assert last.ended_at is not None and last.ended_at >= last.started_at


def test_each_job_keeps_its_newest_runs_only(database: Database) -> None:
    runs = JobRuns(database, holder="me")
    for slot in range(KEEP + 5):
        assert runs.claim("drift-checks", slot)
    kept = runs.recent("drift-checks", limit=KEEP + 10)
    assert len(kept) == KEEP
    assert min(run.slot for run in kept) == 5


def test_replicas_schedulers_run_each_fire_once(database: Database) -> None:
    """Three schedulers fire a 1 s job for about 3.5 s: each second's fire runs exactly once."""
    ran: list[str] = []

    async def replicas() -> None:
        schedulers = []
        for i in range(3):
            scheduler = Scheduler(JobRuns(database, holder=f"replica-{i}"))
            scheduler.every("drift-checks", 1.0, lambda i=i: ran.append(f"replica-{i}"))
            schedulers.append(scheduler)
            scheduler.start()
            await asyncio.sleep(0.3)  # started at different moments, as replicas are
        await asyncio.sleep(3.5)
        for scheduler in schedulers:
            scheduler.shutdown()

    asyncio.run(replicas())
    history = JobRuns(database).recent("drift-checks", limit=100)
    assert len(ran) == len(history) >= 3
    assert len({run.slot for run in history}) == len(history)
    assert sorted(ran) == sorted(run.holder for run in history)
    assert all(run.status == "ok" for run in history)


def test_a_job_added_not_once_runs_in_every_process(database: Database) -> None:
    ran: list[int] = []

    async def replicas() -> None:
        schedulers = [Scheduler(JobRuns(database, holder=f"r{i}")) for i in range(2)]
        for i, scheduler in enumerate(schedulers):
            scheduler.every("experiment-decider", 0.5, lambda i=i: ran.append(i), once=False)
            scheduler.start()
        await asyncio.sleep(1.3)
        for scheduler in schedulers:
            scheduler.shutdown()

    asyncio.run(replicas())
    assert set(ran) == {0, 1}
    assert JobRuns(database).recent("experiment-decider") == []
