"""Reference profiles of user data: the signature check and the profile, without MLflow."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from opsloop.errors import InvalidInputError
from workflows.reference import Column, build_profile, columns_from_signature, profile_for_signature

SIGNATURE = [("amount", "double"), ("count", "long"), ("plan", "string"), ("vip", "boolean")]


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 300
    return pd.DataFrame(
        {
            "amount": rng.normal(100, 15, n),
            "count": rng.integers(0, 9, n),
            "plan": rng.choice(["free", "pro"], n),
            "vip": rng.random(n) < 0.1,
            "label": rng.integers(0, 2, n),  # not a model input: ignored
        }
    )


def test_signature_types_decide_the_kind_and_unprofilable_columns_are_left_out() -> None:
    columns = columns_from_signature([*SIGNATURE, ("seen", "datetime"), ("blob", "binary")])
    assert columns == [
        Column("amount", "numeric"),
        Column("count", "numeric"),
        Column("plan", "categorical"),
        Column("vip", "categorical"),
    ]


def test_profile_of_rows_that_fit_the_signature(frame: pd.DataFrame) -> None:
    profile = profile_for_signature(frame, SIGNATURE)
    assert json.loads(json.dumps(profile, allow_nan=False)) == profile
    assert set(profile) == {"rows", "features", "sample"}  # no predictions were given
    assert profile["rows"] == 300 and list(profile["features"]) == ["amount", "count", "plan", "vip"]
    assert list(profile["sample"]) == ["amount", "count", "plan", "vip"]
    assert profile["features"]["amount"]["mean"] == pytest.approx(frame["amount"].mean())
    assert sum(profile["features"]["plan"]["counts"].values()) == 300
    assert set(profile["features"]["vip"]["counts"]) == {"True", "False"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.drop(columns=["count"]), r"lacks the model's input columns \['count'\]"),
        (lambda f: f.iloc[:0], "has no rows"),
        (lambda f: f.assign(amount="n/a"), "column 'amount' of the reference data holds .* takes double"),
        (lambda f: f.assign(plan=None), "feature 'plan' has no values"),
    ],
)
def test_a_bad_reference_is_refused_with_the_reason(
    frame: pd.DataFrame, change: Callable[[pd.DataFrame], pd.DataFrame], message: str
) -> None:
    with pytest.raises(InvalidInputError, match=message):
        profile_for_signature(change(frame), SIGNATURE)


def test_build_profile_needs_a_column() -> None:
    with pytest.raises(InvalidInputError, match="nothing to profile"):
        build_profile(pd.DataFrame({"x": [1]}), [])
