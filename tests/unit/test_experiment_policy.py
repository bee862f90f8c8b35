"""Decisions on hand-made summaries: A/B promote and rollback, the canary's steps, checks and judge."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from opsloop.errors import InvalidInputError
from workflows.experiments.canary import JudgeResult, judge_latency
from workflows.experiments.evaluation import EvalState, VariantEval
from workflows.experiments.policy import (
    DEFAULT_STEPS,
    CanaryState,
    Decision,
    Policy,
    decide_ab,
    decide_canary,
    decide_eval,
    higher_is_better,
)
from workflows.experiments.summaries import Moments, VariantSummary

PASS = JudgeResult("pass", "latency: challenger not slower")
FAIL = JudgeResult("fail", "latency: challenger slower by +40.0 ms")
NODATA = JudgeResult("nodata", "latency: 20 per variant needed")


def summary(
    requests: int,
    *,
    errors: int = 0,
    correct: int | None = None,
    labelled: int | None = None,
    latency: float = 100.0,
    seed: int = 0,
) -> VariantSummary:
    """A variant's summary: ``errors`` failed requests, latencies around ``latency`` ms, accuracy counts."""
    rng = np.random.default_rng(seed)
    labelled = requests if labelled is None else labelled
    correct = int(0.9 * labelled) if correct is None else correct
    return VariantSummary(
        errors=Moments.from_counts(errors, requests),
        latency_ms=rng.lognormal(np.log(latency), 0.3, requests),
        cost_usd=Moments(),
        primary=Moments.from_counts(correct, labelled),
    )


# ----- the latency judge ---------------------------------------------------------------------


def test_the_judge_fails_a_significantly_slower_challenger() -> None:
    rng = np.random.default_rng(1)
    result = judge_latency(rng.lognormal(np.log(100), 0.3, 600), rng.lognormal(np.log(130), 0.3, 60))
    assert result.verdict == "fail"
    assert result.test is not None and result.test.ci_low > 0.25 * result.test.estimate > 0
    assert result.mean_ratio is not None and result.mean_ratio > 1.1
    assert "slower by +" in result.reason and "Mann-Whitney p=" in result.reason


def test_the_judge_passes_equal_or_faster_challengers_and_waits_for_data() -> None:
    rng = np.random.default_rng(2)
    champion = rng.lognormal(np.log(100), 0.3, 600)
    assert judge_latency(champion, rng.lognormal(np.log(100), 0.3, 60)).verdict == "pass"
    assert judge_latency(champion, rng.lognormal(np.log(60), 0.3, 60)).verdict == "pass"
    assert judge_latency(np.full(50, 8.0), np.full(50, 8.0)).verdict == "pass"  # every value tied
    few = judge_latency(champion, rng.lognormal(np.log(500), 0.3, 5))
    assert few.verdict == "nodata" and "challenger 5" in few.reason
    with pytest.raises(InvalidInputError, match="non-finite"):
        judge_latency(champion, [1.0, float("nan")])
    with pytest.raises(InvalidInputError, match="tolerance"):
        judge_latency(champion, champion, tolerance=-1)


def test_the_judge_rarely_fails_an_equal_challenger_interval_after_interval() -> None:
    rng = np.random.default_rng(3)
    fails = sum(
        judge_latency(
            rng.lognormal(np.log(100), 0.3, 190), rng.lognormal(np.log(100), 0.3, 10 + k % 40)
        ).verdict
        == "fail"
        for k in range(300)
    )
    print(f"latency judge: {fails} of 300 intervals failed an equal challenger")
    assert fails / 300 <= 0.025  # a one-sided 95% interval, further held back by the tolerance


# ----- the policy ------------------------------------------------------------------------------


def test_policy_defaults_and_direction_of_metrics() -> None:
    policy = Policy()
    assert policy.steps == DEFAULT_STEPS == (5.0, 25.0, 50.0, 100.0)
    assert [g.spec for g in policy.active_guardrails] == ["error_rate:0.01", "p99_ms:+20%"]
    assert higher_is_better("accuracy") and higher_is_better("conversion")
    assert not higher_is_better("error_rate") and not higher_is_better("p50_ms")
    assert not higher_is_better("cost_per_request")
    assert not Policy(primary="latency_ms").improves_upwards
    assert Policy(primary="latency_ms", higher_is_better=True).improves_upwards


def test_policy_from_a_stored_plan() -> None:
    config = {
        "steps": [10, 50, 100],
        "weight": 20.0,
        "primary": "accuracy",
        "guardrails": ["p99_ms:+10%", "cost_per_request:0.001"],
        "min_samples": 500,
        "require_approval": True,  # the service's, not the policy's
    }
    policy = Policy.from_config(config)
    assert (policy.steps, policy.weight, policy.min_samples) == ((10.0, 50.0, 100.0), 20.0, 500)
    assert [g.spec for g in policy.active_guardrails] == [
        "p99_ms:+10%",
        "cost_per_request:0.001",
        "error_rate:0.01",
    ]
    with pytest.raises(InvalidInputError, match=re.escape("guardrail 'p99:+10%': guardrail metric 'p99'")):
        Policy.from_config({"guardrails": ["p99:+10%"]})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": (25.0, 5.0, 100.0)}, "strictly rising"),
        ({"steps": (5.0, 50.0)}, "ending at 100"),
        ({"steps": (5.0, 5.0, 100.0)}, "strictly rising"),
        ({"steps": ()}, "steps"),
        ({"weight": 100.0}, "between 0 and 100"),
        ({"alpha": 0.0}, "alpha"),
        ({"min_samples": 0}, "min_samples"),
        ({"min_samples": 100, "max_samples": 50}, "max_samples"),
        ({"mde": -0.1}, "mde"),
        ({"max_failed_checks": 0}, "max_failed_checks"),
        ({"check_interval_s": 0.0}, "check_interval_s"),
    ],
)
def test_policy_refuses_bad_settings(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        Policy(**kwargs)  # type: ignore[arg-type]


# ----- A/B decisions ---------------------------------------------------------------------------


def test_ab_promotes_a_significantly_better_challenger_with_the_numbers() -> None:
    decision = decide_ab(Policy(), summary(3000, correct=2400), summary(3000, correct=2600, seed=1))
    assert (decision.action, decision.weight) == ("promote", 100.0)
    assert decision.primary is not None and decision.primary.significant
    assert decision.primary.estimate == pytest.approx(200 / 3000)
    assert (
        "significantly better: accuracy +0.06667 (+8.3%), 95% CI [0.03736, 0.09597], p=5.69e-10"
        in decision.reason
    )
    assert "p=" in decision.reason and "every guardrail holds" in decision.reason
    json.dumps(decision.to_dict(), allow_nan=False)  # stored and audited as JSON


def test_ab_rolls_back_at_once_on_a_guardrail_breach_even_when_better() -> None:
    decision = decide_ab(
        Policy(), summary(3000, correct=2400), summary(3000, errors=300, correct=2600, seed=1)
    )
    assert (decision.action, decision.weight) == ("rollback", 0.0)
    assert decision.reason.startswith("guardrail breached: error_rate 10.00% vs champion 0.00%")
    assert [c.status for c in decision.guardrails] == ["breach", "pass"]


def test_ab_rolls_back_a_significantly_worse_challenger() -> None:
    decision = decide_ab(Policy(), summary(3000, correct=2700), summary(3000, correct=2400, seed=1))
    assert decision.action == "rollback"
    assert decision.reason.startswith("challenger significantly worse: accuracy -0.1")
    lower = Policy(primary="latency_ms", higher_is_better=False)  # a higher value is worse
    assert (
        decide_ab(lower, summary(3000, correct=2400), summary(3000, correct=2700, seed=1)).action
        == "rollback"
    )


def test_ab_continues_while_collecting_or_undecided_and_ends_at_max_samples() -> None:
    collecting = decide_ab(Policy(min_samples=500), summary(300), summary(300, seed=1))
    assert (collecting.action, collecting.weight) == ("continue", 50.0)
    assert collecting.reason == "collecting accuracy: champion 300, challenger 300 of 500 each"
    undecided = decide_ab(
        Policy(weight=10.0), summary(3000, correct=2700), summary(3000, correct=2705, seed=1)
    )
    assert (undecided.action, undecided.weight) == ("continue", 10.0)
    assert undecided.reason.startswith(
        "no significant difference yet: accuracy +0.001667 (+0.2%), 95% CI [-0.02193, 0.02527], p=1"
    )
    ended = decide_ab(
        Policy(max_samples=3000), summary(3000, correct=2700), summary(3000, correct=2705, seed=1)
    )
    assert ended.action == "rollback" and "the champion stays" in ended.reason


def test_ab_waits_for_every_guardrail_before_promoting() -> None:
    # Accuracy from 600 labelled instances each, but only 600 requests: no p99 verdict yet.
    decision = decide_ab(Policy(), summary(600, correct=450), summary(600, correct=570, seed=1))
    assert decision.action == "continue"
    assert "significantly better" in decision.reason and "waiting for guardrails: p99_ms" in decision.reason


# ----- canary decisions ------------------------------------------------------------------------


def test_a_healthy_canary_ramps_through_every_step_then_promotes() -> None:
    policy = Policy(min_samples=200)
    champion, challenger = summary(19_000), summary(1000, seed=1)
    state, weights = CanaryState(), []
    for _ in range(len(policy.steps)):
        decision = decide_canary(policy, state, champion, challenger, step_samples=250, judge=PASS)
        weights.append(decision.weight)
        state = decision.state
    assert weights == [25.0, 50.0, 100.0, 100.0]
    assert decision.action == "promote"
    assert decision.reason.startswith("step 4/4 (100%): passed with 250 requests at this step")
    first = decide_canary(policy, CanaryState(), champion, challenger, step_samples=250, judge=PASS)
    assert first.action == "advance" and first.reason.endswith("challenger weight 5% -> 25%")


def test_a_canary_step_is_held_until_it_has_its_samples_and_a_passing_check() -> None:
    policy, champion, challenger = Policy(min_samples=200), summary(19_000), summary(1000, seed=1)
    short = decide_canary(policy, CanaryState(1), champion, challenger, step_samples=150, judge=PASS)
    assert (short.action, short.weight, short.step) == ("continue", 25.0, 1)
    assert "challenger has 150 of 200 requests at this step" in short.reason
    nodata = decide_canary(policy, CanaryState(1), champion, challenger, step_samples=250, judge=NODATA)
    assert nodata.action == "continue" and "no latency verdict" in nodata.reason
    early = decide_canary(
        policy, CanaryState(0), summary(900), summary(60, seed=1), step_samples=250, judge=PASS
    )
    assert early.action == "continue" and "waiting for guardrails: p99_ms" in early.reason
    # At 100% the champion serves nothing to compare: the judge's verdict is not needed there.
    last = decide_canary(policy, CanaryState(3), champion, challenger, step_samples=250, judge=NODATA)
    assert last.action == "promote"


def test_failed_checks_in_a_row_roll_a_canary_back_and_a_pass_resets_them() -> None:
    policy, champion, challenger = Policy(max_failed_checks=3), summary(19_000), summary(1000, seed=1)
    state = CanaryState(1)
    for expected in (1, 2):
        decision = decide_canary(policy, state, champion, challenger, step_samples=500, judge=FAIL)
        assert (decision.action, decision.failed_checks, decision.weight) == ("continue", expected, 25.0)
        assert f"latency check failed ({expected} of 3 in a row)" in decision.reason
        state = decision.state
    reset = decide_canary(policy, state, champion, challenger, step_samples=100, judge=PASS)
    assert (reset.action, reset.failed_checks) == ("continue", 0)
    state = CanaryState(1, failed_checks=2)
    rolled = decide_canary(policy, state, champion, challenger, step_samples=500, judge=FAIL)
    assert (rolled.action, rolled.weight, rolled.failed_checks) == ("rollback", 0.0, 3)
    assert rolled.reason.startswith(
        "step 2/4 (25%): latency check failed 3 times in a row: latency: challenger slower"
    )


@pytest.mark.parametrize("step", [0, 1, 2, 3])
def test_a_guardrail_breach_at_any_step_sends_the_weight_to_zero_at_once(step: int) -> None:
    decision = decide_canary(
        Policy(),
        CanaryState(step),
        summary(19_000, errors=190),
        summary(100, errors=40, seed=1),
        step_samples=0,
        judge=PASS,
    )
    assert (decision.action, decision.weight) == ("rollback", 0.0)
    assert "guardrail breached: error_rate 40.00% vs champion 1.00%" in decision.reason


def test_a_canary_significantly_worse_on_its_primary_metric_is_rolled_back() -> None:
    decision = decide_canary(
        Policy(),
        CanaryState(2),
        summary(19_000),
        summary(2000, correct=1200, seed=1),
        step_samples=10,
        judge=PASS,
    )
    assert (
        decision.action == "rollback" and "challenger significantly worse: accuracy -0.3" in decision.reason
    )


def test_impossible_canary_states_raise() -> None:
    policy, champion = Policy(), summary(1000)
    with pytest.raises(ValueError, match="impossible canary state"):
        decide_canary(policy, CanaryState(4), champion, champion, step_samples=1, judge=PASS)
    with pytest.raises(ValueError, match="impossible canary state"):
        decide_canary(policy, CanaryState(0, failed_checks=3), champion, champion, step_samples=1, judge=PASS)
    with pytest.raises(InvalidInputError, match="step_samples"):
        decide_canary(policy, CanaryState(), champion, champion, step_samples=-1, judge=PASS)


def test_decisions_serialise_to_plain_json() -> None:
    decision = decide_canary(
        Policy(), CanaryState(), summary(900), summary(50, seed=1), step_samples=10, judge=None
    )
    data = json.loads(json.dumps(decision.to_dict(), allow_nan=False))
    assert data["action"] == "continue" and data["judge"] is None
    assert [g["status"] for g in data["guardrails"]] == ["pass", "nodata"]
    assert isinstance(Decision("continue", "x", 5.0).state, CanaryState)


# ----- eval-decided prompt experiments -------------------------------------------------------

EVAL_POLICY = Policy(primary="eval:semantic_similarity")


def evaluated(
    champion: list[float],
    challenger: list[float],
    *,
    status: str = "finished",
    failed: int = 0,
    error: str | None = None,
) -> EvalState:
    """Both variants' finished runs over the same questions; the challenger's first ``failed`` failed."""

    def run(version: str, scores: list[float], failing: int) -> VariantEval:
        ids = [f"q{i}" for i in range(len(scores))]
        return VariantEval(
            version,
            run_id=f"run-{version}",
            done=len(ids),
            total=len(ids),
            scores={q: s for i, (q, s) in enumerate(zip(ids, scores, strict=True)) if i >= failing},
            ok={q: i >= failing for i, q in enumerate(ids)},
            latency_ms=dict.fromkeys(ids, 800.0),
        )

    return EvalState(
        status, "semantic_similarity", run("1", champion, 0), run("2", challenger, failed), error
    )  # type: ignore[arg-type]


def scores(n: int, shift: float, seed: int) -> tuple[list[float], list[float]]:
    rng = np.random.default_rng(seed)
    difficulty = rng.uniform(0.2, 0.8, n)
    return list(difficulty + rng.normal(0, 0.03, n)), list(difficulty + shift + rng.normal(0, 0.03, n))


def test_an_eval_promotes_a_significantly_better_prompt_with_the_numbers() -> None:
    a, b = scores(30, 0.1, seed=1)
    decision = decide_eval(EVAL_POLICY, summary(0), summary(0), evaluated(a, b))
    assert decision.action == "promote" and decision.weight == 100.0
    assert decision.reason.startswith(
        "challenger significantly better on 30 questions: eval:semantic_similarity +0."
    )
    assert decision.primary is not None and decision.primary.method == "paired_t"
    data = json.loads(json.dumps(decision.to_dict(), allow_nan=False))
    assert data["eval"]["challenger"] == {
        "version": "2", "run_id": "run-2", "done": 30, "total": 30, "scored": 30, "failed": 0,
        "mean": pytest.approx(np.mean(b)),
    }  # fmt: skip


@pytest.mark.parametrize(
    ("shift", "verdict"), [(-0.1, "significantly worse"), (0.0, "not significantly better")]
)
def test_an_eval_keeps_the_champion_unless_the_challenger_wins(shift: float, verdict: str) -> None:
    a, b = scores(30, shift, seed=2)
    decision = decide_eval(EVAL_POLICY, summary(0), summary(0), evaluated(a, b))
    assert decision.action == "rollback" and decision.weight == 0.0
    assert f"challenger {verdict} on 30 questions" in decision.reason
    assert decision.reason.endswith("; the champion stays")


def test_an_eval_waits_for_its_runs_and_rolls_back_when_they_fail() -> None:
    running = EvalState(
        "running",
        "semantic_similarity",
        VariantEval("1", done=12, total=40),
        VariantEval("2", done=9, total=40),
    )
    decision = decide_eval(EVAL_POLICY, summary(0), summary(0), running)
    assert decision.action == "continue" and decision.weight == EVAL_POLICY.weight
    assert decision.reason == (
        "evaluating semantic_similarity: champion v1 12/40, challenger v2 9/40 questions"
    )
    failed = evaluated(
        [0.5, 0.6], [0.5, 0.6], status="failed", error="the challenger's run: no collection 'x'"
    )
    decision = decide_eval(EVAL_POLICY, summary(0), summary(0), failed)
    assert decision.action == "rollback"
    assert "could not finish (the challenger's run: no collection 'x'); the champion stays" in decision.reason


def test_an_eval_rolls_back_on_a_guardrail_live_or_in_its_own_answers() -> None:
    a, b = scores(40, 0.1, seed=3)
    live = decide_eval(EVAL_POLICY, summary(300), summary(300, errors=60, seed=1), evaluated(a, b))
    assert live.action == "rollback" and live.reason.startswith("guardrail breached: error_rate")
    offline = decide_eval(EVAL_POLICY, summary(0), summary(0), evaluated(a, b, failed=20))
    assert offline.action == "rollback"
    assert offline.reason.startswith("guardrail breached: eval runs' answers: error_rate")


def test_an_eval_with_too_few_common_questions_keeps_the_champion() -> None:
    decision = decide_eval(EVAL_POLICY, summary(0), summary(0), evaluated([0.5], [0.9]))
    assert decision.action == "rollback"
    assert decision.reason.startswith("both runs scored only 1 of the same questions, too few")


def test_eval_metrics_keep_their_direction() -> None:
    assert higher_is_better("eval:rouge_score") and not higher_is_better("eval:latency_ms")
    assert not higher_is_better("eval:cost_usd")
