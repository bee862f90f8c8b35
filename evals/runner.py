"""The eval runner: the RAG pipeline over a data set, every sample scored and checkpointed.

For each item the runner asks the pipeline (``RagService.query`` or anything with its shape,
:class:`RagPipeline`), then runs the run's scorers on the answer and the retrieved chunks, one
metric after another, and appends the finished :class:`~evals.results.SampleResult` to the run's
checkpoint. At most ``concurrency`` samples are in flight; a sample's judge calls count their
tokens and cost in a tally of its own (``evals.calls.current_tally``).

A run that finds samples in its checkpoint scores only the others: resuming a killed run never
scores a finished sample again.

Failures are kept apart by where they happen:

* configuration: no such collection, prompt version or route, a bad setting -> the run stops
  with that error (every sample would fail the same way);
* the pipeline on one sample (the LLM or store failed) -> the sample's ``error``, counted as a
  failure of every metric under ``pipeline_error``;
* a metric on one sample -> ``failures[metric]``: ``judge_timeout``, ``judge_unparsable``,
  ``judge_backend_error``, ``judge_rejected``, or ``error:<ExceptionType>`` for a ragas error
  (logged with its message).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from evals.calls import CostFn, JudgeError, JudgeOptions, JudgeTally, current_tally
from evals.dataset import EvalDataset, EvalItem
from evals.metrics import OPERATIONAL_METRICS
from evals.results import Checkpoint, MetricSummary, SampleResult, summarize
from evals.scoring import Scorer, ScoringInput, build_scorers, select_metrics
from opsloop import tracing
from opsloop.auth import Principal
from opsloop.errors import ConfigError, InvalidInputError, NotFoundError, OpsloopError
from opsloop.llm.protocol import LLMClient
from opsloop.tracing import Tracer
from rag.answer import Answer, Source
from rag.embedder import Embedder
from rag.retriever import RetrievedChunk

__all__ = ["EvalConfig", "EvalOutcome", "EvalRunner", "Progress", "QueryOutcome", "RagPipeline"]

log = logging.getLogger("opsloop.evals")

Progress = Callable[[int, int], None]
"""Called with (samples done, samples in the run) after every sample."""


class QueryOutcome(Protocol):
    """What the runner reads of a pipeline's answer (``rag.service.QueryResult``)."""

    @property
    def answer(self) -> Answer | None:
        """The answer; None for a retrieval-only query."""
        ...

    @property
    def sources(self) -> Sequence[Source]:
        """The numbered sources the model was (or would have been) given."""
        ...

    @property
    def chunks(self) -> Sequence[RetrievedChunk]:
        """Every retrieved chunk, best first."""
        ...

    @property
    def latency_ms(self) -> float:
        """The whole query."""
        ...

    @property
    def retrieval_ms(self) -> float:
        """Retrieval alone."""
        ...

    @property
    def generation_ms(self) -> float | None:
        """Generation alone; None for a retrieval-only query."""
        ...


class RagPipeline(Protocol):
    """The RAG pipeline under evaluation: ``rag.service.RagService`` is one."""

    async def query(
        self,
        caller: Principal,
        question: str,
        collection: str,
        top_k: int | None = None,
        *,
        generate: bool = True,
        request_id: str | None = None,
        prompt: str | int | None = None,
        llm: LLMClient | None = None,
        max_answer_tokens: int | None = None,
        log_query: bool = True,
        fallback: bool | None = None,
    ) -> QueryOutcome:
        """Retrieve for ``question`` in the caller's tenant and, with ``generate``, answer it."""
        ...


@dataclass(frozen=True)
class EvalConfig:
    """What one run evaluates: the pipeline's settings and how it is scored.

    Attributes:
        collection: The collection the questions are asked of.
        tenant: The collection's tenant: the caller's (``EvalRuns.run`` sets it).
        top_k: Chunks retrieved per question; hit rate and MRR are at this k.
        prompt: Alias or version of the answer prompt; None is ``production``.
        route: Gateway route that generates the answers; None is the in-process model.
        generate: False runs retrieval and its metrics only.
        judge: Gateway route of the LLM judge; None runs no judge metrics.
        metrics: The metrics to compute; None is every one the run can.
        max_answer_tokens: Cap of each answer; None is the pipeline's setting.
        concurrency: Samples in flight at once.
        judge_options: Judge completion limit, timeout and retries.
    """

    collection: str
    tenant: str = "default"
    top_k: int = 5
    prompt: str | int | None = None
    route: str | None = None
    generate: bool = True
    judge: str | None = None
    metrics: tuple[str, ...] | None = None
    max_answer_tokens: int | None = None
    concurrency: int = 2
    judge_options: JudgeOptions = field(default_factory=JudgeOptions)

    def __post_init__(self) -> None:
        for name in ("top_k", "concurrency"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"{name} must be a positive integer", field=name, value=repr(value))
        if self.max_answer_tokens is not None and self.max_answer_tokens < 1:
            raise InvalidInputError(
                "max_answer_tokens must be positive", field="max_answer_tokens", value=self.max_answer_tokens
            )

    def metric_names(self) -> tuple[str, ...]:
        """The scored metrics of this run, in report order (operational ones not included)."""
        return select_metrics(generate=self.generate, judge=self.judge is not None, only=self.metrics)

    def params(self) -> dict[str, Any]:
        """The settings as flat, JSON-ready values (MLflow params; the resume key)."""
        data = asdict(self)
        data.pop("judge_options")
        if not self.generate:
            data["prompt"] = "none"
        else:
            data["prompt"] = "production" if self.prompt is None else str(self.prompt)
        data["metrics"] = ",".join(self.metric_names())
        data.update({f"judge_{k}": v for k, v in asdict(self.judge_options).items()} if self.judge else {})
        return data


@dataclass(frozen=True)
class EvalOutcome:
    """A finished run: every sample in data set order, and each metric's summary."""

    samples: list[SampleResult]
    summaries: dict[str, MetricSummary]
    metrics: tuple[str, ...]
    resumed: int
    """Samples read back from the checkpoint instead of scored."""
    seconds: float


class EvalRunner:
    """Runs a data set through a RAG pipeline and scores it (see the module docs).

    Args:
        rag: The pipeline under evaluation.
        caller: Who runs the evaluation: the pipeline is queried as this caller, in its tenant.
        embedder: The embedder for semantic similarity and answer relevancy (MiniLM).
        judge: The judge's LLM client; needed when ``EvalConfig.judge`` is set.
        answer_llm: The client that generates answers when ``EvalConfig.route`` is set.
        answer_cost: Prices an answer's LLM call; None counts answers as free.
        judge_cost: Prices a judge call; None counts judge calls as free.
        progress: Called after every sample.
        tracer: Records each sample as a trace: its query, its judge calls, its scores.
    """

    def __init__(
        self,
        rag: RagPipeline,
        *,
        caller: Principal,
        embedder: Embedder | None = None,
        judge: LLMClient | None = None,
        answer_llm: LLMClient | None = None,
        answer_cost: CostFn | None = None,
        judge_cost: CostFn | None = None,
        progress: Progress | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.tracer = tracer or Tracer(None)
        self.rag = rag
        self.caller = caller
        self.embedder = embedder
        self.judge = judge
        self.answer_llm = answer_llm
        self.answer_cost = answer_cost
        self.judge_cost = judge_cost
        self.progress = progress

    async def run(self, dataset: EvalDataset, config: EvalConfig, checkpoint: Checkpoint) -> EvalOutcome:
        """Score every item of ``dataset`` not yet in ``checkpoint``; return all of them.

        Raises:
            ConfigError: A judge route is configured but no judge client was given (or the
                reverse for the answer route), or ragas is missing.
            InvalidInputError: ``config`` is another tenant's than the caller's, or a setting
                is wrong.
            NotFoundError: The collection or prompt does not exist.
        """
        if config.tenant != self.caller.tenant:
            # The run's params (and its resume key) would name a tenant its questions never asked.
            raise InvalidInputError(
                f"the run is for tenant {config.tenant!r}, its caller of tenant {self.caller.tenant!r}",
                field="tenant",
                value=config.tenant,
            )
        if config.judge is not None and self.judge is None:
            raise ConfigError(f"judge route {config.judge!r} is set but no judge client was given")
        if config.route is not None and self.answer_llm is None:
            raise ConfigError(f"answer route {config.route!r} is set but no client for it was given")
        started = time.perf_counter()
        metrics = config.metric_names()
        scorers = await asyncio.to_thread(  # the first build imports ragas: a second or more
            build_scorers,
            metrics,
            embedder=self.embedder,
            judge=self.judge,
            judge_options=config.judge_options,
            judge_cost=self.judge_cost,
        )
        done = checkpoint.load()
        known = {item.id for item in dataset.items}
        finished = {key: sample for key, sample in done.items() if key in known}
        pending = [item for item in dataset.items if item.id not in finished]
        resumed = len(finished)
        total = len(dataset.items)
        if resumed:
            log.info("resuming: %d of %d samples already scored", resumed, total)
        gate = asyncio.Semaphore(config.concurrency)

        async def one(item: EvalItem) -> SampleResult:
            async with gate:
                return await self._sample(item, config, scorers)

        tasks = [asyncio.create_task(one(item)) for item in pending]
        try:
            for next_done in asyncio.as_completed(tasks):
                sample = await next_done
                await asyncio.to_thread(checkpoint.append, sample)  # it ends in an fsync
                finished[sample.id] = sample
                if self.progress is not None:
                    self.progress(len(finished), total)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        samples = [finished[item.id] for item in dataset.items]
        # Off the loop: each metric's bootstrap interval is ~10 ms of numpy, and the server's
        # requests would wait for all of them.
        summaries = await asyncio.to_thread(summarize, samples, (*metrics, *OPERATIONAL_METRICS))
        return EvalOutcome(samples, summaries, metrics, resumed, time.perf_counter() - started)

    async def _sample(self, item: EvalItem, config: EvalConfig, scorers: Sequence[Scorer]) -> SampleResult:
        request_id = f"eval-{uuid.uuid4().hex}"
        inputs = {"id": item.id, "question": item.question, "reference": item.reference}
        with self.tracer.trace(
            "eval.sample", "EVALUATOR", request_id=request_id, tenant=self.caller.tenant, inputs=inputs,
            collection=config.collection, prompt=config.prompt,
        ) as traced:  # fmt: skip
            sample = await self._scored(item, config, scorers, request_id)
            outputs = {"answer": sample.answer, "scores": sample.scores, "failures": sample.failures or None}
            traced.end(outputs, error=sample.error)
        return sample

    async def _scored(
        self, item: EvalItem, config: EvalConfig, scorers: Sequence[Scorer], request_id: str
    ) -> SampleResult:
        tally = JudgeTally()
        current_tally.set(tally)  # this task's own context: concurrent samples keep their own tallies
        try:
            result = await self.rag.query(
                self.caller,
                item.question,
                config.collection,
                config.top_k,
                generate=config.generate,
                request_id=request_id,
                prompt=config.prompt,
                llm=self.answer_llm,
                max_answer_tokens=config.max_answer_tokens,
                log_query=False,
                # The prompt's own answers: an extractive fallback would hide a broken prompt.
                fallback=False,
            )
        except (NotFoundError, InvalidInputError, ConfigError):
            raise  # the run's configuration is wrong: every sample would fail alike
        except OpsloopError as exc:
            log.warning("eval sample %s: the pipeline failed: %s", item.id, exc.message)
            return _failed(item, f"{exc.type}: {exc.message}")
        answer = result.answer
        chunks = list(result.chunks)
        inputs = ScoringInput(
            question=item.question,
            reference=item.reference,
            answer=None if answer is None else answer.answer,
            contexts=tuple(chunk.text for chunk in chunks),
            answer_contexts=tuple(source.text for source in result.sources),
            retrieved_sources=tuple(chunk.source for chunk in chunks),
            reference_contexts=item.reference_contexts,
            reference_sources=item.reference_sources,
            k=config.top_k,
        )
        scores: dict[str, float] = {}
        failures: dict[str, str] = {}
        undefined: list[str] = []
        for scorer in scorers:
            try:
                with tracing.span(f"score {scorer.name}", "EVALUATOR"):
                    value = await scorer.score(inputs)
            except JudgeError as exc:
                failures[scorer.name] = f"judge_{exc.reason}"
                log.warning("eval sample %s: %s failed: %s", item.id, scorer.name, exc)
                continue
            except Exception as exc:  # a ragas error: recorded under the metric, not raised
                failures[scorer.name] = f"error:{type(exc).__name__}"
                log.warning("eval sample %s: %s raised %s: %s", item.id, scorer.name, type(exc).__name__, exc)
                continue
            if value is None:
                continue
            if math.isfinite(value):
                scores[scorer.name] = float(value)
            else:
                undefined.append(scorer.name)
        answer_cost = 0.0
        usage = {"prompt_tokens": 0, "completion_tokens": 0}
        if answer is not None:
            usage = {
                "prompt_tokens": answer.usage.prompt_tokens,
                "completion_tokens": answer.usage.completion_tokens,
            }
            if self.answer_cost is not None and answer.model is not None:
                answer_cost = self.answer_cost(answer.backend, answer.usage, result.generation_ms or 0.0)
        cost = answer_cost + tally.cost_usd
        scores["latency_ms"] = float(result.latency_ms)
        scores["cost_usd"] = float(cost)
        return SampleResult(
            id=item.id,
            question=item.question,
            reference=item.reference,
            answer=inputs.answer,
            sources=list(inputs.retrieved_sources),
            contexts=list(inputs.contexts),
            prompt_version=None if answer is None else str(answer.prompt_version),
            latency_ms=float(result.latency_ms),
            retrieval_ms=float(result.retrieval_ms),
            generation_ms=result.generation_ms,
            answer_tokens=usage,
            judge=tally.to_dict(),
            cost_usd=cost,
            scores=scores,
            failures=failures,
            undefined=undefined,
            tags=list(item.tags),
        )


def _failed(item: EvalItem, error: str) -> SampleResult:
    return SampleResult(
        id=item.id,
        question=item.question,
        reference=item.reference,
        answer=None,
        sources=[],
        contexts=[],
        prompt_version=None,
        latency_ms=0.0,
        retrieval_ms=0.0,
        generation_ms=None,
        answer_tokens={"prompt_tokens": 0, "completion_tokens": 0},
        judge=JudgeTally().to_dict(),
        cost_usd=0.0,
        scores={},
        error=error,
        tags=list(item.tags),
    )
