"""Training a challenger: the model's declared trainer under a bounded optuna search.

A trainer is an importable function, named ``module:function`` in the registered model's
``opsloop.trainer`` tag (the demo declares ``workflows.demo:train_credit_risk``; a user's model
names one with ``opsloop models register ... --trainer``). It is called as::

    trainer(features: pandas.DataFrame, labels: numpy.ndarray, weights: numpy.ndarray,
            trial: optuna.Trial) -> fitted estimator

asks the trial for its hyperparameters (``trial.suggest_float`` ...), and returns a fitted
scikit-learn-compatible classifier (``predict_proba``, ``classes_``). :func:`search` runs an
optuna study over it (TPE, seeded) for at most ``trials`` trials and ``time_budget`` seconds,
scoring each on a stratified validation split of the training rows, then refits the best
parameters on every training row (an ``optuna.trial.FixedTrial``).
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from opsloop.errors import InvalidInputError

if TYPE_CHECKING:
    import pandas as pd

    from workflows.retraining.evaluation import Metric

__all__ = [
    "LABEL_TAG",
    "SKLEARN_REQUIREMENTS",
    "TRAINER_TAG",
    "SearchResult",
    "SearchSpec",
    "Trainer",
    "resolve_trainer",
    "score",
    "search",
]

TRAINER_TAG = "opsloop.trainer"
"""The registered model's tag that names its trainer, ``module:function``."""
SKLEARN_REQUIREMENTS = ("scikit-learn", "numpy", "pandas", "skops")
"""What a logged scikit-learn model needs installed, pinned to the versions here when logged
(named, because letting MLflow infer them imports the model in a subprocess: ~10 s)."""
LABEL_TAG = "opsloop.label"
"""The registered model's tag that names its label column (default ``label``)."""

Trainer = Callable[[Any, np.ndarray, np.ndarray, Any], Any]


@dataclass(frozen=True)
class SearchSpec:
    """How long the hyperparameter search may take and what it optimises."""

    trials: int = 20
    time_budget: float = 60.0
    """Seconds; the study stops starting trials after this long (a trial in progress finishes)."""
    metric: Metric = "log_loss"
    validation_share: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise InvalidInputError("trials must be at least 1", field="trials", value=self.trials)
        if self.time_budget <= 0:
            raise InvalidInputError("the time budget must be positive", field="time_budget")


@dataclass(frozen=True)
class SearchResult:
    """The refit best model and how the search went."""

    estimator: Any
    params: dict[str, Any]
    validation_score: float
    completed: int
    failed: int
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)


def resolve_trainer(spec: str) -> Trainer:
    """Import the trainer ``module:function``.

    Raises:
        InvalidInputError: Not ``module:function``, the module does not import, or no such callable.
    """
    module_name, _, function = spec.partition(":")
    if not module_name or not function:
        raise InvalidInputError(f"trainer {spec!r}: name it as module:function", field="trainer", value=spec)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidInputError(f"trainer {spec!r}: {exc}", field="trainer", value=spec) from exc
    trainer = getattr(module, function, None)
    if not callable(trainer):
        raise InvalidInputError(
            f"trainer {spec!r}: module {module_name!r} has no function {function!r}",
            field="trainer",
            value=spec,
        )
    return trainer


def score(metric: Metric, labels: np.ndarray, proba: np.ndarray, classes: Any) -> float:
    """``metric`` of class probabilities (columns in ``classes`` order) against ``labels``."""
    from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

    keys = [str(c) for c in classes]
    truth = np.asarray([str(v) for v in labels])
    if metric == "accuracy":
        return float(accuracy_score(truth, np.asarray(keys)[proba.argmax(axis=1)]))
    if metric == "log_loss":
        return float(log_loss(truth, proba, labels=keys))
    if len(keys) == 2:
        return float(roc_auc_score(truth == keys[1], proba[:, 1]))
    return float(roc_auc_score(truth, proba, multi_class="ovr", labels=keys))


def search(
    trainer: Trainer,
    features: pd.DataFrame,
    labels: np.ndarray,
    weights: np.ndarray,
    spec: SearchSpec,
    *,
    progress: Callable[[str], None] | None = None,
) -> SearchResult:
    """Search the trainer's hyperparameters, then refit the best on every row (module docs).

    Raises:
        InvalidInputError: Fewer than two classes among the labels.
        RuntimeError: Every trial failed (chained to the first trial's error).
    """
    import optuna
    from sklearn.model_selection import train_test_split

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if len(np.unique(labels.astype(str))) < 2:
        raise InvalidInputError("the training rows hold one class only", field="labels")
    say = progress or (lambda message: None)
    fit_rows, check_rows = train_test_split(
        np.arange(len(features)),
        test_size=spec.validation_share,
        stratify=labels.astype(str),
        random_state=spec.seed,
    )
    errors: list[BaseException] = []

    def objective(trial: optuna.Trial) -> float:
        try:
            model = trainer(features.iloc[fit_rows], labels[fit_rows], weights[fit_rows], trial)
        except Exception as exc:  # a user's trainer may raise anything; the study goes on
            errors.append(exc)
            raise optuna.TrialPruned(f"{type(exc).__name__}: {exc}") from exc
        proba = model.predict_proba(features.iloc[check_rows])
        return score(spec.metric, labels[check_rows], proba, model.classes_)

    def report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        best = f", best {study.best_value:.4f}" if _any_complete(study) else ""
        value = f"{trial.value:.4f}" if trial.value is not None else "failed"
        say(f"trial {trial.number + 1}/{spec.trials}: {spec.metric} {value}{best}")

    direction: Literal["minimize", "maximize"] = "minimize" if spec.metric == "log_loss" else "maximize"
    study = optuna.create_study(direction=direction, sampler=optuna.samplers.TPESampler(seed=spec.seed))
    started = time.monotonic()
    study.optimize(objective, n_trials=spec.trials, timeout=spec.time_budget, callbacks=[report])
    seconds = time.monotonic() - started
    if not _any_complete(study):
        raise RuntimeError(f"all {len(study.trials)} trials of the trainer failed") from (
            errors[0] if errors else None
        )
    best = study.best_trial
    say(f"refitting the best parameters {best.params} on {len(features)} rows")
    estimator = trainer(features, labels, weights, optuna.trial.FixedTrial(best.params))
    history = [
        {"number": t.number, "params": t.params, "value": t.value, "state": t.state.name}
        for t in study.trials
    ]
    completed = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    return SearchResult(
        estimator=estimator,
        params=dict(best.params),
        validation_score=float(best.value if best.value is not None else np.nan),
        completed=completed,
        failed=len(study.trials) - completed,
        seconds=seconds,
        history=history,
    )


def _any_complete(study: Any) -> bool:
    import optuna

    return any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
