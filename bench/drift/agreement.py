"""opsloop's per-feature drift values beside Evidently's, on the same sample.

Evidently's values come from its worker with every method set explicitly (``ValueDrift``
with ``psi``, ``ks``, ``wasserstein``, ``jensenshannon``, ``chisquare``). Where the two
differ by convention rather than by arithmetic, a third column recomputes opsloop's value
with :mod:`workflows.drift`'s own functions under Evidently's convention, so what is left
over is a real difference:

- PSI and Jensen-Shannon of a numeric feature: Evidently bins the *pooled* sample into
  equal-width Sturges bins (``np.histogram_bin_edges(..., "sturges")``) when the reference has
  more than 20 distinct values, else one bin per value; opsloop uses the reference's deciles.
  Evidently's Jensen-Shannon is in nats (``scipy``'s default base e), opsloop's in bits, so
  Evidently's value is opsloop's times ``sqrt(ln 2)`` on the same bins.
- Wasserstein: both divide by the reference's standard deviation, Evidently by at least 0.001
  (so a feature whose spread is below 0.001 gets a smaller score from it).
- Chi-square (categorical): Evidently tests the current counts against the reference
  frequencies as if those were exact; opsloop runs the two-sample test of homogeneity (see
  :func:`workflows.drift.categorical_chi2_pvalue`), so the column "conv." shows Evidently's
  goodness of fit recomputed with SciPy on the same counts.
- KS: both are ``scipy.stats.ks_2samp``'s p-value (opsloop computes it without scipy's second
  sort): no convention to match.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from workflows.drift import compare_frames, jensen_shannon, psi

__all__ = ["evidently_binned_shares", "rows", "verdicts"]

_SQRT_LN2 = math.sqrt(math.log(2.0))


def evidently_binned_shares(
    reference: pd.Series, current: pd.Series, numeric: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Both samples' shares on the bins Evidently's PSI and Jensen-Shannon use (no zero filling)."""
    if numeric and reference.nunique() > 20:
        edges = np.histogram_bin_edges(
            np.concatenate([reference.to_numpy(), current.to_numpy()]), bins="sturges"
        )
        return (
            np.histogram(reference, edges)[0] / len(reference),
            np.histogram(current, edges)[0] / len(current),
        )
    keys = sorted(set(reference.unique()) | set(current.unique()))
    ref_counts = reference.value_counts().reindex(keys, fill_value=0).to_numpy()
    cur_counts = current.value_counts().reindex(keys, fill_value=0).to_numpy()
    return ref_counts / len(reference), cur_counts / len(current)


def _row(
    feature: str, metric: str, ours: float | None, theirs: float | None, matched: float | None, note: str
) -> dict[str, Any]:
    def diff(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else abs(a - b)

    return {
        "feature": feature,
        "metric": metric,
        "opsloop": ours,
        "evidently": theirs,
        "abs_diff": diff(ours, theirs),
        "opsloop_in_evidently_convention": matched,
        "abs_diff_in_convention": diff(matched, theirs),
        "note": note,
    }


def rows(
    reference: pd.DataFrame, current: pd.DataFrame, categorical: tuple[str, ...], evidently: dict[str, Any]
) -> list[dict[str, Any]]:
    """One row per feature and metric: opsloop's value, Evidently's, and opsloop's in Evidently's convention.

    Args:
        reference: The reference sample both sides saw.
        current: The current sample.
        categorical: The categorical columns.
        evidently: The ``columns`` part of the Evidently worker's ``values`` result.
    """
    report = compare_frames(reference, current, categorical)
    out: list[dict[str, Any]] = []
    m, n = len(current), len(reference)
    for name, feature in report.features.items():
        theirs = {method: entry["value"] for method, entry in evidently[name].items()}
        numeric = feature.kind == "numeric"
        ref_shares, cur_shares = evidently_binned_shares(reference[name], current[name], numeric)
        binning = (
            "Sturges bins of the pooled sample"
            if numeric and reference[name].nunique() > 20
            else "one bin per value"
        )
        out.append(
            _row(
                name, "psi", feature.psi, theirs["psi"], psi(ref_shares, cur_shares),
                f"opsloop: reference deciles; Evidently: {binning}" if numeric else "same bins (categories)",
            )
        )  # fmt: skip
        out.append(
            _row(
                name, "js", feature.js, theirs["jensenshannon"],
                jensen_shannon(ref_shares, cur_shares) * _SQRT_LN2,
                "Evidently in nats, opsloop in bits" + (f"; {binning} vs deciles" if numeric else ""),
            )
        )  # fmt: skip
        if numeric:
            out.append(
                _row(name, "ks_pvalue", feature.ks_pvalue, theirs["ks"], feature.ks_pvalue, "same test")
            )
            spread = float(np.std(reference[name].to_numpy()))
            wasserstein = float(feature.wasserstein or 0.0)  # never None for a numeric feature
            matched = wasserstein * spread / max(spread, 0.001)
            note = "divided by the reference std" + (
                f"; Evidently by max(std, 0.001), std here {spread:.1e}" if spread < 0.001 else ""
            )
            out.append(_row(name, "wasserstein", wasserstein, theirs["wasserstein"], matched, note))
        else:
            chi2_p = float(feature.chi2_pvalue or 0.0)  # never None for a categorical feature
            ref_counts = reference[name].value_counts().reindex(list(feature.bins), fill_value=0)
            cur_counts = current[name].value_counts().reindex(list(feature.bins), fill_value=0)
            expected = ref_counts.to_numpy(dtype=float) / n * m
            keep = expected > 0
            observed = cur_counts.to_numpy(dtype=float)[keep]
            plain = stats.chisquare(observed, expected[keep] * observed.sum() / expected[keep].sum()).pvalue
            out.append(
                _row(
                    name, "chi2_pvalue", chi2_p, theirs["chisquare"], float(plain),
                    "opsloop: two-sample homogeneity; Evidently: goodness of fit to the reference",
                )
            )  # fmt: skip
    return out


def verdicts(opsloop: dict[str, Any], evidently: dict[str, Any]) -> list[dict[str, Any]]:
    """Per feature: opsloop's verdict and Evidently's preset verdict (with the method it chose)."""
    return [
        {
            "feature": name,
            "opsloop": feature["drifted"],
            "evidently_preset": evidently[name]["preset"]["drifted"],
            "evidently_method": evidently[name]["preset"]["method"],
            "evidently_score": evidently[name]["preset"]["value"],
            "agree": feature["drifted"] == evidently[name]["preset"]["drifted"],
        }
        for name, feature in opsloop["features"].items()
    ]
