"""The benchmark's data: a reference and a current frame of 14 numeric and 6 categorical features.

The numeric features have the shapes and scales that real tables have (normal, log-normal
incomes, heavy tails, integers, a zero-inflated count, a rate of a few in ten thousand, amounts
in the millions); the categorical ones range from a yes/no flag to 200 codes. In the current
frame some features drift and the others are fresh draws of the same distribution:

======================  ============================================  ===========================
feature                 change                                        expected verdict
======================  ============================================  ===========================
``score``               mean +0.5 standard deviations                 drift
``iq``                  mean +0.02 standard deviations                significant, not material
``wait_time``           exponential scale x1.3                        drift
``returns``             Student-t spread x1.5, same median            drift
``click_rate``          mean +0.3 sd, scale ~1e-4                     drift
``refunds``             zeros 70% -> 60%                              drift (moderate)
``channel``             frequencies of 10 levels move                 drift
``is_member``           "yes" 30% -> 45%                              drift
======================  ============================================  ===========================

Deterministic for a given seed and row count; the two frames come from independent streams.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["CATEGORICAL", "DRIFTED", "FEATURES", "generate", "write_parquet"]

Generator = Callable[[np.random.Generator, int, bool], np.ndarray]


def _levels(prefix: str, count: int) -> np.ndarray:
    return np.array([f"{prefix}{i:03d}" for i in range(count)])


def _zipf_shares(count: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, count + 1) ** exponent
    return weights / weights.sum()


_CHANNEL = _levels("ch", 10)
_CHANNEL_REF = _zipf_shares(10, 0.8)
_CHANNEL_CUR = _CHANNEL_REF[::-1] * 0.3 + _CHANNEL_REF * 0.7  # mass moves towards the rare levels
_PRODUCT = _levels("p", 50)
_PRODUCT_SHARES = _zipf_shares(50, 1.0)
_CITY = _levels("c", 200)
_CITY_SHARES = _zipf_shares(200, 0.5)  # rarest ~0.2%: every city shows up in 20k rows


def _categorical(levels: np.ndarray, shares: np.ndarray) -> Generator:
    def draw(rng: np.random.Generator, n: int, drifted: bool) -> np.ndarray:
        return levels[rng.choice(len(levels), size=n, p=shares)]

    return draw


def _refunds(rng: np.random.Generator, n: int, drifted: bool) -> np.ndarray:
    zero = rng.random(n) < (0.6 if drifted else 0.7)
    return np.where(zero, 0.0, rng.exponential(40.0, n).round(2))


def _bimodal(rng: np.random.Generator, n: int, drifted: bool) -> np.ndarray:
    first = rng.random(n) < 0.4
    return np.where(first, rng.normal(10.0, 2.0, n), rng.normal(25.0, 4.0, n))


FEATURES: dict[str, Generator] = {
    # numeric
    "score": lambda rng, n, d: rng.normal(0.5 if d else 0.0, 1.0, n),
    "iq": lambda rng, n, d: rng.normal(100.3 if d else 100.0, 15.0, n),
    "income": lambda rng, n, d: rng.lognormal(10.5, 0.8, n).round(2),
    "wait_time": lambda rng, n, d: rng.exponential(1.3 if d else 1.0, n),
    "share_used": lambda rng, n, d: rng.uniform(0.0, 1.0, n),
    "returns": lambda rng, n, d: rng.standard_t(3, n) * (0.015 if d else 0.01),
    "conversion": lambda rng, n, d: rng.beta(2.0, 5.0, n),
    "basket_value": lambda rng, n, d: rng.gamma(2.0, 30.0, n),
    "visits": lambda rng, n, d: rng.poisson(3.0, n).astype(float),  # 15 or so distinct values
    "session_minutes": _bimodal,
    "click_rate": lambda rng, n, d: rng.normal(2.3e-4 if d else 2e-4, 1e-4, n),
    "loan_amount": lambda rng, n, d: rng.normal(1e6, 2e5, n).round(-2),
    "age": lambda rng, n, d: rng.integers(18, 91, n).astype(float),
    "refunds": _refunds,
    # categorical
    "region": _categorical(np.array(["north", "south", "west"]), np.array([0.5, 0.3, 0.2])),
    "channel": lambda rng, n, d: _categorical(_CHANNEL, _CHANNEL_CUR if d else _CHANNEL_REF)(rng, n, d),
    "product": _categorical(_PRODUCT, _PRODUCT_SHARES),
    "is_member": lambda rng, n, d: np.where(rng.random(n) < (0.45 if d else 0.3), "yes", "no"),
    "tier": _categorical(
        np.array(["free", "basic", "plus", "pro", "team"]), np.array([0.4, 0.3, 0.15, 0.1, 0.05])
    ),
    "city": _categorical(_CITY, _CITY_SHARES),
}
CATEGORICAL = ("region", "channel", "product", "is_member", "tier", "city")
DRIFTED = ("score", "iq", "wait_time", "returns", "click_rate", "refunds", "channel", "is_member")
"""Features whose distribution changes (``iq`` by too little to matter)."""


def generate(
    rows: int, seed: int = 2024, features: tuple[str, ...] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The reference and the current frame, ``rows`` each; ``features`` picks columns (all by default)."""
    names = features or tuple(FEATURES)
    frames = []
    for role in (0, 1):
        columns = {}
        for index, name in enumerate(FEATURES):
            # One stream per frame and feature: a feature's values do not depend on which others are drawn.
            rng = np.random.default_rng([seed, role, index])
            if name in names:
                columns[name] = FEATURES[name](rng, rows, role == 1 and name in DRIFTED)
        frames.append(pd.DataFrame(columns))
    return frames[0], frames[1]


def write_parquet(directory: Path, rows: int, seed: int = 2024) -> tuple[Path, Path]:
    """Write ``reference.parquet`` and ``current.parquet`` into ``directory`` (categories as strings)."""
    reference, current = generate(rows, seed)
    paths = directory / "reference.parquet", directory / "current.parquet"
    for frame, path in zip((reference, current), paths, strict=True):
        frame.to_parquet(path, index=False)
    return paths
