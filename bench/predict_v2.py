"""What the Open Inference Protocol costs: ``/v2/models/credit-risk/infer`` against ``/predict``.

Both routes call the same prediction service; the v2 one also turns tensors into instances
and predictions back into tensors. The peer is ``/predict`` on the same server in the same run.
In one run:

1. ``opsloop --home <tmp> serve`` on its defaults (the demo model), waited for until ``/readyz``
   says 200;
2. for ``--rounds`` rounds, the order alternating: a paced load (``--rate`` requests/s over
   ``--connections`` connections for ``--duration`` s, ``bench/gateway/loadgen.py``) of one
   applicant per request on ``POST /predict/credit-risk`` and the same applicant as one JSON tensor
   per field on ``POST /v2/models/credit-risk/infer``;
3. p50 and p99 of each (medians of the rounds) and their ratios.

Writes ``bench/results/predict-v2.json``. Run: ``.venv/bin/python -m bench.predict_v2`` (about
2 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.gateway.run import Level, Target, run_load
from bench.predict.processes import ProcessGroup, create_key, start_opsloop
from bench.rag.run import environment
from workflows.demo import FEATURE_NAMES, generate_credit_data

REPO = Path(__file__).resolve().parents[1]
MODEL = "credit-risk"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line's options."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.predict_v2",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--rate", type=float, default=200.0, help="Paced requests per second.")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--duration", type=float, default=10.0, help="Measured seconds of each load.")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "predict-v2.json")
    return parser.parse_args(argv)


def bodies(folder: Path) -> dict[str, Path]:
    """The same applicant as a ``/predict`` body and as a v2 infer body."""
    row = generate_credit_data(100, seed=3)[list(FEATURE_NAMES)].to_dict(orient="records")[0]
    row = {k: v.item() if hasattr(v, "item") else v for k, v in row.items()}
    tensors = [
        {"name": k, "datatype": "BYTES" if isinstance(v, str) else "FP64", "shape": [1], "data": [v]}
        for k, v in row.items()
    ]
    paths = {"predict": folder / "predict.json", "v2": folder / "v2.json"}
    paths["predict"].write_text(json.dumps({"instances": [row]}))
    paths["v2"].write_text(json.dumps({"inputs": tensors}))
    return paths


def main(argv: list[str] | None = None) -> int:
    """Start the server, load both routes in alternating rounds, write ``--out``; 0 when done."""
    args = parse_args(argv)
    routes = {
        "predict": (f"/predict/{MODEL}", '"predictions"'),
        "v2": (f"/v2/models/{MODEL}/infer", '"outputs"'),
    }
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="opsloop-bench-v2-") as tmp, ProcessGroup() as group:
        home = Path(tmp) / "home"
        server = start_opsloop(group, home)
        server.wait_until("/readyz", timeout=600)
        key = create_key(home)
        files = bodies(Path(tmp))
        level = Level(args.connections, args.rate)
        spec = argparse.Namespace(duration=args.duration, warmup=args.warmup)
        for round_ in range(args.rounds):
            for route in ("predict", "v2") if round_ % 2 == 0 else ("v2", "predict"):
                path, expect = routes[route]
                target = Target(route, f"{server.url}{path}", key, server)
                result = run_load(group, target, level, spec, files[route], expect=expect)
                runs.append({"round": round_ + 1, "route": route} | result)
                lat, errors = result["latency_us"], sum(result["errors"].values())
                print(f"round {round_ + 1} {route:>8}: p50 {lat['p50'] / 1000:6.3f} ms  "
                      f"p99 {lat['p99'] / 1000:6.3f} ms  errors {errors}")  # fmt: skip
    summary = {route: _summary([r for r in runs if r["route"] == route]) for route in routes}
    ratios = {f"{q}_ratio": summary["v2"][f"{q}_ms"] / summary["predict"][f"{q}_ms"] for q in ("p50", "p99")}
    report = {
        "benchmark": "bench/predict_v2",
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "environment": environment(),
        "summary": summary,
        "v2_over_predict": ratios,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    for route, numbers in summary.items():
        print(
            f"{route:>8}: p50 {numbers['p50_ms']:.3f} ms, p99 {numbers['p99_ms']:.3f} ms (median of rounds)"
        )
    print(f"v2 / predict: p50 x{ratios['p50_ratio']:.2f}, p99 x{ratios['p99_ratio']:.2f}")
    return 0


def _summary(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {
        "p50_ms": statistics.median(r["latency_us"]["p50"] / 1000 for r in runs),
        "p99_ms": statistics.median(r["latency_us"]["p99"] / 1000 for r in runs),
        "requests": float(sum(r["requests"] for r in runs)),
        "errors": float(sum(sum(r["errors"].values()) for r in runs)),
    }


if __name__ == "__main__":
    sys.exit(main())
