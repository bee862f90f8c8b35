"""Data-drift statistics: compare a reference sample of a feature with a current one.

Pure, vectorised functions over numpy arrays and pandas columns; nothing here reads files.

Numeric features get

- **PSI** (population stability index) over bins cut at the reference's quantiles: interior
  edges at the ``i/bins`` quantiles, repeated edges merged (discrete features), the outer bins
  open-ended so current values beyond the reference's range still land somewhere, and empty
  bins floored at ``EPSILON`` so the index stays finite;
- the two-sample **Kolmogorov-Smirnov** test (statistic and p-value);
- the **Wasserstein** distance divided by the reference's standard deviation (scale-free, so
  one threshold fits income and age alike);
- the **Jensen-Shannon** distance (base 2, in [0, 1]) over the PSI bins.

Categorical features get PSI and Jensen-Shannon over category frequencies and a
**chi-square** test of homogeneity of the reference's and the current counts.

Decision rule (:class:`DriftThresholds`): a feature drifts when the change is both
*significant* (unlikely to be sampling noise) and *material* (big enough to matter):

- numeric: ``KS p < ks_pvalue`` or ``chi2 p < ks_pvalue`` over the PSI bins (each test at half
  the level, so together they keep the false-alarm rate at ``ks_pvalue``; KS alone misses
  changes of spread, which the binned test sees), *and* ``PSI > psi`` or
  ``normalised Wasserstein > wasserstein``;
- categorical: ``chi2 p < chi2_pvalue`` *and* ``PSI > psi`` or ``JS > js``.

The significance half stops tiny samples from firing on noise (PSI and JS are biased upwards
there); the materiality half stops huge samples from firing on trivial changes (with a
million rows a shift of 0.02 standard deviations has a KS p-value near zero). Plain
``PSI > 0.2`` or ``KS p < 0.05`` alone would get one of the two wrong.

Below ``min_rows`` (rows of a frame, or non-missing values of a feature, in either sample)
there is no verdict at all: the result is ``insufficient_data`` with the counts. Three
identical requests are a point mass, which the tests call significant against any spread-out
reference; a floor on the sample is what keeps a new install from reporting drift.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats
from scipy.spatial.distance import jensenshannon

from opsloop.errors import InvalidInputError
from workflows.drift_report import DriftReport, DriftThresholds, FeatureDrift

__all__ = [
    "EPSILON",
    "DriftThresholds",
    "Kind",
    "categorical_chi2_pvalue",
    "compare_feature",
    "compare_frames",
    "jensen_shannon",
    "ks_test",
    "normalised_wasserstein",
    "psi",
    "quantile_edges",
    "thresholds_from",
]

Kind = Literal["numeric", "categorical"]

EPSILON = 1e-4
"""Floor of a bin's share in PSI, so an empty bin gives a large but finite index."""

OTHER = "<other>"
"""The pooled cell for categories the reference never saw."""


def quantile_edges(reference: np.ndarray, bins: int = 10) -> np.ndarray:
    """Interior bin edges at the reference's ``i / bins`` quantiles, repeats merged.

    Args:
        reference: Numeric values without NaN, at least one.
        bins: Number of quantile bins before merging, at least 2.

    Returns:
        Sorted unique edges; with ``k`` edges there are ``k + 1`` bins:
        ``(-inf, e0), [e0, e1), ..., [e_{k-1}, inf)``.
    """
    if bins < 2:
        raise InvalidInputError(f"need at least 2 bins, got {bins}", field="bins")
    return np.unique(np.quantile(reference, np.linspace(0.0, 1.0, bins + 1)[1:-1]))


def psi(reference_shares: np.ndarray, current_shares: np.ndarray, epsilon: float = EPSILON) -> float:
    """Population stability index ``sum((c - r) * ln(c / r))`` of two distributions on the same bins.

    Args:
        reference_shares: Share of the reference in each bin (sums to 1).
        current_shares: Share of the current sample in each bin.
        epsilon: Floor applied to every share so empty bins keep the index finite.

    Returns:
        PSI, ``>= 0``; 0 for identical shares.
    """
    r = np.maximum(np.asarray(reference_shares, dtype=float), epsilon)
    c = np.maximum(np.asarray(current_shares, dtype=float), epsilon)
    return float(np.sum((c - r) * np.log(c / r)))


def jensen_shannon(reference_shares: np.ndarray, current_shares: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) of two distributions on the same bins."""
    value = float(jensenshannon(reference_shares, current_shares, base=2))
    return 0.0 if np.isnan(value) else value  # both all-zero; cannot happen for non-empty samples


def _sorted_counts(values_sorted: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts of sorted values in the bins of :func:`quantile_edges`: one binary search per edge."""
    below = np.searchsorted(values_sorted, edges, side="left")
    return np.diff(np.concatenate([[0], below, [len(values_sorted)]]))


def _cdf_differences(ref_sorted: np.ndarray, cur_sorted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CDF differences ``F_ref - F_cur`` at each distinct pooled value but the last, and the gaps.

    The gaps are from each such value to the next. Both inputs must be sorted. A stable
    argsort of the two concatenated runs merges them in linear time; running counts of which
    sample each merged value came from are the two CDFs, read at the last value of each run
    of ties.
    """
    n, m = len(ref_sorted), len(cur_sorted)
    pooled = np.concatenate([ref_sorted, cur_sorted])
    order = np.argsort(pooled, kind="stable")
    merged = pooled[order]
    from_ref = order < n
    steps = np.diff(merged)
    last_of_ties = np.flatnonzero(steps != 0)
    in_ref = np.cumsum(from_ref)[last_of_ties]
    in_cur = last_of_ties + 1 - in_ref
    return in_ref / n - in_cur / m, steps[last_of_ties]


# Above this effective size (n m / (n + m)) the Kolmogorov distribution's limit replaces SciPy's
# finite-n one: SciPy takes ~0.2 s a call there, and the two differ by O(1 / sqrt(size)), < 0.5%.
_KS_LIMIT_SIZE = 50_000


def _ks_pvalue(statistic: float, n: int, m: int, ref_sorted: np.ndarray, cur_sorted: np.ndarray) -> float:
    # scipy's own choice of method: exact up to 10,000 rows per sample, else Smirnov's asymptotic
    # distribution (the same formula ks_2samp uses, without its second sort of both samples).
    if max(n, m) <= 10_000:
        return float(stats.ks_2samp(ref_sorted, cur_sorted).pvalue)
    size = n * m / (n + m)
    if size > _KS_LIMIT_SIZE:
        return float(np.clip(stats.kstwobign.sf(statistic * np.sqrt(size)), 0.0, 1.0))
    return float(np.clip(stats.kstwo.sf(statistic, np.round(size)), 0.0, 1.0))


def ks_test(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov test (two-sided); returns ``(statistic, p-value)``.

    The same result as :func:`scipy.stats.ks_2samp` with its default method.
    """
    ref, cur = np.sort(reference), np.sort(current)
    diffs, _ = _cdf_differences(ref, cur)
    statistic = float(np.abs(diffs).max()) if len(diffs) else 0.0
    return statistic, _ks_pvalue(statistic, len(ref), len(cur), ref, cur)


def _spread(reference: np.ndarray, current: np.ndarray) -> float:
    scale = float(np.std(reference))
    if scale <= 0.0:
        pooled = np.concatenate([reference, current])
        q1, q3 = np.quantile(pooled, [0.25, 0.75])
        scale = float(q3 - q1) / 1.349 or float(np.std(pooled))
    return scale


def normalised_wasserstein(reference: np.ndarray, current: np.ndarray) -> float:
    """Wasserstein-1 distance in units of the reference's spread.

    The distance is :func:`scipy.stats.wasserstein_distance`; the unit is the reference's
    standard deviation. A constant reference has none, so then the unit is the pooled sample's
    interquartile range / 1.349 (the IQR of a normal is 1.349 standard deviations), and failing
    that the pooled standard deviation. Both samples constant and equal gives 0.
    """
    scale = _spread(reference, current)
    distance = float(stats.wasserstein_distance(reference, current))
    return distance / scale if scale > 0.0 else 0.0


def _binned_chi2_pvalue(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    """Chi-square test of homogeneity of two samples' counts on the same bins."""
    keep = (ref_counts + cur_counts) > 0
    if keep.sum() < 2:
        return 1.0
    table = np.vstack([ref_counts[keep], cur_counts[keep]])
    return float(stats.chi2_contingency(table, correction=False).pvalue)


def categorical_chi2_pvalue(ref_counts: np.ndarray, cur_counts: np.ndarray, *, unseen: int = 0) -> float:
    """Chi-square test of homogeneity of the reference's and the current category counts.

    Both samples are samples: testing the current counts against the reference frequencies
    as if those were exact (a goodness-of-fit test, Evidently's choice) calls two samples of
    one distribution different far more often than its level says, worst with many rare
    categories. Current values of categories the reference never saw (``unseen`` of them)
    form one extra cell, empty in the reference.

    Args:
        ref_counts: Reference count per category (every entry of the reference's categories).
        cur_counts: Current count per the same categories.
        unseen: Current rows whose category is not among the reference's.

    Returns:
        The p-value, 1.0 when there is nothing to compare (a single cell).
    """
    return _binned_chi2_pvalue(np.append(ref_counts, 0), np.append(cur_counts, unseen))


def _numeric(
    reference: np.ndarray, current: np.ndarray, thresholds: DriftThresholds, bins: int
) -> dict[str, Any]:
    ref = np.sort(reference)
    cur = np.sort(current)
    edges = quantile_edges(ref, bins)
    ref_counts, cur_counts = _sorted_counts(ref, edges), _sorted_counts(cur, edges)
    ref_shares, cur_shares = ref_counts / len(ref), cur_counts / len(cur)
    score_psi = psi(ref_shares, cur_shares)
    # KS and Wasserstein-1 both read the CDF differences: the largest one, and their integral.
    diffs, gaps = _cdf_differences(ref, cur)
    ks_stat = float(np.abs(diffs).max()) if len(diffs) else 0.0
    ks_p = _ks_pvalue(ks_stat, len(ref), len(cur), ref, cur)
    scale = _spread(ref, cur)
    wasserstein = float(np.abs(diffs) @ gaps) / scale if scale > 0.0 else 0.0
    binned_p = _binned_chi2_pvalue(ref_counts, cur_counts)
    significant = min(ks_p, binned_p) < thresholds.ks_pvalue / 2
    material = score_psi > thresholds.psi or wasserstein > thresholds.wasserstein
    labels = _edge_labels(edges)
    return {
        "drifted": bool(significant and material),
        "psi": score_psi,
        "ks_statistic": ks_stat,
        "ks_pvalue": ks_p,
        "wasserstein": wasserstein,
        "js": jensen_shannon(ref_shares, cur_shares),
        "chi2_pvalue": binned_p,
        "bins": labels,
        "reference_shares": tuple(float(s) for s in ref_shares),
        "current_shares": tuple(float(s) for s in cur_shares),
    }


def _edge_labels(edges: np.ndarray) -> tuple[str, ...]:
    if len(edges) == 0:
        return ("all",)
    fmt = [f"{e:.4g}" for e in edges]
    middle = [f"[{a}, {b})" for a, b in itertools.pairwise(fmt)]
    return (f"< {fmt[0]}", *middle, f">= {fmt[-1]}")


def _categorical(reference: pd.Series, current: pd.Series, thresholds: DriftThresholds) -> dict[str, Any]:
    ref_counts_by = reference.astype(str).value_counts(sort=False)
    cur_counts_by = current.astype(str).value_counts(sort=False)
    categories = sorted(ref_counts_by.index)
    ref_counts = ref_counts_by.reindex(categories).to_numpy(dtype=float)
    cur_counts = cur_counts_by.reindex(categories, fill_value=0).to_numpy(dtype=float)
    unseen = int(cur_counts_by.sum() - cur_counts.sum())
    labels = (*categories, OTHER) if unseen else tuple(categories)
    ref_shares = np.append(ref_counts, 0.0)[: len(labels)] / ref_counts.sum()
    cur_shares = np.append(cur_counts, unseen)[: len(labels)] / len(current)
    score_psi = psi(ref_shares, cur_shares)
    score_js = jensen_shannon(ref_shares, cur_shares)
    chi2_p = categorical_chi2_pvalue(ref_counts, cur_counts, unseen=unseen)
    significant = chi2_p < thresholds.chi2_pvalue
    material = score_psi > thresholds.psi or score_js > thresholds.js
    return {
        "drifted": bool(significant and material),
        "psi": score_psi,
        "js": score_js,
        "chi2_pvalue": chi2_p,
        "bins": labels,
        "reference_shares": tuple(float(s) for s in ref_shares),
        "current_shares": tuple(float(s) for s in cur_shares),
    }


def _present(values: Any, name: str, role: str) -> tuple[pd.Series, int]:
    series = values if isinstance(values, pd.Series) else pd.Series(np.asarray(values))
    present = series.dropna()
    if present.empty:
        raise InvalidInputError(
            f"{role} column {name!r} has no values (all {len(series)} missing)", field=name, sample=role
        )
    return present, len(series) - len(present)


def compare_feature(
    reference: np.ndarray | pd.Series,
    current: np.ndarray | pd.Series,
    kind: Kind = "numeric",
    thresholds: DriftThresholds | None = None,
    *,
    name: str = "feature",
    bins: int = 10,
) -> FeatureDrift:
    """Score one feature's drift from ``reference`` to ``current``.

    Args:
        reference: The reference sample (e.g. training data); NaN/None are dropped and counted.
        current: The sample to check.
        kind: ``numeric`` or ``categorical`` (values compared as strings).
        thresholds: Decision thresholds; the defaults of :class:`DriftThresholds` when None.
        name: Feature name, for the result and error messages.
        bins: Quantile bins for numeric PSI / JS / plots.

    Returns:
        Scores, verdict, counts and binned distributions; ``insufficient_data`` and not drifted
        when either sample has fewer than ``thresholds.min_rows`` non-missing values.

    Raises:
        InvalidInputError: A sample is empty after dropping missing values, a numeric sample is
            not numeric, or ``kind`` is unknown.
    """
    thresholds = thresholds or DriftThresholds()
    ref, ref_missing = _present(reference, name, "reference")
    cur, cur_missing = _present(current, name, "current")
    if kind == "numeric":
        try:
            ref_values = ref.to_numpy(dtype=float)
            cur_values = cur.to_numpy(dtype=float)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(
                f"column {name!r} is not numeric ({exc}); declare it categorical", field=name
            ) from exc
        if not (np.isfinite(ref_values).all() and np.isfinite(cur_values).all()):
            raise InvalidInputError(f"column {name!r} holds infinite values", field=name)
        scores = _numeric(ref_values, cur_values, thresholds, bins)
    elif kind == "categorical":
        scores = _categorical(ref, cur, thresholds)
    else:
        raise InvalidInputError(f"kind must be numeric or categorical, got {kind!r}", field="kind")
    insufficient = min(len(ref), len(cur)) < thresholds.min_rows
    if insufficient:
        scores["drifted"] = False  # the scores stay, for people to read; a verdict needs more data
    return FeatureDrift(
        name=name,
        kind=kind,
        reference_count=len(ref),
        current_count=len(cur),
        reference_missing=ref_missing,
        current_missing=cur_missing,
        insufficient_data=insufficient,
        **scores,
    )


def compare_frames(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    categorical: Iterable[str] | None = None,
    thresholds: DriftThresholds | None = None,
    *,
    columns: Iterable[str] | None = None,
    bins: int = 10,
) -> DriftReport:
    """Compare every column of ``reference`` with the same column of ``current``.

    Args:
        reference: The reference frame.
        current: The frame to check; it must hold every compared column.
        categorical: Columns to treat as categorical; the others are categorical when their
            dtype is not numeric (booleans count as categorical).
        thresholds: Decision thresholds; defaults when None.
        columns: Only these columns; all of the reference's when None.
        bins: Quantile bins for numeric features.

    Returns:
        The per-feature results and the dataset verdict; ``insufficient_data`` when either
        frame has fewer than ``thresholds.min_rows`` rows or no feature has enough values.

    Raises:
        InvalidInputError: No columns, a column missing from a frame, an empty frame or column,
            or a non-numeric column that was not declared categorical.
    """
    thresholds = thresholds or DriftThresholds()
    names = list(reference.columns if columns is None else columns)
    declared = set(categorical or ())
    if not names:
        raise InvalidInputError("the reference has no columns to compare", field="reference")
    for frame, role in ((reference, "reference"), (current, "current")):
        missing = [c for c in [*names, *declared] if c not in frame.columns]
        if missing:
            raise InvalidInputError(f"{role} lacks columns {missing}", field=role, missing=missing)
        if frame.empty:
            raise InvalidInputError(f"the {role} frame has no rows", field=role)
    features: dict[str, FeatureDrift] = {}
    for column in names:
        numeric = pd.api.types.is_numeric_dtype(reference[column]) and not pd.api.types.is_bool_dtype(
            reference[column]
        )
        kind: Kind = "numeric" if numeric and column not in declared else "categorical"
        features[column] = compare_feature(
            reference[column], current[column], kind, thresholds, name=str(column), bins=bins
        )
    return DriftReport.build(features, thresholds, reference_rows=len(reference), current_rows=len(current))


def thresholds_from(values: Mapping[str, float | int | None]) -> DriftThresholds:
    """Defaults overridden by the non-None ``values`` (e.g. from CLI options)."""
    # Each value's type is checked by DriftThresholds itself; a Mapping cannot say which key is an int.
    return DriftThresholds(**{k: v for k, v in values.items() if v is not None})  # type: ignore[arg-type]
