"""Eval runs end to end in one process: the real RAG service, ragas metrics, MLflow, the gate, a judge, audit.

One module-scoped platform on a temporary home holds two of the bundled docs in collection
``docs``; answers come from the in-process SmolLM2 with small ``max_answer_tokens``, the judge from
llama.cpp's OpenAI-compatible server on loopback (``llama_server_url``) through a real gateway.
"""

from __future__ import annotations

import asyncio
import math
import os
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from mlflow import MlflowClient

from evals.calls import JudgeOptions
from evals.dataset import EvalDataset, load_dataset
from evals.gate import GateRule
from evals.results import Checkpoint
from evals.runner import EvalConfig, EvalOutcome, EvalRunner
from evals.tracking import EVAL_EXPERIMENT
from opsloop.audit import AuditFilter
from opsloop.auth import Principal, Role, system_principal
from opsloop.errors import ForbiddenError, NotFoundError
from opsloop.llm.gateway import Gateway
from opsloop.llm.routes import BackendSpec, RouteConfig
from opsloop.settings import load_settings
from rag.answer import ANSWER_PROMPT
from serving.eval_wiring import EVAL_KEY_ID, GatewayLLMs, eval_runs
from serving.platform import Platform

REPO = Path(__file__).resolve().parents[2]
DOCS = ("index.md", "rag.md")
BROKEN_PROMPT = (
    "Sources: {{context}}\nQuestion: {{question}}\n\n"
    "Forget the question. Write a short poem about the sea.\nPoem:"
)
"""A deliberately broken answer prompt: SmolLM2 writes about the sea whatever was asked."""
CALLER = system_principal("default")

GENERATION = EvalConfig(
    collection="docs",
    top_k=3,
    max_answer_tokens=16,
    concurrency=2,
    metrics=(
        "hit_rate",
        "mrr",
        "non_llm_context_recall",
        "rouge_score",
        "non_llm_string_similarity",
        "semantic_similarity",
    ),
)


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    root = tmp_path_factory.mktemp("evals")
    cwd = Path.cwd()
    os.chdir(root)  # a stray ./mlruns would land here
    docs = root / "docs"
    docs.mkdir()
    for name in DOCS:
        shutil.copy(REPO / "docs" / name, docs / name)
    plat = Platform.build(load_settings(home=root / "home", tracing=True)).start_store()
    plat.rag.ingest(CALLER, "docs", docs)
    try:
        yield plat
    finally:
        plat.close()
        os.chdir(cwd)


@pytest.fixture(scope="module")
def dataset() -> EvalDataset:
    golden = load_dataset(REPO / "evals" / "datasets" / "docs_golden.jsonl")
    items = tuple(i for i in golden.items if set(i.reference_sources) <= set(DOCS))[:8]
    return EvalDataset.of("golden-subset", items, golden.path)


def test_a_run_is_an_mlflow_run_with_params_metrics_intervals_and_the_sample_table(
    platform: Platform, dataset: EvalDataset
) -> None:
    runs = eval_runs(platform)
    service = runs.service
    tracked = asyncio.run(service.run(runs.runner(CALLER, GENERATION), dataset, GENERATION))
    assert tracked.config.prompt == 1  # production, resolved to its version
    summaries = tracked.outcome.summaries
    assert set(summaries) == {*(GENERATION.metrics or ()), "latency_ms", "cost_usd"}
    for name, summary in summaries.items():
        assert summary.scored == len(dataset), name
        assert summary.mean is not None and math.isfinite(summary.mean), name
        assert summary.ci_low is not None and summary.ci_high is not None
        assert summary.ci_low <= summary.mean <= summary.ci_high
    assert summaries["hit_rate"].mean is not None and summaries["hit_rate"].mean > 0.5
    assert all(s.answer for s in tracked.outcome.samples)
    assert all(s.answer_tokens["completion_tokens"] <= 16 for s in tracked.outcome.samples)

    # Everything is visible through MLflow's own client.
    client = MlflowClient(tracking_uri=platform.settings.tracking_uri)
    experiment = client.get_experiment_by_name(EVAL_EXPERIMENT)
    assert experiment is not None
    run = client.get_run(tracked.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.experiment_id == experiment.experiment_id
    params = run.data.params
    assert (params["dataset_sha256"], params["prompt"], params["top_k"]) == (dataset.sha256, "1", "3")
    assert params["judge"] == "" and params["collection"] == "docs"
    metrics = run.data.metrics
    assert metrics["hit_rate"] == pytest.approx(summaries["hit_rate"].mean)
    assert (
        metrics["semantic_similarity.ci_low"]
        <= metrics["semantic_similarity"]
        <= metrics["semantic_similarity.ci_high"]
    )
    assert metrics["rouge_score.scored"] == len(dataset) and metrics["rouge_score.failed"] == 0
    artifacts = {a.path for a in client.list_artifacts(tracked.run_id)}
    assert {"samples.jsonl", "per_sample.json", "summary.json"} <= artifacts

    # Each sample is a trace: its query (retrieval, generation) and a span per metric.
    assert platform.tracer.flush(30)
    traces = client.search_traces(
        locations=[client.get_experiment_by_name(platform.settings.tracing_experiment).experiment_id],
        max_results=100,
    )
    samples = [t for t in traces if t.data.spans[0].name == "eval.sample"]
    assert {t.data.spans[0].inputs["id"] for t in samples} >= {i.id for i in dataset.items}
    names = {span.name for span in samples[0].data.spans}
    assert {"query", "retrieve", "generate", *(f"score {m}" for m in GENERATION.metrics or ())} <= names
    assert samples[0].data.spans[0].outputs["scores"]

    # Found again by the tracker (eval list / show), samples included.
    tracker = service.tracker
    assert tracked.run_id in [r.run_id for r in tracker.runs()]
    again = tracker.samples(tracked.run_id)
    assert [s.id for s in again] == [i.id for i in dataset.items]
    # A finished run is never resumed: the same settings make a new run.
    assert service.find_baseline(dataset, tracked.config)[1] is not None


def test_a_broken_prompt_version_is_caught_by_the_gate(platform: Platform, dataset: EvalDataset) -> None:
    runs = eval_runs(platform)
    service = runs.service
    broken = platform.start_registry().register_prompt(ANSWER_PROMPT, BROKEN_PROMPT, commit_message="broken")
    candidate = replace(GENERATION, prompt=broken.version)
    tracked = asyncio.run(service.run(runs.runner(CALLER, candidate), dataset, candidate))
    answers = [s.answer or "" for s in tracked.outcome.samples]
    base_config, baseline = service.find_baseline(
        dataset, tracked.config, "production", exclude=tracked.run_id
    )
    assert base_config.prompt == 1
    assert baseline is not None, "the first test's run is the production baseline"
    # Two answer-quality metrics: on eight short answers one can miss a real regression.
    rules = (GateRule("semantic_similarity"), GateRule("rouge_score"), GateRule("hit_rate"))
    report = service.compare(tracked.run_id, baseline.run_id, rules=rules)
    by = {c.metric: c for c in report.comparisons}
    assert not report.passed, (answers, report.to_dict())
    regressed = [c.metric for c in report.regressions]
    assert regressed and set(regressed) <= {"semantic_similarity", "rouge_score"}
    assert all(by[metric].ci_high is not None and by[metric].ci_high < 0 for metric in regressed)
    assert by["hit_rate"].verdict == "no_change"  # the retriever did not change
    tags = MlflowClient(tracking_uri=platform.settings.tracking_uri).get_run(tracked.run_id).data.tags
    assert tags["opsloop.eval.gate"] == "failed: semantic_similarity"
    # The production prompt against its own earlier run passes.
    again = asyncio.run(service.run(runs.runner(CALLER, GENERATION), dataset, GENERATION))
    assert service.compare(again.run_id, baseline.run_id, rules=rules).passed


def test_a_judge_on_a_loopback_server_scores_or_counts_every_judge_metric(
    platform: Platform, dataset: EvalDataset, llama_server_url: str, tmp_path: Path
) -> None:
    spec = BackendSpec(
        name="llama-judge",
        kind="openai",
        model="smollm2",
        base_url=llama_server_url,
        timeout_s=60,
        max_retries=0,
        cost_per_token=1e-6,
        structured_output="json_object",  # llama.cpp's server: JSON constrained to ragas' schema
    )  # timeout below the judge's own: a slow call fails in the gateway, and is recorded
    gateway = Gateway(
        {"judge": RouteConfig(backends=(spec,))},
        platform.ledger,
        platform.metrics.llm,
        platform.enforcer.start(),
        default_max_tokens=128,
    )
    judge_metrics = (
        "faithfulness",
        "answer_relevancy",
        "llm_context_precision_with_reference",
        "factual_correctness",
    )
    config = replace(
        GENERATION,
        top_k=2,
        judge="judge",
        metrics=judge_metrics,
        concurrency=1,
        judge_options=JudgeOptions(max_tokens=96, timeout_s=90, retries=1),
    )
    one = EvalDataset.of("one", dataset.items[:1])
    llms = GatewayLLMs(lambda: gateway)

    async def main() -> EvalOutcome:
        runner = EvalRunner(
            platform.rag,
            caller=CALLER,
            embedder=platform.rag.embedder,
            judge=llms.client("judge", "default"),
            judge_cost=llms.cost,
        )
        try:
            return await runner.run(one, config, Checkpoint(tmp_path / "run"))
        finally:
            await gateway.router.aclose()

    outcome = asyncio.run(main())
    sample = outcome.samples[0]
    assert sample.error is None
    for name in judge_metrics:
        s = outcome.summaries[name]
        assert s.scored + s.failed + s.undefined == 1, (name, s)  # scored, or counted: never lost
        assert s.mean is None or math.isfinite(s.mean)
        if s.failed:
            assert sample.failures[name].startswith(("judge_", "error:")), sample.failures
    # Constrained to the schemas, even SmolLM2-135M gives parsable verdicts: judged scores exist.
    assert sum(outcome.summaries[name].scored for name in judge_metrics) >= 2, outcome.summaries
    assert sample.judge["calls"] >= len(judge_metrics)
    assert sample.judge["prompt_tokens"] > 0 and sample.judge["completion_tokens"] > 0
    expected = (sample.judge["prompt_tokens"] + sample.judge["completion_tokens"]) * 1e-6
    assert sample.cost_usd == pytest.approx(expected)
    assert outcome.summaries["cost_usd"].mean == pytest.approx(expected)
    # Every judge call landed in the cost ledger under the eval key, with the same tokens; the
    # answers of the earlier runs in this module did too, on the default answer route.
    ledger = [c for c in platform.ledger.calls(tenant="default") if c.key_id == EVAL_KEY_ID]
    calls = [c for c in ledger if c.route == "judge"]
    assert len(calls) == sample.judge["calls"]
    assert sum(c.prompt_tokens for c in calls) == sample.judge["prompt_tokens"]
    assert sum(c.cost_usd for c in calls) == pytest.approx(expected)
    assert {c.route for c in ledger} == {"judge", platform.settings.rag_route}


def test_a_run_is_the_callers_in_its_tenant_and_audited(platform: Platform, dataset: EvalDataset) -> None:
    runs = eval_runs(platform)
    retrieval = EvalConfig(collection="docs", tenant="acme", top_k=3, generate=False, metrics=("hit_rate",))
    operator = Principal("key-op", "default", Role.OPERATOR)
    result = asyncio.run(runs.run(operator, dataset, retrieval, request_id="req-1"))
    assert result.run.config.tenant == "default"  # the caller's, not the config's
    assert result.run.outcome.summaries["hit_rate"].scored == len(dataset)
    (entry,) = platform.audit.query(AuditFilter(action="eval.run", actor="key-op"))
    target = f"eval-run:{result.run.run_id}"
    assert (entry.tenant, entry.target, entry.request_id) == ("default", target, "req-1")
    assert entry.after is not None
    assert entry.after["dataset_sha256"] == dataset.sha256 and entry.after["params"]["tenant"] == "default"

    # Another tenant's caller asks its own tenant, which has no collection "docs".
    with pytest.raises(NotFoundError):
        asyncio.run(runs.run(Principal("key-acme", "acme", Role.OPERATOR), dataset, retrieval))
    with pytest.raises(ForbiddenError):
        asyncio.run(runs.run(Principal("key-user", "default", Role.USER), dataset, retrieval))
    assert not platform.audit.query(AuditFilter(action="eval.run", tenant="acme"))
