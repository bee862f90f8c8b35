"""The canary's latency judge, after Kayenta's Mann-Whitney classifier.

Each check interval (Flagger's ``interval``, Argo Rollouts' analysis ``interval``) the judge
compares the latencies the two variants served *in that interval*: fresh data each time, so
consecutive checks are independent, as in Flagger and Kayenta. Like Kayenta's
``MannWhitneyClassifier`` it fails the challenger ("High") when

- the lower end of the Hodges-Lehmann shift's interval is above ``tolerance`` times the
  shift itself (significantly slower, and not by a hair: the interval must clear a quarter
  of the estimate by default), and
- the ratio of mean latencies is at least ``min_ratio`` (Kayenta's effect-size threshold).

A challenger that is significantly *faster* passes. Too few latencies in either variant give
no verdict (Kayenta's "Nodata"): the check neither passes nor fails. The failed-checks counter
and the rollback it triggers live in :mod:`workflows.experiments.policy`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike

from opsloop.errors import InvalidInputError
from workflows.experiments.stats import mann_whitney
from workflows.experiments.summaries import Comparison, finite_sample

__all__ = ["JudgeResult", "Verdict", "judge_latency"]

Verdict = Literal["pass", "fail", "nodata"]


@dataclass(frozen=True)
class JudgeResult:
    """One check interval's verdict on the challenger's latency, with the numbers behind it."""

    verdict: Verdict
    reason: str
    test: Comparison | None = None
    mean_ratio: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields."""
        return {
            "verdict": self.verdict,
            "reason": self.reason,
            "test": None if self.test is None else self.test.to_dict(),
            "mean_ratio": self.mean_ratio,
        }


def judge_latency(
    champion_ms: ArrayLike,
    challenger_ms: ArrayLike,
    *,
    alpha: float = 0.05,
    tolerance: float = 0.25,
    min_ratio: float = 1.0,
    min_samples: int = 20,
) -> JudgeResult:
    """Is the challenger significantly slower than the champion in this interval?

    Args:
        champion_ms: The champion's latencies in the interval.
        challenger_ms: The challenger's latencies in the interval.
        alpha: One minus the confidence level of the shift's interval (Kayenta: 0.05).
        tolerance: Fraction of the shift the interval's lower end must exceed (Kayenta: 0.25).
        min_ratio: Smallest ratio of mean latencies that can fail the check (Kayenta: 1.0).
        min_samples: Latencies each variant needs for a verdict.

    Raises:
        InvalidInputError: A bad setting or a non-finite latency.
    """
    if not (tolerance >= 0 and math.isfinite(tolerance)):
        raise InvalidInputError(f"tolerance {tolerance}: must be >= 0", field="tolerance")
    if min_samples < 1:
        raise InvalidInputError(f"min_samples {min_samples}: at least 1", field="min_samples")
    a = finite_sample(champion_ms, "champion latency_ms")
    b = finite_sample(challenger_ms, "challenger latency_ms")
    if a.size < min_samples or b.size < min_samples:
        return JudgeResult(
            "nodata",
            f"latency: {min_samples} per variant needed for a check (champion {a.size}, challenger {b.size})",
        )
    test = mann_whitney(a, b, metric="latency_ms", alpha=alpha, alternative="greater")
    mean_a = float(np.mean(a))
    ratio = float(np.mean(b)) / mean_a if mean_a > 0 else 1.0  # Kayenta: a zero control mean gives 1
    slower = test.ci_low > tolerance * abs(test.estimate) and ratio >= min_ratio
    verdict: Verdict = "fail" if slower else "pass"
    reason = (
        f"latency: challenger {'slower' if slower else 'not slower'} by {test.estimate:+.1f} ms"
        f" (Hodges-Lehmann; {1 - alpha:.0%} CI [{test.ci_low:.1f}, {test.ci_high:.1f}],"
        f" Mann-Whitney p={test.p_value:.3g}), mean ratio {ratio:.2f}, n={a.size}/{b.size}"
    )
    return JudgeResult(verdict, reason, test, ratio)
