"""Bootstrap intervals, hit rate and MRR at k, summaries and the gate's decision."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evals.gate import GateRule, compare, parse_rule
from evals.metrics import hit_at_k, reciprocal_rank_at_k
from evals.results import SampleResult, summarize
from evals.stats import mean_ci, paired_bootstrap


def test_hit_and_reciprocal_rank_at_k() -> None:
    retrieved = ["b.md", "a.md", "a.md", "c.md"]
    assert reciprocal_rank_at_k(retrieved, {"a.md"}, 5) == 0.5
    assert hit_at_k(retrieved, {"a.md"}, 5) == 1.0
    assert reciprocal_rank_at_k(retrieved, {"a.md"}, 1) == 0.0  # only the first chunk counts
    assert hit_at_k(retrieved, {"a.md"}, 1) == 0.0
    assert reciprocal_rank_at_k(retrieved, {"c.md", "b.md"}, 5) == 1.0
    assert reciprocal_rank_at_k([], {"a.md"}, 5) == 0.0
    assert reciprocal_rank_at_k(retrieved, set(), 5) is None  # undefined without references
    assert hit_at_k(retrieved, set(), 5) is None
    with pytest.raises(ValueError, match="k must be a positive integer"):
        hit_at_k(retrieved, {"a.md"}, 0)


def test_mean_ci_brackets_the_mean_and_narrows_with_more_data() -> None:
    rng = np.random.default_rng(1)
    small = rng.uniform(0, 1, 20).tolist()
    large = rng.uniform(0, 1, 400).tolist()
    a, b = mean_ci(small), mean_ci(large)
    assert a is not None and b is not None
    assert a.low <= a.mean <= a.high
    assert b.high - b.low < a.high - a.low
    assert abs(b.mean - 0.5) < 0.05
    assert mean_ci(small) == a  # a fixed seed: reproducible
    assert mean_ci([]) is None
    one = mean_ci([0.7])
    assert one is not None and (one.low, one.high) == (0.7, 0.7)
    with pytest.raises(ValueError, match="finite"):
        mean_ci([0.1, math.nan])


def test_paired_bootstrap_finds_a_small_consistent_drop() -> None:
    rng = np.random.default_rng(2)
    baseline = rng.uniform(0.2, 0.9, 60)
    candidate = baseline - 0.03 + rng.normal(0, 0.01, 60)
    delta = paired_bootstrap(candidate.tolist(), baseline.tolist())
    assert delta is not None
    assert delta.high < 0 and delta.low < delta.delta < delta.high
    assert abs(delta.delta + 0.03) < 0.01
    assert delta.p_not_worse < 0.01
    # Unpaired, the same numbers' intervals overlap: pairing is what makes the drop visible.
    c, b = mean_ci(candidate.tolist()), mean_ci(baseline.tolist())
    assert c is not None and b is not None and c.high > b.low
    same = paired_bootstrap(baseline.tolist(), baseline.tolist())
    assert same is not None and (same.delta, same.low, same.high) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="differ in length"):
        paired_bootstrap([1.0], [1.0, 2.0])
    assert paired_bootstrap([], []) is None


def _sample(i: int, scores: dict[str, float], **extra: object) -> SampleResult:
    fields: dict[str, object] = {
        "id": f"q{i}",
        "question": f"Q{i}?",
        "reference": "R",
        "answer": "A",
        "sources": [],
        "contexts": [],
        "prompt_version": "1",
        "latency_ms": 1.0,
        "retrieval_ms": 1.0,
        "generation_ms": None,
        "answer_tokens": {"prompt_tokens": 0, "completion_tokens": 0},
        "judge": {},
        "cost_usd": 0.0,
        "scores": scores,
    }
    fields.update(extra)
    return SampleResult(**fields)  # type: ignore[arg-type]


def test_summaries_count_failures_and_undefined_and_never_give_nan() -> None:
    samples = [
        _sample(0, {"faithfulness": 1.0}),
        _sample(1, {"faithfulness": 0.5}),
        _sample(2, {}, failures={"faithfulness": "judge_timeout"}),
        _sample(3, {}, failures={"faithfulness": "judge_unparsable"}),
        _sample(4, {}, undefined=["faithfulness"]),
        _sample(5, {}),  # not applicable
        _sample(6, {}, error="backend_error: down"),
    ]
    s = summarize(samples, ["faithfulness", "answer_relevancy"])
    f = s["faithfulness"]
    assert (f.mean, f.scored, f.failed, f.undefined, f.not_applicable) == (0.75, 2, 3, 1, 1)
    assert f.failures == {"judge_timeout": 1, "judge_unparsable": 1, "pipeline_error": 1}
    nobody = s["answer_relevancy"]
    assert (nobody.mean, nobody.ci_low, nobody.ci_high, nobody.scored) == (None, None, None, 0)


def test_the_gate_flags_a_significant_regression_only_on_gated_metrics() -> None:
    rng = np.random.default_rng(3)
    base_scores = rng.uniform(0.4, 0.9, 40)
    baseline = [
        _sample(i, {"semantic_similarity": float(v), "rouge_score": 0.3, "latency_ms": 100.0})
        for i, v in enumerate(base_scores)
    ]
    candidate = [
        _sample(i, {"semantic_similarity": float(v) - 0.2, "rouge_score": 0.3, "latency_ms": 300.0})
        for i, v in enumerate(base_scores)
    ]
    candidate.append(_sample(99, {"semantic_similarity": 1.0}))  # unpaired: left out
    report = compare(candidate, baseline, rules=[GateRule("semantic_similarity"), GateRule("rouge_score")])
    by = {c.metric: c for c in report.comparisons}
    assert not report.passed
    assert [c.metric for c in report.regressions] == ["semantic_similarity"]
    sem = by["semantic_similarity"]
    assert sem.pairs == 40 and sem.delta is not None and abs(sem.delta + 0.2) < 1e-9
    assert sem.ci_high is not None and sem.ci_high < 0
    assert by["rouge_score"].verdict == "no_change"
    # Latency is lower-is-better: tripled is a regression, but it is not gated here.
    assert by["latency_ms"].verdict == "regressed" and not by["latency_ms"].gated
    assert (report.paired, report.candidate_only, report.baseline_only) == (40, 1, 0)


def test_a_tolerated_drop_passes_and_an_improvement_is_named() -> None:
    baseline = [_sample(i, {"hit_rate": 1.0 if i % 2 else 0.0}) for i in range(40)]
    worse = [_sample(i, {"hit_rate": 1.0 if i % 2 and i > 3 else 0.0}) for i in range(40)]  # 2 of 40 lost
    better = [_sample(i, {"hit_rate": 1.0}) for i in range(40)]
    assert compare(worse, baseline, rules=[GateRule("hit_rate", max_drop=0.1)]).passed
    strict = compare(worse, baseline, rules=[GateRule("hit_rate")])
    assert strict.comparisons[0].delta == pytest.approx(-0.05)
    up = compare(better, baseline, rules=[GateRule("hit_rate")])
    assert up.passed and up.comparisons[0].verdict == "improved"
    none = compare([_sample(0, {})], [_sample(0, {})], rules=[GateRule("faithfulness")])
    assert none.passed and none.comparisons[0].verdict == "no_data"


def test_gate_rules_parse() -> None:
    assert parse_rule("mrr") == GateRule("mrr", 0.0)
    assert parse_rule("semantic_similarity:0.05") == GateRule("semantic_similarity", 0.05)
    with pytest.raises(ValueError, match="unknown gate metric"):
        parse_rule("accuracy")
    with pytest.raises(ValueError, match="not a number"):
        parse_rule("mrr:lots")
    with pytest.raises(ValueError, match=">= 0"):
        GateRule("mrr", -1)
