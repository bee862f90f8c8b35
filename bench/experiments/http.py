"""Part 2, over HTTP as users run it: wrk on ``opsloop serve``, with and without a canary.

``opsloop serve`` runs on its defaults on a fresh home (one worker; validation, auth,
metrics, the prediction log, the experiments' router, outcome log and decider all on; the
first start trains the demo model). A twin of the champion is registered with the CLI as
users make one (``opsloop models train --demo --no-promote``: the same data and seed, so the
same pipeline and cost), and keys with ``opsloop keys create``. Then for ``rounds`` rounds,
in the order none/canary, then canary/none, ..., wrk drives ``/predict/credit-risk`` for a
warm-up run (dropped) and a measured run. For a canary round the bench starts a canary at 50%
on the twin with ``POST /admin/experiments`` (a ``min_samples`` it never reaches, so the
decider, which runs every 2 s as on any server, holds it at 50%), waits until answers come
from the challenger, and after the measured run checks that it still runs and stops it
(``POST /admin/experiments/{name}/stop``).

Every body holds one applicant and carries its own ``X-Opsloop-Unit``, so the canary splits
the requests about half and half (bodies are ``UNIT<tab>JSON`` lines for
``bench/predict/wrk.lua``).
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.predict import BenchError
from bench.predict.load import LoadResult, run_wrk
from bench.predict.processes import OPSLOOP, REPO_ROOT, ProcessGroup, clean_env, create_key, start_opsloop

__all__ = ["CONFIGS", "HttpOptions", "HttpRun", "run_http"]

MODEL = "credit-risk"
CONFIGS = ("none", "canary")
_DATA_SEED = 12345  # not the demo model's training seed (0): unseen applicants
_NEVER = 10**9
_WANTED_METRICS = (
    "opsloop_predictions_total{",
    "opsloop_prediction_log_dropped_total ",
    "opsloop_experiment_requests_total{",
    "opsloop_experiment_errors_total{",
)


@dataclass(frozen=True)
class HttpOptions:
    """How much part 2 measures."""

    rounds: int
    duration: float
    warmup: float
    concurrency: int
    threads: int
    bodies: int
    decide_seconds: float | None = None
    """``experiment_decide_seconds`` of the server (0: no decider); None: its default."""
    long_seconds: float = 0.0
    """After the rounds, keep one canary running this long, measured in windows (0: don't)."""
    long_window: float = 10.0
    ready_timeout: float = 900.0


@dataclass(frozen=True)
class HttpRun:
    """One measured wrk run, the server's CPU time in it, and the canary it ran beside (if any)."""

    round: int
    config: str
    result: LoadResult
    cpu_s: dict[str, float] | None
    """CPU seconds (user + system) of the server in the run: ``server_cpu_s`` in all,
    ``loop_cpu_s`` in its main thread, ``background_cpu_s`` in the others (and any children)."""
    experiment: dict[str, Any] | None = None


def cpu_seconds(pid: int) -> dict[str, float] | None:
    """CPU seconds so far of process ``pid``: all of it, its main thread, the rest (Linux ``/proc``).

    None where ``/proc`` does not say (another OS, or the process is gone).
    """
    ticks = os.sysconf("SC_CLK_TCK")

    def used(stat: Path) -> float:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime: fields 14 and 15 of stat

    try:
        total = used(Path(f"/proc/{pid}/stat"))  # every thread's, live and ended
        loop = used(Path(f"/proc/{pid}/task/{pid}/stat"))
        children = [
            int(child)
            for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()
        ]
    except (OSError, IndexError, ValueError):
        return None
    total += sum(c["server_cpu_s"] for child in children if (c := cpu_seconds(child)) is not None)
    return {"server_cpu_s": total, "loop_cpu_s": loop, "background_cpu_s": total - loop}


def write_bodies(path: Path, count: int) -> Path:
    """``count`` lines ``UNIT<tab>{"instances": [applicant]}``, distinct applicants and units."""
    from workflows.demo import FEATURE_NAMES, generate_credit_data

    frame = generate_credit_data(max(100, count), seed=_DATA_SEED)[list(FEATURE_NAMES)]
    records: list[dict[str, Any]] = frame.to_dict(orient="records")
    with path.open("w") as f:
        for i in range(count):
            body = json.dumps({"instances": [records[i]]}, separators=(",", ":"), allow_nan=False)
            f.write(f"user-{i}\t{body}\n")
    return path


def run_http(
    options: HttpOptions, group: ProcessGroup, wrk: str, tmp: Path, say: Any
) -> tuple[list[HttpRun], dict[str, Any]]:
    """Measure ``none`` and ``canary`` over HTTP; returns the runs and what was set up.

    Raises:
        BenchError: The server did not start, a CLI command or an admin call failed, or the
            canary was not picked up.
    """
    home = tmp / "http" / "home"
    home.parent.mkdir(parents=True)
    say(f"starting opsloop serve (home {home}); the first start trains the demo model")
    settings = {}
    if options.decide_seconds is not None:
        settings["OPSLOOP_EXPERIMENT_DECIDE_SECONDS"] = str(options.decide_seconds)
    server = start_opsloop(group, home, settings)
    bodies = write_bodies(tmp / "http" / "bodies.tsv", options.bodies)
    server.wait_until("/readyz", timeout=options.ready_timeout)
    user = {"Authorization": f"Bearer {create_key(home, tenant='bench', role='user')}"}
    operator = {"Authorization": f"Bearer {create_key(home, tenant='bench', role='operator')}"}
    say("registering a twin of the champion: opsloop models train --demo --no-promote")
    twin = _train_twin(home)
    probe = bodies.read_text().splitlines()[0].split("\t", 1)[1]
    url = f"{server.url}/predict/{MODEL}"
    drive = functools.partial(
        run_wrk, group, wrk, url, bodies=bodies, key=user["Authorization"].removeprefix("Bearer "),
        connections=options.concurrency, threads=options.threads,
    )  # fmt: skip
    runs: list[HttpRun] = []
    with httpx.Client(base_url=server.url, timeout=60.0) as client:
        champion = _get(client, f"/models/{MODEL}", user)["champion"]
        say(f"opsloop ready on {server.url}: {MODEL} v{champion}, twin v{twin}")
        for round_ in range(1, options.rounds + 1):
            order = CONFIGS if round_ % 2 == 1 else CONFIGS[::-1]
            for config in order:
                name = f"bench-http-canary-r{round_}" if config == "canary" else None
                if name is not None:
                    _create(client, operator, name, twin)
                    _wait_routed(client, user, probe, routed=True)
                if options.warmup > 0:  # its numbers are dropped
                    drive(seconds=options.warmup)
                result, cpu = _measured(drive, options.duration, server.proc.pid)
                shown = None
                if name is not None:
                    shown = _get(client, f"/admin/experiments/{name}", operator)
                    if shown["status"] == "running":
                        _post(client, f"/admin/experiments/{name}/stop", operator)
                    _wait_routed(client, user, probe, routed=False)
                    shown = _experiment_summary(shown)
                runs.append(HttpRun(round_, config, result, cpu, shown))
                split = ""
                if shown is not None:
                    split = "  " + ", ".join(f"{k} {v}" for k, v in shown["requests"].items())
                per_request = ""
                if cpu is not None and result.requests:
                    loop, background = (
                        cpu[k] / result.requests * 1e6 for k in ("loop_cpu_s", "background_cpu_s")
                    )
                    per_request = f"  cpu us/req: loop {loop:.0f}, background {background:.0f}"
                say(
                    f"http round {round_}/{options.rounds} {config:<6}: {result.rps:8.1f} req/s  "
                    f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms{per_request}  "
                    f"errors {result.error_count}{split}"
                )
        long = _long_canary(client, drive, options, server.proc.pid, operator, user, probe, twin, say)
        metrics = _scrape(client)
    setup = {
        "model": MODEL,
        "champion": champion,
        "twin": twin,
        "server": "opsloop serve, defaults" + "".join(f", {k}={v}" for k, v in settings.items()),
    }
    return runs, setup | {"long_canary": long, "metrics_after": metrics}


def _measured(drive: Any, seconds: float, pid: int) -> tuple[LoadResult, dict[str, float] | None]:
    """One measured wrk run and the server's CPU seconds in it."""
    before = cpu_seconds(pid)
    result: LoadResult = drive(seconds=seconds)
    after = cpu_seconds(pid)
    if before is None or after is None:
        return result, None
    return result, {k: after[k] - before[k] for k in after}


def _long_canary(
    client: httpx.Client,
    drive: Any,
    options: HttpOptions,
    pid: int,
    operator: dict[str, str],
    user: dict[str, str],
    probe: str,
    twin: int,
    say: Any,
) -> list[dict[str, Any]]:
    """One canary kept running ``options.long_seconds``, measured in back-to-back windows.

    What the alternating rounds cannot show: whatever grows with the experiment's age (the
    decider re-reads every outcome so far on each tick).
    """
    windows: list[dict[str, Any]] = []
    if options.long_seconds <= 0:
        return windows
    name = "bench-http-canary-long"
    _create(client, operator, name, twin)
    _wait_routed(client, user, probe, routed=True)
    started = time.monotonic()
    while time.monotonic() - started < options.long_seconds:
        result, cpu = _measured(drive, options.long_window, pid)
        age = time.monotonic() - started
        windows.append({"canary_age_s": age, **result.to_dict(), **(cpu or {})})
        per_request = {k: v * 1e6 / result.requests for k, v in (cpu or {}).items() if result.requests}
        say(
            f"long canary at {age:5.0f} s: {result.rps:8.1f} req/s  p50 {result.p50_ms:6.2f} ms  "
            f"p99 {result.p99_ms:6.2f} ms  cpu us/req: loop {per_request.get('loop_cpu_s', 0):.0f}, "
            f"background {per_request.get('background_cpu_s', 0):.0f}"
        )
    shown = _get(client, f"/admin/experiments/{name}", operator)
    if shown["status"] == "running":
        _post(client, f"/admin/experiments/{name}/stop", operator)
    windows.append({"experiment": _experiment_summary(shown)})
    return windows


def _train_twin(home: Path) -> int:
    args = [OPSLOOP, "--home", str(home), "models", "train", "--demo", "--no-promote"]
    done = subprocess.run(args, env=clean_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    found = re.search(r"registered \S+ version (\d+)", done.stdout + done.stderr)
    if done.returncode != 0 or found is None:
        command = "opsloop models train --demo --no-promote"
        raise BenchError(f"'{command}' failed ({done.returncode}): {done.stderr}")
    return int(found.group(1))


def _get(client: httpx.Client, path: str, headers: dict[str, str]) -> dict[str, Any]:
    response = client.get(path, headers=headers)
    if response.status_code != 200:
        raise BenchError(f"GET {path}: {response.status_code} {response.text}")
    answer: dict[str, Any] = response.json()
    return answer


def _post(client: httpx.Client, path: str, headers: dict[str, str], body: Any = None) -> dict[str, Any]:
    response = client.post(path, json=body, headers=headers)
    if response.status_code not in (200, 201):
        raise BenchError(f"POST {path}: {response.status_code} {response.text}")
    answer: dict[str, Any] = response.json()
    return answer


def _create(client: httpx.Client, operator: dict[str, str], name: str, twin: int) -> None:
    body = {
        "name": name,
        "kind": "canary",
        "model": MODEL,
        "challenger": str(twin),
        "steps": [50, 100],
        "min_samples": _NEVER,
    }
    _post(client, "/admin/experiments", operator, body)


def _wait_routed(client: httpx.Client, user: dict[str, str], body: str, routed: bool) -> None:
    """Wait until the canary's challenger answers (``routed``), or until it no longer does.

    No longer: 40 probes in a row with distinct units all answered by the champion (at 50%, by
    chance 1e-12).

    Raises:
        BenchError: Not within 120 s, or a probe failed.
    """
    deadline = time.monotonic() + 120.0
    i = champions = 0
    while time.monotonic() < deadline:
        headers = user | {"Content-Type": "application/json", "X-Opsloop-Unit": f"probe-{i}"}
        response = client.post(f"/predict/{MODEL}", content=body, headers=headers)
        if response.status_code != 200:
            raise BenchError(f"POST /predict/{MODEL}: {response.status_code} {response.text}")
        challenger = response.json()["variant"] == "challenger"
        if routed and challenger:
            return
        champions = 0 if challenger else champions + 1
        if not routed and champions >= 40:
            return
        i += 1
        time.sleep(0.01)
    raise BenchError(
        "the canary's challenger " + ("never answered" if routed else "still answers") + " in 120 s"
    )


def _experiment_summary(shown: dict[str, Any]) -> dict[str, Any]:
    """What a canary round's experiment did: its status when measured, and requests per variant."""
    return {
        "name": shown["name"],
        "status_after_run": shown["status"],
        "decision": shown["decision"],
        "requests": {v["name"]: v["requests"] for v in shown["variants"]},
        "errors": {v["name"]: v["errors"] for v in shown["variants"]},
    }


def _scrape(client: httpx.Client) -> dict[str, float]:
    found: dict[str, float] = {}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(_WANTED_METRICS):
            name, _, value = line.rpartition(" ")
            found[name] = float(value)
    return found
