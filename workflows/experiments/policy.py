"""What an experiment does next: promote, roll back, continue, or (a canary) advance to its next step.

Pure functions of a :class:`Policy`, the two variants' :class:`VariantSummary` and, for a
canary, its :class:`CanaryState` and this interval's :class:`JudgeResult`; each returns a
:class:`Decision` whose reason carries the numbers. The decider calls them after every
batch; the always-valid tests underneath make that safe.

A/B (:func:`decide_ab`), in this order:

1. a guardrail breached: **rollback** (the challenger's weight goes to 0 at once);
2. fewer than ``min_samples`` primary values in a variant: **continue**;
3. primary metric significantly worse (mSPRT): **rollback**;
4. significantly better: **promote** once every guardrail has a verdict (else continue);
5. ``max_samples`` reached without a difference: **rollback** (the champion stays);
6. otherwise **continue**.

Canary (:func:`decide_canary`), after Flagger and Argo Rollouts: the challenger's weight
ramps through ``steps`` (default 5, 25, 50, 100 percent). Every check:

1. a guardrail breached, or the primary metric significantly worse: **rollback** at once;
2. the latency judge failed: one more failed check in a row; at ``max_failed_checks``,
   **rollback**, else hold (**continue**); a passing check resets the count;
3. the step held until the challenger has ``min_samples`` requests at this step, every
   guardrail has a verdict and the judge passed this interval (at 100% the champion serves
   nothing to compare, so there the guardrails alone decide): then **advance**, or at the last
   step **promote**.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from opsloop.errors import InvalidInputError
from workflows.experiments.evaluation import EvalState, VariantEval, eval_metric
from workflows.experiments.guardrails import (
    Guardrail,
    GuardrailCheck,
    check_guardrails,
    parse_guardrail,
    with_defaults,
)
from workflows.experiments.sequential import msprt
from workflows.experiments.summaries import Comparison, VariantSummary

if TYPE_CHECKING:  # the judge pulls in scipy; deciding only reads its verdict
    from workflows.experiments.canary import JudgeResult

__all__ = [
    "DEFAULT_STEPS",
    "Action",
    "CanaryState",
    "Decision",
    "Policy",
    "decide_ab",
    "decide_canary",
    "decide_eval",
    "higher_is_better",
    "parse_guardrail",
]

Action = Literal["promote", "rollback", "continue", "advance"]

DEFAULT_STEPS: tuple[float, ...] = (5.0, 25.0, 50.0, 100.0)
"""The canary's weights for the challenger, in percent."""

_LOWER_IS_BETTER = ("error_rate", "cost_per_request", "cost_usd", "latency")


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` is an improvement (errors, cost and ``*_ms`` are not).

    An eval metric (``eval:rouge_score``) goes by its own name.
    """
    metric = eval_metric(metric) or metric
    return not (metric.endswith("_ms") or metric in _LOWER_IS_BETTER)


@dataclass(frozen=True)
class Policy:
    """An experiment's decision rules (the numbers ``opsloop experiments create`` takes)."""

    primary: str = "accuracy"
    """The metric the challenger must improve (A/B) or must not worsen (canary)."""
    higher_is_better: bool | None = None
    """Direction of improvement of ``primary``; None: :func:`higher_is_better` of its name."""
    guardrails: tuple[Guardrail, ...] = ()
    """Declared guardrails; the defaults cover the metrics none of them names."""
    alpha: float = 0.05
    min_samples: int = 200
    """Primary values per variant before an A/B decision; challenger requests per canary step."""
    max_samples: int | None = None
    """Primary values per variant after which an undecided A/B test ends, keeping the champion."""
    mde: float | None = None
    """Smallest primary-metric difference worth finding, in its unit: the mSPRT's ``tau``."""
    weight: float = 50.0
    """The challenger's share of an A/B test, in percent."""
    steps: tuple[float, ...] = DEFAULT_STEPS
    check_interval_s: float = 60.0
    """How often the decider checks a canary (Flagger's ``interval``); the judge compares one interval."""
    max_failed_checks: int = 3
    """Failed latency checks in a row that roll a canary back (Flagger's ``threshold``)."""
    min_stat_samples: int = 30
    """Values per variant below which no test is trusted (plug-in variances are too noisy)."""
    active_guardrails: tuple[Guardrail, ...] = field(init=False)
    """``guardrails`` plus the defaults."""

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> InvalidInputError:
            return InvalidInputError(f"{name} {getattr(self, name)!r}: {why}", field=name)

        if not 0 < self.alpha < 1:
            raise bad("alpha", "must be in (0, 1)")
        if self.min_samples < 1:
            raise bad("min_samples", "at least 1")
        if self.max_samples is not None and self.max_samples < self.min_samples:
            raise bad("max_samples", f"at least min_samples ({self.min_samples})")
        if self.mde is not None and not (self.mde > 0 and math.isfinite(self.mde)):
            raise bad("mde", "a positive difference in the primary metric's unit")
        if not 0 < self.weight < 100:
            raise bad("weight", "a percentage between 0 and 100")
        steps = self.steps
        if (
            not steps
            or any(not 0 < s <= 100 for s in steps)
            or list(steps) != sorted(set(steps))
            or steps[-1] != 100
        ):
            raise bad("steps", "percentages in (0, 100], strictly rising, ending at 100")
        if not (self.check_interval_s > 0 and math.isfinite(self.check_interval_s)):
            raise bad("check_interval_s", "a positive number of seconds")
        if self.max_failed_checks < 1:
            raise bad("max_failed_checks", "at least 1")
        if self.min_stat_samples < 2:
            raise bad("min_stat_samples", "at least 2 (a variance needs two values)")
        object.__setattr__(self, "active_guardrails", with_defaults(self.guardrails))

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Policy:
        """A policy from an experiment's stored plan; guardrails may be specs (``"p99_ms:+20%"``).

        Keys the policy does not use (``require_approval``, ...) are ignored.
        """
        names = {"primary", "higher_is_better", "alpha", "min_samples", "max_samples", "mde", "weight"}
        names |= {"check_interval_s", "max_failed_checks", "min_stat_samples"}
        kwargs: dict[str, Any] = {k: v for k, v in config.items() if k in names and v is not None}
        if config.get("steps") is not None:
            kwargs["steps"] = tuple(float(s) for s in config["steps"])
        guardrails: Iterable[Guardrail | str] = config.get("guardrails") or ()
        kwargs["guardrails"] = tuple(
            g if isinstance(g, Guardrail) else parse_guardrail(g) for g in guardrails
        )
        return cls(**kwargs)

    @property
    def improves_upwards(self) -> bool:
        """Whether a higher primary value is better."""
        return higher_is_better(self.primary) if self.higher_is_better is None else self.higher_is_better


@dataclass(frozen=True)
class CanaryState:
    """Where a canary stands between checks: its step and its failed checks in a row."""

    step: int = 0
    failed_checks: int = 0


@dataclass(frozen=True)
class Decision:
    """What to do now, why (with the numbers), and the state after it."""

    action: Action
    reason: str
    weight: float
    """The challenger's share of traffic after this decision, in percent."""
    step: int = 0
    """A canary's step index after this decision (0 for A/B)."""
    failed_checks: int = 0
    primary: Comparison | None = None
    guardrails: tuple[GuardrailCheck, ...] = ()
    judge: JudgeResult | None = None
    evaluation: EvalState | None = None
    """The eval runs per variant, for an eval-decided experiment."""

    @property
    def state(self) -> CanaryState:
        """The canary state to pass to the next check."""
        return CanaryState(self.step, self.failed_checks)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, for the audit log and the experiment's stored decision."""
        return {
            "action": self.action,
            "reason": self.reason,
            "weight": self.weight,
            "step": self.step,
            "failed_checks": self.failed_checks,
            "primary": None if self.primary is None else self.primary.to_dict(),
            "guardrails": [c.to_dict() for c in self.guardrails],
            "judge": None if self.judge is None else self.judge.to_dict(),
            "eval": None if self.evaluation is None else self.evaluation.to_dict(),
        }


def _breaches(checks: tuple[GuardrailCheck, ...]) -> str:
    return "guardrail breached: " + "; ".join(c.reason for c in checks if c.breached)


def _waiting(checks: tuple[GuardrailCheck, ...]) -> str:
    return "; ".join(c.reason for c in checks if c.status == "nodata")


def _primary(policy: Policy, champion: VariantSummary, challenger: VariantSummary) -> Comparison | None:
    """The always-valid primary comparison, or None while a variant has too few values."""
    a, b = champion.primary, challenger.primary
    if min(a.n, b.n) < policy.min_stat_samples:
        return None
    return msprt(a, b, metric=policy.primary, alpha=policy.alpha, tau=policy.mde)


def _worse(policy: Policy, primary: Comparison) -> bool:
    return primary.significant and (primary.estimate > 0) != policy.improves_upwards


def _check(
    policy: Policy, champion: VariantSummary, challenger: VariantSummary
) -> tuple[GuardrailCheck, ...]:
    return check_guardrails(
        policy.active_guardrails,
        champion,
        challenger,
        alpha=policy.alpha,
        min_samples=policy.min_stat_samples,
    )


def decide_ab(policy: Policy, champion: VariantSummary, challenger: VariantSummary) -> Decision:
    """The A/B decision on the data so far (see the module docstring for the rules)."""
    checks = _check(policy, champion, challenger)
    if any(c.breached for c in checks):
        return Decision("rollback", _breaches(checks), 0.0, guardrails=checks)
    a, b = champion.primary, challenger.primary
    needed = max(policy.min_samples, policy.min_stat_samples)
    if min(a.n, b.n) < needed:
        reason = f"collecting {policy.primary}: champion {a.n}, challenger {b.n} of {needed} each"
        return Decision("continue", reason, policy.weight, guardrails=checks)
    primary = msprt(a, b, metric=policy.primary, alpha=policy.alpha, tau=policy.mde)

    def decide(action: Action, reason: str, weight: float) -> Decision:
        return Decision(action, reason, weight, primary=primary, guardrails=checks)

    if _worse(policy, primary):
        return decide("rollback", f"challenger significantly worse: {primary.describe()}", 0.0)
    if primary.significant:
        waiting = _waiting(checks)
        if waiting:
            why = f"challenger significantly better ({primary.describe()}); waiting for guardrails: {waiting}"
            return decide("continue", why, policy.weight)
        why = f"challenger significantly better: {primary.describe()}; every guardrail holds"
        return decide("promote", why, 100.0)
    if policy.max_samples is not None and min(a.n, b.n) >= policy.max_samples:
        why = (
            f"no significant difference after {min(a.n, b.n)} values per variant"
            f" (max_samples {policy.max_samples}): {primary.describe()}; the champion stays"
        )
        return decide("rollback", why, 0.0)
    return decide("continue", f"no significant difference yet: {primary.describe()}", policy.weight)


def decide_canary(
    policy: Policy,
    state: CanaryState,
    champion: VariantSummary,
    challenger: VariantSummary,
    *,
    step_samples: int,
    judge: JudgeResult | None,
) -> Decision:
    """The canary decision at one check (see the module docstring for the rules).

    Args:
        policy: The experiment's rules.
        state: The step and failed checks in a row before this check.
        champion: The champion's cumulative summary.
        challenger: The challenger's cumulative summary.
        step_samples: Requests the challenger served since the current step began.
        judge: This interval's latency verdict (:func:`~workflows.experiments.canary.judge_latency`);
            None when the canary runs without the latency judge.

    Raises:
        ValueError: ``state`` is impossible for ``policy`` (a step out of range, or a canary
            that should already have been rolled back).
        InvalidInputError: ``step_samples`` is negative.
    """
    steps = policy.steps
    if not 0 <= state.step < len(steps) or not 0 <= state.failed_checks < policy.max_failed_checks:
        raise ValueError(
            f"impossible canary state {state}: steps {steps}, max_failed_checks {policy.max_failed_checks}"
        )
    if step_samples < 0:
        raise InvalidInputError(f"step_samples {step_samples}: cannot be negative", field="step_samples")
    weight = steps[state.step]
    at = f"step {state.step + 1}/{len(steps)} ({weight:g}%)"
    checks = _check(policy, champion, challenger)
    primary = _primary(policy, champion, challenger)

    def decide(action: Action, reason: str, weight: float, step: int, failed: int) -> Decision:
        return Decision(action, f"{at}: {reason}", weight, step, failed, primary, checks, judge)

    if any(c.breached for c in checks):
        return decide("rollback", _breaches(checks), 0.0, state.step, state.failed_checks + 1)
    if primary is not None and _worse(policy, primary):
        why = f"challenger significantly worse: {primary.describe()}"
        return decide("rollback", why, 0.0, state.step, state.failed_checks + 1)

    # At 100% the champion serves nothing in the interval, so there is nothing to judge.
    judged = judge if weight < 100 else None
    failed = state.failed_checks
    if judged is not None and judged.verdict == "fail":
        failed += 1
        if failed >= policy.max_failed_checks:
            why = f"latency check failed {failed} times in a row: {judged.reason}"
            return decide("rollback", why, 0.0, state.step, failed)
        of = f"{failed} of {policy.max_failed_checks} in a row"
        why = f"holding, latency check failed ({of}): {judged.reason}"
        return decide("continue", why, weight, state.step, failed)
    if judged is not None and judged.verdict == "pass":
        failed = 0

    waiting = _waiting(checks)
    if step_samples < policy.min_samples:
        why = f"holding, challenger has {step_samples} of {policy.min_samples} requests at this step"
        return decide("continue", why, weight, state.step, failed)
    if waiting:
        return decide("continue", f"holding, waiting for guardrails: {waiting}", weight, state.step, failed)
    if judged is not None and judged.verdict == "nodata":
        why = f"holding, no latency verdict this interval: {judged.reason}"
        return decide("continue", why, weight, state.step, failed)
    passed = f"passed with {step_samples} requests at this step, every guardrail holds"
    if judged is not None:
        passed += f"; {judged.reason}"
    if state.step == len(steps) - 1:
        return decide("promote", passed, 100.0, state.step, 0)
    nxt = steps[state.step + 1]
    return decide("advance", f"{passed}; challenger weight {weight:g}% -> {nxt:g}%", nxt, state.step + 1, 0)


def decide_eval(
    policy: Policy, champion: VariantSummary, challenger: VariantSummary, evaluation: EvalState
) -> Decision:
    """The decision of an eval-decided experiment (see the module docstring for the rules).

    Args:
        policy: The experiment's rules; ``primary`` is ``eval:METRIC``.
        champion: The champion's live traffic so far.
        challenger: The challenger's live traffic so far.
        evaluation: Both variants' eval runs.
    """
    from workflows.experiments.stats import paired_t  # SciPy, only once the runs have finished

    live = _check(policy, champion, challenger)
    if any(c.breached for c in live):
        return Decision("rollback", _breaches(live), 0.0, guardrails=live, evaluation=evaluation)
    if evaluation.status == "failed":
        why = f"the eval runs could not finish ({evaluation.error}); the champion stays"
        return Decision("rollback", why, 0.0, guardrails=live, evaluation=evaluation)
    if evaluation.status == "running":
        why = f"evaluating {evaluation.metric}: {evaluation.describe()}"
        return Decision("continue", why, policy.weight, guardrails=live, evaluation=evaluation)
    offline = tuple(
        replace(c, reason=f"eval runs' answers: {c.reason}")
        for c in _check(policy, *(_eval_summary(v) for v in (evaluation.champion, evaluation.challenger)))
    )
    if any(c.breached for c in offline):
        return Decision("rollback", _breaches(offline), 0.0, guardrails=live + offline, evaluation=evaluation)
    a, b = evaluation.pairs()
    checks = live + offline

    def decide(action: Action, reason: str, primary: Comparison | None = None) -> Decision:
        weight = 100.0 if action == "promote" else 0.0
        return Decision(action, reason, weight, primary=primary, guardrails=checks, evaluation=evaluation)

    if a.size < 2:
        why = f"both runs scored only {a.size} of the same questions, too few to compare; the champion stays"
        return decide("rollback", why)
    primary = paired_t(a, b, metric=policy.primary, alpha=policy.alpha)
    on = f"on {a.size} questions: {primary.describe()}"
    if primary.significant and not _worse(policy, primary):
        return decide("promote", f"challenger significantly better {on}", primary)
    verdict = "significantly worse" if primary.significant else "not significantly better"
    return decide("rollback", f"challenger {verdict} {on}; the champion stays", primary)


def _eval_summary(run: VariantEval) -> VariantSummary:
    """An eval run's answers as a variant's requests: the guardrails judge them as they do live ones."""
    questions = sorted(run.ok)
    return VariantSummary.from_samples(
        [int(run.ok[q]) for q in questions], [run.latency_ms[q] for q in questions if q in run.latency_ms]
    )
