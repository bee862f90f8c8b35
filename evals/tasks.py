"""Eval runs a server runs in the background, with their progress, for the callers that started them.

An eval run handed to ``opsloop serve`` (``POST /admin/evals/runs``, which ``opsloop eval run``
uses while a server holds the store) takes minutes. :class:`EvalTasks` runs each as an asyncio
task on the server's loop and keeps what is known of it: the stage (``eval``, then ``baseline``
when the baseline has to be evaluated first), the samples done of the stage's total, notices,
and once it has ended its result or its error. ``GET /admin/evals/tasks/{id}`` answers from it,
so a caller can poll a run's progress instead of waiting blind.

Tasks live in the memory of the process that runs them: a finished one is kept for
``keep_seconds`` (and only the newest ``keep`` of them). Reading one follows the tenant rule of
every other read (``Principal.scope``): an admin reads any tenant's, anyone else their own
tenant's; another tenant's is a 404, as if it did not exist. :meth:`EvalTasks.aclose` cancels
the runs still going when the server stops (a cut-short run resumes when asked again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from evals.runner import Progress
from evals.runs import EvalRunResult, Stage
from opsloop.auth import Principal
from opsloop.errors import NotFoundError, OpsloopError

__all__ = ["EvalTask", "EvalTasks", "TaskRun", "TaskState"]

log = logging.getLogger("opsloop.evals")

TaskState = Literal["running", "finished", "failed"]

TaskRun = Callable[[Stage, Callable[[str], None]], Awaitable[EvalRunResult]]
"""A run to do, given the stage callback to pass ``EvalRuns.run`` and where its notices go."""


@dataclass
class EvalTask:
    """One eval run in this server: who started it, how far it got, and how it ended."""

    id: str
    tenant: str
    actor: str
    dataset: str
    samples: int
    started_at: datetime
    state: TaskState = "running"
    stage: str = "eval"
    """``eval``, or ``baseline`` while the baseline is evaluated."""
    done: int = 0
    total: int = 0
    """Samples of the current stage: ``done`` of ``total`` scored (resumed ones included)."""
    notices: list[str] = field(default_factory=list)
    ended_at: datetime | None = None
    result: EvalRunResult | None = None
    error: BaseException | None = None
    _ended: float | None = field(default=None, repr=False)
    _task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def seconds(self) -> float:
        """How long it ran, or has run so far."""
        end = self.ended_at or datetime.now(UTC)
        return (end - self.started_at).total_seconds()

    @contextlib.contextmanager
    def stage_progress(self, label: str) -> Iterator[Progress | None]:
        """A ``evals.runs.Stage``: the stage now running, and the callback its samples report to."""
        self.stage, self.done, self.total = label, 0, self.samples

        def progress(done: int, total: int) -> None:
            self.done, self.total = done, total

        yield progress


class EvalTasks:
    """The eval runs of one server process (see the module docs).

    Args:
        keep: Finished tasks kept at most (the oldest go first).
        keep_seconds: How long a finished task can still be read.
        clock: Seconds, monotonic (tests pass their own).
    """

    def __init__(
        self,
        *,
        keep: int = 100,
        keep_seconds: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.keep = keep
        self.keep_seconds = keep_seconds
        self._clock = clock
        self._tasks: dict[str, EvalTask] = {}

    def start(self, caller: Principal, dataset: str, samples: int, run: TaskRun) -> EvalTask:
        """Start ``run`` for ``caller`` on the running event loop; returns its task at once.

        ``dataset`` and ``samples`` describe it (the data set's name and its number of questions).
        """
        self._prune()
        task = EvalTask(
            id=uuid.uuid4().hex,
            tenant=caller.tenant,
            actor=caller.actor,
            dataset=dataset,
            samples=samples,
            started_at=datetime.now(UTC),
            total=samples,
        )
        self._tasks[task.id] = task
        task._task = asyncio.get_running_loop().create_task(self._run(task, run), name=f"eval-task-{task.id}")
        return task

    async def _run(self, task: EvalTask, run: TaskRun) -> None:
        # The outcome is kept, not raised: a task nobody waits for (wait=false) must not
        # end in "exception was never retrieved"; wait() raises it for those who do.
        try:
            result = await run(task.stage_progress, task.notices.append)
        except asyncio.CancelledError as exc:  # the server is stopping
            self._end(task, "failed", error=exc)
            raise
        except OpsloopError as exc:
            self._end(task, "failed", error=exc)
            log.info("eval task %s failed: %s", task.id, exc.message)
        except Exception as exc:
            self._end(task, "failed", error=exc)
            log.exception("eval task %s failed", task.id)
        else:
            self._end(task, "finished", result=result)

    def _end(
        self,
        task: EvalTask,
        state: TaskState,
        *,
        result: EvalRunResult | None = None,
        error: BaseException | None = None,
    ) -> None:
        task.state, task.result, task.error = state, result, error
        task.ended_at = datetime.now(UTC)
        task._ended = self._clock()

    async def wait(self, task: EvalTask) -> EvalRunResult:
        """The run's result once it has finished (its error raised if it failed).

        A waiter that is cancelled (its client went away) leaves the run going.
        """
        if task._task is not None:  # always: start() made it
            await asyncio.shield(task._task)
        if task.error is not None:
            raise task.error
        if task.result is None:  # pragma: no cover - a task that did not fail has its result
            raise RuntimeError(f"eval task {task.id} ended without a result")
        return task.result

    def get(self, caller: Principal, task_id: str) -> EvalTask:
        """Task ``task_id``, if ``caller`` may read it.

        Raises:
            NotFoundError: No such task (or no longer kept), or another tenant's for a non-admin.
        """
        self._prune()
        task = self._tasks.get(task_id)
        if task is None or caller.scope(None, "eval tasks") not in (None, task.tenant):
            raise NotFoundError(f"no eval task {task_id!r} in this server", task=task_id)
        return task

    def visible(self, caller: Principal, tenant: str | None = None) -> list[EvalTask]:
        """The tasks ``caller`` may read (an admin: ``tenant``'s, or every tenant's), newest first.

        Raises:
            ForbiddenError: A non-admin asked for another tenant's.
        """
        self._prune()
        scope = caller.scope(tenant, "eval tasks")
        found = [task for task in self._tasks.values() if scope is None or task.tenant == scope]
        return sorted(found, key=lambda task: task.started_at, reverse=True)

    def cancel(self, task: EvalTask) -> None:
        """Stop ``task``'s run if it is still going (call on the loop that runs it); it ends as failed."""
        if task.state == "running" and task._task is not None:
            task._task.cancel()

    async def aclose(self) -> None:
        """Cancel the runs still going and wait for them to stop."""
        running = [task for task in self._tasks.values() if task.state == "running"]
        for task in running:
            if task._task is not None:
                task._task.cancel()
        await asyncio.gather(*(task._task for task in running if task._task), return_exceptions=True)
        for task in running:
            if task.state == "running":  # cancelled before its run began
                self._end(task, "failed", error=asyncio.CancelledError())

    def _prune(self) -> None:
        now = self._clock()
        ended = sorted((task._ended, task.id) for task in self._tasks.values() if task._ended is not None)
        expired = {task_id for at, task_id in ended if now - at > self.keep_seconds}
        expired |= {task_id for _, task_id in ended[: max(0, len(ended) - self.keep)]}
        for task_id in expired:
            del self._tasks[task_id]
