"""The benchmark of ``POST /predict/{model}``: opsloop against a naive FastAPI peer, one run.

Steps: start ``opsloop serve`` on a fresh home (it trains and registers the demo
credit-risk model on first start) with every default on (signature validation, API-key
auth, Prometheus metrics, the prediction log); create a ``user`` key with the CLI; start
the peer (:mod:`bench.predict.baseline`) on the very same model version from opsloop's
MLflow store; check that both answer the same probabilities for the same rows; then, for
several rounds, drive each server with wrk for every request size, alternating which goes
first (A/B, then B/A) so that machine noise hits both. Each measured run follows a warm-up
run whose numbers are dropped. Request bodies are realistic rows from
``workflows.demo.generate_credit_data`` (a different seed from the training data).

Reported per server and request size: throughput (requests/s and rows/s over all rounds
together), p50 and p99 latency (the median of the rounds' values), and errors (socket
errors, timeouts, and answers with status >= 400; any error makes the run invalid and the
exit status 1). The goal of the issue "classical model serving": opsloop serves at least
2x the peer's single-row throughput at an equal or lower p99.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from bench.predict import BenchError
from bench.predict.load import LoadResult, find_wrk, run_wrk, wrk_version
from bench.predict.processes import (
    REPO_ROOT,
    ProcessGroup,
    Server,
    create_user_key,
    start_baseline,
    start_opsloop,
)

__all__ = ["main"]

MODEL = "credit-risk"
SERVERS = ("opsloop", "baseline")
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results" / "predict.json"
GOAL_THROUGHPUT_RATIO = 2.0
_DATA_SEED = 12345  # not the demo model's training seed (0): unseen applicants


@dataclass(frozen=True)
class Measurement:
    """One measured wrk run."""

    round: int
    server: str
    rows: int
    result: LoadResult


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line of ``python -m bench.predict``."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.predict",
        description=(
            "Benchmark POST /predict/credit-risk of a real 'opsloop serve' (validation, auth, "
            "metrics and the prediction log on) against a naive FastAPI + pandas app serving the "
            "same model version, with wrk on 127.0.0.1, for each request size, alternating the "
            "two servers round by round. Needs wrk (apt-get install -y wrk). Takes about "
            "rounds x sizes x 2 x (warmup + duration) seconds plus ~1 minute of start-up."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=10.0, help="Seconds of each measured run.")
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="Seconds of the unmeasured run before each measured one."
    )
    parser.add_argument("--concurrency", type=int, default=8, help="Open connections (requests in flight).")
    parser.add_argument(
        "--rows-per-request",
        type=int,
        nargs="+",
        default=[1, 32],
        metavar="N",
        help="Request sizes to measure, in instances per request.",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="Measured runs per server and size (A/B, B/A, ...)."
    )
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (this machine's cores are few).")
    parser.add_argument(
        "--bodies", type=int, default=256, help="Distinct request bodies per size that wrk cycles through."
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Where to write the JSON results.")
    parser.add_argument(
        "--check-goal",
        action="store_true",
        help="Exit with status 3 when the goal (>= 2x single-row throughput at <= p99) is missed.",
    )
    args = parser.parse_args(argv)
    for name in ("duration", "concurrency", "rounds", "threads", "bodies"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive")
    if args.warmup < 0:
        parser.error("--warmup must not be negative")
    if args.threads > args.concurrency:
        parser.error("--threads must not exceed --concurrency (each wrk thread needs a connection)")
    if any(n <= 0 for n in args.rows_per_request):
        parser.error("--rows-per-request values must be positive")
    args.rows_per_request = sorted(set(args.rows_per_request))
    return args


def write_bodies(directory: Path, sizes: list[int], count: int) -> dict[int, Path]:
    """Per request size, a file of ``count`` JSON bodies (one per line) of demo applicants."""
    from workflows.demo import FEATURE_NAMES, generate_credit_data

    rows_needed = max(100, count * max(sizes))
    frame = generate_credit_data(rows_needed, seed=_DATA_SEED)[list(FEATURE_NAMES)]
    records: list[dict[str, Any]] = frame.to_dict(orient="records")  # native int, float, str
    files: dict[int, Path] = {}
    for size in sizes:
        path = directory / f"bodies-{size}.jsonl"
        with path.open("w") as f:
            for i in range(count):
                start = (i * size) % (len(records) - size + 1)
                body = {"instances": records[start : start + size]}
                f.write(json.dumps(body, separators=(",", ":"), allow_nan=False) + "\n")
        files[size] = path
    return files


def check_parity(opsloop: Server, baseline: Server, key: str, body_file: Path) -> dict[str, Any]:
    """POST the same body to both servers; they must give the same probabilities.

    Raises:
        BenchError: A server refused the body, or the answers differ.
    """
    body = body_file.read_text().splitlines()[0]
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    with httpx.Client(timeout=30.0) as client:
        ours = client.post(f"{opsloop.url}/predict/{MODEL}", content=body, headers=headers)
        theirs = client.post(f"{baseline.url}/predict", content=body, headers=headers)
    for server, response in (("opsloop", ours), ("baseline", theirs)):
        if response.status_code != 200:
            raise BenchError(f"{server} refused a benchmark body: {response.status_code} {response.text}")
    ours_json, theirs_json = ours.json(), theirs.json()
    positive = [row["1"] for row in ours_json["probabilities"]]
    peer = [row[1] for row in theirs_json["probabilities"]]
    worst = max(abs(a - b) for a, b in zip(positive, peer, strict=True))
    if worst > 1e-9 or ours_json["predictions"] != theirs_json["predictions"]:
        raise BenchError(f"opsloop and the baseline disagree (largest probability difference {worst:g})")
    return {"instances": len(positive), "max_abs_difference": worst, "predictions_equal": True}


def scrape_metrics(server: Server) -> dict[str, float]:
    """The counters opsloop keeps of its predictions and of prediction-log records it dropped."""
    wanted = ("opsloop_predictions_total{", "opsloop_prediction_log_dropped_total ")
    found: dict[str, float] = {}
    text = httpx.get(f"{server.url}/metrics", timeout=30.0).text
    for line in text.splitlines():
        if line.startswith(wanted):
            name, _, value = line.rpartition(" ")
            found[name] = float(value)
    return found


def summarise(measurements: list[Measurement], sizes: list[int]) -> dict[str, dict[int, dict[str, Any]]]:
    """Per server and size: throughput over all rounds, median p50/p99 of the rounds, errors."""
    summary: dict[str, dict[int, dict[str, Any]]] = {}
    for server in SERVERS:
        summary[server] = {}
        for size in sizes:
            runs = [m.result for m in measurements if m.server == server and m.rows == size]
            requests = sum(r.requests for r in runs)
            seconds = sum(r.duration_s for r in runs)
            rps = requests / seconds if seconds else 0.0
            summary[server][size] = {
                "rounds": len(runs),
                "requests": requests,
                "seconds": seconds,
                "rps": rps,
                "rows_per_s": rps * size,
                "p50_ms": statistics.median(r.p50_ms for r in runs),
                "p99_ms": statistics.median(r.p99_ms for r in runs),
                "p99_ms_per_round": [r.p99_ms for r in runs],
                "rps_per_round": [r.rps for r in runs],
                "errors": sum(r.error_count for r in runs),
            }
    return summary


def ratios(summary: dict[str, dict[int, dict[str, Any]]]) -> dict[int, dict[str, float]]:
    """Ratios of opsloop to the baseline per size: throughput (higher is better), p99 (lower is better)."""
    out: dict[int, dict[str, float]] = {}
    for size, ours in summary["opsloop"].items():
        theirs = summary["baseline"][size]
        out[size] = {
            "throughput": ours["rps"] / theirs["rps"] if theirs["rps"] else float("nan"),
            "p99": ours["p99_ms"] / theirs["p99_ms"] if theirs["p99_ms"] else float("nan"),
        }
    return out


def goal(summary: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    """Whether opsloop serves >= 2x the peer's single-row throughput at an equal or lower p99."""
    if 1 not in summary["opsloop"]:
        return {"evaluated": False, "reason": "1 is not among --rows-per-request"}
    ours, theirs = summary["opsloop"][1], summary["baseline"][1]
    throughput_ok = ours["rps"] >= GOAL_THROUGHPUT_RATIO * theirs["rps"]
    p99_ok = ours["p99_ms"] <= theirs["p99_ms"]
    return {
        "evaluated": True,
        "statement": "opsloop single-row throughput >= 2x the baseline's, at an equal or lower p99",
        "throughput_ratio": ours["rps"] / theirs["rps"],
        "throughput_ok": throughput_ok,
        "p99_ratio": ours["p99_ms"] / theirs["p99_ms"],
        "p99_ok": p99_ok,
        "met": throughput_ok and p99_ok,
    }


def print_table(summary: dict[str, dict[int, dict[str, Any]]], args: argparse.Namespace) -> None:
    """The results as a text table, one line per server and size, then the ratios."""
    print(
        f"\nPOST /predict/{MODEL}: {args.concurrency} connections, {args.rounds} x {args.duration:g} s "
        f"per server and size (after {args.warmup:g} s warm-ups), wrk on 127.0.0.1\n"
    )
    print(f"{'server':<9} {'rows':>4} {'req/s':>9} {'rows/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for size in args.rows_per_request:
        for server in SERVERS:
            s = summary[server][size]
            print(
                f"{server:<9} {size:>4} {s['rps']:>9.1f} {s['rows_per_s']:>10.1f} "
                f"{s['p50_ms']:>8.2f} {s['p99_ms']:>8.2f} {s['errors']:>7}"
            )
    print("\nopsloop / baseline:")
    for size, r in ratios(summary).items():
        print(f"  {size:>3} rows: throughput x{r['throughput']:.2f}, p99 x{r['p99']:.2f}")


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    return done.stdout.strip()


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the ProcessGroup, which stops every server


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write the JSON; the exit status says if it is valid."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        wrk = find_wrk()
        with tempfile.TemporaryDirectory(prefix="opsloop-bench-") as tmp, ProcessGroup() as group:
            return _run(args, wrk, Path(tmp), group)
    except BenchError as exc:
        print(f"bench/predict: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench/predict: interrupted; every server was stopped", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace, wrk: str, tmp: Path, group: ProcessGroup) -> int:
    started = datetime.now(UTC)
    home = tmp / "home"
    _say(f"starting opsloop serve (home {home}); the first start trains the demo model")
    opsloop = start_opsloop(group, home)
    bodies = write_bodies(tmp, args.rows_per_request, args.bodies)
    opsloop.wait_until("/readyz", timeout=600)
    key = create_user_key(home)
    described = httpx.get(
        f"{opsloop.url}/models/{MODEL}", headers={"Authorization": f"Bearer {key}"}, timeout=30.0
    )
    if described.status_code != 200:
        raise BenchError(f"GET /models/{MODEL}: {described.status_code} {described.text}")
    version = int(described.json()["champion"])
    model_uri = f"models:/{MODEL}/{version}"
    _say(f"opsloop ready on {opsloop.url} serving {MODEL} v{version}; starting the baseline on {model_uri}")
    baseline = start_baseline(group, home, model_uri)
    baseline.wait_until("/healthz", timeout=300)
    parity = check_parity(opsloop, baseline, key, bodies[max(args.rows_per_request)])
    _say(f"both servers give the same answers ({parity['instances']} instances compared)")

    servers = {
        "opsloop": (opsloop, f"{opsloop.url}/predict/{MODEL}"),
        "baseline": (baseline, f"{baseline.url}/predict"),
    }
    measurements: list[Measurement] = []
    for round_ in range(1, args.rounds + 1):
        order = SERVERS if round_ % 2 == 1 else SERVERS[::-1]
        for size in args.rows_per_request:
            for name in order:
                server, url = servers[name]
                drive = functools.partial(
                    run_wrk, group, wrk, url, bodies=bodies[size], key=key,
                    connections=args.concurrency, threads=args.threads,
                )  # fmt: skip
                if args.warmup > 0:  # its numbers are dropped
                    drive(seconds=args.warmup)
                result = drive(seconds=args.duration)
                measurements.append(Measurement(round_, name, size, result))
                _say(
                    f"round {round_}/{args.rounds} {name:<8} {size:>3} rows: {result.rps:8.1f} req/s  "
                    f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms  errors {result.error_count}"
                )
                if result.error_count:
                    _say(f"  {name} errors {result.errors}; its log ends:\n{server.log_tail(10)}")
    metrics = scrape_metrics(opsloop)

    summary = summarise(measurements, args.rows_per_request)
    print_table(summary, args)
    verdict = goal(summary)
    if verdict["evaluated"]:
        status = "MET" if verdict["met"] else "NOT MET"
        print(
            f"\ngoal (>= {GOAL_THROUGHPUT_RATIO:g}x the baseline's single-row throughput at an equal or "
            f"lower p99): {status} (throughput x{verdict['throughput_ratio']:.2f}, "
            f"p99 x{verdict['p99_ratio']:.2f})"
        )
    errors = sum(s["errors"] for per_size in summary.values() for s in per_size.values())
    dropped = metrics.get("opsloop_prediction_log_dropped_total", 0.0)
    if errors:
        print(f"\nINVALID RUN: {errors} failed requests (see the per-round lines above)")
    if dropped:
        print(f"\nnote: opsloop dropped {dropped:g} prediction-log records (queue full or store failed)")

    report = {
        "benchmark": "bench/predict",
        "started_at": started.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "config": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "concurrency": args.concurrency,
            "rows_per_request": args.rows_per_request,
            "rounds": args.rounds,
            "wrk_threads": args.threads,
            "distinct_bodies": args.bodies,
            "p50_p99": "median of the rounds' values; throughput: all rounds' requests / seconds",
        },
        "environment": {
            "git_commit": _git("rev-parse", "HEAD") or None,
            # Uncommitted changes outside bench/ mean the commit alone does not say what ran.
            "git_changed_files": [
                path
                for line in _git("status", "--porcelain").splitlines()
                if not (path := line[3:]).startswith("bench/")
            ],
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "load_generator": wrk_version(wrk),
        },
        "model": {"name": MODEL, "version": version, "uri": model_uri},
        "servers": {
            "opsloop": "opsloop serve, defaults: 1 worker, validation, auth, metrics, prediction log",
            "baseline": "bench/predict/baseline.py: FastAPI + pandas DataFrame + predict_proba, "
            "uvicorn 1 worker",
        },
        "parity": parity,
        "summary": {server: {str(k): v for k, v in per.items()} for server, per in summary.items()},
        "ratios_opsloop_over_baseline": {str(k): v for k, v in ratios(summary).items()},
        "goal": verdict,
        "opsloop_metrics_after": metrics,
        "runs": [
            {"round": m.round, "server": m.server, "rows": m.rows} | m.result.to_dict() for m in measurements
        ],
        "valid": errors == 0,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults: {args.out}")
    if errors:
        return 1
    if args.check_goal and verdict["evaluated"] and not verdict["met"]:
        return 3
    return 0


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
