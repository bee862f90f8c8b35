"""The one scheduler of an ``opsloop serve`` process: every periodic job runs on it.

Drift checks, scheduled evals, and later the experiment deciders and retraining triggers all
register here, so a process has one place that fires jobs and one list of what is scheduled.
It is APScheduler's ``AsyncIOScheduler`` on the server's event loop, because some jobs (eval
runs) call the gateway, whose clients belong to that loop; a blocking job (a drift check that
reads the database and computes statistics) runs in a worker thread, so the loop keeps
answering requests meanwhile. A job never overlaps itself (``max_instances=1``), missed fires
collapse into one (``coalesce``), and a failing job is logged and fired again next time.
Jobs may be added before :meth:`Scheduler.start` or while it runs, from any thread.

Given the store's :class:`~opsloop.job_runs.JobRuns`, a job added with ``once=True`` (the default)
runs each fire only in the process that claims it, so replicas sharing a database run it once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opsloop.job_runs import JobRuns

__all__ = ["Job", "Scheduler", "cron_trigger"]

log = logging.getLogger("opsloop.scheduler")


def cron_trigger(expression: str) -> Any:
    """APScheduler's trigger for a standard 5-field cron ``expression``, in UTC.

    Raises:
        ValueError: The expression is not valid cron.
    """
    from apscheduler.triggers.cron import CronTrigger

    return CronTrigger.from_crontab(expression, timezone=UTC)


@dataclass(frozen=True)
class Job:
    """A periodic job: a coroutine function, fired every ``seconds`` or at the times of ``cron`` (UTC)."""

    work: Callable[[], Awaitable[object]]
    seconds: float | None = None
    cron: str | None = None

    @classmethod
    def blocking(
        cls, work: Callable[[], object], *, seconds: float | None = None, cron: str | None = None
    ) -> Job:
        """A job of blocking ``work``, run in a worker thread so the loop keeps answering meanwhile."""

        async def run() -> None:
            await asyncio.to_thread(work)

        return cls(run, seconds=seconds, cron=cron)

    @property
    def period(self) -> float:
        """Seconds a fire's slot spans (see :mod:`opsloop.job_runs`): the interval, or cron's minute."""
        return self.seconds if self.seconds is not None else 60.0

    async def run_once(self, name: str, runs: JobRuns) -> bool:
        """Run now if this process claims the current slot; False when another process has it."""
        return await runs.run(name, self.period, self.work)


class Scheduler:
    """Periodic jobs on one event loop; see the module docs."""

    def __init__(self, runs: JobRuns | None = None) -> None:
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        self._scheduler = AsyncIOScheduler(timezone=UTC)
        self._runs = runs

    def add(self, job_id: str, job: Job, *, once: bool = True) -> None:
        """Fire ``job`` on its schedule; ``once``: each fire runs in one process sharing the store."""
        runs = self._runs if once else None

        async def logged() -> None:
            try:
                if runs is None:
                    await job.work()
                elif not await job.run_once(job_id, runs):
                    log.debug("job %s: this fire runs in another process", job_id)
            except Exception:  # the next fire tries again; the failure must be seen, not lost
                log.exception("scheduled job %s failed", job_id)

        options: dict[str, Any]
        if job.cron is not None:
            trigger, options = cron_trigger(job.cron), {"misfire_grace_time": 3600}
        else:
            trigger, options = "interval", {"seconds": job.seconds}
        self._scheduler.add_job(
            logged, trigger, id=job_id, max_instances=1, coalesce=True, replace_existing=True, **options
        )

    def every(self, job_id: str, seconds: float, work: Callable[[], object], *, once: bool = True) -> None:
        """Run the blocking ``work`` every ``seconds`` in a worker thread."""
        self.add(job_id, Job.blocking(work, seconds=seconds), once=once)

    def cron(self, job_id: str, expression: str, work: Callable[[], Awaitable[object]]) -> None:
        """Run the coroutine function ``work`` on the loop at the times of a cron ``expression`` (UTC)."""
        self.add(job_id, Job(work, cron=expression))

    def next_run(self, job_id: str) -> datetime | None:
        """When ``job_id`` fires next; None when it is not scheduled (or the scheduler is stopped)."""
        job = self._scheduler.get_job(job_id)
        return None if job is None else getattr(job, "next_run_time", None)

    def jobs(self) -> list[str]:
        """The ids of the scheduled jobs."""
        return [job.id for job in self._scheduler.get_jobs()]

    def start(self) -> None:
        """Start firing; call from the event loop the jobs belong to."""
        self._scheduler.start()

    def shutdown(self) -> None:
        """Stop firing (a job in progress is cancelled with the loop)."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
