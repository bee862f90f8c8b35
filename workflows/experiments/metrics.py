"""The metrics an experiment can decide on, read off one variant's outcomes and labels."""

from __future__ import annotations

import numpy as np

from workflows.experiments.store import VariantSamples
from workflows.experiments.summaries import VariantSummary

__all__ = ["PRIMARY_METRICS", "primary_values", "summary"]

PRIMARY_METRICS = ("accuracy", "answer_score", "error_rate", "latency_ms", "cost_per_request")
"""What ``--primary`` may name (``accuracy`` for models only, ``answer_score`` for prompts only)."""


def primary_values(metric: str, samples: VariantSamples, feedback: np.ndarray | None) -> np.ndarray | None:
    """The values of an experiment's primary metric for one variant (None: not measurable here).

    ``accuracy``: one 0/1 per labelled instance; ``answer_score``: the scores of its answers
    (both given as ``feedback``); ``error_rate``: one 0/1 per request; ``latency_ms``: the
    latencies; ``cost_per_request``: the costs.
    """
    match metric:
        case "accuracy" | "answer_score":
            return None if feedback is None else feedback.astype(float)
        case "error_rate":
            return (~samples.ok).astype(float)
        case "latency_ms":
            return samples.latency_ms
        case "cost_per_request":
            return samples.cost_usd
    return None


def summary(metric: str, samples: VariantSamples, feedback: np.ndarray | None) -> VariantSummary:
    """A variant's samples as the policy reads them."""
    return VariantSummary.from_samples(
        samples.ok, samples.latency_ms, samples.cost_usd, primary_values(metric, samples, feedback)
    )
