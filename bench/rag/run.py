"""The RAG benchmark, one run: ingestion throughput, retrieval latency against a peer, quality.

Steps, each optional with ``--only``:

1. ingestion (:mod:`bench.rag.ingestion`): ``Ingestor`` with the packaged MiniLM over a
   generated Markdown corpus into Qdrant Edge, and an unchanged re-run that must write nothing;
2. quality (:mod:`bench.rag.quality`): ``docs/`` ingested the same way, the labelled questions
   of ``evals/datasets/docs_golden.jsonl`` asked dense-only, hybrid and BM25-only;
3. latency (:mod:`bench.rag.latency`): dense and hybrid search on Qdrant Edge (as ingested and
   after ``optimize()``) against qdrant-client's local mode, the same synthetic points and
   queries at each ``--sizes`` collection size, reported as p50/p99 and Edge / local ratios.

The goals of the issue, evaluated and reported either way: p99 retrieval under 10 ms at 100k
chunks (on 2 cores), and hybrid retrieval at least as good as dense-only (hit rate and MRR).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console

from bench.rag import BenchError
from bench.rag.ingestion import load_model, measure_ingestion
from bench.rag.latency import grow, measure, open_sides
from bench.rag.report import print_report
from bench.rag.synthetic import Dataset

__all__ = ["main"]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "rag.json"
DOCS = REPO_ROOT / "docs"
GOLDEN = REPO_ROOT / "evals" / "datasets" / "docs_golden.jsonl"
PARTS = ("ingest", "quality", "latency")
GOAL_POINTS = 100_000
GOAL_P99_MS = 10.0
DEFAULT_SIZES = [10_000, GOAL_POINTS]
QUICK_SIZES = [10_000]
QUICK_FILES = 50
DEFAULT_FILES = 200
PACKAGES = ("qdrant-edge-py", "qdrant-client", "sentence-transformers", "torch", "onnxruntime", "numpy")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line of ``python -m bench.rag``."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.rag",
        description=(
            "Benchmark opsloop's RAG path: ingestion throughput (Ingestor + MiniLM into Qdrant Edge, and an "
            "unchanged re-run), retrieval latency of Qdrant Edge against qdrant-client's local mode on the "
            "same vectors and queries, and hit rate / MRR of dense-only against hybrid retrieval on the "
            "labelled questions about docs/. qdrant-client's local mode is slow: the default sizes take "
            "about 13 minutes on 2 cores, --quick under 2."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=PARTS,
        default=list(PARTS),
        metavar="PART",
        help=f"Parts to run: {PARTS}.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="Smoke run: smaller --sizes and --files defaults (a minute or two).",
    )
    # No argparse default for these two, so that --quick can tell whether they were given.
    parser.add_argument(
        "--files",
        type=int,
        default=argparse.SUPPRESS,
        help=f"Generated Markdown files to ingest (default: {DEFAULT_FILES}; {QUICK_FILES} with --quick).",
    )
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=argparse.SUPPRESS,
        metavar="N",
        help=f"Collection sizes (default: {DEFAULT_SIZES}; {QUICK_SIZES} with --quick).",
    )
    parser.add_argument(
        "--queries", type=int, default=300, help="Measured queries per Edge store, search and size."
    )
    parser.add_argument(
        "--peer-queries",
        type=int,
        default=100,
        help="How many of those the peer answers (qdrant-client local mode: ~2 s per hybrid query at 100k).",
    )
    parser.add_argument("--warmup", type=int, default=10, help="Queries before the measured ones, dropped.")
    parser.add_argument(
        "--limit", type=int, default=10, help="Hits of each dense search (recall is at this)."
    )
    parser.add_argument("--top-k", type=int, default=5, help="Chunks a hybrid retrieval returns; k of hit@k.")
    parser.add_argument(
        "--score-threshold",
        type=float,
        default=None,
        help="Dense cosine floor in the quality part (opsloop's default is 0.3); none: rank only.",
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the corpus, the points and the queries.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Where to write the JSON results.")
    parser.add_argument("--check-goal", action="store_true", help="Exit with status 3 when a goal is missed.")
    args = parser.parse_args(argv)
    args.files = getattr(args, "files", QUICK_FILES if args.quick else DEFAULT_FILES)
    args.sizes = sorted(set(getattr(args, "sizes", QUICK_SIZES if args.quick else DEFAULT_SIZES)))
    for name in ("files", "queries", "peer_queries", "limit", "top_k"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.warmup < 0:
        parser.error("--warmup must not be negative")
    if args.sizes[0] < args.limit:
        parser.error("--sizes must be at least --limit")
    return args


def latency_goal(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """p99 under 10 ms at 100k points for the retriever's path on Edge as opsloop leaves it.

    A server indexes a collection by itself once an ingestion leaves ``rag_auto_index_points``
    (20,000) chunks unindexed, so a 100k collection it serves is the optimized side.
    """
    statement = f"p99 retrieval under {GOAL_P99_MS:g} ms at {GOAL_POINTS:,} chunks (hybrid, Edge indexed)"
    step = next((s for s in steps if s["points"] == GOAL_POINTS), None)
    if step is None:
        return {"statement": statement, "evaluated": False, "reason": f"{GOAL_POINTS} is not among --sizes"}
    # Read on the queries after the peer's last: each of its seconds-long Python loops over
    # every point leaves the Edge query after it cold (p99 24 ms on those, against 2-3 ms).
    timed = "_alone" if "hybrid_alone" in step else ""
    p99 = {
        form: {side: step[form + timed][side]["p99_ms"] for side in ("edge", "edge_optimized")}
        for form in ("dense", "hybrid")
    }
    detail = ", ".join(
        f"{form} {label} {p99[form][side]:.2f} ms"
        for form in ("hybrid", "dense")
        for side, label in (("edge", "as ingested"), ("edge_optimized", "optimized"))
    )
    return {
        "statement": statement,
        "evaluated": True,
        "p99_ms": p99,
        "met": p99["hybrid"]["edge_optimized"] < GOAL_P99_MS,
        "queries": f"{step['queries'] - step['peer_queries']} after the peer's last" if timed else "all",
        "met_each": {form: {side: v < GOAL_P99_MS for side, v in by.items()} for form, by in p99.items()},
        "detail": detail,
    }


def quality_goal(quality: dict[str, Any]) -> dict[str, Any]:
    """Hybrid's hit rate and MRR at k are at least dense-only's."""
    dense, hybrid = quality["scores"]["dense"]["all"], quality["scores"]["hybrid"]["all"]
    k = quality["top_k"]
    return {
        "statement": f"hybrid at least as good as dense-only (hit@{k} and MRR@{k})",
        "evaluated": True,
        "met": hybrid["hit_rate"] >= dense["hit_rate"] and hybrid["mrr"] >= dense["mrr"],
        "detail": (
            f"hit@{k} {hybrid['hit_rate']:.3f} vs {dense['hit_rate']:.3f}, "
            f"MRR@{k} {hybrid['mrr']:.3f} vs {dense['mrr']:.3f}"
        ),
    }


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    return done.stdout  # not stripped: a porcelain status line starts with a meaningful space


def environment() -> dict[str, Any]:
    """Where the numbers come from: commit, machine, packages, threads."""
    import torch

    versions: dict[str, str | None] = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "git_commit": _git("rev-parse", "HEAD").strip() or None,
        # Uncommitted changes outside bench/ mean the commit alone does not say what ran.
        "git_changed_files": [
            path
            for line in _git("status", "--porcelain").splitlines()
            if not (path := line[3:]).startswith(
                ("bench/", "evals/datasets/", "tests/unit/test_golden_set.py")
            )
        ],
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "nice": os.nice(0),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "packages": versions,
    }


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the context managers, which close the stores


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the tables, write the JSON; the exit status says if it is valid."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        with tempfile.TemporaryDirectory(prefix="opsloop-bench-rag-") as tmp:
            return _run(args, Path(tmp))
    except BenchError as exc:
        print(f"bench/rag: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench/rag: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace, tmp: Path) -> int:
    started = datetime.now(UTC)
    report: dict[str, Any] = {
        "benchmark": "bench/rag",
        "started_at": started.isoformat(),
        "config": {
            "parts": [p for p in PARTS if p in args.only],
            "files": args.files,
            "sizes": args.sizes,
            "queries": args.queries,
            "peer_queries": min(args.peer_queries, args.queries),
            "warmup": args.warmup,
            "limit": args.limit,
            "top_k": args.top_k,
            "score_threshold": args.score_threshold,
            "seed": args.seed,
            "latency": "wall time of each call in this process; p50/p99 interpolated between ranks",
        },
        "environment": environment(),
        "peer": (
            "qdrant-client local mode, QdrantClient(location=':memory:'), behind rag.stores.QdrantServerStore"
        ),
        "goals": {},
    }
    if "ingest" in args.only or "quality" in args.only:
        _say("loading all-MiniLM-L6-v2 (packaged) and its tokenizer")
        embedder, tokenizer, report["model_load_s"] = load_model()
    if "ingest" in args.only:
        _say(f"ingesting {args.files} generated Markdown files into Qdrant Edge, then again unchanged")
        ingestion = measure_ingestion(tmp / "ingest", embedder, tokenizer, files=args.files, seed=args.seed)
        report["ingestion"] = ingestion.to_dict()
        _say(
            f"  {ingestion.chunks:,} chunks in {ingestion.first_run_s:.1f} s "
            f"({ingestion.chunks_per_s:.1f}/s); "
            f"re-run {ingestion.rerun_s:.2f} s, wrote {ingestion.rerun_chunks_written}"
        )
    if "quality" in args.only:
        from bench.rag.quality import measure_quality

        _say(f"ingesting docs/ and asking the questions of {GOLDEN.relative_to(REPO_ROOT)}")
        quality = measure_quality(
            tmp / "quality",
            embedder,
            tokenizer,
            docs=DOCS,
            golden=GOLDEN,
            top_k=args.top_k,
            score_threshold=args.score_threshold,
        )
        report["quality"] = quality
        report["goals"]["quality"] = quality_goal(quality)
    if "latency" in args.only:
        report["latency"] = _latency(args, tmp / "latency")
        report["goals"]["latency"] = latency_goal(report["latency"])
    report["finished_at"] = datetime.now(UTC).isoformat()
    valid = report.get("ingestion", {}).get("rerun_clean", True)
    report["valid"] = valid

    print_report(report, Console(width=160))
    if not valid:
        print("\nINVALID RUN: the unchanged re-run wrote or deleted chunks")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults: {args.out}")
    if not valid:
        return 1
    if args.check_goal and not all(g["met"] for g in report["goals"].values() if g["evaluated"]):
        return 3
    return 0


def _latency(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    dataset = Dataset(max(args.sizes), args.seed)
    steps = []
    loaded = 0
    with open_sides(work) as sides:
        for size in args.sizes:
            _say(
                f"loading {size - loaded:,} points into each store (to {size:,}), "
                "then optimizing one Edge copy"
            )
            grow(sides, dataset, loaded, size, _say)
            loaded = size
            _say(
                f"timing {args.warmup} + {args.queries} queries (the peer: {args.warmup} + "
                f"{min(args.peer_queries, args.queries)}), dense and hybrid, at {size:,} points"
            )
            step = measure(
                sides,
                dataset,
                size,
                queries=args.queries,
                peer_queries=args.peer_queries,
                warmup=args.warmup,
                limit=args.limit,
                top_k=args.top_k,
            )
            for form in ("dense", "hybrid"):
                line = ", ".join(f"{name} p99 {s['p99_ms']:.2f} ms" for name, s in step[form].items())
                _say(f"  {form}: {line}")
            steps.append(step)
    return steps


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
