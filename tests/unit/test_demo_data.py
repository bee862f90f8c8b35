"""The demo model's data, pipeline and reference profile, without MLflow."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from opsloop.errors import InvalidInputError
from workflows.demo import (
    FEATURE_NAMES,
    FEATURES,
    LABEL,
    build_pipeline,
    data_hash,
    generate_credit_data,
    reference_profile,
)

DTYPES = {"long": "int64", "double": "float64"}


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return generate_credit_data(20_000, seed=1)


@pytest.fixture(scope="module")
def shifted() -> pd.DataFrame:
    return generate_credit_data(20_000, seed=1, shift=True)


def test_same_seed_same_frame_other_seed_other_frame() -> None:
    first = generate_credit_data(500, seed=3)
    pd.testing.assert_frame_equal(first, generate_credit_data(500, seed=3))
    assert data_hash(first) == data_hash(generate_credit_data(500, seed=3))
    assert not first.equals(generate_credit_data(500, seed=4))
    assert data_hash(first) != data_hash(generate_credit_data(500, seed=4))
    assert data_hash(first).startswith("sha256:") and len(data_hash(first)) == 7 + 64


def test_schema_matches_features(frame: pd.DataFrame) -> None:
    assert list(frame.columns) == [*FEATURE_NAMES, LABEL]
    assert len(frame) == 20_000 and not frame.isna().any().any()
    assert [f.kind for f in FEATURES].count("numeric") == 7
    for feature in FEATURES:
        column = frame[feature.name]
        if feature.kind == "numeric":
            assert feature.categories == ()
            assert str(column.dtype) == DTYPES[feature.dtype], feature.name
        else:
            assert feature.dtype == "string" and pd.api.types.is_string_dtype(column)
            assert set(column) == set(feature.categories), feature.name
    assert frame[LABEL].dtype == np.int64 and set(frame[LABEL]) == {0, 1}
    assert frame["age"].between(21, 75).all()
    assert set(frame["loan_term_months"]) == {12, 24, 36, 48, 60}
    assert (frame["credit_history_years"] <= frame["age"] - 18).all()
    assert (frame[["income", "loan_amount", "debt_to_income"]] > 0).all().all()


def test_label_rate_is_sensible(frame: pd.DataFrame, shifted: pd.DataFrame) -> None:
    assert 0.10 < frame[LABEL].mean() < 0.40
    assert shifted[LABEL].mean() > frame[LABEL].mean()


def test_known_relationships_hold(frame: pd.DataFrame) -> None:
    rate = frame.groupby(frame["num_late_payments"].clip(upper=3))[LABEL].mean()
    assert rate.is_monotonic_increasing and rate[3] > rate[0] + 0.2
    by_employment = frame.groupby("employment_type")[LABEL].mean()
    assert by_employment["unemployed"] > by_employment["salaried"] + 0.2
    dti_high = frame["debt_to_income"] > frame["debt_to_income"].quantile(0.75)
    dti_low = frame["debt_to_income"] < frame["debt_to_income"].quantile(0.25)
    assert frame.loc[dti_high, LABEL].mean() > frame.loc[dti_low, LABEL].mean() + 0.1
    long_history = frame["credit_history_years"] > 12
    assert frame.loc[long_history, LABEL].mean() < frame.loc[~long_history, LABEL].mean()
    own = frame["home_ownership"] == "own"
    assert frame.loc[own, LABEL].mean() < frame.loc[~own, LABEL].mean()


def test_shift_moves_distributions_as_documented(frame: pd.DataFrame, shifted: pd.DataFrame) -> None:
    def salaried_income(data: pd.DataFrame) -> float:
        return float(data.loc[data["employment_type"] == "salaried", "income"].median())

    # 25% lower within a type of employment; overall lower still, with more unemployed.
    assert 0.7 < salaried_income(shifted) / salaried_income(frame) < 0.8
    assert shifted["income"].median() < 0.75 * frame["income"].median()
    assert shifted["num_late_payments"].mean() > 1.7 * frame["num_late_payments"].mean()
    unemployed = (shifted["employment_type"] == "unemployed").mean()
    assert unemployed > 2 * (frame["employment_type"] == "unemployed").mean()
    assert shifted["debt_to_income"].mean() > frame["debt_to_income"].mean()
    # Loans 30% larger, twice the business loans.
    assert 1.25 < shifted["loan_amount"].median() / frame["loan_amount"].median() < 1.35
    business = (shifted["purpose"] == "business").mean()
    assert 1.8 < business / (frame["purpose"] == "business").mean() < 2.2
    # Unchanged by the shift: age and housing.
    assert abs(shifted["age"].mean() - frame["age"].mean()) < 0.5
    own = (shifted["home_ownership"] == "own").mean()
    assert abs(own - (frame["home_ownership"] == "own").mean()) < 0.02


def test_shift_changes_the_concept(frame: pd.DataFrame, shifted: pd.DataFrame) -> None:
    """debt_to_income weighs more after the shift, beyond what the other changes explain."""

    def slope(data: pd.DataFrame) -> float:
        model = build_pipeline().fit(data[list(FEATURE_NAMES)], data[LABEL])
        dti = FEATURE_NAMES.index("debt_to_income")
        scale = model.named_steps["encode"].named_transformers_["numeric"].scale_[dti]
        return float(model.named_steps["classifier"].coef_[0][dti] / scale)

    # The fit recovers the documented coefficients: 3.0 before the shift, 5.0 after.
    assert slope(frame) == pytest.approx(3.0, abs=0.5)
    assert slope(shifted) == pytest.approx(5.0, abs=0.5)


@pytest.mark.parametrize("rows", [0, 99, -5, 99.5, "1000", True])
def test_too_few_or_bad_rows_are_rejected(rows: object) -> None:
    with pytest.raises(InvalidInputError) as caught:
        generate_credit_data(rows)  # type: ignore[arg-type]
    assert caught.value.details["field"] == "rows"


def test_pipeline_gives_same_answers_for_frames_and_object_arrays(frame: pd.DataFrame) -> None:
    train, test = frame.iloc[:4000], frame.iloc[4000:4500]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no feature-name warnings on either path
        pipeline = build_pipeline().fit(train[list(FEATURE_NAMES)], train[LABEL])
        from_frame = pipeline.predict_proba(test[list(FEATURE_NAMES)])
        matrix = test[list(FEATURE_NAMES)].to_numpy(dtype=object)
        from_array = pipeline.predict_proba(matrix)
    assert matrix.dtype == object and from_frame.shape == (500, 2)
    np.testing.assert_allclose(from_frame, from_array)
    assert list(pipeline.classes_) == [0, 1]
    # A category never seen in training is ignored, not an error.
    unseen = matrix[:1].copy()
    unseen[0, FEATURE_NAMES.index("purpose")] = "holiday"
    assert pipeline.predict_proba(unseen).shape == (1, 2)


def test_pipeline_fitted_on_an_array_records_no_names_and_takes_frames(frame: pd.DataFrame) -> None:
    inputs = frame[list(FEATURE_NAMES)].iloc[:2000]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipeline = build_pipeline().fit(inputs.to_numpy(dtype=object), frame[LABEL].iloc[:2000])
        from_frame = pipeline.predict_proba(inputs.iloc[:50])
    assert not hasattr(pipeline, "feature_names_in_")
    np.testing.assert_allclose(from_frame, pipeline.predict_proba(inputs.iloc[:50].to_numpy(dtype=object)))


def test_reference_profile_is_json_with_expected_keys(frame: pd.DataFrame) -> None:
    inputs = frame[list(FEATURE_NAMES)].iloc[:3000]
    proba = build_pipeline().fit(inputs, frame[LABEL].iloc[:3000]).predict_proba(inputs)
    profile = reference_profile(inputs, proba)
    assert reference_profile(inputs, proba[:, 1]) == profile
    again = json.loads(json.dumps(profile, allow_nan=False))
    assert again == profile
    assert set(profile) == {"rows", "features", "predictions", "sample"} and profile["rows"] == 3000
    sample = pd.DataFrame(profile["sample"])
    assert list(sample.columns) == list(FEATURE_NAMES) and len(sample) == 3000
    assert sorted(sample["income"]) == sorted(inputs["income"])  # all rows kept when fewer than 5000
    assert len(reference_profile(inputs, proba, sample_rows=100)["sample"]["age"]) == 100
    assert list(profile["features"]) == list(FEATURE_NAMES)
    for feature in FEATURES:
        entry = profile["features"][feature.name]
        assert entry["kind"] == feature.kind and entry["count"] == 3000 and entry["missing"] == 0
        if feature.kind == "numeric":
            assert {"mean", "std", "min", "max", "quantiles", "histogram"} <= set(entry)
            edges, counts = entry["histogram"]["edges"], entry["histogram"]["counts"]
            assert len(edges) == len(counts) + 1 and 2 <= len(edges) <= 11 and sum(counts) == 3000
            assert edges == sorted(edges) and (edges[0], edges[-1]) == (entry["min"], entry["max"])
            assert entry["min"] <= entry["quantiles"]["0.5"] <= entry["max"]
        else:
            assert list(entry["counts"]) == list(feature.categories)
            assert sum(entry["counts"].values()) == 3000
            assert sum(entry["frequencies"].values()) == pytest.approx(1.0)
    income = profile["features"]["income"]
    assert income["mean"] == pytest.approx(inputs["income"].mean())
    assert len(income["histogram"]["counts"]) == 10  # continuous: all 10 quantile bins
    predictions = profile["predictions"]
    assert predictions["histogram"]["edges"] == [i / 10 for i in range(11)]
    assert sum(predictions["histogram"]["counts"]) == 3000
    assert predictions["mean"] == pytest.approx(proba[:, 1].mean())


def test_reference_profile_rejects_bad_input(frame: pd.DataFrame) -> None:
    inputs = frame[list(FEATURE_NAMES)].iloc[:10]
    with pytest.raises(InvalidInputError, match="income"):
        reference_profile(inputs.drop(columns="income"), np.full(10, 0.5))
    with pytest.raises(InvalidInputError):
        reference_profile(inputs, np.full(9, 0.5))
    with pytest.raises(InvalidInputError):
        reference_profile(inputs.iloc[:0], np.array([]))
    missing = inputs.assign(income=np.nan)
    with pytest.raises(InvalidInputError, match="income"):
        reference_profile(missing, np.full(10, 0.5))
    some_missing = inputs.assign(purpose=[None, *inputs["purpose"].iloc[1:]])
    assert reference_profile(some_missing, np.full(10, 0.5))["features"]["purpose"]["missing"] == 1
