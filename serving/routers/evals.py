"""Scheduled evals of a running server: ``GET /admin/evals/jobs`` and ``.../{name}/trigger``.

The jobs are ``eval_jobs`` in the settings; ``opsloop serve`` fires them on their cron
schedules. Triggering runs a job now, in the server (which holds the vector store), and
answers when it has finished.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path
from pydantic import BaseModel

from evals.schedule import JobStatus
from opsloop.errors import NotFoundError
from serving.deps import OperatorKey, PlatformDep

router = APIRouter(prefix="/admin/evals", tags=["evals"])


class EvalJobPublic(BaseModel):
    """A scheduled eval job: when it fires next and how its last run went."""

    name: str
    cron: str
    next_run: datetime | None
    last_run: datetime | None
    last_outcome: Literal["ok", "gate_failed", "failed"] | None
    last_run_id: str | None
    last_error: str | None
    running: bool

    @classmethod
    def of(cls, status: JobStatus) -> EvalJobPublic:
        """The public form of a job's status."""
        fields = {name: getattr(status, name) for name in cls.model_fields}
        return cls(**fields)


@router.get("/jobs", summary="The scheduled eval jobs")
async def list_jobs(platform: PlatformDep, _: OperatorKey) -> list[EvalJobPublic]:
    """Every job of ``eval_jobs`` with its next fire time (UTC) and its last outcome in this server."""
    if platform.evals is None:
        return []
    return [EvalJobPublic.of(status) for status in platform.evals.jobs()]


@router.post("/jobs/{name}/trigger", summary="Run a scheduled eval job now")
async def trigger_job(
    name: Annotated[str, Path(min_length=1, max_length=64)], platform: PlatformDep, _: OperatorKey
) -> EvalJobPublic:
    """Run job ``name`` now and answer when it has finished (``last_outcome`` says how it went)."""
    if platform.evals is None:
        raise NotFoundError(f"no eval job {name!r}; no eval_jobs are configured", job=name)
    return EvalJobPublic.of(await platform.evals.trigger(name))
