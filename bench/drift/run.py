"""The drift benchmark: opsloop's full drift report against Evidently's ``DataDriftPreset``, one run.

Steps: make sure Evidently's own virtual environment exists (:mod:`bench.drift.evidently_side`
creates it on first use); write a reference and a current frame (``--rows`` rows each, 14
numeric and 6 categorical features, drift in some: :mod:`bench.drift.data`) to Parquet; then,
for several rounds, alternating which side goes first, run each side in a fresh process that
reads both files and computes its report: opsloop's :func:`workflows.drift.compare_frames`
(PSI, KS, Wasserstein, Jensen-Shannon and chi-square for every feature) and Evidently's
``Report([DataDriftPreset()])`` as a user would run it (Wasserstein for numeric columns,
Jensen-Shannon for categorical ones at this size). Evidently with every method set explicitly
(the same work as opsloop's report) runs in ``--all-methods-rounds`` of the rounds.

Reported per side: wall time of the process (interpreter start, imports, reading, computing),
the time of reading plus computing alone, and the process's peak resident memory (from
the worker's own ``VmHWM``); medians over the rounds, and the ratios Evidently / opsloop.
Before the rounds, both sides' per-feature values on a smaller sample (``--agreement-rows``)
are put beside each other (:mod:`bench.drift.agreement`), which also warms both sides up;
after them, the verdicts of both on the full data.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.drift import BenchError
from bench.drift.evidently_side import (
    EVIDENTLY_VERSION,
    EvidentlyUnavailableError,
    ProcessResult,
    default_venv_dir,
    ensure_venv,
    run_measured,
    run_worker,
)

__all__ = ["main"]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "drift.json"
SIDES = ("opsloop", "evidently")
ALL_METHODS = "evidently-all-methods"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line of ``python -m bench.drift``."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.drift",
        description=(
            "Benchmark opsloop's drift report (workflows.drift.compare_frames: PSI, KS, Wasserstein, "
            "Jensen-Shannon, chi-square) against Evidently's DataDriftPreset on the same Parquet files "
            "(reference and current, --rows rows x 20 features each), each side in a process of its own, "
            "alternating round by round; then compare both sides' per-feature values on a smaller sample. "
            f"Evidently {EVIDENTLY_VERSION} runs in a virtual environment of its own, created on first use "
            "(a few minutes; needs PyPI). About 8 minutes with the defaults on 2 cores."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--rows", type=int, default=1_000_000, help="Rows of the reference and of the current frame."
    )
    parser.add_argument("--rounds", type=int, default=3, help="Measured runs per side (A/B, B/A, ...).")
    parser.add_argument(
        "--all-methods-rounds",
        type=int,
        default=1,
        help="Rounds that also run Evidently with every method set explicitly (0: never).",
    )
    parser.add_argument(
        "--agreement-rows", type=int, default=20_000, help="Rows of each frame in the comparison of values."
    )
    parser.add_argument("--seed", type=int, default=2024, help="Seed of the generated data.")
    parser.add_argument(
        "--evidently-venv",
        type=Path,
        default=None,
        help="Evidently's virtual environment (created when missing); default $OPSLOOP_EVIDENTLY_VENV "
        "or evidently-<version>-<python> beside ./dev's wheel cache.",
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="Seconds one side's process may take.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Where to write the JSON results.")
    args = parser.parse_args(argv)
    for name in ("rows", "rounds", "agreement_rows", "timeout"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if not 0 <= args.all_methods_rounds <= args.rounds:
        parser.error("--all-methods-rounds must be between 0 and --rounds")
    return args


def _run_opsloop(
    reference: Path, current: Path, categorical: str, workdir: Path, timeout: float, env: dict[str, str]
) -> ProcessResult:
    result_file = workdir / "opsloop.json"
    command = [
        sys.executable, "-m", "bench.drift.opsloop_worker",
        "--reference", str(reference), "--current", str(current),
        "--categorical", categorical, "--result", str(result_file),
    ]  # fmt: skip
    return run_measured(command, result_file, timeout, env)


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per side: medians of wall time, read + compute time, peak memory; and every round's values."""
    summary: dict[str, dict[str, Any]] = {}
    for side in (*SIDES, ALL_METHODS):
        mine = [r for r in runs if r["side"] == side]
        if not mine:
            continue
        summary[side] = {
            "rounds": len(mine),
            "wall_s": statistics.median(r["wall_s"] for r in mine),
            "work_s": statistics.median(r["read_s"] + r["compute_s"] for r in mine),
            "read_s": statistics.median(r["read_s"] for r in mine),
            "compute_s": statistics.median(r["compute_s"] for r in mine),
            "import_s": statistics.median(r["import_s"] for r in mine),
            "cpu_s": statistics.median(r["cpu_s"] for r in mine),
            "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in mine),
            "peak_rss_mib_max": max(r["peak_rss_mib"] for r in mine),
            "rss_after_import_mib": statistics.median(r["rss_after_import_mib"] for r in mine),
            "wall_s_per_round": [r["wall_s"] for r in mine],
        }
    return summary


def ratios(summary: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Evidently (preset, and all methods when run) over opsloop: > 1 means opsloop is faster / smaller."""
    ours = summary["opsloop"]
    return {
        side: {key: summary[side][key] / ours[key] for key in ("wall_s", "work_s", "peak_rss_mib")}
        for side in ("evidently", ALL_METHODS)
        if side in summary
    }


def print_table(summary: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    """Timings and memory, one line per side, then the ratios."""
    print(
        f"\ndrift report on {args.rows:,} + {args.rows:,} rows x 20 features (Parquet), "
        f"median of {args.rounds} rounds, each side in its own process\n"
    )
    print(
        f"{'side':<22} {'rounds':>6} {'wall s':>8} {'read+compute s':>15} {'import s':>9} "
        f"{'peak RSS MiB':>13} {'after import':>13}"
    )
    labels = {
        "opsloop": "opsloop (all methods)",
        "evidently": "evidently (preset)",
        ALL_METHODS: "evidently (all methods)",
    }
    for side, s in summary.items():
        print(
            f"{labels[side]:<22} {s['rounds']:>6} {s['wall_s']:>8.1f} {s['work_s']:>15.1f} "
            f"{s['import_s']:>9.1f} {s['peak_rss_mib']:>13.0f} {s['rss_after_import_mib']:>13.0f}"
        )
    print("\nevidently / opsloop:")
    for side, r in ratios(summary).items():
        print(
            f"  {labels[side]:<24} wall x{r['wall_s']:.1f}, read+compute x{r['work_s']:.1f}, "
            f"peak memory x{r['peak_rss_mib']:.1f}"
        )


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value != 0 and abs(value) < 1e-3:
        return f"{value:.2e}"
    return f"{value:.4f}"


def print_values(rows: list[dict[str, Any]], sample_rows: int) -> None:
    """Both sides' per-feature values, and opsloop's in Evidently's convention."""
    print(
        f"\nper-feature values on {sample_rows:,} + {sample_rows:,} rows "
        "(Evidently with each method set explicitly)"
    )
    print("conv.: opsloop's value recomputed by workflows.drift's functions in Evidently's convention\n")
    print(
        f"{'feature':<16} {'metric':<12} {'opsloop':>10} {'evidently':>10} {'|diff|':>10} "
        f"{'conv.':>10} {'|diff|':>10}  note"
    )
    for r in rows:
        print(
            f"{r['feature']:<16} {r['metric']:<12} {_fmt(r['opsloop']):>10} {_fmt(r['evidently']):>10} "
            f"{_fmt(r['abs_diff']):>10} {_fmt(r['opsloop_in_evidently_convention']):>10} "
            f"{_fmt(r['abs_diff_in_convention']):>10}  {r['note']}"
        )


def print_verdicts(verdicts: list[dict[str, Any]], title: str) -> None:
    """Per feature, the verdict of opsloop and that of Evidently's preset."""
    print(f"\nverdicts {title}")
    print(f"{'feature':<16} {'opsloop':>8} {'evidently':>10}  evidently's method (score)")
    for v in verdicts:
        mark = "" if v["agree"] else "   <- differ"
        print(
            f"{v['feature']:<16} {_verdict(v['opsloop']):>8} {_verdict(v['evidently_preset']):>10}  "
            f"{v['evidently_method']} ({_fmt(v['evidently_score'])}){mark}"
        )


def _verdict(drifted: bool | None) -> str:
    return "?" if drifted is None else "DRIFT" if drifted else "ok"


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    return done.stdout.strip()


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the tables, write the JSON; 2 when it could not run."""
    args = parse_args(argv)
    try:
        python = ensure_venv(args.evidently_venv or default_venv_dir(), say=_say)
        with tempfile.TemporaryDirectory(prefix="opsloop-bench-drift-") as tmp:
            return _run(args, python, Path(tmp))
    except (BenchError, EvidentlyUnavailableError, RuntimeError) as exc:
        print(f"bench/drift: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench/drift: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace, python: Path, tmp: Path) -> int:
    from bench.drift import agreement
    from bench.drift.data import CATEGORICAL, DRIFTED, generate, write_parquet
    from workflows.drift import compare_frames

    started = datetime.now(UTC)
    categorical = ",".join(CATEGORICAL)
    # This session's shell may forbid .pyc files (PYTHONDONTWRITEBYTECODE); an environment
    # installed without compiled bytecode would then recompile its imports on every start.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    big, small = tmp / "big", tmp / "small"
    big.mkdir()
    small.mkdir()
    clock = time.perf_counter()
    reference, current = write_parquet(big, args.rows, args.seed)
    _say(
        f"wrote {args.rows:,} + {args.rows:,} rows to Parquet in {time.perf_counter() - clock:.1f} s "
        f"({(reference.stat().st_size + current.stat().st_size) / 2**20:.0f} MiB)"
    )

    # The comparison of values comes first: it also warms both sides up (bytecode, file cache).
    _say(f"comparing values on {args.agreement_rows:,} rows (and warming both sides up)")
    sample_ref, sample_cur = generate(args.agreement_rows, args.seed)
    small_ref, small_cur = small / "reference.parquet", small / "current.parquet"
    sample_ref.to_parquet(small_ref, index=False)
    sample_cur.to_parquet(small_cur, index=False)
    values = run_worker(
        python, small, "values", "--reference", str(small_ref), "--current", str(small_cur),
        "--categorical", categorical, timeout=args.timeout, env=env,
    ).result  # fmt: skip
    _run_opsloop(small_ref, small_cur, categorical, small, args.timeout, env)
    value_rows = agreement.rows(sample_ref, sample_cur, CATEGORICAL, values["columns"])
    sample_report = compare_frames(sample_ref, sample_cur, CATEGORICAL).to_dict()
    sample_verdicts = agreement.verdicts(sample_report, values["columns"])

    runs: list[dict[str, Any]] = []
    last: dict[str, dict[str, Any]] = {}
    for round_ in range(1, args.rounds + 1):
        order = list(SIDES if round_ % 2 == 1 else SIDES[::-1])
        if round_ <= args.all_methods_rounds:
            order.append(ALL_METHODS)
        for side in order:
            if side == "opsloop":
                done = _run_opsloop(reference, current, categorical, tmp, args.timeout, env)
            else:
                variant = "all-methods" if side == ALL_METHODS else "preset"
                done = run_worker(
                    python, tmp, "report", "--reference", str(reference), "--current", str(current),
                    "--categorical", categorical, "--variant", variant, timeout=args.timeout, env=env,
                )  # fmt: skip
            r = done.result
            runs.append(
                {
                    "round": round_,
                    "side": side,
                    "wall_s": done.wall_s,
                    "cpu_s": done.cpu_s,
                    "peak_rss_mib": r["peak_rss_mib"],
                    "import_s": r["import_s"],
                    "read_s": r["read_s"],
                    "compute_s": r["compute_s"],
                    "rss_after_import_mib": r["rss_after_import_mib"],
                }
            )
            last[side] = r
            _say(
                f"round {round_}/{args.rounds} {side:<22} wall {done.wall_s:6.1f} s  "
                f"read+compute {r['read_s'] + r['compute_s']:6.1f} s  peak RSS {r['peak_rss_mib']:6.0f} MiB"
            )
    full_verdicts = agreement.verdicts(last["opsloop"]["report"], last["evidently"]["columns"])

    summary = summarise(runs)
    print_table(summary, args)
    print_values(value_rows, args.agreement_rows)
    print_verdicts(sample_verdicts, f"on {args.agreement_rows:,} rows")
    print_verdicts(full_verdicts, f"on the full {args.rows:,} rows")
    print(f"\nfeatures made to drift: {', '.join(DRIFTED)} (iq by 0.02 standard deviations only)")

    report = {
        "benchmark": "bench/drift",
        "started_at": started.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "config": {
            "rows": args.rows,
            "features": {"numeric": 20 - len(CATEGORICAL), "categorical": len(CATEGORICAL)},
            "drifted_features": list(DRIFTED),
            "rounds": args.rounds,
            "all_methods_rounds": args.all_methods_rounds,
            "agreement_rows": args.agreement_rows,
            "seed": args.seed,
            "medians": "of the rounds' values; peak_rss_mib_max is the largest",
        },
        "environment": {
            "git_commit": _git("rev-parse", "HEAD") or None,
            "git_changed_files": [
                path
                for line in _git("status", "--porcelain").splitlines()
                if not (path := line[3:]).startswith("bench/")
            ],
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "opsloop_pandas": last["opsloop"]["pandas_version"],
            "evidently": last["evidently"]["evidently_version"],
            "evidently_pandas": last["evidently"]["pandas_version"],
        },
        "sides": {
            "opsloop": "workflows.drift.compare_frames(...).to_dict(): PSI, KS, Wasserstein, JS, chi2 "
            "per feature",
            "evidently": "Report([DataDriftPreset()], include_tests=True).run(...).dict(): Evidently "
            "picks the method",
            ALL_METHODS: "Report([ValueDrift(column, method) for psi, ks, wasserstein, jensenshannon | "
            "psi, jensenshannon, chisquare], include_tests=True)",
        },
        "summary": summary,
        "ratios_evidently_over_opsloop": ratios(summary),
        "full_data": {
            "opsloop": last["opsloop"]["report"],
            "evidently_preset": last["evidently"]["columns"],
            "evidently_dataset": last["evidently"]["dataset"],
            "verdicts": full_verdicts,
        },
        "agreement": {"rows": args.agreement_rows, "values": value_rows, "verdicts": sample_verdicts},
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults: {args.out}")
    return 0
