"""The numbers of ``bench/experiments``: per-call percentiles, summaries, paired differences.

Pure functions over the timed calls, so they are tested without a server
(``tests/unit/test_bench_experiments.py``). Each configuration is timed once per round;
the rounds rotate the order, so a difference against ``none`` is taken within a round
(paired) and then summarised over the rounds: noise that moves a whole round moves both
sides of its difference.

A configuration moves p50 *measurably* when two things hold. Every round moves it the same
way (a sign test: by chance alone that happens with probability ``2 * 0.5 ** rounds``, 0.031
at 6 rounds, 0.0078 at 8; below 6 rounds there is no verdict). And the move is larger than
the setup can resolve: than the largest per-round difference of the A/A control
(``none-again``, a second configuration without an experiment), which is what noise and
the mere difference between two served models move. A very steady setup makes even a
fraction of a microsecond consistent in sign; the control keeps such a move from counting.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from math import comb
from typing import Any

import numpy as np

__all__ = [
    "BASELINE",
    "CONTROL",
    "CPU_FIELDS",
    "GOAL_CANARY_P50_MS",
    "MIN_SIGN_ROUNDS",
    "Segment",
    "differences",
    "goals",
    "http_ratios",
    "percentiles_ms",
    "sign_test_p",
    "summarise",
    "summarise_http",
]

BASELINE = "none"
"""The configuration without an experiment, that every other one is compared with."""
CONTROL = "none-again"
"""A second configuration without an experiment: its differences from ``BASELINE`` are noise."""
MIN_SIGN_ROUNDS = 6
"""Fewest rounds for which a same-sign result can reach p <= 0.05."""
_SIGNIFICANCE = 0.05
GOAL_CANARY_P50_MS = 0.1
"""The issue's bound on what a running canary (assignment and outcome recording) adds to p50."""


@dataclass(frozen=True)
class Segment:
    """The timed calls of one configuration in one round (nanoseconds per call)."""

    round: int
    config: str
    wall_ns: np.ndarray
    """Wall-clock time of each call."""
    cpu_ns: np.ndarray
    """CPU time of the calling thread in each call (excludes waiting for a core)."""
    variant: np.ndarray = field(default_factory=lambda: np.empty(0, dtype="U10"))
    """Per call, the variant that answered (``champion``/``challenger``/the alias)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """What else the round observed (the experiment's name, shadow copies dropped, ...)."""


def percentiles_ms(values_ns: np.ndarray | Sequence[int]) -> dict[str, float]:
    """p50, p90, p99 and mean of ``values_ns``, in milliseconds (NaN for no values)."""
    values = np.asarray(values_ns, dtype=np.float64) / 1e6
    if values.size == 0:
        return {"p50": float("nan"), "p90": float("nan"), "p99": float("nan"), "mean": float("nan")}
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(values.mean())}


def summarise(segments: Sequence[Segment]) -> dict[str, dict[str, Any]]:
    """Per configuration: percentiles of all its calls, CPU p50, each round's p50, calls per variant.

    For configurations whose calls were answered by more than one variant (a canary), the
    wall-clock percentiles of each variant's calls too.
    """
    configs = list(dict.fromkeys(s.config for s in segments))
    out: dict[str, dict[str, Any]] = {}
    for config in configs:
        own = [s for s in segments if s.config == config]
        wall = np.concatenate([s.wall_ns for s in own])
        cpu = np.concatenate([s.cpu_ns for s in own])
        variants = np.concatenate([s.variant for s in own])
        names, counts = np.unique(variants, return_counts=True)
        entry: dict[str, Any] = {
            "rounds": len(own),
            "calls": int(wall.size),
            "wall_ms": percentiles_ms(wall),
            "cpu_ms": percentiles_ms(cpu),
            "p50_ms_per_round": [percentiles_ms(s.wall_ns)["p50"] for s in own],
            "calls_per_variant": {str(n): int(c) for n, c in zip(names, counts, strict=True)},
        }
        if len(names) > 1:
            entry["wall_ms_per_variant"] = {str(n): percentiles_ms(wall[variants == n]) for n in names}
        out[config] = entry
    return out


def sign_test_p(values: Sequence[float]) -> float:
    """Two-sided sign test of "as many rounds go up as down" (zeros dropped); 1.0 for no values."""
    ups = sum(v > 0 for v in values)
    downs = sum(v < 0 for v in values)
    n = ups + downs
    if n == 0:
        return 1.0
    k = min(ups, downs)
    tail = sum(comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def differences(
    segments: Sequence[Segment], baseline: str = BASELINE, control: str = CONTROL
) -> dict[str, dict[str, Any]]:
    """Per configuration other than ``baseline``: its round-by-round differences from ``baseline``.

    Each round's difference is that configuration's p50 (p90, p99, CPU p50) minus the
    baseline's in the same round; reported are the median over rounds, the range, the sign
    test's p of the p50 differences, the resolution (the ``control``'s largest per-round p50
    difference, 0 without a control) and whether p50 moved measurably (see the module
    docstring; None for too few rounds, and for the control itself).
    """
    base = {s.round: s for s in segments if s.config == baseline}
    configs = [c for c in dict.fromkeys(s.config for s in segments) if c != baseline]
    out: dict[str, dict[str, Any]] = {}
    for config in configs:
        paired = [(s, base[s.round]) for s in segments if s.config == config and s.round in base]
        per_round: dict[str, list[float]] = {"p50": [], "p90": [], "p99": [], "cpu_p50": []}
        for ours, theirs in paired:
            a, b = percentiles_ms(ours.wall_ns), percentiles_ms(theirs.wall_ns)
            for key in ("p50", "p90", "p99"):
                per_round[key].append(a[key] - b[key])
            per_round["cpu_p50"].append(
                percentiles_ms(ours.cpu_ns)["p50"] - percentiles_ms(theirs.cpu_ns)["p50"]
            )
        p50 = per_round["p50"]
        out[config] = {
            "rounds": len(paired),
            "p50_ms_per_round": p50,
            "p50_ms": _median(p50),
            "p50_ms_range": [min(p50), max(p50)] if p50 else None,
            "p90_ms": _median(per_round["p90"]),
            "p99_ms": _median(per_round["p99"]),
            "cpu_p50_ms": _median(per_round["cpu_p50"]),
            "sign_test_p": sign_test_p(p50),
        }
    noise = out[control]["p50_ms_per_round"] if control in out else []
    resolution = max((abs(d) for d in noise), default=0.0)
    for config, d in out.items():
        d["resolution_ms"] = resolution
        if config == control or d["rounds"] < MIN_SIGN_ROUNDS:
            d["measurable"] = None
        else:
            d["measurable"] = d["sign_test_p"] <= _SIGNIFICANCE and abs(d["p50_ms"]) > resolution
    return out


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def goals(diffs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The issue's two goals, judged on differences from ``none``.

    A canary must add at most :data:`GOAL_CANARY_P50_MS` to p50 (the median over rounds of the
    paired differences); a shadow experiment with a full queue must add nothing measurable
    (see the module docstring; None: too few rounds to tell).
    """
    canary, shadow = diffs["canary"], diffs["shadow-full"]
    measurable = shadow["measurable"]
    return {
        "canary": {
            "statement": f"a running canary adds at most {GOAL_CANARY_P50_MS:g} ms to p50",
            "added_p50_ms": canary["p50_ms"],
            "met": canary["p50_ms"] <= GOAL_CANARY_P50_MS,
        },
        "shadow": {
            "statement": "a shadow experiment under a full queue adds nothing measurable to p50",
            "added_p50_ms": shadow["p50_ms"],
            "sign_test_p": shadow["sign_test_p"],
            "resolution_ms": shadow["resolution_ms"],
            "measurable": measurable,
            "met": None if measurable is None else not measurable,
        },
    }


CPU_FIELDS = {"server_cpu_s": "server", "loop_cpu_s": "loop", "background_cpu_s": "background"}
"""CPU seconds a wrk run may carry, and the name of each per-request figure: the whole server,
its main thread (the event loop: parsing, routing, predicting, the request path's own
experiment work) and its other threads (the batch writers of predictions and outcomes, the
watchers, the decider)."""


def summarise_http(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per configuration of wrk runs: throughput over all rounds, the rounds' median p50 and p99, errors.

    Each run has ``round``, ``config``, ``requests``, ``duration_s``, ``rps``, ``p50_ms``,
    ``p99_ms`` and ``error_count``, and may have the CPU seconds of :data:`CPU_FIELDS` (None:
    unknown). CPU per request over all rounds is the cost least moved by other processes on
    the machine; it is reported as ``<name>_cpu_us_per_request``.
    """
    out: dict[str, dict[str, Any]] = {}
    for config in dict.fromkeys(r["config"] for r in runs):
        own = [r for r in runs if r["config"] == config]
        requests = sum(r["requests"] for r in own)
        seconds = sum(r["duration_s"] for r in own)
        entry: dict[str, Any] = {
            "rounds": len(own),
            "requests": requests,
            "seconds": seconds,
            "rps": requests / seconds if seconds else 0.0,
            "p50_ms": _median([r["p50_ms"] for r in own]),
            "p99_ms": _median([r["p99_ms"] for r in own]),
            "rps_per_round": [r["rps"] for r in own],
            "p50_ms_per_round": [r["p50_ms"] for r in own],
            "p99_ms_per_round": [r["p99_ms"] for r in own],
            "errors": sum(r["error_count"] for r in own),
        }
        for field_, name in CPU_FIELDS.items():
            cpu = [r.get(field_) for r in own]
            known = None not in cpu and requests > 0
            total = sum(c for c in cpu if c is not None)
            entry[f"{name}_cpu_us_per_request"] = total / requests * 1e6 if known else None
            entry[f"{name}_cpu_us_per_request_per_round"] = [
                None if c is None or not r["requests"] else c / r["requests"] * 1e6
                for c, r in zip(cpu, own, strict=True)
            ]
        out[config] = entry
    return out


def http_ratios(
    runs: Sequence[dict[str, Any]], config: str = "canary", baseline: str = BASELINE
) -> dict[str, Any]:
    """``config`` against ``baseline``: CPU per request added; ratios of throughput, p50 and p99.

    Throughput also round by round (each round ran both).
    """
    summary = summarise_http(runs)
    ours, theirs = summary[config], summary[baseline]
    by_round = {(r["round"], r["config"]): r for r in runs}
    rounds = sorted({r["round"] for r in runs})
    per_round = [
        by_round[(n, config)]["rps"] / by_round[(n, baseline)]["rps"]
        for n in rounds
        if (n, config) in by_round and (n, baseline) in by_round and by_round[(n, baseline)]["rps"]
    ]
    out: dict[str, Any] = {}
    for name in CPU_FIELDS.values():
        a, b = ours[f"{name}_cpu_us_per_request"], theirs[f"{name}_cpu_us_per_request"]
        out[f"{name}_cpu_us_per_request_added"] = None if a is None or b is None else a - b
    return out | {
        "rps": ours["rps"] / theirs["rps"] if theirs["rps"] else float("nan"),
        "p50": ours["p50_ms"] / theirs["p50_ms"] if theirs["p50_ms"] else float("nan"),
        "p99": ours["p99_ms"] / theirs["p99_ms"] if theirs["p99_ms"] else float("nan"),
        "rps_per_round": per_round,
    }
