"""Part 1, in this process: ``ModelService.predict`` with no experiment, a canary, a full shadow queue.

The app is the real one (:func:`serving.app.create_app` under FastAPI's ``TestClient``: the
SQLite store, MLflow on SQLite, the demo model as champion, the prediction log, the
experiments' router, outcome log and shadow queue all started as ``serve`` starts them).
Each configuration gets a model of its own, all four copies of the demo champion (the same
artifacts registered under another name, so the same cost per call):

- ``none``: ``credit-risk``, no experiment;
- ``none-again``: ``bench-aa``, no experiment either (the A/A control: what noise alone moves);
- ``canary``: ``bench-canary``, a canary at 50% whose challenger is version 2, one more copy;
- ``shadow-full``: ``bench-shadow``, a shadow experiment whose challenger is a pyfunc wrapper
  of the champion that sleeps ``shadow_delay`` seconds per copy (from
  ``tests/integration/challengers.py``). It scores one copy per ``shadow_delay``, so once the
  queue's 1000 places are taken (the bench fills it first) it stays full and nearly every
  request's copy is dropped: the state a slow shadow leaves the request path in.

Both experiments run for the whole part, created through the experiment service with a
``min_samples`` they never reach (and the decider off), so nothing steps or decides while it
measures. Every call is ``platform.models.predict(principal, model, [row], unit=...)`` on an
event loop of this thread, one of many distinct applicants and its own unit id. Two ways:

- ``interleaved``: each cycle calls the four models once each, in a random order, with the
  same applicant and unit, so that machine noise lands on all four alike. It measures the
  request path itself; what a configuration makes other threads do (the outcome log's
  writer, the shadow's worker) is spread over all four.
- ``blocked``: a run of calls per configuration per round, in an order that rotates each
  round. Noisier, but a configuration's background work lands in its own block.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.experiments.stats import Segment
from bench.predict import BenchError

if TYPE_CHECKING:
    from opsloop.auth import Principal
    from serving.platform import Platform
    from workflows.experiments.store import Kind

__all__ = ["CONFIGS", "MODELS", "InProcessOptions", "run_inprocess"]

MODEL = "credit-risk"
MODELS = {"none": MODEL, "none-again": "bench-aa", "canary": "bench-canary", "shadow-full": "bench-shadow"}
"""The model each configuration calls."""
CONFIGS = tuple(MODELS)
EXPERIMENTS = {"canary": "bench-canary-50", "shadow-full": "bench-shadow-full"}
_DATA_SEED = 12345  # not the demo model's training seed (0): unseen applicants
_NEVER = 10**9
"""``min_samples`` of the bench's experiments: no step and no decision while it measures."""


@dataclass(frozen=True)
class InProcessOptions:
    """How much part 1 measures."""

    rounds: int
    calls: int
    """Timed calls per configuration per round (and mode)."""
    warmup: int
    """Untimed calls per configuration before each round's timed ones."""
    rows: int
    """Distinct applicants the calls cycle through."""
    shadow_delay: float
    seed: int = 0
    """Of the interleaved call order."""
    ready_timeout: float = 900.0


@dataclass
class _Bench:
    platform: Platform
    principal: Principal
    loop: asyncio.AbstractEventLoop
    rows: list[dict[str, Any]]
    rng: np.random.Generator


def run_inprocess(options: InProcessOptions, home: Path, say: Callable[[str], None]) -> dict[str, Any]:
    """Measure the four configurations both ways; returns the segments of each mode and the setup.

    Raises:
        BenchError: The app did not become ready, or an experiment was not picked up.
    """
    from fastapi.testclient import TestClient

    from opsloop.settings import load_settings
    from serving.app import create_app

    settings = load_settings(
        home=home,
        bootstrap_docs=False,
        drift_check_seconds=0,
        # The decider judges from the outcome store on a schedule: work beside the request
        # path, not on it, and a decision would change what is measured mid-run.
        experiment_decide_seconds=0,
    )
    app = create_app(settings)
    say(f"starting the app in this process (home {home}); the first start trains the demo model")
    with TestClient(app) as client:
        _wait_ready(client, options.ready_timeout)
        platform: Platform = app.state.platform
        bench, setup = _prepare(platform, options, home, say)
        try:
            fill = _fill_shadow_queue(bench)
            say(f"shadow queue full after {fill} calls; measuring")
            interleaved = _measure_interleaved(bench, options, say)
            blocked = _measure_blocked(bench, options, say)
            decider = _decider_judge(bench)
            # Last: it feeds the outcome log and the shadow's drop counter calls of its own.
            components = _components(bench, int(setup["shadow"]["challenger"]))
        finally:
            bench.loop.close()
    setup |= {"shadow_fill_calls": fill, "experiment_poll_seconds": settings.experiment_poll_seconds}
    return {
        "setup": setup,
        "interleaved": interleaved,
        "blocked": blocked,
        "components": components,
        "decider": decider,
    }


def _wait_ready(client: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (response := client.get("/readyz")).status_code != 200:
        if time.monotonic() > deadline:
            raise BenchError(f"the app was not ready in {timeout:.0f} s: {response.text}")
        time.sleep(0.5)


def _prepare(
    platform: Platform, options: InProcessOptions, home: Path, say: Callable[[str], None]
) -> tuple[_Bench, dict[str, Any]]:
    """Register the copies and the slow shadow, start both experiments, wait until routed."""
    from opsloop.auth import Role
    from serving.platform import cli_principal
    from tests.integration.challengers import save_wrapper
    from workflows.demo import FEATURE_NAMES, generate_credit_data
    from workflows.promotion import promote
    from workflows.registration import register

    caller = cli_principal()
    registry, audit = platform.registry, platform.audit
    champion = registry.get_alias(MODEL, "champion")
    say(f"registering copies of {MODEL} v{champion.version} ({champion.source}) for each configuration")
    for name in (MODELS["none-again"], MODELS["canary"], MODELS["shadow-full"]):
        copy = register(caller, registry, audit, name, champion.source).version
        promote(caller, registry, audit, name, copy.version)
    twin = register(caller, registry, audit, MODELS["canary"], champion.source).version.version
    folder = save_wrapper(
        f"models:/{MODEL}/{champion.version}", home.parent / "slow-shadow", delay_s=options.shadow_delay
    )
    slow = register(caller, registry, audit, MODELS["shadow-full"], str(folder)).version.version
    key = platform.keys.create("bench", Role.USER, actor="bench")
    principal = platform.keys.authenticate(key.secret.get_secret_value())
    frame = generate_credit_data(options.rows, seed=_DATA_SEED)[list(FEATURE_NAMES)]
    rows: list[dict[str, Any]] = frame.to_dict(orient="records")  # native int, float, str, as JSON gives
    bench = _Bench(platform, principal, asyncio.new_event_loop(), rows, np.random.default_rng(options.seed))
    for model in MODELS.values():  # the first request of a new model loads it: not in the timed calls
        _run(bench.loop, platform.models.predict(principal, model, [rows[0]]))
    _start(bench, EXPERIMENTS["canary"], "canary", MODELS["canary"], twin)
    _start(bench, EXPERIMENTS["shadow-full"], "shadow", MODELS["shadow-full"], slow)
    setup = {
        "models": MODELS,
        "experiments": EXPERIMENTS,
        "champion_source": champion.source,
        "canary": {"model": MODELS["canary"], "challenger": twin, "weight_percent": 50},
        "shadow": {"model": MODELS["shadow-full"], "challenger": slow, "delay_s": options.shadow_delay},
    }
    return bench, setup


def _start(bench: _Bench, name: str, kind: Kind, model: str, challenger: int) -> None:
    """Create the experiment through the service and wait until this process routes it."""
    from serving.platform import cli_principal
    from workflows.experiments.service import ExperimentPlan

    plan = ExperimentPlan(
        name=name,
        kind=kind,
        target_kind="model",
        target=model,
        challenger=str(challenger),
        steps=(50.0, 100.0),  # the canary starts at 50%
        min_samples=_NEVER,
    )
    platform = bench.platform
    platform.experiments.service.create(cli_principal(), plan)
    deadline = time.monotonic() + 120
    while True:
        assignment = platform.experiments.router.assign("model", model, "probe")
        loaded = platform.runtime.challenger(model, challenger)
        if assignment is not None and assignment.experiment == name and loaded is not None:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"experiment {name} was not routed with its challenger loaded in 120 s")
        time.sleep(0.05)


def _dropped(bench: _Bench) -> float:
    value = bench.platform.metrics.registry.get_sample_value(
        "opsloop_experiment_shadow_dropped_total", {"experiment": EXPERIMENTS["shadow-full"]}
    )
    return value or 0.0


def _fill_shadow_queue(bench: _Bench) -> int:
    """Call the shadowed model until its queue drops a copy (it is full); returns the calls that took."""
    service, principal, rows = bench.platform.models, bench.principal, bench.rows
    model, limit = MODELS["shadow-full"], 100_000

    async def hundred(offset: int) -> None:
        for i in range(offset, offset + 100):
            await service.predict(principal, model, [rows[i % len(rows)]], unit=f"fill-{i}")

    calls, before = 0, _dropped(bench)
    while _dropped(bench) == before:
        if calls >= limit:
            raise BenchError(f"the shadow queue did not fill in {limit} calls")
        _run(bench.loop, hundred(calls))
        calls += 100
    return calls


def _run(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, Any]) -> Any:
    return loop.run_until_complete(coroutine)


class _Timer:
    """Timed calls of one configuration in one round: wall and thread CPU ns, and who answered."""

    def __init__(self, size: int) -> None:
        self.wall = np.empty(size, dtype=np.int64)
        self.cpu = np.empty(size, dtype=np.int64)
        self.variant = np.empty(size, dtype="U10")
        self.n = 0

    def segment(self, round_: int, config: str, extra: dict[str, Any]) -> Segment:
        n = self.n
        return Segment(round_, config, self.wall[:n], self.cpu[:n], self.variant[:n], extra)


def _call_args(bench: _Bench, round_: int, total: int) -> tuple[list[list[dict[str, Any]]], list[str]]:
    """The applicants and units of a round: the same for every configuration."""
    start = (round_ - 1) * total
    rows = [[bench.rows[(start + i) % len(bench.rows)]] for i in range(total)]
    units = [f"user-{start + i}" for i in range(total)]
    return rows, units


def _measure_interleaved(
    bench: _Bench, options: InProcessOptions, say: Callable[[str], None]
) -> list[Segment]:
    total = options.warmup + options.calls
    models = [MODELS[c] for c in CONFIGS]
    segments: list[Segment] = []
    for round_ in range(1, options.rounds + 1):
        rows, units = _call_args(bench, round_, total)
        calls = [
            (int(c), i) for i in range(total) for c in bench.rng.permutation(len(CONFIGS))
        ]  # each cycle: the four models once each, in a random order, on the same applicant
        timers = [_Timer(options.calls) for _ in CONFIGS]
        gc.collect()  # every round starts from the same collector state
        dropped = _dropped(bench)
        _run(bench.loop, _timed_calls(bench, calls, models, rows, units, options.warmup, timers))
        shadow = {"copies_dropped": f"{_dropped(bench) - dropped:.0f}/{total}"}
        round_segments = [
            timers[k].segment(round_, c, shadow if c == "shadow-full" else {}) for k, c in enumerate(CONFIGS)
        ]
        segments += round_segments
        say(f"interleaved round {round_}/{options.rounds}: " + _p50s(round_segments))
    return segments


def _measure_blocked(bench: _Bench, options: InProcessOptions, say: Callable[[str], None]) -> list[Segment]:
    total = options.warmup + options.calls
    segments: list[Segment] = []
    for round_ in range(1, options.rounds + 1):
        rows, units = _call_args(bench, round_, total)
        shift = (round_ - 1) % len(CONFIGS)
        round_segments = []
        for config in CONFIGS[shift:] + CONFIGS[:shift]:
            timer = _Timer(options.calls)
            calls = [(0, i) for i in range(total)]
            gc.collect()
            dropped = _dropped(bench)
            timed = _timed_calls(bench, calls, [MODELS[config]], rows, units, options.warmup, [timer])
            _run(bench.loop, timed)
            extra = {}
            if config == "shadow-full":
                extra["copies_dropped"] = f"{_dropped(bench) - dropped:.0f}/{total}"
            round_segments.append(timer.segment(round_, config, extra))
        segments += round_segments
        say(f"blocked round {round_}/{options.rounds}: " + _p50s(round_segments))
    return segments


async def _timed_calls(
    bench: _Bench,
    calls: list[tuple[int, int]],
    models: list[str],
    rows: list[list[dict[str, Any]]],
    units: list[str],
    warmup: int,
    timers: list[_Timer],
) -> None:
    """Predict each ``(model index, call index)`` in turn, timing those past ``warmup``."""
    service, principal = bench.platform.models, bench.principal
    perf, thread = time.perf_counter_ns, time.thread_time_ns
    for k, i in calls:
        c0, t0 = thread(), perf()
        answer = await service.predict(principal, models[k], rows[i], unit=units[i])
        t1, c1 = perf(), thread()
        if i >= warmup:
            timer = timers[k]
            j = timer.n
            timer.wall[j], timer.cpu[j], timer.variant[j] = t1 - t0, c1 - c0, answer.variant
            timer.n = j + 1


def _p50s(segments: list[Segment]) -> str:
    parts = []
    for s in sorted(segments, key=lambda s: CONFIGS.index(s.config)):
        p50 = float(np.percentile(s.wall_ns, 50)) / 1e6
        dropped = f" (dropped {s.extra['copies_dropped']})" if "copies_dropped" in s.extra else ""
        parts.append(f"{s.config} {p50 * 1000:.1f} us{dropped}")
    return ", ".join(parts)


def _components(bench: _Bench, slow: int, calls: int = 5000, repeats: int = 5) -> dict[str, float]:
    """Microseconds per call of each piece an experiment adds to a request, timed alone.

    The best of ``repeats`` loops of ``calls`` calls (the least disturbed), loop included:
    the router's assignment for a model without an experiment, with the canary and with the
    shadow; building a shadow copy and offering it to the full queue (dropped and counted);
    and recording one outcome (three metric updates and the outcome log's queue, with the
    log's writer thread inserting the loop's outcomes meanwhile, as it does under traffic).
    """
    from opsloop.models.shadow import ShadowCopy
    from opsloop.traffic import CHAMPION, Outcome

    router, shadows = bench.platform.experiments.router, bench.platform.experiments.shadows
    units = [f"component-{i}" for i in range(calls)]
    instances, answers = [bench.rows[0]], [0]
    canary, shadow = EXPERIMENTS["canary"], EXPERIMENTS["shadow-full"]

    def assign(model: str) -> Callable[[], None]:
        def run() -> None:
            for unit in units:
                router.assign("model", model, unit)

        return run

    def record() -> None:
        for unit in units:
            router.record(Outcome(canary, CHAMPION, unit, True, 0.05))

    def offer() -> None:
        model = MODELS["shadow-full"]
        for unit in units:
            shadows.offer(ShadowCopy(shadow, model, slow, unit, instances, answers))

    pieces: dict[str, Callable[[], None]] = {
        "assign, no experiment": assign(MODEL),
        "assign, canary": assign(MODELS["canary"]),
        "assign, shadow": assign(MODELS["shadow-full"]),
        "shadow copy to a full queue": offer,
        # Last: the outcome log's writer inserts what it queues, which would slow what follows.
        "record an outcome": record,
    }
    bench.platform.experiments.outcomes.flush()  # the timed calls' outcomes, written before
    out: dict[str, float] = {}
    for name, run in pieces.items():
        best = min(_timed(run) for _ in range(repeats))
        out[name] = best / calls / 1000
    return out


def _timed(run: Callable[[], object]) -> int:
    started = time.perf_counter_ns()
    run()
    return time.perf_counter_ns() - started


def _decider_judge(bench: _Bench, repeats: int = 3) -> dict[str, Any]:
    """How long the decider takes to judge the canary on its outcomes so far (serve: every 2 s).

    The decider is off in this part, so that nothing acts while calls are timed; here its
    :meth:`~workflows.experiments.decider.Decider.judge` (what a tick does per canary, less
    storing the decision) is timed by hand, the best of ``repeats``, and so are the two reads
    it starts with: the experiment's outcomes, and its labelled predictions (a query on the
    prediction log, which holds every prediction of the run).
    """
    from sqlalchemy import func, select

    from opsloop.tables import Prediction

    experiments = bench.platform.experiments
    experiments.outcomes.flush()
    bench.platform.predictions.flush()
    service = experiments.service
    canary = service.store.get(EXPERIMENTS["canary"])
    outcomes = sum(v.requests for v in service.store.samples(canary.name).values())
    with bench.platform.db.read() as session:
        predictions = session.scalar(select(func.count()).select_from(Prediction))
    decisions = []

    def judge() -> None:
        decisions.append(experiments.decider.judge(canary))

    def best(run: Callable[[], object]) -> float:
        return min(_timed(run) for _ in range(repeats)) / 1e6

    return {
        "outcomes": outcomes,
        "predictions_logged": predictions,
        "judge_ms": best(judge),
        "read_outcomes_ms": best(lambda: service.store.samples(canary.name)),
        "read_labels_ms": best(lambda: service.labels.correct(canary.name)),
        "would_decide": decisions[-1].action,
    }
