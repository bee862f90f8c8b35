"""The gateway benchmark: the latency opsloop and LiteLLM add over calling the backend directly.

Steps: start the stub backend (:mod:`bench.gateway.stub`), ``opsloop serve`` routing to it
with the ledger, a budget and metrics on, and LiteLLM's proxy routing to it (its own
environment, its Prometheus callback on, no database); check all three answer the same
completion and usage to the same body; then, for ``--rounds`` rounds, drive each target
(``direct``: the stub itself, ``opsloop``, ``litellm``) with :mod:`bench.gateway.loadgen`
at every load level, rotating the order each round (A/B/C, B/C/A, C/A/B) so that machine
noise hits all three. A load level is either a closed loop at a number of connections
(``--concurrency``), or a paced rate (``--rates``) over ``--paced-connections``
connections, which is what "moderate load" means here.

Reported per target and level: p50 and p99 latency (each the median of the rounds' values,
each of those from every request's own latency) and throughput (all rounds' requests over
their seconds); per gateway, the added latency (its p50 and p99 minus the direct ones at
the same level), LiteLLM's added latency over opsloop's, and the max sustained requests/s
(the highest closed-loop throughput of a level without a failed request). The goal, from
the issue "bench/gateway": opsloop adds under 1 ms at p50 and under 5 ms at p99 at
moderate load (``--moderate-rate``) on 2 cores, and at least 3x less than LiteLLM.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from bench.gateway import profile as profiling
from bench.gateway.loadgen import MARKER
from bench.gateway.servers import (
    LITELLM_VERSION,
    MASTER_KEY,
    ROUTE,
    ensure_litellm,
    start_litellm,
    start_opsloop,
    start_stub,
)
from bench.gateway.stub import COMPLETION_TEXT, USAGE
from bench.predict import BenchError
from bench.predict.processes import OPSLOOP, REPO_ROOT, ProcessGroup, Server, clean_env

__all__ = ["main"]

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results" / "gateway.json"
GOAL_P50_MS = 1.0
GOAL_P99_MS = 5.0
GOAL_RATIO = 3.0
UNTRACED = "opsloop-untraced"
"""A second ``opsloop serve``, the same but ``tracing: false``: what tracing costs, same run."""
GOAL_TRACING_P50_MS = 0.2
_SUSTAINED_LATE = 0.01  # a paced run with more late sends than this did not sustain its rate
_PROFILE_HZ = 200
_EXPECT = "capital of France is Paris"  # in every answer, streamed or not


@dataclass(frozen=True)
class Level:
    """One load level: a closed loop at ``connections``, or ``rate`` requests/s over them."""

    connections: int
    rate: float | None = None

    @property
    def name(self) -> str:
        """``c16`` or ``r100``, the key in the JSON."""
        return f"c{self.connections}" if self.rate is None else f"r{self.rate:g}"

    @property
    def label(self) -> str:
        """For the table."""
        if self.rate is None:
            return f"{self.connections} conn"
        return f"{self.rate:g}/s"


@dataclass(frozen=True)
class Target:
    """Something to load: its URL and bearer key."""

    name: str
    url: str
    key: str
    server: Server


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line of ``python -m bench.gateway``."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.gateway",
        description=(
            "Measure the latency opsloop's gateway (ledger, budgets, metrics on) and LiteLLM's proxy "
            "add over calling an instant OpenAI-compatible stub directly, on 127.0.0.1, at several "
            "load levels, alternating the three targets round by round."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[1, 4, 16, 64], metavar="N", help="Closed-loop levels."
    )
    parser.add_argument(
        "--rates", type=float, nargs="+", default=[25.0, 100.0], metavar="R", help="Paced levels, requests/s."
    )
    parser.add_argument("--paced-connections", type=int, default=8, help="Connections of the paced levels.")
    parser.add_argument(
        "--moderate-rate", type=float, default=100.0, help="The paced level opsloop's goal is checked at."
    )
    parser.add_argument("--duration", type=float, default=6.0, help="Measured seconds of each run.")
    parser.add_argument("--warmup", type=float, default=1.0, help="Seconds before measuring (dropped).")
    parser.add_argument("--rounds", type=int, default=3, help="Measured runs per target and level.")
    parser.add_argument("--stream", action="store_true", help="Streamed requests (SSE), to the last byte.")
    parser.add_argument("--no-litellm", action="store_true", help="Leave LiteLLM out (no ratio).")
    parser.add_argument(
        "--no-untraced",
        action="store_true",
        help=f"Leave out {UNTRACED}, opsloop with tracing off (no measure of what tracing adds).",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="Then sample opsloop with py-spy under load; stages in the JSON.",
    )
    parser.add_argument("--profile-seconds", type=float, default=15.0)
    parser.add_argument("--profile-concurrency", type=int, default=4)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="Smoke run: levels 1 conn, 16 conn, the moderate rate; 1 round of 2 s.",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Where to write the JSON results.")
    parser.add_argument("--check-goal", action="store_true", help="Exit 3 when the goal is missed.")
    args = parser.parse_args(argv)
    if args.quick:
        args.concurrency, args.rates, args.rounds = [1, 16], [args.moderate_rate], 1
        args.duration, args.warmup, args.profile_seconds = 2.0, 0.5, 6.0
    for name in ("duration", "rounds", "paced_connections", "moderate_rate", "profile_seconds"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.warmup < 0 or any(n <= 0 for n in args.concurrency) or any(r <= 0 for r in args.rates):
        parser.error("--warmup must not be negative; --concurrency and --rates values must be positive")
    args.concurrency = sorted(set(args.concurrency))
    args.rates = sorted(set(args.rates) | {args.moderate_rate})
    return args


def request_body(stream: bool) -> dict[str, Any]:
    """The one body every target gets."""
    body: dict[str, Any] = {
        "model": ROUTE,
        "messages": [
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": "What is the capital of France?"},
        ],
        "max_tokens": 32,
        "temperature": 0,
    }
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return body


def check_parity(targets: list[Target]) -> dict[str, Any]:
    """Each target answers the stub's completion and usage to the non-streamed body.

    Raises:
        BenchError: A target refused the body or answered something else.
    """
    found: dict[str, Any] = {}
    with httpx.Client(timeout=30.0) as client:
        for target in targets:
            response = client.post(
                target.url, json=request_body(False), headers={"Authorization": f"Bearer {target.key}"}
            )
            if response.status_code != 200:
                raise BenchError(
                    f"{target.name} refused the body: {response.status_code} {response.text[:500]}"
                )
            answer = response.json()
            text = answer["choices"][0]["message"]["content"]
            usage = {k: answer["usage"][k] for k in USAGE}
            if text != COMPLETION_TEXT or usage != USAGE:
                raise BenchError(f"{target.name} answered {text!r} with usage {usage}, not the stub's")
            found[target.name] = {
                "content": text,
                "usage": usage,
                "cost_header": response.headers.get("x-litellm-response-cost"),
                "backend_header": response.headers.get("x-opsloop-backend"),
            }
    return found


def run_load(
    group: ProcessGroup,
    target: Target,
    level: Level,
    args: argparse.Namespace,
    body: Path,
    *,
    expect: str = _EXPECT,
) -> dict[str, Any]:
    """One loadgen process against ``target`` at ``level``; its summary (answers must hold ``expect``).

    Raises:
        BenchError: The load generator failed.
    """
    command = [
        sys.executable, "-m", "bench.gateway.loadgen", "--url", target.url, "--key", target.key,
        "--body-file", str(body), "--connections", str(level.connections), "--duration", str(args.duration),
        "--warmup", str(args.warmup), "--expect", expect,
    ]  # fmt: skip
    if level.rate is not None:
        command += ["--rate", str(level.rate)]
    proc = group.start("loadgen", command, env=clean_env(), session=False, stdout_pipe=True)
    try:
        stdout, _ = proc.communicate(timeout=args.duration + args.warmup + 60)
    finally:
        group.stop(proc, grace=5)
    output = stdout.decode(errors="replace")
    line = next((x for x in output.splitlines() if x.startswith(MARKER)), None)
    if proc.returncode != 0 or line is None:
        raise BenchError(f"the load generator failed ({proc.returncode}):\n{output[-3000:]}")
    result: dict[str, Any] = json.loads(line[len(MARKER) :])
    return result


def _errors(run: dict[str, Any]) -> int:
    return int(sum(run["errors"].values()))


def summarise(
    runs: list[dict[str, Any]], targets: list[str], levels: list[Level]
) -> dict[str, dict[str, Any]]:
    """Per target and level: median p50/p99 (ms) over rounds, throughput over all rounds, errors."""
    summary: dict[str, dict[str, Any]] = {}
    for target in targets:
        summary[target] = {}
        for level in levels:
            mine = [r for r in runs if r["target"] == target and r["level"] == level.name]
            if not mine:
                continue
            seconds = sum(r["duration_s"] for r in mine)
            requests = sum(r["requests"] for r in mine)
            scheduled = sum(r["scheduled"] for r in mine)
            late = sum(r["late"] for r in mine)
            errors = sum(_errors(r) for r in mine)
            sustained = errors == 0
            if level.rate is not None:
                sustained = sustained and late <= _SUSTAINED_LATE * max(scheduled, 1)
                sustained = sustained and requests >= 0.95 * level.rate * seconds
            summary[target][level.name] = {
                "label": level.label,
                "rps": requests / seconds if seconds else 0.0,
                "p50_ms": statistics.median(r["latency_us"]["p50"] for r in mine) / 1000,
                "p99_ms": statistics.median(r["latency_us"]["p99"] for r in mine) / 1000,
                "p999_ms": statistics.median(r["latency_us"]["p999"] for r in mine) / 1000,
                "requests": requests,
                "errors": errors,
                "late": late,
                "scheduled": scheduled,
                "sustained": sustained,
            }
    return summary


def added(summary: dict[str, dict[str, Any]], gateway: str) -> dict[str, dict[str, float]]:
    """Per level: the gateway's p50 and p99 minus the direct ones (ms)."""
    out: dict[str, dict[str, float]] = {}
    for level, mine in summary.get(gateway, {}).items():
        direct = summary["direct"][level]
        out[level] = {
            "p50_ms": mine["p50_ms"] - direct["p50_ms"],
            "p99_ms": mine["p99_ms"] - direct["p99_ms"],
        }
    return out


def max_sustained(summary: dict[str, dict[str, Any]], target: str, levels: list[Level]) -> dict[str, Any]:
    """The highest closed-loop throughput among levels without a failed request."""
    closed = [
        (summary[target][lv.name]["rps"], lv.name)
        for lv in levels
        if lv.rate is None and lv.name in summary.get(target, {}) and summary[target][lv.name]["errors"] == 0
    ]
    if not closed:
        return {"rps": None, "level": None}
    rps, level = max(closed)
    return {"rps": rps, "level": level}


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("inf") if a > 0 else float("nan")


def goal(summary: dict[str, dict[str, Any]], levels: list[Level], moderate: Level) -> dict[str, Any]:
    """The issue's goal: opsloop's added p50 < 1 ms and p99 < 5 ms at moderate load, >= 3x below LiteLLM's."""
    ours = added(summary, "opsloop")[moderate.name]
    verdict: dict[str, Any] = {
        "statement": (
            f"opsloop adds < {GOAL_P50_MS:g} ms at p50 and < {GOAL_P99_MS:g} ms at p99 at moderate load "
            f"({moderate.label} over {moderate.connections} connections), and at least {GOAL_RATIO:g}x "
            "less than LiteLLM"
        ),
        "level": moderate.name,
        "opsloop_added_p50_ms": ours["p50_ms"],
        "opsloop_added_p99_ms": ours["p99_ms"],
        "opsloop_sustained": summary["opsloop"][moderate.name]["sustained"],
        "p50_ok": ours["p50_ms"] < GOAL_P50_MS,
        "p99_ok": ours["p99_ms"] < GOAL_P99_MS,
    }
    met = verdict["p50_ok"] and verdict["p99_ok"] and verdict["opsloop_sustained"]
    if "litellm" in summary:
        # At the moderate rate if LiteLLM sustained it; otherwise at the highest paced rate it did.
        paced = [lv for lv in levels if lv.rate is not None and summary["litellm"][lv.name]["sustained"]]
        at = moderate if summary["litellm"][moderate.name]["sustained"] else (paced[-1] if paced else None)
        if at is None:
            verdict |= {"ratio_level": None, "ratio_note": "LiteLLM sustained none of the paced rates"}
            met = False
        else:
            theirs, mine = added(summary, "litellm")[at.name], added(summary, "opsloop")[at.name]
            verdict |= {
                "ratio_level": at.name,
                "ratio_note": "" if at == moderate else f"LiteLLM did not sustain {moderate.label}",
                "litellm_over_opsloop_p50": _ratio(theirs["p50_ms"], mine["p50_ms"]),
                "litellm_over_opsloop_p99": _ratio(theirs["p99_ms"], mine["p99_ms"]),
            }
            verdict["ratio_ok"] = (
                min(verdict["litellm_over_opsloop_p50"], verdict["litellm_over_opsloop_p99"]) >= GOAL_RATIO
            )
            met = met and verdict["ratio_ok"]
    verdict["met"] = met
    return verdict


def tracing_cost(summary: dict[str, dict[str, Any]], moderate: str) -> dict[str, Any] | None:
    """What tracing adds per level (opsloop minus :data:`UNTRACED`, ms) and its goal at ``moderate``."""
    if UNTRACED not in summary:
        return None
    by_level = {
        level: {
            "p50_ms": traced["p50_ms"] - summary[UNTRACED][level]["p50_ms"],
            "p99_ms": traced["p99_ms"] - summary[UNTRACED][level]["p99_ms"],
        }
        for level, traced in summary["opsloop"].items()
    }
    added_p50 = by_level[moderate]["p50_ms"]
    return {
        "statement": f"tracing adds at most {GOAL_TRACING_P50_MS:g} ms at p50 at moderate load ({moderate})",
        "by_level": by_level,
        "added_p50_ms": added_p50,
        "met": added_p50 <= GOAL_TRACING_P50_MS,
    }


def print_report(
    summary: dict[str, dict[str, Any]], levels: list[Level], args: argparse.Namespace, verdict: dict[str, Any]
) -> None:
    """The tables: latency per target and level, added latency and ratios, max throughput, the goal."""
    from rich.table import Table

    console = _console()
    mode = "streamed (SSE, to the last byte)" if args.stream else "non-streamed"
    table = Table(
        title=f"POST /v1/chat/completions, {mode}: {args.rounds} x {args.duration:g} s per target and level; "
        "latency in ms (median of rounds)"
    )
    for column in ("level", "target", "req/s", "p50", "p99", "added p50", "added p99", "errors"):
        table.add_column(column, justify="left" if column in ("level", "target") else "right")
    gateways = [g for g in ("opsloop", UNTRACED, "litellm") if g in summary]
    extra: dict[str, dict[str, dict[str, float]]] = {g: added(summary, g) for g in gateways}
    for level in levels:
        for target in ("direct", *gateways):
            s = summary[target][level.name]
            plus = extra.get(target, {}).get(level.name)
            errors = str(s["errors"]) + ("" if s["sustained"] else " (not sustained)")
            table.add_row(
                level.label if target == "direct" else "",
                target,
                f"{s['rps']:.0f}",
                f"{s['p50_ms']:.3f}",
                f"{s['p99_ms']:.3f}",
                f"{plus['p50_ms']:.3f}" if plus else "",
                f"{plus['p99_ms']:.3f}" if plus else "",
                errors,
            )
        if "litellm" in summary:
            mine, theirs = extra["opsloop"][level.name], extra["litellm"][level.name]
            table.add_row(
                "", "[dim]litellm/opsloop[/dim]", "", "", "",
                f"[dim]x{_ratio(theirs['p50_ms'], mine['p50_ms']):.1f}[/dim]",
                f"[dim]x{_ratio(theirs['p99_ms'], mine['p99_ms']):.1f}[/dim]", "",
                end_section=True,
            )  # fmt: skip
        else:
            table.rows[-1].end_section = True
    console.print(table)
    for target in ("direct", *gateways):
        best = max_sustained(summary, target, levels)
        if best["rps"] is not None:
            console.print(f"max sustained: {target:<8} {best['rps']:8.0f} req/s (at {best['level']})")
    if "litellm" in summary:
        ours, theirs = max_sustained(summary, "opsloop", levels), max_sustained(summary, "litellm", levels)
        if ours["rps"] and theirs["rps"]:
            console.print(f"throughput opsloop / litellm: x{ours['rps'] / theirs['rps']:.1f}")
    tracing = tracing_cost(summary, verdict["level"])
    if tracing is not None:
        by_level = ", ".join(
            f"{level} p50 {c['p50_ms']:+.3f} / p99 {c['p99_ms']:+.3f} ms"
            for level, c in tracing["by_level"].items()
        )
        console.print(f"tracing adds (opsloop - {UNTRACED}): {by_level}")
        ok = "[green]MET[/green]" if tracing["met"] else "[red]NOT MET[/red]"
        console.print(f"goal: {tracing['statement']}: {ok}")
    status = "[green]MET[/green]" if verdict["met"] else "[red]NOT MET[/red]"
    console.print(f"\ngoal: {verdict['statement']}: {status}")
    console.print(
        f"  opsloop added at {verdict['level']}: p50 {verdict['opsloop_added_p50_ms']:.3f} ms "
        f"({'ok' if verdict['p50_ok'] else 'over'}), p99 {verdict['opsloop_added_p99_ms']:.3f} ms "
        f"({'ok' if verdict['p99_ok'] else 'over'})"
    )
    if verdict.get("ratio_level"):
        note = f" ({verdict['ratio_note']})" if verdict["ratio_note"] else ""
        console.print(
            f"  litellm / opsloop added at {verdict['ratio_level']}{note}: "
            f"p50 x{verdict['litellm_over_opsloop_p50']:.1f}, p99 x{verdict['litellm_over_opsloop_p99']:.1f}"
        )


def print_profile(data: dict[str, Any]) -> None:
    """The stages of opsloop's request path, by share of the event loop's samples."""
    from rich.table import Table

    table = Table(
        title=f"opsloop under load (py-spy: {data['busy_samples']} busy samples; "
        f"{data['rps_while_sampled']:.0f} req/s while sampled, "
        f"{data['wall_us_per_request']:.0f} us of wall time and "
        f"{data['busy_us_per_request']:.0f} us of busy threads per request)"
    )
    for column in ("stage", "share", "~us/request"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for row in data["event_loop_thread"]:
        table.add_row(row["stage"], f"{100 * row['share']:.1f}%", f"{row['us_per_request']:.0f}")
    for row in data["other_threads"]:
        table.add_row(
            f"[dim]thread: {row['stage']}[/dim]", f"{100 * row['share']:.1f}%", f"{row['us_per_request']:.0f}"
        )
    _console().print(table)


def _console() -> Any:
    from rich.console import Console

    # A pipe or a file gets the full width rather than 80 columns.
    return Console() if sys.stdout.isatty() else Console(width=130)


def scrape(
    server: Server, prefixes: tuple[str, ...], headers: dict[str, str] | None = None
) -> dict[str, float]:
    """Counters of ``server``'s ``/metrics`` whose names start with ``prefixes`` (no histograms)."""
    try:
        text = httpx.get(f"{server.url}/metrics", headers=headers, timeout=30.0, follow_redirects=True).text
    except httpx.HTTPError:
        return {}
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(prefixes) and not line.startswith("#") and "_bucket{" not in line:
            name, _, value = line.rpartition(" ")
            if name.endswith("_created") or "_created{" in name:
                continue
            try:
                found[name] = float(value)
            except ValueError:
                continue
    return found


def ledger_report(tmp: Path) -> dict[str, Any]:
    """``opsloop costs report --by route`` on opsloop's home, read after the server stopped."""
    command = [
        OPSLOOP, "--config", str(tmp / "opsloop.yaml"), "--home", str(tmp / "opsloop-home"),
        "costs", "report", "--by", "route", "--since", "24h", "--format", "json",
    ]  # fmt: skip
    done = subprocess.run(
        command, env=clean_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        return {"error": done.stderr.strip()[-500:]}
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    return done.stdout.strip()


def _changed_outside_bench() -> list[str]:
    done = subprocess.run(
        ["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    # Not stripped: each line is "XY path", and X may be a space.
    return [path for line in done.stdout.splitlines() if not (path := line[3:]).startswith("bench/")]


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the ProcessGroup, which stops every server


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the tables, write the JSON; the exit status says if it is valid."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        with tempfile.TemporaryDirectory(prefix="opsloop-bench-gateway-") as tmp, ProcessGroup() as group:
            return _run(args, Path(tmp), group)
    except BenchError as exc:
        print(f"bench/gateway: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench/gateway: interrupted; every server was stopped", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace, tmp: Path, group: ProcessGroup) -> int:
    started = datetime.now(UTC)
    litellm_venv = None if args.no_litellm else ensure_litellm(say=_say)
    py_spy = profiling.ensure_py_spy(say=_say) if args.profile else None
    backend = start_stub(group, tmp, sys.executable)
    _say(f"stub backend on {backend.server.url}; starting opsloop serve")
    opsloop, key = start_opsloop(group, tmp, backend)
    targets = [
        Target("direct", f"{backend.base_url}/chat/completions", "unused", backend.server),
        Target("opsloop", f"{opsloop.url}/v1/chat/completions", key, opsloop),
    ]
    if not args.no_untraced:
        untraced, untraced_key = start_opsloop(group, tmp, backend, name=UNTRACED, tracing=False)
        targets.append(Target(UNTRACED, f"{untraced.url}/v1/chat/completions", untraced_key, untraced))
    if litellm_venv is not None:
        _say(f"opsloop on {opsloop.url}; starting LiteLLM {LITELLM_VERSION}'s proxy")
        litellm = start_litellm(group, tmp, backend, litellm_venv)
        targets.append(Target("litellm", f"{litellm.url}/v1/chat/completions", MASTER_KEY, litellm))
    parity = check_parity(targets)
    _say(f"{', '.join(t.name for t in targets)} answer the same completion and usage")

    body = tmp / "body.json"
    body.write_text(json.dumps(request_body(args.stream), separators=(",", ":")))
    levels = [Level(c) for c in args.concurrency] + [Level(args.paced_connections, r) for r in args.rates]
    moderate = Level(args.paced_connections, args.moderate_rate)
    runs: list[dict[str, Any]] = []
    for round_ in range(1, args.rounds + 1):
        shift = (round_ - 1) % len(targets)
        order = targets[shift:] + targets[:shift]
        for level in levels:
            for target in order:
                result = run_load(group, target, level, args, body)
                runs.append({"round": round_, "target": target.name, "level": level.name} | result)
                lat = result["latency_us"]
                late = f"  late {result['late']}/{result['scheduled']}" if level.rate is not None else ""
                _say(
                    f"round {round_}/{args.rounds} {level.label:>9} {target.name:<8} "
                    f"{result['requests'] / result['duration_s']:8.0f} req/s  "
                    f"p50 {lat['p50'] / 1000:7.3f} ms  p99 {lat['p99'] / 1000:7.3f} ms  "
                    f"errors {_errors(result)}{late}"
                )
                if _errors(result):
                    _say(
                        f"  {target.name} errors {result['errors']}; "
                        f"its log ends:\n{target.server.log_tail(8)}"
                    )

    profile_data: dict[str, Any] | None = None
    if py_spy is not None:
        profile_data = _profile(group, py_spy, targets[1], args, body, tmp)

    opsloop_metrics = scrape(opsloop, ("opsloop_llm_", "opsloop_budget_", "opsloop_trace"))
    proxy = next((t.server for t in targets if t.name == "litellm"), None)
    litellm_metrics = scrape(proxy, ("litellm_",), {"Authorization": f"Bearer {MASTER_KEY}"}) if proxy else {}
    group.stop(opsloop.proc)  # a clean stop writes what the ledger still queues
    ledger = ledger_report(tmp)

    names = [t.name for t in targets]
    summary = summarise(runs, names, levels)
    verdict = goal(summary, levels, moderate)
    print_report(summary, levels, args, verdict)
    if profile_data is not None:
        print_profile(profile_data)
    errors = sum(s["errors"] for per in summary.values() for s in per.values())
    profiled = [profile_data["load"]] if profile_data is not None else []
    opsloop_runs = [r for r in runs if r["target"] == "opsloop"] + profiled
    sent_to_opsloop = 1 + sum(r["sent"] for r in opsloop_runs)  # 1: the parity check
    ledger_calls = sum(row["calls"] for row in ledger.get("rows", []))
    ledger_check = {
        "requests_sent": sent_to_opsloop,
        "ledger_calls": ledger_calls,
        "ledger_cost_usd": sum(row["cost_usd"] for row in ledger.get("rows", [])),
        "dropped": opsloop_metrics.get("opsloop_llm_ledger_dropped_total", 0.0),
        "complete": ledger_calls == sent_to_opsloop,
    }
    print(
        f"\nopsloop's ledger: {ledger_calls} calls recorded for {sent_to_opsloop} requests sent "
        f"(${ledger_check['ledger_cost_usd']:.4f}); dropped {ledger_check['dropped']:g}"
    )
    if errors:
        print(f"\nINVALID RUN: {errors} failed requests (see the per-round lines above)")

    report = {
        "benchmark": "bench/gateway",
        "started_at": started.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "config": {
            "concurrency": args.concurrency,
            "rates": args.rates,
            "paced_connections": args.paced_connections,
            "moderate_rate": args.moderate_rate,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "rounds": args.rounds,
            "stream": args.stream,
            "quick": args.quick,
            "request_body": request_body(args.stream),
            "latency": "per request, first byte written to last byte read, no coordinated-omission "
            "correction; p50/p99: median of the rounds' values; req/s: all rounds' requests / seconds",
        },
        "environment": {
            "git_commit": _git("rev-parse", "HEAD") or None,
            # Uncommitted changes outside bench/ mean the commit alone does not say what ran.
            "git_changed_files": _changed_outside_bench(),
            "cpus": os.cpu_count(),
            "load_average_at_end": os.getloadavg(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "litellm": None if args.no_litellm else LITELLM_VERSION,
        },
        "targets": {
            "direct": "bench/gateway/stub.py: asyncio protocol on uvloop, canned completion",
            "opsloop": "opsloop serve, 1 worker, log level info (access log on); route 'bench' -> openai "
            "backend 'stub' with input/output prices; budgets daily_usd and rpm of tenant 'default'; "
            "ledger and metrics on; admin key",
            UNTRACED: "the same as opsloop with `tracing: false`",
            "litellm": f"litellm[proxy]=={LITELLM_VERSION}, 1 uvicorn worker, its defaults (access log on); "
            "model_list 'bench' -> openai/stub-model with per-token prices; master key; prometheus "
            "callback; no database (so no spend logs, no per-key budgets)",
        },
        "parity": parity,
        "summary": summary,
        "added_ms": {g: added(summary, g) for g in ("opsloop", UNTRACED, "litellm") if g in summary},
        "tracing": tracing_cost(summary, moderate.name),
        "max_sustained": {t: max_sustained(summary, t, levels) for t in names},
        "goal": verdict,
        "profile": profile_data,
        "opsloop_metrics_after": opsloop_metrics,
        "opsloop_ledger": ledger,
        "opsloop_ledger_check": ledger_check,
        "litellm_metrics_after": litellm_metrics,
        "runs": runs,
        "valid": errors == 0,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults: {args.out}")
    if errors:
        return 1
    if args.check_goal and not verdict["met"]:
        return 3
    return 0


def _profile(
    group: ProcessGroup, py_spy: Path, target: Target, args: argparse.Namespace, body: Path, tmp: Path
) -> dict[str, Any]:
    """One closed-loop run against opsloop while py-spy samples it; the stages."""
    out = tmp / "opsloop.pyspy.txt"
    level = Level(args.profile_concurrency)
    _say(f"profiling opsloop with py-spy for {args.profile_seconds:g} s at {level.label}")
    spec = argparse.Namespace(**{**vars(args), "duration": args.profile_seconds + 3, "warmup": 0.5})
    # The load starts first and outlasts the sampling, so every sample is taken under load.
    load = threading.Thread(target=lambda: results.append(run_load(group, target, level, spec, body)))
    results: list[dict[str, Any]] = []
    load.start()
    time.sleep(1.5)
    sampler = profiling.record(py_spy, target.server.proc.pid, args.profile_seconds, out, _PROFILE_HZ)
    load.join()
    if not results:
        raise BenchError("the load generator of the profiling run failed")
    result = results[0]
    _, err = sampler.communicate(timeout=60)
    if sampler.returncode != 0 or not out.exists():
        raise BenchError(f"py-spy failed ({sampler.returncode}): {err.decode(errors='replace')[-1000:]}")
    rps = result["requests"] / result["duration_s"]
    data = profiling.categorize(out.read_text(), rps, _PROFILE_HZ, args.profile_seconds).to_dict()
    data["load"] = result
    data["collapsed_stacks_top"] = _top_stacks(out.read_text())
    return data


def _top_stacks(collapsed: str, n: int = 25) -> list[dict[str, Any]]:
    counts: list[tuple[int, str]] = []
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if count.isdigit():
            frames = stack.split(";")
            counts.append((int(count), ";".join(frames[-6:])))
    counts.sort(reverse=True)
    return [{"samples": c, "innermost_frames": s} for c, s in counts[:n]]


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
