"""Sticky assignment: shares match the weights, a unit keeps its variant, processes agree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from opsloop.errors import InvalidInputError
from workflows.experiments.assignment import MAX_UNIT_LENGTH, assign, position, unit_id

UNITS = [f"user-{i}" for i in range(100_000)]


@pytest.mark.parametrize(
    "weights",
    [
        {"champion": 95, "challenger": 5},
        {"champion": 50, "challenger": 50},
        {"a": 50, "b": 30, "c": 20},
        {"champion": 0.99, "challenger": 0.01},
    ],
)
def test_each_share_is_within_one_point_of_its_weight_over_100k_units(weights: dict[str, float]) -> None:
    counts = Counter(assign("exp-7f3a", unit, weights) for unit in UNITS)
    total = sum(weights.values())
    for variant, weight in weights.items():
        share = counts[variant] / len(UNITS)
        assert abs(share - weight / total) < 0.01, (variant, share, weight / total)
    assert set(counts) == set(weights)


def test_a_unit_keeps_its_variant_across_1000_requests() -> None:
    weights = {"champion": 50, "challenger": 50}
    for unit in ("user-1", "user-2", "key_9f8e", "a" * MAX_UNIT_LENGTH):
        first = assign("exp-sticky", unit, weights)
        assert {assign("exp-sticky", unit, weights) for _ in range(1000)} == {first}


_CHILD = """
import json, sys
from workflows.experiments.assignment import assign
units = json.load(sys.stdin)
print(json.dumps([assign("exp-procs", u, {"champion": 80, "challenger": 20}) for u in units]))
"""


def test_two_processes_with_different_hash_seeds_assign_alike() -> None:
    units = UNITS[:5000]
    here = [assign("exp-procs", u, {"champion": 80, "challenger": 20}) for u in units]
    for seed in ("1", "2"):  # Python's own hash() differs between these processes
        env = {**os.environ, "PYTHONHASHSEED": seed}
        child = subprocess.run(
            [sys.executable, "-c", _CHILD],
            input=json.dumps(units),
            capture_output=True,
            text=True,
            env=env,
            check=True,
            timeout=120,
        )
        assert json.loads(child.stdout) == here


def test_the_hash_is_pinned() -> None:
    # Changing the hash scheme would move units of every running experiment to other variants.
    assert position("exp-salt", "user-1") == 13621330391324063934
    assert assign("exp-salt", "user-1", {"a": 1, "b": 1}) == "b"


def test_salts_keep_concatenations_apart_and_experiments_independent() -> None:
    assert position("ab", "c") != position("a", "bc")
    w = {"champion": 50, "challenger": 50}
    pairs = Counter((assign("exp-one", u, w), assign("exp-two", u, w)) for u in UNITS[:40_000])
    for pair in pairs:  # independent: each of the four combinations holds about a quarter
        assert abs(pairs[pair] / 40_000 - 0.25) < 0.01, pairs


def test_raising_the_challenger_weight_only_moves_units_onto_it() -> None:
    units = UNITS[:20_000]
    previous: set[str] = set()
    for pct in (5, 25, 50, 100):
        on = {
            u
            for u in units
            if assign("exp-ramp", u, {"champion": 100 - pct, "challenger": pct}) == "challenger"
        }
        assert previous <= on
        previous = on
    assert previous == set(units)


def test_zero_weight_gets_no_unit_and_scale_does_not_matter() -> None:
    units = UNITS[:5000]
    assert {assign("s", u, {"champion": 100, "challenger": 0}) for u in units} == {"champion"}
    assert {assign("s", u, {"champion": 0, "challenger": 100}) for u in units} == {"challenger"}
    percent = [assign("s", u, {"champion": 90, "challenger": 10}) for u in units]
    assert percent == [assign("s", u, {"champion": 0.9, "challenger": 0.1}) for u in units]


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({}, "at least one variant"),
        ({"a": -1, "b": 2}, "weight of 'a' is -1"),
        ({"a": float("nan"), "b": 1}, "weight of 'a' is nan"),
        ({"a": float("inf"), "b": 1}, "weight of 'a' is inf"),
        ({"a": 0, "b": 0}, "add up to 0"),
        ({"a": "50", "b": 50}, "weight of 'a' is '50'"),
    ],
)
def test_bad_weights_are_refused(weights: dict[str, float], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message) as err:
        assign("s", "user-1", weights)
    assert err.value.status == 422


def test_an_empty_unit_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="unit id is empty"):
        assign("s", "", {"a": 1})


def test_the_unit_is_the_header_else_the_key_else_the_request() -> None:
    assert unit_id("session-42", "key_1", "req-1") == "session-42"
    assert unit_id("  session-42 ", "key_1", "req-1") == "session-42"
    assert unit_id(None, "key_1", "req-1") == "key_1"
    assert unit_id("   ", "key_1", "req-1") == "key_1"
    assert unit_id(None, None, "req-1") == "req-1"
    assert unit_id("", "", "req-1") == "req-1"
    with pytest.raises(InvalidInputError, match="X-Opsloop-Unit is 257 characters"):
        unit_id("x" * (MAX_UNIT_LENGTH + 1), "key_1", "req-1")
    with pytest.raises(InvalidInputError, match="needs a unit"):
        unit_id(None, None, "")
