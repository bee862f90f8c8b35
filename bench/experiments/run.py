"""The experiments benchmark: what a running experiment adds to ``POST /predict/{model}``, one run.

Part 1 (:mod:`bench.experiments.inprocess`) times ``ModelService.predict`` in this process
for four configurations side by side: no experiment, no experiment again (the A/A control),
a canary at 50% on a copy of the champion, and a shadow experiment whose queue is full; first
interleaved call by call, then in blocks per round. Part 2 (:mod:`bench.experiments.http`)
drives a real ``opsloop serve`` with wrk without and with a running canary, alternating
rounds. Both parts compare within one run, so that machine and noise are the same.

The goals of the issue "experiments": assignment and outcome recording (a running canary)
add at most 0.1 ms to p50; shadow copies under a full queue add nothing measurable.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from bench.experiments import stats
from bench.predict import BenchError
from bench.predict.processes import REPO_ROOT, ProcessGroup

__all__ = ["main"]

PARTS = ("inprocess", "http")
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results" / "experiments.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line of ``python -m bench.experiments``."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.experiments",
        description=(
            "Measure what a running experiment adds to POST /predict/credit-risk. Part 'inprocess': "
            "ModelService.predict of the real app in this process, without an experiment, beside a "
            "canary at 50% on a copy of the champion, and beside a shadow experiment with a full "
            "queue, interleaved call by call and then in blocks, with an A/A control. Part 'http': "
            "wrk on a real 'opsloop serve' without and with a canary, alternating rounds (needs wrk; "
            "skipped with a message when it is missing and cannot be installed). About 4 minutes "
            "with the defaults, most of it starting servers."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="Parts to run.")
    group = parser.add_argument_group("part 'inprocess'")
    group.add_argument("--rounds", type=int, default=8, help="Rounds per mode (6 or more for a sign test).")
    group.add_argument("--calls", type=int, default=5000, help="Timed calls per configuration per round.")
    group.add_argument(
        "--warmup-calls", type=int, default=500, help="Untimed calls per configuration before each round's."
    )
    group.add_argument("--rows", type=int, default=4096, help="Distinct applicants the calls cycle through.")
    group.add_argument(
        "--shadow-delay", type=float, default=1.0, help="Seconds the slow shadow sleeps per copy it scores."
    )
    group.add_argument("--seed", type=int, default=0, help="Seed of the interleaved call order.")
    group = parser.add_argument_group("part 'http'")
    group.add_argument("--http-rounds", type=int, default=4, help="Measured wrk runs per configuration.")
    group.add_argument("--duration", type=float, default=8.0, help="Seconds of each measured wrk run.")
    group.add_argument(
        "--warmup", type=float, default=2.0, help="Seconds of the unmeasured run before each measured one."
    )
    group.add_argument("--concurrency", type=int, default=8, help="wrk connections (requests in flight).")
    group.add_argument("--threads", type=int, default=1, help="wrk threads.")
    group.add_argument("--bodies", type=int, default=1024, help="Distinct one-applicant bodies (and units).")
    group.add_argument(
        "--decide-seconds",
        type=float,
        default=None,
        help="The server's experiment_decide_seconds (0: no decider); default: serve's own (2 s).",
    )
    group.add_argument(
        "--long-canary",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="After the rounds, keep one canary running this long, measured in 10 s windows "
        "(what grows with its age); 0: not.",
    )
    group.add_argument(
        "--no-install-wrk",
        action="store_true",
        help="Without wrk, skip part 'http' rather than try 'apt-get install -y wrk' (as root) once.",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Where to write the JSON results.")
    parser.add_argument(
        "--check-goal", action="store_true", help="Exit with status 3 when a goal of the issue is missed."
    )
    args = parser.parse_args(argv)
    for name in ("rounds", "calls", "rows", "http_rounds", "duration", "concurrency", "threads", "bodies"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    for name in ("warmup_calls", "warmup", "shadow_delay", "decide_seconds", "long_canary"):
        if (getattr(args, name) or 0) < 0:
            parser.error(f"--{name.replace('_', '-')} must not be negative")
    if args.threads > args.concurrency:
        parser.error("--threads must not exceed --concurrency (each wrk thread needs a connection)")
    args.parts = [p for p in PARTS if p in args.parts]
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the tables, write the JSON; the exit status says if it is valid."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        with tempfile.TemporaryDirectory(prefix="opsloop-bench-") as tmp, ProcessGroup() as group:
            return _run(args, Path(tmp), group)
    except BenchError as exc:
        print(f"bench/experiments: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench/experiments: interrupted; every process it started was stopped", file=sys.stderr)
        return 130


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the ProcessGroup, which stops every server


def _run(args: argparse.Namespace, tmp: Path, group: ProcessGroup) -> int:
    started = datetime.now(UTC)
    report: dict[str, Any] = {
        "benchmark": "bench/experiments",
        "started_at": started.isoformat(),
        "config": {k: (_shown(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "environment": _environment(),
        "load_average": {"start": os.getloadavg()},
    }
    valid = True
    missed = False
    if "inprocess" in args.parts:
        part, ok = _inprocess(args, tmp)
        report["inprocess"] = part
        report["load_average"]["after_inprocess"] = os.getloadavg()
        valid &= ok
        missed |= any(g["met"] is False for g in part["goals"].values())
    if "http" in args.parts:
        wrk, why = _wrk(args)
        if wrk is None:
            print(f"\npart 'http' SKIPPED: {why}")
            report["http"] = {"skipped": True, "reason": why}
        else:
            part, ok = _http(args, group, wrk, tmp)
            report["http"] = part
            report["environment"]["load_generator"] = _wrk_version(wrk)
            valid &= ok
    report["load_average"]["end"] = os.getloadavg()
    report["finished_at"] = datetime.now(UTC).isoformat()
    report["valid"] = valid
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nload average (1, 5, 15 min): start {_load(report['load_average']['start'])}, "
          f"end {_load(report['load_average']['end'])}")  # fmt: skip
    print(f"results: {args.out}")
    if not valid:
        return 1
    if args.check_goal and missed:
        return 3
    return 0


def _inprocess(args: argparse.Namespace, tmp: Path) -> tuple[dict[str, Any], bool]:
    from bench.experiments.inprocess import InProcessOptions, run_inprocess

    options = InProcessOptions(
        rounds=args.rounds,
        calls=args.calls,
        warmup=args.warmup_calls,
        rows=args.rows,
        shadow_delay=args.shadow_delay,
        seed=args.seed,
    )
    measured = run_inprocess(options, tmp / "inprocess" / "home", _say)
    part: dict[str, Any] = {"setup": measured["setup"], "components_us": measured["components"]}
    ok = True
    for mode in ("interleaved", "blocked"):
        segments = measured[mode]
        summary, diffs = stats.summarise(segments), stats.differences(segments)
        part[mode] = {
            "summary": summary,
            "added_vs_none": diffs,
            "segments": [
                {"round": s.round, "config": s.config, **stats.percentiles_ms(s.wall_ns), **s.extra}
                for s in segments
            ],
        }
        _print_mode(mode, args, summary, diffs)
        # The shadow must have been full: nearly every copy of the timed calls dropped.
        for s in segments:
            if "copies_dropped" in s.extra:
                dropped, offered = (int(x) for x in s.extra["copies_dropped"].split("/"))
                if dropped < 0.99 * offered:
                    where = f"{mode} round {s.round}"
                    print(f"INVALID: the shadow queue was not full in {where} ({dropped}/{offered} dropped)")
                    ok = False
    _print_components(measured["components"])
    decider = measured["decider"]
    part["decider"] = decider
    print(
        f"the decider judging the canary on its {decider['outcomes']} outcomes: {decider['judge_ms']:.0f} ms "
        f"(serve does it every 2 s, in a worker thread; it would {decider['would_decide']}); of which "
        f"reading the outcomes once {decider['read_outcomes_ms']:.0f} ms, the labelled predictions "
        f"among {decider['predictions_logged']} logged {decider['read_labels_ms']:.0f} ms"
    )
    # The goals are judged on the interleaved calls: the blocked ones resolve tens of
    # microseconds at best on a shared machine (see their A/A control).
    part["goals"] = stats.goals(part["interleaved"]["added_vs_none"])
    _print_goals(part["goals"])
    return part, ok


def _print_mode(mode: str, args: argparse.Namespace, summary: dict[str, Any], diffs: dict[str, Any]) -> None:
    how = "interleaved call by call" if mode == "interleaved" else "in blocks, order rotating"
    print(
        f"\nin-process, {how}: {args.rounds} rounds x {args.calls} timed calls per configuration "
        f"(after {args.warmup_calls}); microseconds per call"
    )
    print(
        f"{'configuration':<14}{'p50':>8}{'p90':>8}{'p99':>9}{'cpu p50':>9}"
        f"{'added p50':>11}{'  (rounds: min..max)':<24}{'sign p':>7}"
    )
    for config, s in summary.items():
        w, c = s["wall_ms"], s["cpu_ms"]
        line = f"{config:<14}{w['p50'] * 1e3:>8.1f}{w['p90'] * 1e3:>8.1f}{w['p99'] * 1e3:>9.1f}"
        line += f"{c['p50'] * 1e3:>9.1f}"
        if config in diffs:
            d = diffs[config]
            lo, hi = d["p50_ms_range"]
            spread = f"({lo * 1e3:+.1f}..{hi * 1e3:+.1f})"
            line += f"{d['p50_ms'] * 1e3:>+11.1f}  {spread:<22}{d['sign_test_p']:>7.3f}"
        print(line)
    per_variant = summary.get("canary", {}).get("wall_ms_per_variant")
    if per_variant:
        split = ", ".join(f"{v} {p['p50'] * 1e3:.1f}" for v, p in per_variant.items())
        counts = summary["canary"]["calls_per_variant"]
        print(f"canary p50 by the variant that answered: {split} (calls: {counts})")


def _print_components(components: dict[str, float]) -> None:
    print("\npieces of the request path, each timed alone (best of 5 x 5000 calls, us per call):")
    for name, us in components.items():
        print(f"  {name:<30}{us:>7.2f}")


def _print_goals(goals: dict[str, Any]) -> None:
    canary, shadow = goals["canary"], goals["shadow"]
    verdict = {True: "MET", False: "NOT MET", None: "no verdict (fewer than 6 rounds)"}
    print(
        f"\ngoal: a canary adds at most {stats.GOAL_CANARY_P50_MS * 1e3:.0f} us to p50: "
        f"{verdict[canary['met']]} (it adds {canary['added_p50_ms'] * 1e3:+.1f} us, interleaved)"
    )
    print(
        f"goal: a shadow with a full queue adds nothing measurable: {verdict[shadow['met']]} (it adds "
        f"{shadow['added_p50_ms'] * 1e3:+.1f} us, sign test p={shadow['sign_test_p']:.3f}, "
        f"resolution {shadow['resolution_ms'] * 1e3:.1f} us: the A/A control's largest round)"
    )


def _wrk(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """The path of wrk, or None and why part 'http' cannot run (after one install attempt, as root)."""
    from bench.predict.load import WRK_HINT

    found = shutil.which("wrk")
    if found is not None:
        return found, None
    if args.no_install_wrk or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None, WRK_HINT
    _say("wrk is not installed; trying 'apt-get install -y wrk' once")
    done = subprocess.run(["apt-get", "install", "-y", "wrk"], capture_output=True, text=True, timeout=600)
    found = shutil.which("wrk")
    if done.returncode != 0 or found is None:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
        return None, f"'apt-get install -y wrk' failed ({done.returncode}: {last[0]}); {WRK_HINT}"
    return found, None


def _wrk_version(wrk: str) -> str:
    from bench.predict.load import wrk_version

    return wrk_version(wrk)


def _http(args: argparse.Namespace, group: ProcessGroup, wrk: str, tmp: Path) -> tuple[dict[str, Any], bool]:
    from bench.experiments.http import HttpOptions, run_http

    options = HttpOptions(
        rounds=args.http_rounds,
        duration=args.duration,
        warmup=args.warmup,
        concurrency=args.concurrency,
        threads=args.threads,
        bodies=args.bodies,
        decide_seconds=args.decide_seconds,
        long_seconds=args.long_canary,
    )
    runs, setup = run_http(options, group, wrk, tmp, _say)
    rows = [{"round": r.round, "config": r.config, **r.result.to_dict(), **(r.cpu_s or {})} for r in runs]
    summary, ratios = stats.summarise_http(rows), stats.http_ratios(rows)
    experiments = [r.experiment for r in runs if r.experiment is not None]
    disturbed = [e["name"] for e in experiments if e["status_after_run"] != "running"]
    errors = sum(s["errors"] for s in summary.values())
    print(
        f"\nover HTTP: {setup['server']}, wrk {args.concurrency} connections, {args.http_rounds} x "
        f"{args.duration:g} s per configuration (after {args.warmup:g} s warm-ups), one applicant per request"
    )
    print(
        f"{'configuration':<14}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
        "   server CPU us per request: all (event loop + background threads)"
    )
    for config, s in summary.items():
        cpu = [s[f"{name}_cpu_us_per_request"] for name in ("server", "loop", "background")]
        cpu_text = "unknown" if None in cpu else f"{cpu[0]:.0f} ({cpu[1]:.0f} + {cpu[2]:.0f})"
        print(
            f"{config:<14}{s['rps']:>9.1f}{s['p50_ms']:>9.2f}{s['p99_ms']:>9.2f}{s['errors']:>8}   {cpu_text}"
        )
    per_round = ", ".join(f"x{r:.3f}" for r in ratios["rps_per_round"])
    print(
        f"canary / none: throughput x{ratios['rps']:.3f} (per round {per_round}), "
        f"p50 x{ratios['p50']:.3f}, p99 x{ratios['p99']:.3f}"
    )
    added = [ratios[f"{name}_cpu_us_per_request_added"] for name in ("server", "loop", "background")]
    if None not in added:
        print(
            f"canary - none: server CPU per request {added[0]:+.0f} us "
            f"(event loop {added[1]:+.0f}, background threads {added[2]:+.0f})"
        )
    for e in experiments:
        print(f"  {e['name']}: {e['status_after_run']} when measured, requests {e['requests']}")
    windows = [w for w in setup["long_canary"] if "requests" in w]
    if windows:
        print("one canary kept running, by its age: " + ", ".join(
            f"{w['canary_age_s']:.0f} s {w['rps']:.0f} req/s" for w in windows
        ))  # fmt: skip
    if errors:
        print(f"INVALID RUN: {errors} failed requests")
    if disturbed:
        print(f"INVALID RUN: the decider ended {', '.join(disturbed)} before it was stopped")
    part = {
        "setup": setup,
        "summary": summary,
        "ratios_canary_over_none": ratios,
        "experiments": experiments,
        "runs": rows,
    }
    return part, not errors and not disturbed


def _environment() -> dict[str, Any]:
    return {
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
    }


def _shown(path: Path) -> str:
    """``path`` relative to the repository when inside it: the results name no machine's folders."""
    resolved = path.resolve()
    return str(resolved.relative_to(REPO_ROOT)) if resolved.is_relative_to(REPO_ROOT) else str(path)


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    return done.stdout.strip()


def _load(values: Any) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
