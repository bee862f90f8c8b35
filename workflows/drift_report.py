"""The result of a drift comparison, the thresholds behind its verdicts, and its JSON and HTML forms.

:func:`workflows.drift.compare_frames` builds a :class:`DriftReport`; this module only holds
it and writes it out (the terminal table is the CLI's, ``serving.cli.drift``). The HTML page
is self-contained (inline CSS and SVG, no scripts, no links), so it can be attached to a
ticket or served as a CI artifact and still open offline.

:mod:`workflows.drift` imports this module, never the other way round.
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

from opsloop.errors import InvalidInputError

__all__ = ["DriftReport", "DriftStatus", "DriftThresholds", "FeatureDrift", "format_score"]

_REFERENCE_COLOUR = "#4c78a8"
_CURRENT_COLOUR = "#f58518"


@dataclass(frozen=True)
class DriftThresholds:
    """When a feature, and the dataset, count as drifted: the decision rule of :mod:`workflows.drift`.

    Attributes:
        psi: PSI above this is a material change (0.1-0.2 "moderate", above 0.2 "significant"
            in credit-risk practice).
        ks_pvalue: Significance level of the numeric tests (KS and binned chi-square, each
            run at half of it).
        chi2_pvalue: Significance level of the categorical chi-square test.
        wasserstein: Wasserstein distance, in reference standard deviations, above which a
            numeric change is material.
        js: Jensen-Shannon distance (base 2) above which a categorical change is material.
        dataset_share: The dataset drifts when at least this share of its features does.
        min_rows: The fewest rows each sample needs, and the fewest non-missing values each
            feature needs in each sample, before a verdict is given; below it the result is
            ``insufficient_data``. A handful of identical requests differs from any reference
            by chance alone, and PSI and JS are biased upwards on small samples, so without
            a floor a new install would report drift on its first few requests.
    """

    psi: float = 0.2
    ks_pvalue: float = 0.05
    chi2_pvalue: float = 0.05
    wasserstein: float = 0.1
    js: float = 0.1
    dataset_share: float = 0.5
    min_rows: int = 300

    def __post_init__(self) -> None:
        if not (isinstance(self.min_rows, int) and self.min_rows >= 1):
            raise InvalidInputError(
                f"min_rows must be an integer >= 1, got {self.min_rows}", field="min_rows"
            )
        for name in ("ks_pvalue", "chi2_pvalue", "dataset_share"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise InvalidInputError(f"threshold {name} must be in (0, 1], got {value}", field=name)
        for name in ("psi", "wasserstein", "js"):
            value = getattr(self, name)
            if not value >= 0.0:
                raise InvalidInputError(f"threshold {name} must be >= 0, got {value}", field=name)


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's drift scores and verdict.

    Attributes:
        name: Column name.
        kind: ``numeric`` or ``categorical``.
        drifted: The verdict of the decision rule in :mod:`workflows.drift`; always False when
            ``insufficient_data``.
        psi: Population stability index over ``bins``.
        ks_statistic: Kolmogorov-Smirnov statistic; None for categorical features.
        ks_pvalue: Kolmogorov-Smirnov p-value; None for categorical features.
        wasserstein: Wasserstein distance in reference standard deviations; None for categorical.
        js: Jensen-Shannon distance (base 2) over ``bins``.
        chi2_pvalue: Chi-square p-value of the test of homogeneity of the two samples'
            counts: over the categories, or over the PSI bins for numeric features.
        reference_count: Reference values compared (missing ones excluded).
        current_count: Current values compared.
        reference_missing: Reference values dropped as missing.
        current_missing: Current values dropped as missing.
        bins: Bin labels (value ranges, or categories).
        reference_shares: Share of the reference in each bin.
        current_shares: Share of the current sample in each bin.
        insufficient_data: A sample had fewer than ``min_rows`` values of this feature: the
            scores are computed but no verdict is given.
    """

    name: str
    kind: Literal["numeric", "categorical"]
    drifted: bool
    psi: float
    js: float
    chi2_pvalue: float | None
    reference_count: int
    current_count: int
    bins: tuple[str, ...]
    reference_shares: tuple[float, ...]
    current_shares: tuple[float, ...]
    ks_statistic: float | None = None
    ks_pvalue: float | None = None
    wasserstein: float | None = None
    reference_missing: int = 0
    current_missing: int = 0
    insufficient_data: bool = False

    @property
    def scores(self) -> dict[str, float]:
        """The scores that apply to this kind of feature, by method name."""
        values = {"psi": self.psi, "ks_pvalue": self.ks_pvalue, "wasserstein": self.wasserstein}
        values |= {"js": self.js, "chi2_pvalue": self.chi2_pvalue}
        return {method: value for method, value in values.items() if value is not None}

    def to_dict(self) -> dict[str, Any]:
        """The verdict, the sample sizes and the scores, as in :meth:`DriftReport.to_dict`."""
        return {
            "kind": self.kind,
            "drifted": self.drifted,
            "insufficient_data": self.insufficient_data,
            "reference_count": self.reference_count,
            "current_count": self.current_count,
            **self.scores,
        }


DriftStatus = Literal["drift", "no_drift", "insufficient_data"]


@dataclass(frozen=True)
class DriftReport:
    """Drift of every compared feature and the dataset verdict.

    Attributes:
        dataset_drift: At least ``thresholds.dataset_share`` of the features with enough data
            drifted; always False when ``insufficient_data``.
        share_drifted: Share of the features with enough data that drifted (0 when none has).
        features: Per-feature results, in column order.
        thresholds: The thresholds the verdicts used.
        reference_rows: Rows in the reference frame.
        current_rows: Rows in the current frame.
        insufficient_data: A frame has fewer than ``thresholds.min_rows`` rows, or no feature
            has enough values in both: no verdict, and no alert.
    """

    dataset_drift: bool
    share_drifted: float
    features: dict[str, FeatureDrift]
    thresholds: DriftThresholds
    reference_rows: int
    current_rows: int
    insufficient_data: bool = False

    @classmethod
    def build(
        cls,
        features: dict[str, FeatureDrift],
        thresholds: DriftThresholds,
        *,
        reference_rows: int,
        current_rows: int,
    ) -> DriftReport:
        """Work out the dataset verdict from per-feature results.

        Features without enough data neither count as drifted nor dilute the share: the share
        is over the features that got a verdict.
        """
        judged = [f for f in features.values() if not f.insufficient_data]
        insufficient = min(reference_rows, current_rows) < thresholds.min_rows or not judged
        share = 0.0 if insufficient else sum(f.drifted for f in judged) / len(judged)
        return cls(
            dataset_drift=not insufficient and share >= thresholds.dataset_share,
            share_drifted=share,
            features=features,
            thresholds=thresholds,
            reference_rows=reference_rows,
            current_rows=current_rows,
            insufficient_data=insufficient,
        )

    @property
    def status(self) -> DriftStatus:
        """``drift``, ``no_drift`` or ``insufficient_data`` (too few rows for a verdict)."""
        if self.insufficient_data:
            return "insufficient_data"
        return "drift" if self.dataset_drift else "no_drift"

    @property
    def drifted_features(self) -> list[str]:
        """Names of the drifted features."""
        return [name for name, f in self.features.items() if f.drifted]

    def sizes(self) -> str:
        """The sample sizes behind the verdict, for people: ``reference 500 rows, current 3 rows (...)``."""
        return (
            f"reference {self.reference_rows} rows, current {self.current_rows} rows "
            f"(a verdict needs at least {self.thresholds.min_rows} of each)"
        )

    def to_dict(self) -> dict[str, Any]:
        """``{"status", "dataset_drift", "share_drifted", "features": {name: {...}}, ...}``, JSON-ready.

        ``status`` is ``drift``, ``no_drift`` or ``insufficient_data``. Each feature has ``kind``,
        ``drifted``, ``insufficient_data``, ``reference_count`` and ``current_count`` (values
        compared, missing ones excluded), ``psi``, ``js`` and ``chi2_pvalue``, and numeric ones
        also ``ks_pvalue`` and ``wasserstein``. ``thresholds`` (``min_rows`` included),
        ``reference_rows`` and ``current_rows`` say what the verdicts were based on.
        """
        return {
            "status": self.status,
            "dataset_drift": self.dataset_drift,
            "share_drifted": self.share_drifted,
            "features": {name: f.to_dict() for name, f in self.features.items()},
            "thresholds": asdict(self.thresholds),
            "reference_rows": self.reference_rows,
            "current_rows": self.current_rows,
        }

    def to_json(self, indent: int | None = 2) -> str:
        """:meth:`to_dict` as a JSON document."""
        return json.dumps(self.to_dict(), indent=indent)

    def verdict(self) -> str:
        """One line: the dataset verdict and which features drifted."""
        if self.insufficient_data:
            return f"insufficient data, no verdict: {self.sizes()}"
        drifted = self.drifted_features
        head = "dataset drift" if self.dataset_drift else "no dataset drift"
        names = f": {', '.join(drifted)}" if drifted else ""
        return f"{head} ({len(drifted)} of {len(self.features)} features drifted{names})"

    def to_html(self, title: str = "opsloop drift report") -> str:
        """One self-contained HTML page: summary, then per feature a chart, the scores, the verdict."""
        t = self.thresholds
        cards = "\n".join(_feature_card(f) for f in self.features.values())
        status = {"drift": "drift", "no_drift": "ok", "insufficient_data": "unknown"}[self.status]
        return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
.summary {{ padding: 1rem; border-radius: 6px; margin-bottom: 1.5rem; }}
.summary.drift, .card.drift {{ border-left: 6px solid #d62728; }}
.summary.ok, .card.ok {{ border-left: 6px solid #2ca02c; }}
.summary.unknown, .card.unknown {{ border-left: 6px solid #999; }}
.summary {{ background: #f6f6f6; }}
.card {{ padding: 0.5rem 1rem; margin-bottom: 1.5rem; background: #fafafa; }}
table.scores {{ border-collapse: collapse; margin: 0.5rem 0; }}
table.scores td, table.scores th {{ padding: 2px 10px; text-align: right; }}
.verdict.drift {{ color: #d62728; font-weight: bold; }} .verdict.ok {{ color: #2ca02c; }}
.verdict.unknown {{ color: #777; }}
.legend span {{ display: inline-block; width: 12px; height: 12px; margin: 0 4px 0 12px; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<div class="summary {status}"><strong>{html.escape(self.verdict())}</strong><br>
share drifted {self.share_drifted:.2f} (dataset drift at &ge; {t.dataset_share:g});
{html.escape(self.sizes())}<br>
thresholds: PSI &gt; {t.psi:g}, KS/binned chi2 p &lt; {t.ks_pvalue:g}, Wasserstein &gt; {t.wasserstein:g} std,
categorical chi2 p &lt; {t.chi2_pvalue:g}, JS &gt; {t.js:g}
<div class="legend"><span style="background:{_REFERENCE_COLOUR}"></span>reference
<span style="background:{_CURRENT_COLOUR}"></span>current</div></div>
{cards}
</body></html>
"""


def format_score(value: float | None) -> str:
    """A score as reports show it: three decimals, scientific when tiny, ``-`` when not computed."""
    if value is None:
        return "-"
    return f"{value:.1e}" if abs(value) < 1e-3 and value != 0 else f"{value:.3f}"


def _feature_card(f: FeatureDrift) -> str:
    status = "unknown" if f.insufficient_data else "drift" if f.drifted else "ok"
    label = {"unknown": "too few values", "drift": "DRIFT", "ok": "no drift"}[status]
    scores = [("PSI", f.psi), ("KS p", f.ks_pvalue), ("KS D", f.ks_statistic)]
    scores += [("Wasserstein", f.wasserstein), ("JS", f.js), ("chi2 p", f.chi2_pvalue)]
    head = "".join(f"<th>{name}</th>" for name, value in scores if value is not None)
    row = "".join(f"<td>{format_score(value)}</td>" for _, value in scores if value is not None)
    missing = (
        f"; missing {f.reference_missing} / {f.current_missing}"
        if f.reference_missing or f.current_missing
        else ""
    )
    return f"""<div class="card {status}">
<h2>{html.escape(f.name)} <small>({f.kind})</small>
<span class="verdict {status}">{label}</span></h2>
<div>reference {f.reference_count} values, current {f.current_count}{missing}</div>
<table class="scores"><tr>{head}</tr><tr>{row}</tr></table>
{_bars_svg(f)}
</div>"""


def _bars_svg(f: FeatureDrift, width: int = 640, height: int = 180) -> str:
    """Reference and current shares per bin as overlaid bars (current narrower, in front)."""
    left, bottom, top = 40, 40, 10
    plot_w, plot_h = width - left - 10, height - bottom - top
    n = max(len(f.bins), 1)
    peak = max([*f.reference_shares, *f.current_shares, 1e-9])
    slot = plot_w / n
    parts = [
        f'<svg width="{width}" height="{height}" '
        f'role="img" aria-label="distribution of {html.escape(f.name)}">',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#888"/>',
        f'<text x="{left - 4}" y="{top + 8}" font-size="10" text-anchor="end">{peak:.0%}</text>',
    ]
    for i, (label, r, c) in enumerate(zip(f.bins, f.reference_shares, f.current_shares, strict=True)):
        x = left + i * slot
        rh, ch = plot_h * r / peak, plot_h * c / peak
        parts.append(
            f'<rect x="{x + slot * 0.1:.1f}" y="{top + plot_h - rh:.1f}" width="{slot * 0.8:.1f}" '
            f'height="{rh:.1f}" fill="{_REFERENCE_COLOUR}" fill-opacity="0.6">'
            f"<title>{html.escape(label)}: reference {r:.1%}</title></rect>"
        )
        parts.append(
            f'<rect x="{x + slot * 0.3:.1f}" y="{top + plot_h - ch:.1f}" width="{slot * 0.4:.1f}" '
            f'height="{ch:.1f}" fill="{_CURRENT_COLOUR}" fill-opacity="0.85">'
            f"<title>{html.escape(label)}: current {c:.1%}</title></rect>"
        )
        short = label if len(label) <= 18 else label[:17] + "…"
        parts.append(
            f'<text x="{x + slot / 2:.1f}" y="{top + plot_h + 14}" font-size="9" text-anchor="middle" '
            f'transform="rotate(20 {x + slot / 2:.1f} {top + plot_h + 14})">{html.escape(short)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
