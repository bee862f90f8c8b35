"""Prompt experiments decided by an eval: what the decider reads of one eval run per variant.

An experiment whose primary metric is ``eval:METRIC`` (``eval:semantic_similarity``,
``eval:faithfulness``, ...) is decided on a data set, not on live feedback: the server that
holds the decider's lease runs the data set through ``/query``'s pipeline once with the
champion's prompt version and once with the challenger's (the evals runner, tracked in
MLflow), and :func:`workflows.experiments.policy.decide_eval` compares the two runs question
by question. Live traffic is still split by the experiment's weight while the runs go, and its
guardrails still roll the challenger back.

This module holds the plain data between the two: the experiment's :data:`EVAL_PREFIX`, what
an :class:`Evaluator` reports (:class:`EvalState`, a :class:`VariantEval` per variant) and
the pairs the test takes. The evaluator itself is wired in ``serving`` (it runs the
``evals`` package, which ``workflows`` does not import).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

if TYPE_CHECKING:
    from workflows.experiments.store import Experiment

__all__ = ["EVAL_PREFIX", "EvalState", "Evaluator", "VariantEval", "eval_metric"]

EVAL_PREFIX = "eval:"
"""A primary metric ``eval:METRIC`` is the eval metric ``METRIC``, scored per question of a data set."""

EvalStatus = Literal["running", "finished", "failed"]


def eval_metric(primary: str) -> str | None:
    """The eval metric a primary metric names (``eval:rouge_score`` -> ``rouge_score``), else None."""
    return primary[len(EVAL_PREFIX) :] if primary.startswith(EVAL_PREFIX) else None


@dataclass(frozen=True)
class VariantEval:
    """One variant's eval run: its progress and, per question, the metric's value and the outcome."""

    version: str
    run_id: str | None = None
    """The MLflow run, once it has finished."""
    done: int = 0
    total: int = 0
    scores: Mapping[str, float] = field(default_factory=dict)
    """Question id -> the metric's value (finite), for the questions it was defined on."""
    ok: Mapping[str, bool] = field(default_factory=dict)
    """Question id -> whether the pipeline answered (False: it failed on the question)."""
    latency_ms: Mapping[str, float] = field(default_factory=dict)

    @property
    def mean(self) -> float | None:
        """The metric's mean over the questions that have a value."""
        return float(np.mean(list(self.scores.values()))) if self.scores else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: the run, its progress and the metric's mean (not every question)."""
        return {
            "version": self.version,
            "run_id": self.run_id,
            "done": self.done,
            "total": self.total,
            "scored": len(self.scores),
            "failed": sum(not ok for ok in self.ok.values()),
            "mean": self.mean,
        }


@dataclass(frozen=True)
class EvalState:
    """Both variants' eval runs: still running, finished, or failed (with why)."""

    status: EvalStatus
    metric: str
    champion: VariantEval
    challenger: VariantEval
    error: str | None = None

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """The metric's values of the questions both runs scored, champion's then challenger's, aligned."""
        common = sorted(self.champion.scores.keys() & self.challenger.scores.keys())
        a = np.array([self.champion.scores[q] for q in common], dtype=float)
        b = np.array([self.challenger.scores[q] for q in common], dtype=float)
        return a, b

    def describe(self) -> str:
        """Progress in one line: ``champion v1 12/40, challenger v2 9/40 questions``."""
        return (
            ", ".join(
                f"{name} v{v.version} {v.done}/{v.total}"
                for name, v in (("champion", self.champion), ("challenger", self.challenger))
            )
            + " questions"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, for the experiment's stored checks and ``show``."""
        return {
            "status": self.status,
            "metric": self.metric,
            "error": self.error,
            "champion": self.champion.to_dict(),
            "challenger": self.challenger.to_dict(),
        }


class Evaluator(Protocol):
    """Runs an experiment's eval per variant (``serving.experiment_evals.ExperimentEvals``)."""

    def evaluate(self, experiment: Experiment) -> EvalState:
        """Where the experiment's eval runs stand; the first call starts them. Never blocks on them."""
        ...

    def keep_only(self, names: set[str]) -> None:
        """Forget (and cancel) the runs of every experiment not named: they have ended."""
        ...
