"""``POST /query`` end to end over HTTP: the first query after start against the next ones.

The peer is the server itself, warm: what the first query costs beyond a later one is what a
user waiting on a fresh start pays (before the warm-up at start, the first query loaded the LLM,
registered the answer prompt and read it from MLflow: 9.8 s against about 1 s). In one run:

1. ``opsloop --home <tmp> serve`` on its defaults (one worker, the bundled docs ingested at start,
   SmolLM2 in llama.cpp answering), waited for until ``/readyz`` says 200;
2. with ``generate: true`` (answered by the LLM, ``rag_max_answer_tokens`` set to
   ``--answer-tokens``), the first question of ``evals/datasets/docs_golden.jsonl`` asked
   ``--queries`` times, another question between each two asks: the same question gives the
   same prompt and answer, so the same work, and the question between keeps llama.cpp from
   reusing the previous prompt's evaluation (it keeps the longest common prefix). The first
   ask's latency against the median of the later ones;
3. the same questions again ``--rounds`` times with ``generate: false`` (retrieval only): p50
   and p99 over HTTP, the number the issue "hot paths" sets under 15 ms at p50.

Writes ``bench/results/query-http.json`` with the commit it measured. Run:
``.venv/bin/python -m bench.query_http`` (about 2 minutes on 2 cores, most of it the start).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.predict.processes import ProcessGroup, create_key, start_opsloop
from bench.rag.run import environment

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "evals" / "datasets" / "docs_golden.jsonl"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line's options."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.query_http",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--queries", type=int, default=8, help="Times the question is asked, generate: true.")
    parser.add_argument("--answer-tokens", type=int, default=64, help="rag_max_answer_tokens of the server.")
    parser.add_argument("--rounds", type=int, default=5, help="Passes over the questions, generate: false.")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "query-http.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Start the server, ask, write ``--out``; 0 when done."""
    args = parse_args(argv)
    questions = [json.loads(line)["question"] for line in GOLDEN.read_text().splitlines() if line.strip()]
    with tempfile.TemporaryDirectory(prefix="opsloop-bench-query-") as tmp, ProcessGroup() as group:
        home = Path(tmp) / "home"
        started = time.perf_counter()
        server = start_opsloop(group, home, {"OPSLOOP_RAG_MAX_ANSWER_TOKENS": str(args.answer_tokens)})
        server.wait_until("/readyz", timeout=600)
        ready_s = time.perf_counter() - started
        key = create_key(home, tenant="default", role="user")
        with httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=120
        ) as http:
            generated = []
            for other in questions[1 : args.queries + 1]:
                generated.append(_ask(http, questions[0], True))
                _ask(http, other, True)
            retrieval = [_ask(http, q, False) for _ in range(args.rounds) for q in questions]
    first, rest = generated[0], generated[1:]
    report: dict[str, Any] = {
        "benchmark": "bench/query_http",
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "environment": environment(),
        "ready_s": ready_s,
        "generate": {
            "first_ms": first,
            "later_median_ms": statistics.median(rest),
            "first_over_later": first / statistics.median(rest),
            "all_ms": generated,
        },
        "retrieval_only": {
            "queries": len(retrieval),
            "p50_ms": float(np.percentile(retrieval, 50)),
            "p99_ms": float(np.percentile(retrieval, 99)),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    g, r = report["generate"], report["retrieval_only"]
    print(f"ready in {ready_s:.1f} s")
    print(
        f"generate: first query {g['first_ms']:.0f} ms, later ones {g['later_median_ms']:.0f} ms (median), "
        f"x{g['first_over_later']:.2f}"
    )
    print(f"generate: false, {r['queries']} queries: p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms")
    return 0


def _ask(http: httpx.Client, question: str, generate: bool) -> float:
    body: dict[str, Any] = {"question": question, "collection": "docs", "generate": generate}
    started = time.perf_counter()
    answer = http.post("/query", json=body)
    elapsed = (time.perf_counter() - started) * 1000
    if answer.status_code != 200:
        raise SystemExit(f"/query answered {answer.status_code}: {answer.text[:500]}")
    return elapsed


if __name__ == "__main__":
    sys.exit(main())
