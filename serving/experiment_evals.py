"""The eval runs of eval-decided prompt experiments (a ``workflows.experiments.evaluation.Evaluator``).

An experiment with primary ``eval:METRIC`` is decided on a data set: the first time the
decider looks at it, :class:`ExperimentEvals` starts an eval run of the champion's prompt
version on the server's loop, and once that has finished one of the challenger's, through the
same operation as ``opsloop eval run`` (:func:`serving.eval_wiring.eval_runs`): the caller's
tenant's collection, answers in the ledger, each run tracked in MLflow (tags
``opsloop.experiment`` and ``opsloop.variant``) and audited. They are this server's eval
tasks, so ``GET /admin/evals/tasks`` shows their progress. An experiment that ends while its
runs go cancels them; a server that restarts starts them again, and each resumes its checkpoint.

:func:`check_eval_plan` checks the settings when the experiment is created (the CLI's process
or the server's), so a typo fails there rather than minutes later in the decider.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evals.dataset import EvalDataset, load_dataset
from evals.metrics import METRICS
from evals.runs import eval_config
from evals.scoring import select_metrics
from evals.tasks import EvalTask, EvalTasks
from opsloop.auth import system_principal
from opsloop.errors import InvalidInputError, OpsloopError
from serving.eval_wiring import EvalHost, eval_runs
from workflows.experiments.evaluation import EvalState, VariantEval, eval_metric
from workflows.experiments.store import Experiment

__all__ = ["ExperimentEvals", "check_eval_plan"]

_KEYS = {"dataset", "collection", "limit", "route", "judge"}


def check_eval_plan(metric: str, plan: Mapping[str, Any]) -> dict[str, Any]:
    """The eval settings of an experiment deciding on ``metric``, as stored (the data set's path absolute).

    Raises:
        InvalidInputError: An unknown or prompt-independent metric, a judge metric without a
            judge route, an unknown setting, or a data set that does not load (its problems listed).
    """
    unknown = set(plan) - _KEYS
    if unknown:
        raise InvalidInputError(
            f"unknown eval settings {sorted(unknown)}; known: {sorted(_KEYS)}", field="eval"
        )
    spec = METRICS.get(metric)
    if spec is not None and spec.kind == "retrieval":
        raise InvalidInputError(
            f"eval metric {metric!r} scores retrieval, which the prompt does not change;"
            " decide on an answer metric such as semantic_similarity",
            field="primary",
        )
    select_metrics(generate=True, judge=bool(plan.get("judge")), only=[metric])  # names what is wrong
    collection = plan.get("collection")
    if not isinstance(collection, str) or not collection:
        raise InvalidInputError("an eval needs the collection its questions are asked of", field="collection")
    limit = plan.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InvalidInputError(f"eval limit {limit!r}: a number of questions, at least 1", field="limit")
    path = Path(str(plan.get("dataset") or "")).expanduser()
    dataset = _dataset(path, limit)
    if len(dataset.items) < 2:
        raise InvalidInputError(
            f"data set {path} gives {len(dataset.items)} question; a paired comparison needs two or more",
            field="dataset",
        )
    return {
        "dataset": str(path.resolve()),
        "collection": collection,
        "limit": limit,
        "route": plan.get("route"),
        "judge": plan.get("judge"),
    }


def _dataset(path: Path | str, limit: int | None) -> EvalDataset:
    dataset = load_dataset(path)
    return dataset if limit is None else dataset.subset(limit=limit)


@dataclass
class _Runs:
    """One experiment's runs: the champion's first, then the challenger's."""

    start: Callable[[str], EvalTask]
    """Starts the run of a variant (``champion`` or ``challenger``) on the server's loop."""
    champion: EvalTask
    challenger: EvalTask | None = None

    def tasks(self) -> list[EvalTask]:
        return [t for t in (self.champion, self.challenger) if t is not None]


class ExperimentEvals:
    """One eval run per variant of each eval-decided experiment, on the server's loop.

    The two runs go one after the other, each a question at a time: the in-process model
    answers one request at a time, and more in flight would only queue there (long enough,
    on a busy machine, for the model's capacity limit to fail a question).

    Args:
        host: The platform the runs use (its RAG service, gateway, registry and audit log).
        tasks: The server's eval tasks, which run them.
        loop: The server's event loop; :meth:`evaluate` is called from the decider's thread.
    """

    def __init__(self, host: EvalHost, tasks: EvalTasks, loop: asyncio.AbstractEventLoop) -> None:
        self.host = host
        self.tasks = tasks
        self.loop = loop
        self._runs: dict[str, _Runs] = {}

    def evaluate(self, experiment: Experiment) -> EvalState:
        """Where the experiment's two runs stand; the first call starts them (see the module docs)."""
        metric = eval_metric(experiment.config["primary"]) or ""
        runs = self._runs.get(experiment.name)
        try:
            if runs is None:
                runs = self._runs[experiment.name] = self._start(experiment, metric)
            if runs.challenger is None and runs.champion.state == "finished":
                runs.challenger = runs.start("challenger")
        except OpsloopError as exc:  # the data set went away since it was planned, say
            versions = (VariantEval(experiment.champion), VariantEval(experiment.challenger))
            return EvalState("failed", metric, *versions, error=exc.message)
        champion = _variant(runs.champion, experiment.champion, metric)
        challenger = (
            VariantEval(experiment.challenger, total=runs.champion.samples)
            if runs.challenger is None
            else _variant(runs.challenger, experiment.challenger, metric)
        )
        for name, task in (("champion", runs.champion), ("challenger", runs.challenger)):
            if task is not None and isinstance(task.error, asyncio.CancelledError):
                # The server is stopping (nothing else cancels a run that is still wanted):
                # no verdict; the next server runs it again.
                return EvalState("running", metric, champion, challenger)
            if task is not None and task.state == "failed":
                error = task.error.message if isinstance(task.error, OpsloopError) else repr(task.error)
                return EvalState("failed", metric, champion, challenger, error=f"the {name}'s run: {error}")
        finished = runs.challenger is not None and runs.challenger.state == "finished"
        return EvalState("finished" if finished else "running", metric, champion, challenger)

    def keep_only(self, names: set[str]) -> None:
        """Cancel the runs of experiments not in ``names`` (they have ended)."""
        for name in self._runs.keys() - names:
            for task in self._runs.pop(name).tasks():
                self.loop.call_soon_threadsafe(self.tasks.cancel, task)

    def _start(self, experiment: Experiment, metric: str) -> _Runs:
        """Start the champion's run; what blocks (the registry, the file) stays in this thread."""
        plan = experiment.config["eval"]
        dataset = _dataset(plan["dataset"], plan.get("limit"))
        runs = eval_runs(self.host)
        caller = system_principal(experiment.tenant, f"experiment:{experiment.name}")
        versions = {"champion": experiment.champion, "challenger": experiment.challenger}

        def start(variant: str) -> EvalTask:
            config = eval_config(
                collection=plan["collection"],
                default_top_k=self.host.settings.rag_top_k,
                prompt_version=versions[variant],
                route=plan.get("route"),
                judge=plan.get("judge"),
                metrics=[metric],
                concurrency=1,
            )
            tags = {"opsloop.experiment": experiment.name, "opsloop.variant": variant}

            async def on_loop() -> EvalTask:
                return self.tasks.start(
                    caller,
                    dataset.name,
                    len(dataset.items),
                    lambda stage, notice: runs.run(
                        caller, dataset, config, tags=tags, stage=stage, notice=notice
                    ),
                )

            return asyncio.run_coroutine_threadsafe(on_loop(), self.loop).result(timeout=60)

        return _Runs(start, start("champion"))


def _variant(task: EvalTask, version: str, metric: str) -> VariantEval:
    """What a task's run has to say so far; the scores once it has finished."""
    if task.result is None:
        return VariantEval(version, done=task.done, total=task.total)
    samples = task.result.run.outcome.samples
    return VariantEval(
        version,
        run_id=task.result.run.run_id,
        done=len(samples),
        total=len(samples),
        scores={
            s.id: s.scores[metric] for s in samples if metric in s.scores and math.isfinite(s.scores[metric])
        },
        ok={s.id: s.error is None for s in samples},
        latency_ms={s.id: s.latency_ms for s in samples},
    )
