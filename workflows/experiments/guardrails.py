"""Guardrails: how much worse than the champion the challenger may be on errors, latency and cost.

A guardrail is a non-inferiority margin on one metric, written ``METRIC:MARGIN``:

    error_rate:0.01        at most 1 point above the champion's error rate (absolute: a fraction)
    p99_ms:+20%            99th-percentile latency at most 20% above the champion's (relative)
    p95_ms:+50             95th percentile at most 50 ms above the champion's (absolute, in ms)
    cost_per_request:+10%  mean cost per request at most 10% above the champion's

A number ending in ``%`` is relative to the champion's value; a bare number is absolute, in
the metric's unit (a fraction for ``error_rate``, milliseconds for ``pNN_ms``, USD for
``cost_per_request``). An experiment gets the defaults it declares nothing in place of:
``error_rate:0.01``, and ``p99_ms:+20%`` unless it declares any latency percentile (cost
has no default: prices differ too much).

A guardrail is *breached* only on evidence, so a noisy minute does not roll a challenger back:

- ``error_rate`` and ``cost_per_request``: the always-valid (mSPRT) test finds the
  challenger's mean minus the champion's above the allowed increase (for the error rate with
  the variance at that boundary, as the pooled two-proportion test does at 0);
- ``pNN_ms``: the limit is the champion's quantile plus the margin; the challenger breaches
  when the share of its requests above that limit is, by the same always-valid test, above
  the ``1 - NN/100`` that a challenger as fast as the limit would have (the variance of that
  share counts the noise of the champion's estimated quantile as well as the challenger's).
  The guardrail waits until the champion has ``QUANTILE_TAIL`` values above its quantile
  (1,000 requests for p99), for the normal approximations to hold.

The test is the mSPRT of :mod:`~workflows.experiments.sequential`, its mixture averaged over
several scales (``MIXTURE_SCALES``): one small scale alone would need hundreds of requests
to call even a 30% error rate a breach, one large scale would be slow on a 2-point regression;
the average catches the first within a few dozen requests and the second in a few thousand.
Being always valid, the check is safe to repeat after every batch: a challenger that is no
worse than its margins is rolled back by a guardrail with probability at most ``alpha`` over
the whole experiment, not at each look.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from opsloop.errors import InvalidInputError
from workflows.experiments.sequential import mixture_log_lr_grid
from workflows.experiments.summaries import Moments, VariantSummary

__all__ = [
    "DEFAULT_GUARDRAILS",
    "MIXTURE_SCALES",
    "QUANTILE_TAIL",
    "Guardrail",
    "GuardrailCheck",
    "GuardrailStatus",
    "check_guardrail",
    "check_guardrails",
    "parse_guardrail",
    "with_defaults",
]

GuardrailStatus = Literal["pass", "breach", "nodata"]

MIXTURE_SCALES = (0.03, 0.1, 0.3, 1.0)
"""Mixing scales of the guardrails' test, in standard deviations of one request's value."""

QUANTILE_TAIL = 10
"""Values the champion needs above a quantile before that quantile counts as known."""

_MEAN_METRICS = ("error_rate", "cost_per_request")
_KNOWN = "error_rate, cost_per_request or pNN_ms (a latency percentile such as p99_ms or p99.9_ms)"


def _quantile(metric: str) -> float | None:
    """The quantile in (0, 1) a ``pNN_ms`` metric names, else None."""
    if not (metric.startswith("p") and metric.endswith("_ms")):
        return None
    digits = metric[1:-3]
    if not digits or not all(c.isdigit() or c == "." for c in digits) or digits.count(".") > 1:
        return None
    percent = float(digits)
    return percent / 100 if 0 < percent < 100 else None


@dataclass(frozen=True)
class Guardrail:
    """A non-inferiority margin on one metric: absolute, or relative to the champion's value."""

    metric: str
    margin: float
    relative: bool

    def __post_init__(self) -> None:
        if self.metric not in _MEAN_METRICS and _quantile(self.metric) is None:
            raise InvalidInputError(f"guardrail metric {self.metric!r}: use {_KNOWN}", field="guardrail")
        if not math.isfinite(self.margin) or self.margin < 0:
            raise InvalidInputError(
                f"guardrail {self.metric}: margin {self.margin} must be a finite number >= 0",
                field="guardrail",
            )
        if self.metric == "error_rate" and not self.relative and self.margin >= 1:
            raise InvalidInputError(
                f"guardrail error_rate:{self.margin:g}: an absolute error-rate margin is a fraction"
                " below 1 (0.01 is one point)",
                field="guardrail",
            )

    @property
    def spec(self) -> str:
        """The guardrail as written on the command line; parses back to an equal guardrail."""
        if self.relative:
            return f"{self.metric}:+{self.margin * 100:.12g}%"
        return f"{self.metric}:{self.margin:.12g}"

    def allowed(self, champion: float) -> float:
        """How far above ``champion`` the challenger may be."""
        return self.margin * abs(champion) if self.relative else self.margin

    def limit(self, champion: float) -> float:
        """The highest value the challenger may have."""
        return champion + self.allowed(champion)


DEFAULT_GUARDRAILS: tuple[Guardrail, ...] = (
    Guardrail("error_rate", 0.01, relative=False),
    Guardrail("p99_ms", 0.20, relative=True),
)


def parse_guardrail(spec: str) -> Guardrail:
    """Parse ``METRIC:MARGIN`` (``error_rate:0.01``, ``p99_ms:+20%``); see the module docstring.

    Raises:
        InvalidInputError: Naming the spec, when it is malformed, names an unknown metric or
            has a negative or non-numeric margin.
    """

    def bad(why: str) -> InvalidInputError:
        return InvalidInputError(f"guardrail {spec!r}: {why}", field="guardrail", value=spec)

    metric, sep, margin_text = spec.strip().partition(":")
    metric, margin_text = metric.strip(), margin_text.strip()
    if not sep or not metric or not margin_text:
        raise bad("write METRIC:MARGIN, e.g. error_rate:0.01 or p99_ms:+20%")
    relative = margin_text.endswith("%")
    number = margin_text[:-1].strip() if relative else margin_text
    if number.startswith("-"):
        raise bad("a margin is how much worse the challenger may be; it cannot be negative")
    try:
        value = float(number)
    except ValueError:
        raise bad(f"margin {margin_text!r} is not a number (or a percentage ending in %)") from None
    if not math.isfinite(value):
        raise bad(f"margin {margin_text!r} must be finite")
    try:
        return Guardrail(metric, value / 100 if relative else value, relative)
    except InvalidInputError as exc:
        raise bad(exc.message) from None


def with_defaults(declared: Iterable[Guardrail]) -> tuple[Guardrail, ...]:
    """The declared guardrails, plus each default whose metric none of them covers.

    Any latency percentile covers the ``p99_ms`` default: an experiment that declares
    ``p90_ms`` has its tail checked after 100 champion requests instead of 1,000.
    """
    declared = tuple(declared)
    metrics = {g.metric for g in declared}
    if len(metrics) < len(declared):
        raise InvalidInputError(
            f"guardrails {[g.spec for g in declared]}: one guardrail per metric", field="guardrail"
        )
    covered = {_family(m) for m in metrics}
    return declared + tuple(g for g in DEFAULT_GUARDRAILS if _family(g.metric) not in covered)


def _family(metric: str) -> str:
    return "latency_quantile" if _quantile(metric) is not None else metric


@dataclass(frozen=True)
class GuardrailCheck:
    """One guardrail judged on the data so far, with the numbers behind the verdict."""

    guardrail: Guardrail
    status: GuardrailStatus
    champion: float
    challenger: float
    limit: float
    p_value: float
    reason: str

    @property
    def breached(self) -> bool:
        """The challenger is significantly beyond the margin."""
        return self.status == "breach"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields (non-finite numbers become None)."""

        def number(value: float) -> float | None:
            return value if math.isfinite(value) else None

        return {
            "guardrail": self.guardrail.spec,
            "status": self.status,
            "champion": number(self.champion),
            "challenger": number(self.challenger),
            "limit": number(self.limit),
            "p_value": self.p_value,
            "reason": self.reason,
        }


def _evidence(diff: float, variance: float, sd: float, allowed: float) -> float:
    """Always-valid p-value that the difference exceeds ``allowed`` (1 when it does not even seem to)."""
    if diff <= allowed:  # one-sided: only a challenger above the limit is evidence of a breach
        return 1.0
    log_lr = float(mixture_log_lr_grid(diff, variance, [s * sd for s in MIXTURE_SCALES], null=allowed))
    return float(min(1.0, math.exp(-log_lr)))


def _difference_check(
    guardrail: Guardrail, a: Moments, b: Moments, *, rate: bool, alpha: float, min_samples: int, unit: str
) -> GuardrailCheck:
    name = guardrail.metric
    if a.n < min_samples or b.n < min_samples:
        reason = f"{name}: waiting for {min_samples} requests per variant (champion {a.n}, challenger {b.n})"
        return GuardrailCheck(guardrail, "nodata", a.mean, b.mean, math.nan, 1.0, reason)
    allowed = guardrail.allowed(a.mean)
    diff = b.mean - a.mean
    if rate and diff > allowed:
        # A rate's variance is taken at the null boundary (challenger = champion + allowed,
        # both fitted to the data), the pooled z test's rule carried over to a margin: the
        # challenger's own variance would understate how surprising 11 errors in 50 are
        # against a 1% champion (z 3.4 instead of 10).
        p_a0 = min(max((a.total + b.total - b.n * allowed) / (a.n + b.n), 0.0), 1.0 - allowed)
        p_b0 = p_a0 + allowed
        variance = p_a0 * (1 - p_a0) / a.n + p_b0 * (1 - p_b0) / b.n
        sd = math.sqrt(p_b0 * (1 - p_b0))
    else:
        variance = a.var / a.n + b.var / b.n
        sd = math.sqrt((a.m2 + b.m2) / (a.n + b.n - 2))  # pooled, of one request's value
    p = _evidence(diff, variance, sd, allowed)
    breached = p <= alpha
    limit = a.mean + allowed
    verdict = "above" if breached else "within"
    reason = (
        f"{name} {b.mean:{unit}} vs champion {a.mean:{unit}}: {verdict} the limit {limit:{unit}}"
        f" ({guardrail.spec}; always-valid p={p:.3g}, n={a.n}/{b.n})"
    )
    return GuardrailCheck(guardrail, "breach" if breached else "pass", a.mean, b.mean, limit, p, reason)


def _quantile_check(
    guardrail: Guardrail, q: float, a: np.ndarray, b: np.ndarray, *, alpha: float, min_samples: int
) -> GuardrailCheck:
    name = guardrail.metric
    champion_needs = math.ceil(QUANTILE_TAIL / (1 - q))
    if a.size < champion_needs or b.size < min_samples:
        reason = (
            f"{name}: waiting for {champion_needs} champion and {min_samples} challenger requests"
            f" (have {a.size} and {b.size})"
        )
        return GuardrailCheck(guardrail, "nodata", math.nan, math.nan, math.nan, 1.0, reason)
    champion, challenger = float(np.quantile(a, q)), float(np.quantile(b, q))
    limit = guardrail.limit(champion)
    tail = 1 - q  # share above the limit of a challenger exactly at the limit
    above = float(np.count_nonzero(b > limit)) / b.size
    sd = math.sqrt(tail * (1 - tail))  # of one request's 0/1 "above the limit", at the null boundary
    # The champion's quantile is estimated too: the share of its own distribution above it
    # varies by tail (1 - tail) / n_a, which adds to the challenger's binomial variance.
    p = _evidence(above - tail, sd * sd * (1 / a.size + 1 / b.size), sd, 0.0)
    breached = p <= alpha
    verdict = "above" if breached else "within"
    reason = (
        f"{name} {challenger:.1f} ms vs champion {champion:.1f} ms: {verdict} the limit {limit:.1f} ms"
        f" ({guardrail.spec}; {above:.2%} of challenger requests above it, always-valid p={p:.3g},"
        f" n={a.size}/{b.size})"
    )
    return GuardrailCheck(guardrail, "breach" if breached else "pass", champion, challenger, limit, p, reason)


def check_guardrail(
    guardrail: Guardrail,
    champion: VariantSummary,
    challenger: VariantSummary,
    *,
    alpha: float = 0.05,
    min_samples: int = 30,
) -> GuardrailCheck:
    """Judge one guardrail on the two variants' data so far.

    Args:
        guardrail: The margin to hold.
        champion: The champion's cumulative summary.
        challenger: The challenger's cumulative summary.
        alpha: Probability of a false breach over the whole experiment.
        min_samples: Requests each variant needs before a verdict (the variance estimates
            behind the test are unreliable below a few dozen).
    """
    if min_samples < 2:
        raise InvalidInputError(
            f"min_samples {min_samples}: at least 2 (a variance needs two values)", field="min_samples"
        )
    if guardrail.metric == "error_rate":
        return _difference_check(
            guardrail,
            champion.errors,
            challenger.errors,
            rate=True,
            alpha=alpha,
            min_samples=min_samples,
            unit=".2%",
        )
    if guardrail.metric == "cost_per_request":
        return _difference_check(
            guardrail,
            champion.cost_usd,
            challenger.cost_usd,
            rate=False,
            alpha=alpha,
            min_samples=min_samples,
            unit=".3g",
        )
    q = _quantile(guardrail.metric)
    if q is None:  # Guardrail.__post_init__ admits no other metric
        raise ValueError(f"no check for guardrail metric {guardrail.metric!r}")
    return _quantile_check(
        guardrail, q, champion.latency_ms, challenger.latency_ms, alpha=alpha, min_samples=min_samples
    )


def check_guardrails(
    guardrails: Iterable[Guardrail],
    champion: VariantSummary,
    challenger: VariantSummary,
    *,
    alpha: float = 0.05,
    min_samples: int = 30,
) -> tuple[GuardrailCheck, ...]:
    """Judge every guardrail (see :func:`check_guardrail`)."""
    return tuple(
        check_guardrail(g, champion, challenger, alpha=alpha, min_samples=min_samples) for g in guardrails
    )
