"""Evals: data sets, metric runners (ragas), tracking in MLflow, the quality gate and schedules.

The pure parts (data set validation, statistics, the gate) need nothing heavy; ragas loads
when a run builds its scorers (``evals.scoring``), MLflow when a tracker starts. An eval run
(``EvalRuns.run``) takes its caller, the RAG pipeline and the LLM routes as injected objects
(``opsloop.auth.Principal``, ``EvalRag``, ``EvalLLMs``); ``serving`` wires the real ones.
"""

from evals.calls import CostFn, JudgeError, JudgeOptions
from evals.dataset import (
    DatasetError,
    EvalDataset,
    EvalItem,
    dataset_from_items,
    load_dataset,
    parse_dataset,
    question_id,
)
from evals.gate import DEFAULT_GATE, GateReport, GateRule, MetricComparison, compare, parse_rule
from evals.metrics import METRICS, MetricSpec, hit_at_k, reciprocal_rank_at_k
from evals.results import Checkpoint, MetricSummary, SampleResult, summarize
from evals.runner import EvalConfig, EvalOutcome, EvalRunner, QueryOutcome, RagPipeline
from evals.runs import EvalLLMs, EvalRag, EvalRunResult, EvalRuns, eval_config
from evals.schedule import EvalJob, EvalScheduler, JobResult, JobStatus, next_fire_times, run_job
from evals.scoring import select_metrics
from evals.service import EvalService, TrackedRun
from evals.stats import MeanCI, PairedDelta, mean_ci, paired_bootstrap
from evals.tracking import EvalRunInfo, EvalTracker

__all__ = [
    "DEFAULT_GATE",
    "METRICS",
    "Checkpoint",
    "CostFn",
    "DatasetError",
    "EvalConfig",
    "EvalDataset",
    "EvalItem",
    "EvalJob",
    "EvalLLMs",
    "EvalOutcome",
    "EvalRag",
    "EvalRunInfo",
    "EvalRunResult",
    "EvalRunner",
    "EvalRuns",
    "EvalScheduler",
    "EvalService",
    "EvalTracker",
    "GateReport",
    "GateRule",
    "JobResult",
    "JobStatus",
    "JudgeError",
    "JudgeOptions",
    "MeanCI",
    "MetricComparison",
    "MetricSpec",
    "MetricSummary",
    "PairedDelta",
    "QueryOutcome",
    "RagPipeline",
    "SampleResult",
    "TrackedRun",
    "compare",
    "dataset_from_items",
    "eval_config",
    "hit_at_k",
    "load_dataset",
    "mean_ci",
    "next_fire_times",
    "paired_bootstrap",
    "parse_dataset",
    "parse_rule",
    "question_id",
    "reciprocal_rank_at_k",
    "run_job",
    "select_metrics",
    "summarize",
]
