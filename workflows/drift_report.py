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

__all__ = ["DriftReport", "DriftThresholds", "FeatureDrift", "format_score"]

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
    """

    psi: float = 0.2
    ks_pvalue: float = 0.05
    chi2_pvalue: float = 0.05
    wasserstein: float = 0.1
    js: float = 0.1
    dataset_share: float = 0.5

    def __post_init__(self) -> None:
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
        drifted: The verdict of the decision rule in :mod:`workflows.drift`.
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

    def to_dict(self) -> dict[str, Any]:
        """The scores that apply to this kind of feature, as in :meth:`DriftReport.to_dict`."""
        entry: dict[str, Any] = {"kind": self.kind, "drifted": self.drifted, "psi": self.psi}
        if self.kind == "numeric":
            entry |= {"ks_pvalue": self.ks_pvalue, "wasserstein": self.wasserstein}
        entry["js"] = self.js
        if self.chi2_pvalue is not None:
            entry["chi2_pvalue"] = self.chi2_pvalue
        return entry


@dataclass(frozen=True)
class DriftReport:
    """Drift of every compared feature and the dataset verdict.

    Attributes:
        dataset_drift: At least ``thresholds.dataset_share`` of the features drifted.
        share_drifted: Share of features that drifted.
        features: Per-feature results, in column order.
        thresholds: The thresholds the verdicts used.
        reference_rows: Rows in the reference frame.
        current_rows: Rows in the current frame.
    """

    dataset_drift: bool
    share_drifted: float
    features: dict[str, FeatureDrift]
    thresholds: DriftThresholds
    reference_rows: int
    current_rows: int

    @classmethod
    def build(
        cls,
        features: dict[str, FeatureDrift],
        thresholds: DriftThresholds,
        *,
        reference_rows: int,
        current_rows: int,
    ) -> DriftReport:
        """Work out the dataset verdict from per-feature results."""
        share = sum(f.drifted for f in features.values()) / len(features) if features else 0.0
        return cls(
            dataset_drift=bool(features) and share >= thresholds.dataset_share,
            share_drifted=share,
            features=features,
            thresholds=thresholds,
            reference_rows=reference_rows,
            current_rows=current_rows,
        )

    @property
    def drifted_features(self) -> list[str]:
        """Names of the drifted features."""
        return [name for name, f in self.features.items() if f.drifted]

    def to_dict(self) -> dict[str, Any]:
        """``{"dataset_drift", "share_drifted", "features": {name: {...}}, ...}``, JSON-ready.

        Each feature has ``kind``, ``drifted``, ``psi``, ``js`` and ``chi2_pvalue``, and numeric
        ones also ``ks_pvalue`` and ``wasserstein``. ``thresholds``, ``reference_rows`` and
        ``current_rows`` say what the verdicts were based on.
        """
        return {
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
        drifted = self.drifted_features
        head = "dataset drift" if self.dataset_drift else "no dataset drift"
        names = f": {', '.join(drifted)}" if drifted else ""
        return f"{head} ({len(drifted)} of {len(self.features)} features drifted{names})"

    def to_html(self, title: str = "opsloop drift report") -> str:
        """One self-contained HTML page: summary, then per feature a chart, the scores, the verdict."""
        t = self.thresholds
        cards = "\n".join(_feature_card(f) for f in self.features.values())
        status = "drift" if self.dataset_drift else "ok"
        return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
.summary {{ padding: 1rem; border-radius: 6px; margin-bottom: 1.5rem; }}
.summary.drift, .card.drift {{ border-left: 6px solid #d62728; }}
.summary.ok, .card.ok {{ border-left: 6px solid #2ca02c; }}
.summary {{ background: #f6f6f6; }}
.card {{ padding: 0.5rem 1rem; margin-bottom: 1.5rem; background: #fafafa; }}
table.scores {{ border-collapse: collapse; margin: 0.5rem 0; }}
table.scores td, table.scores th {{ padding: 2px 10px; text-align: right; }}
.verdict.drift {{ color: #d62728; font-weight: bold; }} .verdict.ok {{ color: #2ca02c; }}
.legend span {{ display: inline-block; width: 12px; height: 12px; margin: 0 4px 0 12px; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<div class="summary {status}"><strong>{html.escape(self.verdict())}</strong><br>
share drifted {self.share_drifted:.2f} (dataset drift at &ge; {t.dataset_share:g});
reference {self.reference_rows} rows, current {self.current_rows} rows<br>
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
    status = "drift" if f.drifted else "ok"
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
<span class="verdict {status}">{"DRIFT" if f.drifted else "no drift"}</span></h2>
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
