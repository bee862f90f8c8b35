"""The CLI start-up benchmark: how long a person waits for an ``opsloop`` command, one run.

Steps: make a fresh home and fill it once, unmeasured (the store with ``keys list``, the
demo model with ``models train --demo``, the RAG answer prompt with ``prompts list``); run
every command ``--warmup`` times, unmeasured (bytecode, file cache); then for ``--rounds``
rounds run each command once in a fresh process, the order rotating each round so that
machine noise spreads over all of them. Each sample is the wall time from starting the
process to reaping it, and the CPU time (user + system) the kernel reports for it.

The peers, timed in the same rounds: ``python -c pass`` (the interpreter alone, the floor)
and ``mlflow --help`` (the CLI of the registry opsloop builds on). With ``--baseline-source
DIR`` the opsloop commands run a second time per round from the source tree ``DIR`` (e.g.
``git archive`` of an earlier commit), so a change is measured against its past in one run.

Reported per command: median and p90 of the wall times, the median CPU time, the median's
ratio to ``mlflow --help``'s, and the goal of issue 13 (point 7): ``--help`` and the key
commands under 0.5 s, registry commands on an existing store under 1.5 s. Exit status: 0
done, 1 a command failed (the run is invalid), 2 the benchmark could not run, 3 a goal
missed (only with ``--check-goal``), 130 interrupted.
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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["main"]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "cli.json"
BIN = Path(sys.executable).parent
PEER = "mlflow --help"
DEMO, PROMPT = "credit-risk", "rag-answer"
"""The model ``opsloop models train --demo`` registers and the prompt ``opsloop prompts list`` makes."""

# What a person waits for, by kind of command (issue 13, point 7).
GOAL_QUICK_S = 0.5
GOAL_REGISTRY_S = 1.5


@dataclass(frozen=True)
class Command:
    """One command line to time."""

    name: str
    argv: tuple[str, ...]
    goal_s: float | None = None
    env: tuple[tuple[str, str], ...] = ()


def _opsloop(home: Path, suffix: str = "", env: tuple[tuple[str, str], ...] = ()) -> list[Command]:
    opsloop = str(BIN / "opsloop")
    at = ("--home", str(home))
    quick, registry = (None, None) if suffix else (GOAL_QUICK_S, GOAL_REGISTRY_S)
    return [
        Command(f"opsloop --help{suffix}", (opsloop, "--help"), quick, env),
        Command(f"opsloop keys list{suffix}", (opsloop, *at, "keys", "list"), quick, env),
        Command(f"opsloop audit tail -n 5{suffix}", (opsloop, *at, "audit", "tail", "-n", "5"), None, env),
        Command(f"opsloop models list{suffix}", (opsloop, *at, "models", "list"), registry, env),
        Command(
            f"opsloop models versions{suffix}",
            (opsloop, *at, "models", "versions", DEMO),
            registry,
            env,
        ),
        Command(f"opsloop prompts list{suffix}", (opsloop, *at, "prompts", "list"), registry, env),
        Command(f"opsloop prompts show{suffix}", (opsloop, *at, "prompts", "show", PROMPT), registry, env),
        Command(f"opsloop experiments list{suffix}", (opsloop, *at, "experiments", "list"), quick, env),
    ]


def _baseline_env(source: Path) -> tuple[tuple[str, str], ...]:
    # The same console script importing opsloop from ``source``: PYTHONPATH comes before the
    # editable install's finder.
    return (("PYTHONPATH", str(source)),)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line of ``python -m bench.cli``."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.cli",
        description=(
            "Time opsloop CLI commands (--help, keys list, audit tail, models list, prompts list on a "
            "home with the demo model) against 'python -c pass' and 'mlflow --help', each in fresh "
            "processes, interleaved round by round. About 4 minutes with the defaults on 2 cores."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=10, help="Measured runs of every command.")
    parser.add_argument("--warmup", type=int, default=1, help="Unmeasured runs of every command first.")
    parser.add_argument(
        "--baseline-source",
        type=Path,
        default=None,
        metavar="DIR",
        help="Also run the opsloop commands from this source tree (e.g. 'git archive' of an older commit).",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Where to write the JSON results.")
    parser.add_argument("--timeout", type=float, default=120.0, help="Seconds one command may take.")
    parser.add_argument("--check-goal", action="store_true", help="Exit 3 when a goal is missed.")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.warmup < 0:
        parser.error("--rounds must be at least 1 and --warmup at least 0")
    if args.baseline_source is not None and not (args.baseline_source / "serving" / "cli").is_dir():
        parser.error(f"--baseline-source {args.baseline_source} has no serving/cli")
    return args


class CommandFailedError(Exception):
    """A timed command exited with a non-zero status."""


def _environment() -> dict[str, str]:
    # This shell may forbid .pyc files (PYTHONDONTWRITEBYTECODE); a person's shell does not, and
    # without bytecode every run would compile opsloop's modules again.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPATH")}
    env["COLUMNS"] = "100"  # tables render the same whatever terminal started the benchmark
    return env


def _run(command: Command, env: dict[str, str], timeout: float) -> float:
    """Run ``command`` once and return its wall time in seconds."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command.argv,
        env={**env, **dict(command.env)},
        cwd=tempfile.gettempdir(),  # not the repository: python -c would import it from the cwd
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise CommandFailedError(f"{command.name} took more than {timeout:.0f} s") from None
    wall = time.perf_counter() - started
    if process.returncode != 0:
        tail = stderr.decode(errors="replace").strip().splitlines()[-5:]
        raise CommandFailedError(f"{command.name} exited {process.returncode}: " + " | ".join(tail))
    return wall


def _timed(command: Command, env: dict[str, str], timeout: float) -> tuple[float, float]:
    """Run ``command`` once: its wall time and its CPU time (user + system), in seconds."""
    # The reaped children's CPU times grow by exactly this child's: nothing else runs meanwhile.
    before = os.times()
    wall = _run(command, env, timeout)
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return wall, cpu


def _prepare(
    home: Path, env: dict[str, str], timeout: float, extra: tuple[tuple[str, str], ...] = ()
) -> None:
    """The existing store the commands read: keys, the demo model, the RAG answer prompt."""
    opsloop = str(BIN / "opsloop")
    for step in (("keys", "list"), ("models", "train", "--demo"), ("prompts", "list")):
        _say(f"preparing {home.name}: opsloop {' '.join(step)}")
        _run(
            Command(" ".join(step), (opsloop, "--home", str(home), *step), env=extra),
            env,
            max(timeout, 600.0),
        )


def _p90(samples: list[float]) -> float:
    if len(samples) == 1:
        return samples[0]
    return statistics.quantiles(samples, n=10, method="inclusive")[8]


def _summary(commands: list[Command], runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for c in commands:
        walls = [r["wall_s"] for r in runs if r["command"] == c.name]
        cpus = [r["cpu_s"] for r in runs if r["command"] == c.name]
        summary[c.name] = {
            "median_s": statistics.median(walls),
            "p90_s": _p90(walls),
            "min_s": min(walls),
            "max_s": max(walls),
            "cpu_median_s": statistics.median(cpus),
            "samples": len(walls),
            "goal_s": c.goal_s,
            "goal_met": None if c.goal_s is None else statistics.median(walls) < c.goal_s,
        }
    peer = summary[PEER]["median_s"]
    for entry in summary.values():
        entry["ratio_to_mlflow_help"] = entry["median_s"] / peer
    return summary


def _table(summary: dict[str, dict[str, Any]]) -> str:
    head = f"{'command':<42} {'median s':>9} {'p90 s':>8} {'cpu s':>7} {'/ mlflow':>9}  goal"
    lines = [head, "-" * len(head)]
    for name, s in summary.items():
        goal = "" if s["goal_s"] is None else f"< {s['goal_s']} s: {'met' if s['goal_met'] else 'MISSED'}"
        lines.append(
            f"{name:<42} {s['median_s']:>9.3f} {s['p90_s']:>8.3f} {s['cpu_median_s']:>7.3f} "
            f"{s['ratio_to_mlflow_help']:>8.2f}x  {goal}"
        )
    return "\n".join(lines)


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    return done.stdout.strip()


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write the JSON; see the module docstring for the exit status."""
    args = parse_args(argv)
    for tool in ("opsloop", "mlflow"):
        if not (BIN / tool).exists():
            print(f"bench/cli: {BIN / tool} is missing: run ./dev setup", file=sys.stderr)
            return 2
    try:
        with tempfile.TemporaryDirectory(prefix="opsloop-bench-cli-") as tmp:
            return _measure(args, Path(tmp))
    except CommandFailedError as exc:
        print(f"bench/cli: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench/cli: interrupted", file=sys.stderr)
        return 130


def _measure(args: argparse.Namespace, tmp: Path) -> int:
    started = datetime.now(UTC)
    load_before = os.getloadavg()
    env = _environment()
    _prepare(tmp / "home", env, args.timeout)
    commands = [
        Command("python -c pass", (sys.executable, "-c", "pass")),
        Command(PEER, (str(BIN / "mlflow"), "--help")),
        *_opsloop(tmp / "home"),
    ]
    if args.baseline_source is not None:
        # A home of its own: the baseline's migrations may not know the newer store's revision.
        before = _baseline_env(args.baseline_source.resolve())
        _prepare(tmp / "baseline-home", env, args.timeout, before)
        commands += _opsloop(tmp / "baseline-home", " [baseline]", before)
    for c in commands:
        for _ in range(args.warmup):
            _run(c, env, args.timeout)
    runs: list[dict[str, Any]] = []
    for round_ in range(1, args.rounds + 1):
        shift = (round_ - 1) % len(commands)
        for c in commands[shift:] + commands[:shift]:
            wall, cpu = _timed(c, env, args.timeout)
            runs.append({"round": round_, "command": c.name, "wall_s": wall, "cpu_s": cpu})
        _say(f"round {round_}/{args.rounds} done")
    summary = _summary(commands, runs)
    print(_table(summary))
    goals = [s["goal_met"] for s in summary.values() if s["goal_met"] is not None]
    result = {
        "benchmark": "cli",
        "started_at": started.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "config": {
            "rounds": args.rounds,
            "warmup": args.warmup,
            "baseline_source": args.baseline_source.name if args.baseline_source else None,
        },
        "environment": {
            "git_commit": _git("rev-parse", "HEAD") or None,
            "git_changed_files": [line[3:] for line in _git("status", "--porcelain").splitlines()],
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        # Paths as names only: the JSON is committed, this machine's folders are not.
        "commands": {c.name: [Path(a).name if a.startswith("/") else a for a in c.argv] for c in commands},
        "goals": {"quick_s": GOAL_QUICK_S, "registry_s": GOAL_REGISTRY_S, "all_met": all(goals)},
        "summary": summary,
        "runs": runs,
        "valid": True,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    _say(f"wrote {args.out}")
    if args.check_goal and not all(goals):
        return 3
    return 0
