"""Guardrails: the spec syntax, the defaults, and breaches judged on evidence (hand-made and simulated)."""

from __future__ import annotations

import numpy as np
import pytest

from opsloop.errors import InvalidInputError
from workflows.experiments.guardrails import (
    DEFAULT_GUARDRAILS,
    Guardrail,
    check_guardrail,
    check_guardrails,
    parse_guardrail,
    with_defaults,
)
from workflows.experiments.summaries import Moments, VariantSummary

ERROR, P99 = DEFAULT_GUARDRAILS


@pytest.mark.parametrize(
    ("spec", "metric", "margin", "relative"),
    [
        ("error_rate:0.01", "error_rate", 0.01, False),
        ("p99_ms:+20%", "p99_ms", 0.20, True),
        ("p95_ms:+50", "p95_ms", 50.0, False),
        (" cost_per_request : +10% ", "cost_per_request", 0.10, True),
        ("p99.9_ms:5%", "p99.9_ms", 0.05, True),
        ("error_rate:0", "error_rate", 0.0, False),
    ],
)
def test_specs_parse_and_round_trip(spec: str, metric: str, margin: float, relative: bool) -> None:
    guardrail = parse_guardrail(spec)
    assert (guardrail.metric, guardrail.relative) == (metric, relative)
    assert guardrail.margin == pytest.approx(margin)
    assert parse_guardrail(guardrail.spec) == guardrail


def test_the_defaults_are_one_point_of_errors_and_twenty_percent_of_p99() -> None:
    assert [g.spec for g in DEFAULT_GUARDRAILS] == ["error_rate:0.01", "p99_ms:+20%"]
    assert ERROR.limit(0.02) == pytest.approx(0.03)
    assert P99.limit(250.0) == pytest.approx(300.0)


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("", "write METRIC:MARGIN"),
        ("error_rate", "write METRIC:MARGIN"),
        ("error_rate:", "write METRIC:MARGIN"),
        (":0.01", "write METRIC:MARGIN"),
        ("latency:+20%", "use error_rate, cost_per_request or pNN_ms"),
        ("p100_ms:+1%", "use error_rate"),
        ("p_ms:+1%", "use error_rate"),
        ("p9x_ms:+1%", "use error_rate"),
        ("p99_ms:-5%", "cannot be negative"),
        ("p99_ms:fast", "is not a number"),
        ("p99_ms:+20%%", "is not a number"),
        ("p99_ms:nan", "must be finite"),
        ("p99_ms:inf%", "must be finite"),
        ("error_rate:1.5", "fraction below 1"),
    ],
)
def test_bad_specs_raise_invalid_input_naming_the_spec(spec: str, why: str) -> None:
    with pytest.raises(InvalidInputError, match=why) as err:
        parse_guardrail(spec)
    assert f"guardrail {spec!r}" in err.value.message
    assert err.value.details == {"field": "guardrail", "value": spec}
    assert err.value.status == 422


def test_declared_guardrails_replace_the_default_of_their_metric_only() -> None:
    declared = (parse_guardrail("p99_ms:+10%"), parse_guardrail("cost_per_request:+5%"))
    assert [g.spec for g in with_defaults(declared)] == [
        "p99_ms:+10%",
        "cost_per_request:+5%",
        "error_rate:0.01",
    ]
    assert with_defaults(()) == DEFAULT_GUARDRAILS
    # Any latency percentile takes the p99 default's place (p90 has a verdict 10 times sooner).
    assert [g.spec for g in with_defaults([parse_guardrail("p90_ms:+20%")])] == [
        "p90_ms:+20%",
        "error_rate:0.01",
    ]
    with pytest.raises(InvalidInputError, match="one guardrail per metric"):
        with_defaults([parse_guardrail("p99_ms:+10%"), parse_guardrail("p99_ms:+50")])


def _summary(
    rng: np.random.Generator, n: int, error_rate: float, slow: float = 1.0, cost: float = 0.002
) -> VariantSummary:
    return VariantSummary.from_samples(
        ok=rng.random(n) >= error_rate,
        latency_ms=rng.lognormal(np.log(100), 0.4, n) * slow,
        cost_usd=rng.gamma(4.0, cost / 4.0, n),
    )


def test_a_broken_challenger_breaches_within_its_first_50_requests() -> None:
    rng = np.random.default_rng(1)
    champion = _summary(rng, 19_000, 0.01)
    broken = VariantSummary(Moments.from_counts(11, 50), np.full(50, 100.0), Moments(), Moments())
    check = check_guardrail(ERROR, champion, broken)
    assert check.breached and check.p_value < 1e-6
    assert check.reason.startswith("error_rate 22.00% vs champion 0.") and "above the limit" in check.reason
    assert check.limit == pytest.approx(champion.errors.mean + 0.01)
    one = VariantSummary(Moments.from_counts(1, 50), np.full(50, 100.0), Moments(), Moments())
    assert not check_guardrail(ERROR, champion, one).breached  # 1 error in 50 is no evidence
    slow = check_guardrail(P99, champion, _summary(rng, 50, 0.01, slow=2.0))
    assert slow.breached and slow.challenger > slow.limit > slow.champion
    assert "p99_ms" in slow.reason and "ms" in slow.reason


def test_a_challenger_within_its_margins_passes() -> None:
    rng = np.random.default_rng(2)
    champion, challenger = _summary(rng, 20_000, 0.01), _summary(rng, 2000, 0.015, slow=1.05, cost=0.0021)
    checks = check_guardrails(with_defaults([parse_guardrail("cost_per_request:+10%")]), champion, challenger)
    assert [c.status for c in checks] == ["pass", "pass", "pass"]
    assert all(c.p_value == 1.0 for c in checks)  # no sign of being above any limit


def test_a_moderate_regression_needs_evidence_before_it_breaches() -> None:
    rng = np.random.default_rng(3)
    champion = _summary(rng, 20_000, 0.01)
    early = check_guardrail(ERROR, champion, _summary(rng, 200, 0.03))  # 3% vs a 2% limit: not yet clear
    later = check_guardrail(ERROR, champion, _summary(rng, 10_000, 0.03))
    assert (early.status, later.status) == ("pass", "breach")
    cost = Guardrail("cost_per_request", 0.10, relative=True)
    assert check_guardrail(cost, champion, _summary(rng, 5000, 0.01, cost=0.003)).breached


def test_no_verdict_before_enough_requests() -> None:
    rng = np.random.default_rng(4)
    champion = _summary(rng, 900, 0.01)
    check = check_guardrail(ERROR, champion, _summary(rng, 10, 1.0))
    assert (check.status, check.breached) == ("nodata", False)
    assert "waiting for 30 requests per variant" in check.reason
    p99 = check_guardrail(P99, champion, _summary(rng, 500, 0.01, slow=3.0))
    assert p99.status == "nodata"  # a p99 needs 1,000 champion requests (10 above it)
    assert "waiting for 1000 champion" in p99.reason
    assert check_guardrail(P99, _summary(rng, 1000, 0.01), _summary(rng, 500, 0.01, slow=3.0)).breached
    with pytest.raises(InvalidInputError, match="min_samples"):
        check_guardrail(ERROR, champion, champion, min_samples=1)


def test_rates_of_zero_in_both_variants_pass() -> None:
    nothing = VariantSummary(Moments.from_counts(0, 5000), np.full(5000, 10.0), Moments(), Moments())
    check = check_guardrail(ERROR, nothing, nothing)
    assert (check.status, check.champion, check.challenger) == ("pass", 0.0, 0.0)
    assert check.to_dict()["guardrail"] == "error_rate:0.01"


def test_a_challenger_exactly_at_its_margins_is_rarely_rolled_back_when_checked_after_every_batch() -> None:
    """The null boundary: errors exactly 1 point above, latencies exactly 20% slower.

    200 experiments, 10 looks of 500 requests per variant each: a false breach of either
    default guardrail at any look must stay below alpha = 5%.
    """
    rng = np.random.default_rng(5)
    breached = 0
    for _ in range(200):
        errors = rng.random((2, 10, 500)) < np.array([0.01, 0.02])[:, None, None]
        latency = rng.lognormal(np.log(100), 0.4, (2, 10, 500)) * np.array([1.0, 1.2])[:, None, None]
        for look in range(1, 11):
            a, b = (
                VariantSummary(
                    Moments.from_counts(int(errors[v, :look].sum()), 500 * look),
                    latency[v, :look].ravel(),
                    Moments(),
                    Moments(),
                )
                for v in (0, 1)
            )
            if any(c.breached for c in check_guardrails(DEFAULT_GUARDRAILS, a, b)):
                breached += 1
                break
    print(f"challenger at its margins: rolled back by a guardrail in {breached / 200:.1%} of 200 experiments")
    assert breached / 200 <= 0.05
