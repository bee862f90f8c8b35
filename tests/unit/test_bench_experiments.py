"""bench/experiments' numbers: paired differences from ``none``, the sign test, the goals, the HTTP ratios."""

from __future__ import annotations

from math import comb
from typing import Any

import numpy as np
import pytest
from scipy import stats as scipy_stats

from bench.experiments.stats import (
    Segment,
    differences,
    goals,
    http_ratios,
    percentiles_ms,
    sign_test_p,
    summarise,
)


def _segment(round_: int, config: str, wall_us: np.ndarray, variant: str = "champion") -> Segment:
    wall = (wall_us * 1000).astype(np.int64)
    return Segment(round_, config, wall, wall - 1000, np.full(wall.size, variant, dtype="U10"))


def _rounds(added_us: dict[str, list[float]], calls: int = 1001) -> list[Segment]:
    """Per round, ``none`` at 50 us plus a drift of the whole round, and each config ``added`` above it."""
    rng = np.random.default_rng(0)
    rounds = len(next(iter(added_us.values())))
    segments = []
    for r in range(rounds):
        base = rng.normal(50.0, 1.0, calls) + 10.0 * r  # a noisy machine moves whole rounds
        segments.append(_segment(r + 1, "none", base))
        for config, added in added_us.items():
            segments.append(_segment(r + 1, config, base + added[r]))
    return segments


def test_percentiles_are_in_milliseconds_and_empty_input_gives_nan() -> None:
    values = np.arange(1, 101) * 1_000_000  # 1..100 ms in ns
    got = percentiles_ms(values)
    assert got["p50"] == pytest.approx(50.5)
    assert got["p99"] == pytest.approx(np.percentile(np.arange(1, 101), 99))
    assert got["mean"] == pytest.approx(50.5)
    assert all(np.isnan(v) for v in percentiles_ms([]).values())


def test_sign_test_matches_the_binomial_test_and_ignores_ties() -> None:
    for ups, downs in [(6, 0), (5, 1), (4, 4), (8, 0), (0, 7)]:
        values = [1.0] * ups + [-1.0] * downs + [0.0, 0.0]
        expected = scipy_stats.binomtest(ups, ups + downs, 0.5).pvalue
        assert sign_test_p(values) == pytest.approx(expected)
    assert sign_test_p([1.0] * 6) == pytest.approx(2 * comb(6, 0) / 2**6)
    assert sign_test_p([]) == 1.0 and sign_test_p([0.0, 0.0]) == 1.0


def test_differences_are_paired_by_round_so_a_drifting_machine_cancels_out() -> None:
    segments = _rounds({"canary": [20.0] * 8, "shadow-full": [1.0, -1.0] * 4, "none-again": [0.0] * 8})
    diffs = differences(segments)
    canary = diffs["canary"]
    assert canary["rounds"] == 8
    assert canary["p50_ms"] == pytest.approx(0.020, abs=1e-6)
    assert canary["p50_ms_range"] == pytest.approx([0.020, 0.020], abs=1e-6)
    assert canary["cpu_p50_ms"] == pytest.approx(0.020, abs=1e-6)
    assert canary["measurable"] is True and canary["sign_test_p"] == pytest.approx(2 / 2**8)
    assert diffs["shadow-full"]["measurable"] is False  # half the rounds up, half down
    assert diffs["none-again"]["measurable"] is None  # the control is the yardstick, not judged


def test_a_consistent_move_within_the_controls_noise_is_not_measurable() -> None:
    control = [0.5, -0.4, 0.3, -0.2, 0.1, -0.3]  # the A/A control: up to 0.5 us a round
    diffs = differences(_rounds({"none-again": control, "tiny": [0.3] * 6, "real": [2.0] * 6}))
    assert diffs["tiny"]["resolution_ms"] == pytest.approx(0.0005, abs=1e-6)
    assert diffs["tiny"]["sign_test_p"] < 0.05 and diffs["tiny"]["measurable"] is False
    assert diffs["real"]["measurable"] is True


def test_too_few_rounds_give_no_verdict_and_the_goals_say_so() -> None:
    diffs = differences(_rounds({"canary": [150.0] * 5, "shadow-full": [3.0] * 5}))
    assert diffs["shadow-full"]["measurable"] is None
    judged = goals(diffs)
    assert judged["canary"]["met"] is False and judged["canary"]["added_p50_ms"] == pytest.approx(0.150)
    assert judged["shadow"]["met"] is None

    judged = goals(differences(_rounds({"canary": [60.0] * 6, "shadow-full": [3.0] * 6})))
    assert judged["canary"]["met"] is True
    assert judged["shadow"]["measurable"] is True and judged["shadow"]["met"] is False
    quiet = {"canary": [60.0] * 6, "shadow-full": [3.0] * 6, "none-again": [4.0, -4.0] * 3}
    assert goals(differences(_rounds(quiet)))["shadow"]["met"] is True  # within the A/A's 4 us


def test_summary_splits_a_canary_by_the_variant_that_answered() -> None:
    wall = np.array([40.0, 41.0, 60.0, 61.0])
    segment = Segment(
        1, "canary", (wall * 1000).astype(np.int64), np.zeros(4, dtype=np.int64),
        np.array(["champion", "champion", "challenger", "challenger"], dtype="U10"),
    )  # fmt: skip
    summary = summarise([segment])["canary"]
    assert summary["calls_per_variant"] == {"challenger": 2, "champion": 2}
    assert summary["wall_ms_per_variant"]["champion"]["p50"] == pytest.approx(0.0405)
    assert summary["wall_ms_per_variant"]["challenger"]["p50"] == pytest.approx(0.0605)


def test_http_ratios_pool_throughput_and_pair_rounds() -> None:
    def run(round_: int, config: str, requests: int, p50: float, p99: float, cpu: float) -> dict[str, Any]:
        return {
            "round": round_, "config": config, "requests": requests, "duration_s": 10.0,
            "rps": requests / 10.0, "p50_ms": p50, "p99_ms": p99, "error_count": 0,
            "server_cpu_s": cpu, "loop_cpu_s": cpu * 0.75, "background_cpu_s": cpu * 0.25,
        }  # fmt: skip

    runs = [
        run(1, "none", 10000, 5.0, 20.0, 8.0),
        run(1, "canary", 9000, 5.5, 24.0, 8.1),
        run(2, "canary", 4000, 12.0, 50.0, 3.9),
        run(2, "none", 5000, 10.0, 40.0, 4.0),
    ]
    ratios = http_ratios(runs)
    # CPU per request over all rounds: 12.0 s / 13000 against 12.0 s / 15000.
    assert ratios["server_cpu_us_per_request_added"] == pytest.approx(12e6 / 13000 - 12e6 / 15000)
    assert ratios["loop_cpu_us_per_request_added"] == pytest.approx(0.75 * (12e6 / 13000 - 12e6 / 15000))
    assert ratios["rps"] == pytest.approx(13000 / 15000)
    assert ratios["rps_per_round"] == pytest.approx([0.9, 0.8])
    assert ratios["p50"] == pytest.approx(((5.5 + 12.0) / 2) / ((5.0 + 10.0) / 2))
    assert ratios["p99"] == pytest.approx(37.0 / 30.0)
    runs[0]["server_cpu_s"] = None  # unknown in one run: unknown for its configuration
    assert http_ratios(runs)["server_cpu_us_per_request_added"] is None
    assert http_ratios(runs)["loop_cpu_us_per_request_added"] is not None
