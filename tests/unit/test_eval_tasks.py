"""Eval runs in a server's background: progress by stage, outcomes kept for pollers, tenants apart.

The runs here are small coroutines that report progress through the stage callback as
``EvalRuns.run`` does; the real operation runs through the server in tests/e2e/test_eval_handoff.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

import pytest

from evals.runs import EvalRunResult, Stage
from evals.tasks import EvalTasks
from opsloop.auth import Principal, Role
from opsloop.errors import ForbiddenError, NotFoundError

ALICE = Principal("k-alice", "acme", Role.OPERATOR)
BOB = Principal("k-bob", "globex", Role.OPERATOR)
ADMIN = Principal("k-admin", "default", Role.ADMIN)
RESULT = cast(EvalRunResult, object())
"""What a run returns is not looked at by the tasks: any object stands for it."""


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def stepped(gate: asyncio.Event, *, baseline: bool = False, fail: Exception | None = None) -> Any:
    """A run of 3 samples that waits on ``gate`` after the first; optionally a baseline stage."""

    async def run(stage: Stage, notice: Callable[[str], None]) -> EvalRunResult:
        with stage("eval") as progress:
            assert progress is not None
            progress(1, 3)
            await gate.wait()
            progress(3, 3)
        if baseline:
            notice("no finished run of the production prompt: running it first")
            with stage("baseline") as progress:
                assert progress is not None
                progress(2, 3)
        if fail is not None:
            raise fail
        return RESULT

    return run


def test_a_task_shows_its_stage_and_progress_until_it_finishes() -> None:
    async def scenario() -> None:
        tasks, gate = EvalTasks(), asyncio.Event()
        task = tasks.start(ALICE, "docs_golden", 3, stepped(gate, baseline=True))
        assert (task.state, task.stage, task.done, task.total) == ("running", "eval", 0, 3)
        await asyncio.sleep(0)
        assert (task.done, task.total) == (1, 3)
        gate.set()
        assert await tasks.wait(task) is RESULT
        assert (task.state, task.stage, task.done) == ("finished", "baseline", 2)
        assert task.notices == ["no finished run of the production prompt: running it first"]
        assert task.result is RESULT and task.error is None and task.ended_at is not None
        assert tasks.get(ALICE, task.id) is task

    asyncio.run(scenario())


def test_a_failed_run_keeps_its_error_for_pollers_and_raises_it_to_a_waiter() -> None:
    async def scenario() -> None:
        tasks, gate = EvalTasks(), asyncio.Event()
        gate.set()
        task = tasks.start(ALICE, "x", 3, stepped(gate, fail=NotFoundError("no collection 'nope'")))
        with pytest.raises(NotFoundError, match="nope"):
            await tasks.wait(task)
        assert task.state == "failed" and isinstance(task.error, NotFoundError)
        # Nobody waits for this one (wait=false): it ends without an unretrieved exception.
        lost = tasks.start(ALICE, "x", 3, stepped(gate, fail=RuntimeError("boom")))
        await asyncio.sleep(0.01)
        assert lost.state == "failed" and isinstance(lost.error, RuntimeError)

    asyncio.run(scenario())


def test_a_waiter_that_goes_away_leaves_the_run_going() -> None:
    async def scenario() -> None:
        tasks, gate = EvalTasks(), asyncio.Event()
        task = tasks.start(ALICE, "x", 3, stepped(gate))
        waiter = asyncio.create_task(tasks.wait(task))
        await asyncio.sleep(0)
        waiter.cancel()
        gate.set()
        assert await tasks.wait(task) is RESULT and task.state == "finished"

    asyncio.run(scenario())


def test_tasks_are_read_only_in_their_tenant_or_by_an_admin() -> None:
    async def scenario() -> None:
        tasks, gate = EvalTasks(), asyncio.Event()
        gate.set()
        mine = tasks.start(ALICE, "x", 3, stepped(gate))
        theirs = tasks.start(BOB, "y", 3, stepped(gate))
        await tasks.wait(mine)
        await tasks.wait(theirs)
        with pytest.raises(NotFoundError):
            tasks.get(BOB, mine.id)
        with pytest.raises(NotFoundError):
            tasks.get(ALICE, "nosuchtask")
        assert tasks.get(ADMIN, mine.id) is mine
        assert tasks.visible(ALICE) == [mine]
        assert {t.id for t in tasks.visible(ADMIN)} == {mine.id, theirs.id}
        assert tasks.visible(ADMIN, tenant="globex") == [theirs]
        with pytest.raises(ForbiddenError):
            tasks.visible(ALICE, tenant="globex")

    asyncio.run(scenario())


def test_finished_tasks_are_kept_for_a_while_and_only_the_newest_few() -> None:
    async def scenario() -> None:
        clock = Clock()
        tasks, gate = EvalTasks(keep=2, keep_seconds=60, clock=clock), asyncio.Event()
        gate.set()
        done = []
        for _ in range(3):
            done.append(tasks.start(ALICE, "x", 3, stepped(gate)))
            await tasks.wait(done[-1])
            clock.now += 1
        assert [t.id for t in tasks.visible(ALICE)] == [t.id for t in reversed(done[1:])]
        running = tasks.start(ALICE, "x", 3, stepped(asyncio.Event()))
        clock.now += 61
        assert tasks.visible(ALICE) == [running]  # a running task is never dropped
        await tasks.aclose()
        assert running.state == "failed" and isinstance(running.error, asyncio.CancelledError)

    asyncio.run(scenario())
