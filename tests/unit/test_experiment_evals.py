"""An eval-decided experiment's runs as the decider reads them: in turn; a cut-short run is no verdict.

The runs are real asyncio tasks of :class:`evals.tasks.EvalTasks` that return a finished run's
result; scoring a real one needs the whole platform (``tests/integration/test_prompt_experiments.py``).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from evals.dataset import parse_dataset
from evals.results import SampleResult
from evals.runner import EvalConfig, EvalOutcome
from evals.runs import EvalRunResult
from evals.service import TrackedRun
from evals.tasks import EvalTask, EvalTasks
from opsloop.auth import system_principal
from opsloop.tables import utcnow
from serving.experiment_evals import ExperimentEvals, _Runs
from workflows.experiments.store import Experiment, new_salt


def _experiment() -> Experiment:
    now = utcnow()
    return Experiment(
        name="by-eval",
        tenant="default",
        kind="ab",
        target_kind="prompt",
        target="rag-answer",
        champion="1",
        challenger="2",
        status="running",
        weight=50.0,
        step=0,
        step_started_at=now,
        salt=new_salt(),
        config={"primary": "eval:semantic_similarity", "eval": {}},
        checks={},
        decision=None,
        created_at=now,
        created_by="test",
    )


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop in a thread of its own, as the server's is to the decider's thread."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=5)
    loop.close()


def _on(loop: asyncio.AbstractEventLoop, work: Any) -> Any:
    async def run() -> Any:
        return work()

    return asyncio.run_coroutine_threadsafe(run(), loop).result(timeout=5)


def _finished_run(tmp_path: Path, scores: list[float]) -> EvalRunResult:
    """A finished eval run of three questions, as the evals runner returns one."""
    lines = [
        json.dumps(
            {"question": f"question {i}?", "reference": f"answer {i}", "reference_sources": ["doc.md"]}
        )
        for i in range(3)
    ]
    dataset = parse_dataset(lines, name="qs")
    samples = [
        SampleResult(
            id=item.id,
            question=item.question,
            reference=item.reference,
            answer="an answer [1]",
            sources=["doc.md"],
            contexts=["a chunk"],
            prompt_version="1",
            latency_ms=900.0,
            retrieval_ms=10.0,
            generation_ms=880.0,
            answer_tokens={"prompt": 100, "completion": 8},
            judge={},
            cost_usd=0.0,
            scores={"semantic_similarity": value},
        )
        for item, value in zip(dataset.items, scores, strict=True)
    ]
    outcome = EvalOutcome(samples, {}, ("semantic_similarity",), resumed=0, seconds=3.0)
    return EvalRunResult(dataset, TrackedRun("run-1", tmp_path, EvalConfig("docs"), outcome, False))


def test_the_challenger_runs_after_the_champion_and_a_cancelled_run_is_no_verdict(
    loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    tasks = EvalTasks()
    champion_done = threading.Event()
    started: list[str] = []

    def start(variant: str) -> EvalTask:
        async def run(stage: Any, notice: Any) -> Any:
            while variant == "challenger" or not champion_done.is_set():
                await asyncio.sleep(0.01)
            return _finished_run(tmp_path, [0.25, 0.5, 0.75])

        def begin() -> EvalTask:
            started.append(variant)
            return tasks.start(system_principal("default"), "qs", 3, run)

        return _on(loop, begin)  # type: ignore[no-any-return]

    evals = ExperimentEvals(host=None, tasks=tasks, loop=loop)  # type: ignore[arg-type]
    experiment = _experiment()
    evals._runs[experiment.name] = _Runs(start, start("champion"))

    state = evals.evaluate(experiment)
    assert state.status == "running" and started == ["champion"]
    assert state.describe() == "champion v1 0/3, challenger v2 0/3 questions"

    champion_done.set()
    deadline = time.monotonic() + 5
    while evals._runs[experiment.name].champion.state == "running":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    state = evals.evaluate(experiment)
    assert state.status == "running" and started == ["champion", "challenger"]
    assert (state.champion.run_id, state.champion.mean) == ("run-1", 0.5)

    asyncio.run_coroutine_threadsafe(tasks.aclose(), loop).result(timeout=5)  # the server stops
    state = evals.evaluate(experiment)
    assert state.status == "running" and state.error is None  # not "failed": no rollback for it

    evals.keep_only(set())  # the experiment ended: its runs are forgotten
    assert evals._runs == {}
