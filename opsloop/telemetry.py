"""Prometheus metrics of one opsloop process.

Each app owns its own ``CollectorRegistry`` (no global state, so tests can build many
apps). With several uvicorn workers, ``PROMETHEUS_MULTIPROC_DIR`` is set by
``opsloop serve`` and ``/metrics`` sums the workers' files instead.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess
from prometheus_client.process_collector import ProcessCollector

__all__ = ["CONTENT_TYPE_LATEST", "MULTIPROC_ENV", "DriftMetrics", "Metrics", "ModelMetrics"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Request latencies from sub-millisecond (cached predictions) to minutes (LLM calls).
_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120,
)  # fmt: skip


class Metrics:
    """The HTTP metrics every route shares; later components add their own to ``registry``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.multiprocess = MULTIPROC_ENV in os.environ
        if not self.multiprocess:
            ProcessCollector(registry=self.registry)
        self.requests = Counter(
            "opsloop_http_requests_total",
            "HTTP requests by route template, method and status code.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "opsloop_http_request_duration_seconds",
            "HTTP request latency by route template and method.",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "opsloop_http_requests_in_flight",
            "HTTP requests being handled right now.",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.models = ModelMetrics(self.registry)
        self.drift = DriftMetrics(self.registry)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric of this process (or all workers)."""
        if not self.multiprocess:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(merged)
        return generate_latest(merged)


class ModelMetrics:
    """Per model and version: predictions, latency, errors by type, the champion version."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.predictions = Counter(
            "opsloop_predictions_total",
            "Instances predicted, by model and version.",
            ["model", "version"],
            registry=registry,
        )
        self.latency = Histogram(
            "opsloop_prediction_duration_seconds",
            "Time to validate and predict one /predict request, by model and version.",
            ["model", "version"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.errors = Counter(
            "opsloop_prediction_errors_total",
            "Failed /predict requests by model and error type.",
            ["model", "type"],
            registry=registry,
        )
        self.champion = Gauge(
            "opsloop_model_champion_version",
            "The version each model serves as its champion.",
            ["model"],
            registry=registry,
            multiprocess_mode="max",
        )
        self.log_dropped = Counter(
            "opsloop_prediction_log_dropped_total",
            "Prediction records lost: queue full or the store failed.",
            registry=registry,
        )
        self.log_written = Counter(
            "opsloop_prediction_log_written_total",
            "Prediction records written to the prediction log.",
            registry=registry,
        )


class DriftMetrics:
    """The latest drift check of each model: scores per feature and method, and the verdict."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.score = Gauge(
            "opsloop_drift_score",
            "Latest drift score by model, feature and method (psi, js, wasserstein, ks_pvalue, chi2_pvalue).",
            ["model", "feature", "method"],
            registry=registry,
            multiprocess_mode="max",
        )
        self.dataset = Gauge(
            "opsloop_drift_dataset",
            "1 if the latest check of the model found dataset drift, else 0.",
            ["model"],
            registry=registry,
            multiprocess_mode="max",
        )
        self.share = Gauge(
            "opsloop_drift_share",
            "Share of the model's features that drifted at the latest check.",
            ["model"],
            registry=registry,
            multiprocess_mode="max",
        )
        self.concept = Gauge(
            "opsloop_concept_drift",
            "1 if ADWIN found the champion's error rate rising in the labelled feedback, else 0.",
            ["model", "version"],
            registry=registry,
            multiprocess_mode="max",
        )
        self.error_rate = Gauge(
            "opsloop_model_error_rate",
            "The champion's error rate on labelled feedback since its last change point.",
            ["model", "version"],
            registry=registry,
            multiprocess_mode="max",
        )
        self.checks = Counter(
            "opsloop_drift_checks_total",
            "Drift checks by model and outcome (drift, no_drift, skipped, failed).",
            ["model", "outcome"],
            registry=registry,
        )
