"""MiniLM on ONNX Runtime int8 against MiniLM on torch fp32: ingestion speed and retrieval quality.

The peer is sentence-transformers with its default settings (``encode`` with batches of 32, as
``SentenceTransformerEmbedder`` calls it, on torch's CPU threads); opsloop's ``onnx-int8``
backend (``rag/onnx_embedder.py``) runs the same packaged all-MiniLM-L6-v2. In one run:

1. **Speed.** For ``--rounds`` rounds, the order alternating, each embedder ingests the same
   generated Markdown corpus (``bench/rag/corpus.py``, ``--files`` files) with ``rag.ingest.Ingestor``
   into a fresh Qdrant Edge store, exactly as ``bench/rag`` times ingestion: chunks per second of
   the whole first run, and of the embedding calls alone. The export to ONNX (made once, cached)
   and both models' loading happen before any clock starts; the export time is reported.
2. **Quality.** Each embedder ingests ``docs/`` and answers every question of
   ``evals/datasets/docs_golden.jsonl`` (``bench/rag/quality.py``): hit@5 and MRR@5, dense and
   hybrid, and the latency of embedding one question.
3. The vectors' agreement: the cosine between the two embedders' vectors of the docs' chunks.

The issue "hot paths" sets the goals: at least 2.5x torch's chunks/s, and hit@5 and MRR of the
int8 model within 0.01 of torch's.

Run: ``.venv/bin/python -m bench.embedder`` (about 6 minutes on 2 cores), ``--help`` for the options.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.rag.ingestion import measure_ingestion
from bench.rag.quality import measure_quality
from bench.rag.run import environment
from rag.chunking import HFTokenizer
from rag.embedder import Embedder, SentenceTransformerEmbedder
from rag.onnx_embedder import OnnxEmbedder

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "evals" / "datasets" / "docs_golden.jsonl"
GOAL_SPEEDUP = 2.5
GOAL_QUALITY = 0.01


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line's options."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.embedder",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--files", type=int, default=60, help="Markdown files in the generated corpus.")
    parser.add_argument("--rounds", type=int, default=2, help="Ingestions per embedder, order alternating.")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "embedder.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Measure, print the tables, write ``--out``; 0 when done."""
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="opsloop-bench-embedder-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        onnx = OnnxEmbedder(work / "embedders")
        onnx.embed(["warm up"])
        export_s = time.perf_counter() - started
        embedders: dict[str, Embedder] = {"torch": SentenceTransformerEmbedder(), "onnx-int8": onnx}
        embedders["torch"].embed(["warm up"])
        tokenizer = HFTokenizer()
        runs = []
        for round_ in range(args.rounds):
            order = list(embedders) if round_ % 2 == 0 else list(embedders)[::-1]
            for name in order:
                result = measure_ingestion(
                    work / f"ingest-{name}-{round_}",
                    embedders[name],
                    tokenizer,
                    files=args.files,
                    seed=args.seed,
                )
                runs.append({"round": round_ + 1, "embedder": name} | result.to_dict())
                _say(
                    f"round {round_ + 1} {name:>9}: {result.chunks} chunks, "
                    f"{result.chunks_per_s:.1f} chunks/s ({result.chunks / result.embed_s:.1f}/s embedding)"
                )
        quality = {
            name: measure_quality(
                work / f"quality-{name}",
                embedder,
                tokenizer,
                docs=REPO / "docs",
                golden=GOLDEN,
                top_k=5,
                score_threshold=None,
            )
            for name, embedder in embedders.items()
        }
    speed = {name: _speed([r for r in runs if r["embedder"] == name]) for name in embedders}
    report = {
        "benchmark": "bench/embedder",
        "finished_at": datetime.now(UTC).isoformat(),
        "config": vars(args)
        | {"out": str(args.out.relative_to(REPO)) if args.out.is_relative_to(REPO) else None},
        "environment": environment(),
        "export_s": export_s,
        "speed": speed,
        "speedup": speed["onnx-int8"]["chunks_per_s"] / speed["torch"]["chunks_per_s"],
        "embedding_speedup": speed["onnx-int8"]["embed_chunks_per_s"] / speed["torch"]["embed_chunks_per_s"],
        "quality": {name: _quality(q) for name, q in quality.items()},
        "agreement": _agreement(embedders),
        "runs": runs,
    }
    report["goal"] = _goal(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    _print(report)
    return 0


def _speed(runs: list[dict[str, Any]]) -> dict[str, float]:
    chunks = sum(r["chunks"] for r in runs)
    return {
        "chunks_per_s": chunks / sum(r["first_run_s"] for r in runs),
        "embed_chunks_per_s": chunks / sum(r["embed_s"] for r in runs),
    }


def _quality(measured: dict[str, Any]) -> dict[str, Any]:
    scores = measured["scores"]
    return {
        "questions": measured["questions"],
        "hybrid": scores["hybrid"]["all"],
        "dense": scores["dense"]["all"],
        "query_embedding_ms": measured["query_embedding"],
    }


def _agreement(embedders: dict[str, Embedder]) -> dict[str, float]:
    """Cosine between the two embedders' vectors of the paragraphs of ``docs/``."""
    paragraphs = (
        p.strip() for doc in sorted((REPO / "docs").glob("*.md")) for p in doc.read_text().split("\n\n")
    )
    texts = [p for p in paragraphs if len(p) > 80][:300]
    torch, onnx = (embedders[name].embed(texts) for name in ("torch", "onnx-int8"))
    cosines = np.sum(torch * onnx, axis=1)
    return {"texts": len(texts), "mean": float(cosines.mean()), "min": float(cosines.min())}


def _goal(report: dict[str, Any]) -> dict[str, Any]:
    torch, onnx = report["quality"]["torch"], report["quality"]["onnx-int8"]
    drops = {
        f"{mode} {metric}": torch[mode][metric] - onnx[mode][metric]
        for mode in ("hybrid", "dense")
        for metric in ("hit_rate", "mrr")
    }
    return {
        "speedup_wanted": GOAL_SPEEDUP,
        "speedup_met": report["speedup"] >= GOAL_SPEEDUP,
        "quality_drop_allowed": GOAL_QUALITY,
        "quality_drops": drops,
        "quality_met": all(drop <= GOAL_QUALITY for drop in drops.values()),
    }


def _print(report: dict[str, Any]) -> None:
    speed, quality, goal = report["speed"], report["quality"], report["goal"]
    print(f"export to ONNX int8 (once, cached): {report['export_s']:.1f} s")
    for name in speed:
        q = quality[name]
        hybrid, dense = q["hybrid"], q["dense"]
        print(
            f"{name:>9}: {speed[name]['chunks_per_s']:6.1f} chunks/s ingesting "
            f"({speed[name]['embed_chunks_per_s']:6.1f}/s embedding); "
            f"hybrid hit@5 {hybrid['hit_rate']:.3f} MRR {hybrid['mrr']:.3f}, "
            f"dense hit@5 {dense['hit_rate']:.3f} MRR {dense['mrr']:.3f}; "
            f"one question {q['query_embedding_ms']['p50_ms']:.1f} ms p50"
        )
    print(
        f"onnx-int8 / torch: x{report['speedup']:.2f} ingesting, "
        f"x{report['embedding_speedup']:.2f} embedding "
        f"(goal x{GOAL_SPEEDUP}: {'met' if goal['speedup_met'] else 'NOT met'}); "
        f"quality {'within' if goal['quality_met'] else 'NOT within'} {GOAL_QUALITY}: {goal['quality_drops']}"
    )
    agreement = report["agreement"]
    print(f"vectors agree: cosine mean {agreement['mean']:.4f}, min {agreement['min']:.4f}")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
