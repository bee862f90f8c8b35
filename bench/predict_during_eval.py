"""``/predict`` latency while a scheduled eval runs in the same server, against without one.

An eval run shares the server's process with the requests it must not slow down: its MLflow
calls, its queries and its scoring used to hold the event loop (issue "hot paths", point 4).
The peer is the same server a moment earlier or later with no eval running. In one run:

1. ``opsloop --home <tmp> serve`` on its defaults (the demo model, the bundled docs ingested,
   SmolLM2 answering) with one eval job, ``nightly``, on the golden set
   (``evals/datasets/docs_golden.jsonl``, the first ``--questions``, answers generated), whose
   cron never fires by itself in the run; waited for until ``/readyz`` says 200;
2. for ``--rounds`` rounds, the order alternating: a paced load on ``POST /predict/credit-risk``
   (one applicant per request, ``--rate`` requests/s over ``--connections`` connections for
   ``--duration`` s, ``bench/gateway/loadgen.py``) with nothing else running, and the same load
   while ``POST /admin/evals/jobs/nightly/trigger`` runs the job (started a second before the
   load, and lasting longer than it);
3. p50 and p99 of each, and the ratio of the p99s: the goal is within 20%.

On two cores the eval's own work (embedding, llama.cpp generating answers, scoring) competes
with ``/predict`` for the CPU whatever the loop does; the ratio is what a user of one small
server sees. Writes ``bench/results/predict-during-eval.json``. Run:
``.venv/bin/python -m bench.predict_during_eval`` (about 4 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.gateway.run import Level, Target, run_load
from bench.predict.processes import ProcessGroup, create_key, start_opsloop
from bench.rag.run import environment
from workflows.demo import FEATURE_NAMES, generate_credit_data

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "evals" / "datasets" / "docs_golden.jsonl"
GOAL_RATIO = 1.2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line's options."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.predict_during_eval",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--rate", type=float, default=50.0, help="Paced /predict requests per second.")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--duration", type=float, default=15.0, help="Measured seconds of each load.")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--questions", type=int, default=8, help="Golden-set questions the eval asks.")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "predict-during-eval.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Start the server, load it with and without an eval, write ``--out``; 0 when done."""
    args = parse_args(argv)
    job = {"name": "nightly", "cron": "0 3 1 1 *", "dataset": str(GOLDEN), "collection": "docs",
           "limit": args.questions, "max_answer_tokens": 32}  # fmt: skip
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="opsloop-bench-predict-eval-") as tmp, ProcessGroup() as group:
        home = Path(tmp) / "home"
        server = start_opsloop(group, home, {"OPSLOOP_EVAL_JOBS": json.dumps([job])})
        server.wait_until("/readyz", timeout=600)
        operator = create_key(home, tenant="default", role="operator")
        body = Path(tmp) / "predict.json"
        instance = generate_credit_data(100, seed=3)[list(FEATURE_NAMES)].to_dict(orient="records")[0]
        body.write_text(json.dumps({"instances": [instance]}))
        target = Target("opsloop", f"{server.url}/predict/credit-risk", operator, server)
        level = Level(args.connections, args.rate)
        spec = argparse.Namespace(duration=args.duration, warmup=args.warmup)
        for round_ in range(args.rounds):
            for during_eval in (False, True) if round_ % 2 == 0 else (True, False):
                result = _load(group, target, level, spec, body, server.url, operator, during_eval)
                runs.append({"round": round_ + 1, "during_eval": during_eval} | result)
                lat = result["latency_us"]
                print(
                    f"round {round_ + 1} {'during an eval' if during_eval else 'no eval':>14}: "
                    f"p50 {lat['p50'] / 1000:6.2f} ms  p99 {lat['p99'] / 1000:6.2f} ms  "
                    f"late {result['late']}/{result['scheduled']}  errors {sum(result['errors'].values())}",
                    file=sys.stderr,
                    flush=True,
                )
    summary = {name: _summary([r for r in runs if r["during_eval"] is flag]) for name, flag in
               (("no_eval", False), ("during_eval", True))}  # fmt: skip
    ratio = summary["during_eval"]["p99_ms"] / summary["no_eval"]["p99_ms"]
    report = {
        "benchmark": "bench/predict_during_eval",
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "environment": environment(),
        "summary": summary,
        "p99_ratio": ratio,
        "goal": {"p99_ratio_at_most": GOAL_RATIO, "met": ratio <= GOAL_RATIO},
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    for name, numbers in summary.items():
        print(
            f"{name:>11}: p50 {numbers['p50_ms']:.2f} ms, p99 {numbers['p99_ms']:.2f} ms (median of rounds)"
        )
    print(f"p99 during an eval / without: x{ratio:.2f} (goal at most x{GOAL_RATIO}: "
          f"{'met' if ratio <= GOAL_RATIO else 'NOT met'})")  # fmt: skip
    return 0


def _load(
    group: ProcessGroup,
    target: Target,
    level: Level,
    spec: argparse.Namespace,
    body: Path,
    url: str,
    key: str,
    during_eval: bool,
) -> dict[str, Any]:
    if not during_eval:
        return run_load(group, target, level, spec, body, expect='"predictions"')
    outcome: list[Any] = []

    def trigger() -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=900) as http:
            started = time.perf_counter()
            answer = http.post("/admin/evals/jobs/nightly/trigger")
            outcome.append((answer.status_code, time.perf_counter() - started, answer.text[:300]))

    running = threading.Thread(target=trigger)
    running.start()
    time.sleep(1.0)
    result = run_load(group, target, level, spec, body, expect='"predictions"')
    running.join()
    status, seconds, text = outcome[0]
    if status != 200:
        raise SystemExit(f"the eval trigger answered {status}: {text}")
    if seconds < spec.duration + spec.warmup + 1:
        print(f"warning: the eval took {seconds:.1f} s, less than the load", file=sys.stderr)
    return result | {"eval_s": seconds}


def _summary(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {
        "p50_ms": statistics.median(r["latency_us"]["p50"] / 1000 for r in runs),
        "p99_ms": statistics.median(r["latency_us"]["p99"] / 1000 for r in runs),
        "requests": float(sum(r["requests"] for r in runs)),
    }


if __name__ == "__main__":
    sys.exit(main())
