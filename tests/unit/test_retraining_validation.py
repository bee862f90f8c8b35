"""Training-data validation: the pandera schema from signature and profile, and the dataset checks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pytest

from opsloop.errors import InvalidInputError
from workflows.demo import FEATURE_NAMES, FEATURES, LABEL, generate_credit_data, reference_profile
from workflows.reference import Column, build_profile
from workflows.retraining.validation import Check, ValidationReport, build_schema, validate

SIGNATURE = [(f.name, f.dtype) for f in FEATURES]


@pytest.fixture(scope="module")
def profile() -> dict:
    reference = generate_credit_data(2000, seed=0)
    return reference_profile(reference[list(FEATURE_NAMES)], np.full(len(reference), 0.3))


@pytest.fixture
def frame() -> pd.DataFrame:
    return generate_credit_data(500, seed=3)


def failed(report: ValidationReport, name: str, column: str | None = None) -> Check:
    found = [c for c in report.failures if c.name == name and (column is None or c.column == column)]
    assert len(found) == 1, report.failures
    return found[0]


def test_clean_demo_data_pass_with_a_perfect_score(frame: pd.DataFrame, profile: dict) -> None:
    report = validate(frame, SIGNATURE, profile, LABEL)
    assert report.passed
    assert report.score == 1.0
    assert report.rows == 500
    assert report.failures == ()
    assert {c.name for c in report.checks} == {
        "rows",
        "missing",
        "duplicates",
        "label",
        "label_balance",
        "quality",
    }
    assert report.summary().startswith("passed: quality 100.0% (threshold 95.0%) over 500 rows")
    data = json.loads(json.dumps(report.to_dict()))
    assert data["passed"] is True
    assert data["failures"] == []
    assert len(data["checks"]) == len(report.checks)


def test_shifted_demo_data_pass_too(profile: dict) -> None:
    # Drift moves the data, but nothing in it is impossible: this must not block a retrain.
    report = validate(generate_credit_data(500, seed=1, shift=True), SIGNATURE, profile, LABEL)
    assert report.passed, report.summary()
    assert report.score == 1.0


def test_a_single_label_class_fails_the_balance_check(frame: pd.DataFrame, profile: dict) -> None:
    frame[LABEL] = 0
    report = validate(frame, SIGNATURE, profile, LABEL)
    assert not report.passed
    check = failed(report, "label_balance")
    assert check.message == (
        "label balance: every labelled row is class 0 (500 rows); retraining needs at least 2 classes"
    )
    assert check.observed == 0.0
    assert [c.name for c in report.failures] == ["label_balance"]


def test_a_rare_minority_class_fails_below_its_share(frame: pd.DataFrame, profile: dict) -> None:
    frame[LABEL] = 0
    frame.loc[:4, LABEL] = 1  # 5 of 500 = 1.0%
    check = failed(validate(frame, SIGNATURE, profile, LABEL), "label_balance")
    assert check.observed == pytest.approx(0.01)
    assert "the rarest, class 1, is below 2.0%" in check.message


def test_mostly_missing_values_fail_per_column_and_sink_the_score(frame: pd.DataFrame, profile: dict) -> None:
    rng = np.random.default_rng(0)
    gapped = [*FEATURE_NAMES[:5], "purpose", "home_ownership"]
    for name in gapped:
        rows = rng.choice(500, 350, replace=False)
        if frame[name].dtype == object or name in {"purpose", "home_ownership"}:
            frame[name] = frame[name].astype(object)
            frame.loc[rows, name] = None
        else:
            frame.loc[rows, name] = np.nan
    report = validate(frame, SIGNATURE, profile, LABEL)
    missing = [c for c in report.failures if c.name == "missing"]
    assert sorted(c.column for c in missing) == sorted(gapped)
    income = failed(report, "missing", "income")
    assert income.observed == pytest.approx(0.7)
    assert income.message == "income: 70.0% missing (350 of 500 rows), the limit is 5.0%"
    assert report.score == pytest.approx(1 - 7 * 350 / 5000)
    assert "51.0% of 5000 feature cells" in failed(report, "quality").message
    # Missing is not invalid: the integer-valued floats left in ``age`` pass their type check.
    assert {c.name: c.invalid for c in report.columns}["age"] == 0


def test_text_where_a_number_is_expected_fails_the_type_check(frame: pd.DataFrame, profile: dict) -> None:
    frame["income"] = frame["income"].map(lambda v: f"{v:.0f} EUR")
    report = validate(frame, SIGNATURE, profile, LABEL)
    column = {c.name: c for c in report.columns}["income"]
    assert column.invalid == 500
    assert column.failures == {"type": 500}
    quality = failed(report, "quality")
    assert quality.observed == pytest.approx(0.9)
    assert "income 500 values of the wrong type" in quality.message


def test_one_bad_cell_shows_in_the_columns_but_does_not_block(frame: pd.DataFrame, profile: dict) -> None:
    frame["income"] = frame["income"].astype(object)
    frame.loc[7, "income"] = "lots"
    report = validate(frame, SIGNATURE, profile, LABEL)
    assert report.passed
    assert report.score == pytest.approx(1 - 1 / 5000)
    income = {c.name: c for c in report.columns}["income"]
    assert (income.invalid, income.examples) == (1, ("'lots'",))


def test_unknown_categories_fail_the_category_check(frame: pd.DataFrame, profile: dict) -> None:
    frame["purpose"] = frame["purpose"].astype(object)
    frame.loc[:149, "purpose"] = "crypto"
    report = validate(frame, SIGNATURE, profile, LABEL, threshold=0.98)
    purpose = {c.name: c for c in report.columns}["purpose"]
    assert purpose.failures == {"category": 150}
    quality = failed(report, "quality")
    assert quality.observed == pytest.approx(0.97)
    assert "purpose 150 values outside the known categories (e.g. 'crypto')" in quality.message


def test_negative_values_fail_where_the_reference_had_none(frame: pd.DataFrame, profile: dict) -> None:
    frame.loc[:299, "loan_amount"] = -frame.loc[:299, "loan_amount"]
    report = validate(frame, SIGNATURE, profile, LABEL)
    assert {c.name: c for c in report.columns}["loan_amount"].failures == {"range": 300}
    assert failed(report, "quality").observed == pytest.approx(0.94)


def test_the_range_is_the_reference_range_widened_by_its_width(profile: dict) -> None:
    low, high = profile["features"]["income"]["min"], profile["features"]["income"]["max"]
    width = high - low
    schema = build_schema(SIGNATURE, profile, LABEL)
    income = schema.columns["income"]
    values = pd.DataFrame({"income": [high + 0.9 * width, high + 1.1 * width, 0.0, -1.0, 1e12]})
    with pytest.raises(pa.errors.SchemaErrors) as caught:
        income.validate(values, lazy=True)
    cases = caught.value.failure_cases
    # drifted up to a width past the max passes; 0 is below min - width but floored at 0
    assert sorted(cases.loc[cases["check"] == "range", "index"]) == [1, 3, 4]


def test_an_empty_frame_fails_without_raising(frame: pd.DataFrame, profile: dict) -> None:
    report = validate(frame.iloc[:0], SIGNATURE, profile, LABEL)
    assert not report.passed
    assert report.score == 0.0
    rows = failed(report, "rows")
    assert rows.observed == 0
    assert rows.message == "rows: the frame is empty; retraining needs at least 100 rows"
    assert failed(report, "label_balance").message == "label balance: no labelled rows"
    assert failed(report, "quality").message == "quality: no feature cells to score"
    json.dumps(report.to_dict())


def test_a_frame_without_columns_lists_every_absent_one(profile: dict) -> None:
    report = validate(pd.DataFrame(), SIGNATURE, profile, LABEL)
    absent = [c.column for c in report.failures if c.name == "column"]
    assert absent == list(FEATURE_NAMES)
    assert failed(report, "label").observed == "absent"


def test_too_few_rows_fail(frame: pd.DataFrame, profile: dict) -> None:
    check = failed(validate(frame.iloc[:40], SIGNATURE, profile, LABEL), "rows")
    assert (check.observed, check.limit) == (40, ">= 100")
    assert check.message == "rows: only 40 rows, retraining needs at least 100"


def test_duplicate_rows_fail_above_the_limit(frame: pd.DataFrame, profile: dict) -> None:
    doubled = pd.concat([frame, frame.iloc[:100]], ignore_index=True)
    check = failed(validate(doubled, SIGNATURE, profile, LABEL), "duplicates")
    assert check.observed == pytest.approx(100 / 600)
    assert check.message == "duplicates: 100 rows (16.7%) repeat an earlier row, the limit is 5.0%"


def test_an_absent_label_column_is_a_failed_check(frame: pd.DataFrame, profile: dict) -> None:
    report = validate(frame.drop(columns=[LABEL]), SIGNATURE, profile, LABEL)
    check = failed(report, "label")
    assert check.observed == "absent"
    assert check.message == "label: the label column 'default' is missing from the data"
    assert "label_balance" not in {c.name for c in report.checks}
    assert report.score == 1.0  # the features themselves are fine


def test_rows_without_a_label_fail_the_label_check(frame: pd.DataFrame, profile: dict) -> None:
    frame[LABEL] = frame[LABEL].astype(float)
    frame.loc[:11, LABEL] = np.nan
    report = validate(frame, SIGNATURE, profile, LABEL)
    check = failed(report, "label")
    assert check.observed == 12
    assert "12 of 500 rows (2.4%) have no 'default'" in check.message
    # float labels from the gap still read as classes 0 and 1
    assert "0 " in next(c for c in report.checks if c.name == "label_balance").message


def test_an_absent_feature_column_is_a_failed_check(frame: pd.DataFrame, profile: dict) -> None:
    report = validate(frame.drop(columns=["income"]), SIGNATURE, profile, LABEL)
    check = failed(report, "column", "income")
    assert check.message == "income: the column is missing from the data; the model takes it as double"
    assert report.score == pytest.approx(0.9)
    assert "missing" not in {c.name for c in report.failures}  # not reported twice


def test_integer_valued_floats_pass_a_long_column_but_fractions_do_not(
    frame: pd.DataFrame, profile: dict
) -> None:
    frame.loc[3, "age"] = np.nan  # pandas makes the int64 column float64
    assert frame["age"].dtype == np.float64
    report = validate(frame, SIGNATURE, profile, LABEL)
    assert report.passed
    assert {c.name: c for c in report.columns}["age"].invalid == 0
    frame.loc[4, "age"] = 30.5
    age = {c.name: c for c in validate(frame, SIGNATURE, profile, LABEL).columns}["age"]
    assert age.failures == {"type": 1}


def test_booleans_are_checked_as_categories() -> None:
    reference = pd.DataFrame({"vip": [True, False] * 100, "plan": ["free", "pro"] * 100})
    profile = build_profile(reference, [Column("vip", "categorical"), Column("plan", "categorical")])
    frame = reference.assign(label=[0, 1] * 100)
    signature = [("vip", "boolean"), ("plan", "string")]
    assert validate(frame, signature, profile, "label").score == 1.0
    frame["vip"] = frame["vip"].astype(object)
    frame.loc[0, "vip"] = "yes"
    vip = {c.name: c for c in validate(frame, signature, profile, "label").columns}["vip"]
    assert vip.failures == {"type": 1, "category": 1}
    assert vip.invalid == 1  # one cell, however many checks it fails


def test_passing_missing_checks_fold_into_one(frame: pd.DataFrame, profile: dict) -> None:
    frame.loc[:9, "income"] = np.nan
    report = validate(frame, SIGNATURE, profile, LABEL)
    missing = [c for c in report.checks if c.name == "missing"]
    assert len(missing) == 1
    assert missing[0].passed
    assert missing[0].message == "missing values: every column is at most 5.0% missing (most: income 2.0%)"


def test_bad_arguments_name_the_field(frame: pd.DataFrame, profile: dict) -> None:
    with pytest.raises(InvalidInputError) as caught:
        validate(frame, SIGNATURE, profile, LABEL, threshold=1.5)
    assert caught.value.details["field"] == "threshold"
    with pytest.raises(InvalidInputError) as caught:
        build_schema([("when", "timestamp")], profile, LABEL)
    assert caught.value.details["field"] == "signature"
    with pytest.raises(InvalidInputError) as caught:
        build_schema([], profile, LABEL)
    assert caught.value.details["field"] == "signature"


def test_unlabelled_live_inputs_are_checked_without_label_checks(frame: pd.DataFrame, profile: dict) -> None:
    inputs = frame.drop(columns=[LABEL])
    assert {c.name for c in validate(inputs, SIGNATURE, profile, None).checks} == {
        "rows",
        "missing",
        "duplicates",
        "quality",
    }
    inputs.loc[:9, FEATURE_NAMES[0]] = -1e12  # impossible values are still caught
    report = validate(inputs, SIGNATURE, profile, None)
    assert report.score < 1.0
    assert report.columns[0].invalid == 10
