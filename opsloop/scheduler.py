"""The one scheduler of an ``opsloop serve`` process: every periodic job runs on it.

Drift checks, scheduled evals, and later the experiment deciders and retraining triggers all
register here, so a process has one place that fires jobs and one list of what is scheduled.
It is APScheduler's ``AsyncIOScheduler`` on the server's event loop, because some jobs (eval
runs) call the gateway, whose clients belong to that loop; a blocking job (a drift check that
reads the database and computes statistics) runs in a worker thread, so the loop keeps
answering requests meanwhile. A job never overlaps itself (``max_instances=1``), missed fires
collapse into one (``coalesce``), and a failing job is logged and fired again next time.
Jobs may be added before :meth:`Scheduler.start` or while it runs, from any thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

__all__ = ["Scheduler", "cron_trigger"]

log = logging.getLogger("opsloop.scheduler")


def cron_trigger(expression: str) -> Any:
    """APScheduler's trigger for a standard 5-field cron ``expression``, in UTC.

    Raises:
        ValueError: The expression is not valid cron.
    """
    from apscheduler.triggers.cron import CronTrigger

    return CronTrigger.from_crontab(expression, timezone=UTC)


class Scheduler:
    """Periodic jobs on one event loop; see the module docs."""

    def __init__(self) -> None:
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        self._scheduler = AsyncIOScheduler(timezone=UTC)

    def every(self, job_id: str, seconds: float, work: Callable[[], object]) -> None:
        """Run the blocking ``work`` every ``seconds`` in a worker thread."""

        async def run() -> None:
            await asyncio.to_thread(work)

        self._add(job_id, run, "interval", seconds=seconds)

    def cron(self, job_id: str, expression: str, work: Callable[[], Awaitable[object]]) -> None:
        """Run the coroutine function ``work`` on the loop at the times of a cron ``expression`` (UTC)."""
        self._add(job_id, work, cron_trigger(expression), misfire_grace_time=3600)

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

    def _add(self, job_id: str, work: Callable[[], Awaitable[object]], trigger: Any, **options: Any) -> None:
        async def logged() -> None:
            try:
                await work()
            except Exception:  # the next fire tries again; the failure must be seen, not lost
                log.exception("scheduled job %s failed", job_id)

        self._scheduler.add_job(
            logged, trigger, id=job_id, max_instances=1, coalesce=True, replace_existing=True, **options
        )
