"""The quality gate: per-metric deltas of a candidate run against a baseline, and a verdict.

Samples are paired by id (the question's hash, ``evals.dataset.question_id``); a metric's delta
is taken over the pairs that both runs scored, with a paired bootstrap interval
(:func:`evals.stats.paired_bootstrap`). Deltas are signed so that positive is better: for the
lower-is-better metrics (latency, cost) the sign is flipped before the test.

A gated metric **regresses** when both hold:

* the drop is significant: the whole interval of the signed delta lies below 0, and
* the drop is larger than the rule's ``max_drop`` (the tolerated loss, in the metric's units).

It **improves** when the whole interval lies above 0. The gate passes when no gated metric
regresses; metrics that are reported but not gated never fail it. A gated metric that neither
run scored is reported as ``no_data``, which does not fail the gate either, but is listed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from evals.metrics import METRICS
from evals.results import SampleResult
from evals.stats import paired_bootstrap

__all__ = ["DEFAULT_GATE", "GateReport", "GateRule", "MetricComparison", "compare", "parse_rule"]

Verdict = Literal["regressed", "improved", "no_change", "no_data"]


@dataclass(frozen=True)
class GateRule:
    """A gated metric and the drop it tolerates before a significant drop fails the gate."""

    metric: str
    max_drop: float = 0.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.max_drop) or self.max_drop < 0:
            raise ValueError(f"max_drop of {self.metric} must be a finite number >= 0, got {self.max_drop}")


DEFAULT_GATE: tuple[GateRule, ...] = (
    GateRule("hit_rate"),
    GateRule("mrr"),
    GateRule("semantic_similarity"),
    GateRule("rouge_score"),
    GateRule("factual_correctness"),
    GateRule("faithfulness"),
    GateRule("answer_relevancy"),
)
"""What ``opsloop eval compare`` gates on unless told otherwise (those both runs have)."""


def parse_rule(text: str) -> GateRule:
    """``METRIC`` or ``METRIC:MAX_DROP`` as a rule.

    Raises:
        ValueError: Unknown metric or a bad number; the message names it.
    """
    name, _, drop = text.partition(":")
    name = name.strip()
    if name not in METRICS:
        raise ValueError(f"unknown gate metric {name!r}; known: {', '.join(METRICS)}")
    try:
        max_drop = float(drop) if drop.strip() else 0.0
    except ValueError:
        raise ValueError(f"gate rule {text!r}: max drop {drop!r} is not a number") from None
    return GateRule(name, max_drop)


@dataclass(frozen=True)
class MetricComparison:
    """One metric of the candidate against the baseline (means and delta in the metric's units)."""

    metric: str
    pairs: int
    candidate_mean: float | None
    baseline_mean: float | None
    delta: float | None
    ci_low: float | None
    ci_high: float | None
    gated: bool
    max_drop: float | None
    verdict: Verdict

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values."""
        return asdict(self)


@dataclass(frozen=True)
class GateReport:
    """Every compared metric, and whether the gate passed."""

    comparisons: list[MetricComparison]
    confidence: float
    paired: int
    """Samples present in both runs."""
    candidate_only: int
    baseline_only: int

    @property
    def passed(self) -> bool:
        """No gated metric regressed."""
        return not self.regressions

    @property
    def regressions(self) -> list[MetricComparison]:
        """The gated metrics that regressed."""
        return [c for c in self.comparisons if c.gated and c.verdict == "regressed"]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values."""
        return {
            "passed": self.passed,
            "regressions": [c.metric for c in self.regressions],
            "confidence": self.confidence,
            "paired": self.paired,
            "candidate_only": self.candidate_only,
            "baseline_only": self.baseline_only,
            "comparisons": [c.to_dict() for c in self.comparisons],
        }


def compare(
    candidate: Sequence[SampleResult],
    baseline: Sequence[SampleResult],
    *,
    rules: Iterable[GateRule] = DEFAULT_GATE,
    metrics: Iterable[str] | None = None,
    confidence: float = 0.95,
) -> GateReport:
    """Compare two runs' samples metric by metric (see the module docs).

    Args:
        candidate: The new run's samples.
        baseline: The reference run's samples.
        rules: Gated metrics; those neither run has are reported as ``no_data``.
        metrics: Metrics to report besides the gated ones; None: every metric either run scored.
        confidence: Of the bootstrap intervals.
    """
    by_id = {s.id: s for s in baseline}
    cand_ids = {s.id for s in candidate}
    pairs = [(s, by_id[s.id]) for s in candidate if s.id in by_id]
    gate = {rule.metric: rule for rule in rules}
    if metrics is None:
        scored = {name for s in (*candidate, *baseline) for name in s.scores}
        metrics = [name for name in METRICS if name in scored] + sorted(scored - set(METRICS))
    names = list(dict.fromkeys([*metrics, *(m for m in METRICS if m in gate)]))
    comparisons = [_compare_metric(name, pairs, gate.get(name), confidence) for name in names]
    return GateReport(
        comparisons=comparisons,
        confidence=confidence,
        paired=len(pairs),
        candidate_only=len(cand_ids - set(by_id)),
        baseline_only=len(set(by_id) - cand_ids),
    )


def _compare_metric(
    name: str,
    pairs: list[tuple[SampleResult, SampleResult]],
    rule: GateRule | None,
    confidence: float,
) -> MetricComparison:
    spec = METRICS.get(name)
    sign = 1.0 if spec is None or spec.higher_is_better else -1.0
    cand: list[float] = []
    base: list[float] = []
    for c, b in pairs:
        cv, bv = c.scores.get(name), b.scores.get(name)
        if cv is not None and bv is not None and math.isfinite(cv) and math.isfinite(bv):
            cand.append(cv)
            base.append(bv)
    gated = rule is not None
    max_drop = rule.max_drop if rule is not None else None
    signed = paired_bootstrap([sign * v for v in cand], [sign * v for v in base], confidence=confidence)
    if signed is None:
        return MetricComparison(name, 0, None, None, None, None, None, gated, max_drop, "no_data")
    verdict: Verdict = "no_change"
    if signed.high < 0 and -signed.delta > (max_drop or 0.0):
        verdict = "regressed"
    elif signed.low > 0:
        verdict = "improved"
    # Back to the metric's own units for the report.
    low, high = sorted((sign * signed.low, sign * signed.high))
    return MetricComparison(
        metric=name,
        pairs=signed.n,
        candidate_mean=sum(cand) / len(cand),
        baseline_mean=sum(base) / len(base),
        delta=sign * signed.delta,
        ci_low=low,
        ci_high=high,
        gated=gated,
        max_drop=max_drop,
        verdict=verdict,
    )
