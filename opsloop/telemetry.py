"""Prometheus metrics of one opsloop process.

Each app owns its own ``CollectorRegistry`` (no global state, so tests can build many
apps). With several uvicorn workers, ``PROMETHEUS_MULTIPROC_DIR`` is set by
``opsloop serve`` and ``/metrics`` sums the workers' files instead.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from datetime import datetime

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector

__all__ = [
    "CONTENT_TYPE_LATEST",
    "MULTIPROC_ENV",
    "BudgetMetrics",
    "ChatMetrics",
    "DriftMetrics",
    "EvalMetrics",
    "ExperimentMetrics",
    "Metrics",
    "ModelMetrics",
    "RetrainingMetrics",
]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

log = logging.getLogger(__name__)

# Time to a first token: tens of milliseconds (a warm GPU) to tens of seconds (a queue on CPU).
_TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60)

# Request latencies from sub-millisecond (cached predictions) to minutes (LLM calls).
_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120,
)  # fmt: skip


class Metrics:
    """The HTTP metrics every route shares; later components add their own to ``registry``."""

    def __init__(self, *, hash_tenants: bool = False) -> None:
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
        self.llm = LLMMetrics(self.registry)
        self.budgets = BudgetMetrics(self.registry, hash_tenants=hash_tenants)
        self.evals = EvalMetrics(self.registry)
        self.experiments = ExperimentMetrics(self.registry)
        self.retraining = RetrainingMetrics(self.registry)
        self.chat = ChatMetrics(self.registry)
        self.traces_dropped = Counter(
            "opsloop_traces_dropped_total",
            "Finished traces dropped because the exporter's queue was full.",
            registry=self.registry,
        )
        self.trace_export_failures = Counter(
            "opsloop_trace_export_failures_total",
            "Finished traces the exporter failed to write to MLflow (logged with the request id).",
            registry=self.registry,
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric of this process (or all workers)."""
        if not self.multiprocess:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(merged)
        merged.register(self.retraining.runs)  # read from the store: the same in every worker
        return generate_latest(merged)


class ModelMetrics:
    """Per model and version: predictions, latency, errors by type, the champion version, load failures."""

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
            "The version each model serves as its champion; 0 once its champion alias is removed.",
            ["model"],
            registry=registry,
            multiprocess_mode="max",
        )
        self.load_failures = Counter(
            "opsloop_model_load_failures_total",
            "Model versions that failed to load when their alias pointed at them, by model "
            "(once per version, not per retry).",
            ["model"],
            registry=registry,
        )
        self.load_failing = Gauge(
            "opsloop_model_load_failing",
            "1 while the version a model's champion alias points at cannot be loaded, else 0.",
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
            "1 if the latest check of the model found dataset drift, else 0 "
            "(0 too when it had too few rows for a verdict: outcome insufficient_data).",
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
            "Drift checks by model and outcome (drift, no_drift, insufficient_data, skipped, failed).",
            ["model", "outcome"],
            registry=registry,
        )


class BudgetMetrics:
    """Budgets and rate limits: spent share of each (the contract in deploy/prometheus), crossings, refusals.

    The ``budget`` label is the budget's name: its kind (``daily_usd``, ``monthly_tokens``, ``rpm`` ...)
    for a tenant-wide budget, ``<kind>@<key id>`` for a budget of one key. With ``hash_tenants``
    the ``tenant`` label is ``t_`` and 12 hex digits of the name's SHA-256 (:meth:`tenant`), so
    ``/metrics``, which needs no key, does not list who the tenants are.
    """

    def __init__(self, registry: CollectorRegistry, *, hash_tenants: bool = False) -> None:
        self.hash_tenants = hash_tenants
        self.spent_ratio = Gauge(
            "opsloop_budget_spent_ratio",
            "Spent share of each tenant's LLM budget (spent / limit).",
            ["tenant", "budget"],
            registry=registry,
            multiprocess_mode="max",
        )
        self.soft_limit = Counter(
            "opsloop_budget_soft_limit_total",
            "Times a budget crossed its soft threshold (once per budget and window).",
            ["tenant", "budget"],
            registry=registry,
        )
        self.rejected = Counter(
            "opsloop_budget_rejected_total",
            "Requests refused with 429 because a budget or rate limit was used up.",
            ["tenant", "budget"],
            registry=registry,
        )

    def tenant(self, name: str) -> str:
        """The ``tenant`` label of tenant ``name``."""
        return _hashed_tenant(name) if self.hash_tenants else name


@functools.lru_cache(maxsize=4096)
def _hashed_tenant(name: str) -> str:
    """A tenant's label, hashed (once per tenant: every budgeted call asks for it)."""
    return "t_" + hashlib.sha256(name.encode("utf-8")).hexdigest()[:12]


class LLMMetrics:
    """The LLM gateway: tokens, cost, time to first token, latency, errors and fallbacks.

    ``route`` is the public model name, ``backend`` the backend that served (or failed) it.
    Token ``direction`` is ``prompt``, ``completion`` or ``cached`` (cached tokens are a part
    of the prompt tokens, counted again on their own).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.tokens = Counter(
            "opsloop_llm_tokens_total",
            "Tokens of gateway calls by route, backend and direction (prompt, completion, cached).",
            ["route", "backend", "direction"],
            registry=registry,
        )
        self.cost = Counter(
            "opsloop_llm_cost_usd_total",
            "Cost of gateway calls in US dollars, by route and backend (as in the ledger).",
            ["route", "backend"],
            registry=registry,
        )
        self.ttft = Histogram(
            "opsloop_llm_time_to_first_token_seconds",
            "Time from a gateway request to its first generated token, by route and backend.",
            ["route", "backend"],
            buckets=_TTFT_BUCKETS,
            registry=registry,
        )
        self.latency = Histogram(
            "opsloop_llm_request_duration_seconds",
            "Whole gateway calls, to the last token, by route, backend and streamed (true/false).",
            ["route", "backend", "streamed"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.requests = Counter(
            "opsloop_llm_requests_total",
            "Gateway calls by route and outcome (ok, error, disconnected).",
            ["route", "outcome"],
            registry=registry,
        )
        self.errors = Counter(
            "opsloop_llm_errors_total",
            "Failed gateway calls by route and the error type the client got "
            "(backend_error, backend_overloaded, invalid_input, not_found ...).",
            ["route", "type"],
            registry=registry,
        )
        self.backend_errors = Counter(
            "opsloop_llm_backend_errors_total",
            "Failed calls to a backend (each retry counts) by backend and reason (timeout, http_429 ...).",
            ["backend", "reason"],
            registry=registry,
        )
        self.fallbacks = Counter(
            "opsloop_llm_fallbacks_total",
            "Times a route moved on from a failed backend to the next, by route and both backends.",
            ["route", "from_backend", "to_backend"],
            registry=registry,
        )
        self.ledger_dropped = Counter(
            "opsloop_llm_ledger_dropped_total",
            "Ledger rows lost: queue full or the store failed.",
            registry=registry,
        )


class EvalMetrics:
    """Scheduled eval jobs: the last score of each metric, the last success, failures, the gate.

    ``eval_job`` is the job's name in ``eval_jobs`` (not ``job``: Prometheus sets that to the
    scrape job). Alert on a score below its floor, on ``time() -
    opsloop_eval_last_success_timestamp_seconds`` growing past the job's period (a job that
    stopped running, or keeps failing), and on ``opsloop_eval_gate_passed == 0``.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.score = Gauge(
            "opsloop_eval_score",
            "Mean of each metric in the job's last finished eval run.",
            ["eval_job", "metric"],
            registry=registry,
            multiprocess_mode="max",
        )
        self.metric_failures = Gauge(
            "opsloop_eval_metric_failures",
            "Samples of the job's last run whose metric failed (judge timeouts, unparsable output ...).",
            ["eval_job", "metric"],
            registry=registry,
            multiprocess_mode="max",
        )
        self.last_success = Gauge(
            "opsloop_eval_last_success_timestamp_seconds",
            "Unix time the job last finished an eval run.",
            ["eval_job"],
            registry=registry,
            multiprocess_mode="max",
        )
        self.gate_passed = Gauge(
            "opsloop_eval_gate_passed",
            "1 if the job's last run passed its gate against the baseline, else 0 (jobs with a baseline).",
            ["eval_job"],
            registry=registry,
            multiprocess_mode="max",
        )
        self.runs = Counter(
            "opsloop_eval_runs_total",
            "Scheduled eval runs by job and outcome (ok, gate_failed, failed).",
            ["eval_job", "outcome"],
            registry=registry,
        )


class ExperimentMetrics:
    """Running experiments: requests, errors and latency per variant, the challenger's weight, decisions.

    Alert on ``increase(opsloop_experiment_decisions_total{action="rollback"}[5m]) > 0``: a
    challenger breached a guardrail and was taken out of traffic.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "opsloop_experiment_requests_total",
            "Requests an experiment routed, by experiment and variant.",
            ["experiment", "variant"],
            registry=registry,
        )
        self.errors = Counter(
            "opsloop_experiment_errors_total",
            "Requests a variant failed (a failed challenger's are answered by the champion).",
            ["experiment", "variant"],
            registry=registry,
        )
        self.latency = Histogram(
            "opsloop_experiment_request_duration_seconds",
            "Time a variant took to answer, by experiment and variant.",
            ["experiment", "variant"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.weight = Gauge(
            "opsloop_experiment_challenger_weight",
            "The challenger's share of traffic in percent; 0 once the experiment ends.",
            ["experiment"],
            registry=registry,
            multiprocess_mode="max",
        )
        self.shadow_dropped = Counter(
            "opsloop_experiment_shadow_dropped_total",
            "Shadow copies dropped because the shadow queue was full (the caller was never slowed).",
            ["experiment"],
            registry=registry,
        )
        self.decisions = Counter(
            "opsloop_experiment_decisions_total",
            "The decider's actions by experiment and action (advance, promote, pending_approval, rollback).",
            ["experiment", "action"],
            registry=registry,
        )


RunCounts = tuple[dict[tuple[str, str], int], dict[str, datetime]]


class ChatMetrics:
    """Chat-driven ops: requests by workflow and status, approvals by outcome, tool errors."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "opsloop_chat_requests_total",
            "Chat requests by workflow (none: refused or unclear) and the status they ended in.",
            ["workflow", "status"],
            registry=registry,
        )
        self.approvals = Counter(
            "opsloop_chat_approvals_total",
            "Decisions on actions that waited for approval, by action and outcome (approved, rejected).",
            ["action", "outcome"],
            registry=registry,
        )
        self.tool_errors = Counter(
            "opsloop_chat_tool_errors_total",
            "Tool calls of the agents that failed with an error, by tool.",
            ["tool"],
            registry=registry,
        )


class RetrainingMetrics:
    """Retraining: runs by model and status, when each model's last run ended, what triggers did.

    The runs are read from the store at each scrape (``runs.source``, set once the store is
    open), so they count every process's runs, the CLI's included, and survive restarts.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.triggers = Counter(
            "opsloop_retraining_triggers_total",
            "Automatic retraining triggers by model, trigger and outcome "
            "(started, waiting_for_labels, cooldown, busy, in_experiment, disabled, no_trainer).",
            ["model", "trigger", "outcome"],
            registry=registry,
        )
        self.runs = RetrainingRuns()
        registry.register(self.runs)


class RetrainingRuns:
    """A collector over the store's retraining runs (see :class:`RetrainingMetrics`)."""

    def __init__(self) -> None:
        self.source: Callable[[], RunCounts] | None = None

    def describe(self) -> list[Metric]:
        """Nothing to check for name clashes ahead of time (and no store read at registration)."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The counts as they are in the store now."""
        if self.source is None:
            return
        try:
            by_status, last_ended = self.source()
        except Exception:  # a database hiccup must not fail every other metric of the scrape
            log.exception("reading the retraining runs for /metrics failed")
            return
        runs = CounterMetricFamily(
            "opsloop_retraining_runs_total",
            "Ended retraining runs by model and status (registered, not_better, refused, failed).",
            labels=["model", "status"],
        )
        running = GaugeMetricFamily(
            "opsloop_retraining_running", "Retraining runs of the model in progress now.", labels=["model"]
        )
        for (model, status), count in sorted(by_status.items()):
            if status == "running":  # it falls when the run ends: a gauge, not a counter
                running.add_metric([model], count)
            else:
                runs.add_metric([model, status], count)
        yield runs
        yield running
        last = GaugeMetricFamily(
            "opsloop_retraining_last_run_timestamp_seconds",
            "When each model's most recent retraining run ended (Unix time).",
            labels=["model"],
        )
        for model, at in sorted(last_ended.items()):
            last.add_metric([model], at.timestamp())
        yield last
