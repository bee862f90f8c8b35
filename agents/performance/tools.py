"""The performance agent's tools: bounded load tests and the SLO check of a canary.

A load test drives the same service call a route makes (``/predict``, ``/query`` or
``/v1/chat/completions``), in-process and as the caller, with a count and a time limit (never
open-ended), and keeps its synthetic traffic out of the prediction and query logs (it would
read as drift). It reports latency percentiles and throughput against the SLO.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from agents.tools import Outcome, ToolCall, jsonable, tool
from opsloop.auth import Role
from opsloop.errors import InvalidInputError, OpsloopError

__all__ = ["TOOLS", "LoadResult", "load_test", "run_load", "slo_check"]

QUESTION = "How do I check that the platform is ready?"
"""What a load test of ``/query`` asks: any question exercises retrieval and the answer."""


@dataclass(frozen=True)
class LoadResult:
    """What a bounded load test measured."""

    requests: int
    errors: int
    seconds: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    error_types: dict[str, int]
    stopped_early: bool
    """The time limit ended it before every request was sent."""

    @property
    def throughput(self) -> float:
        """Answered requests per second."""
        return (self.requests - self.errors) / self.seconds if self.seconds > 0 else 0.0


async def run_load(
    fire: Callable[[], Awaitable[None]], requests: int, concurrency: int, max_seconds: float
) -> LoadResult:
    """Send ``requests`` calls of ``fire``, ``concurrency`` at a time, stopping at ``max_seconds``."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    sent = 0
    started = time.perf_counter()
    deadline = started + max_seconds

    async def worker() -> None:
        nonlocal sent
        while sent < requests and time.perf_counter() < deadline:
            sent += 1
            began = time.perf_counter()
            try:
                await fire()
            except OpsloopError as exc:
                errors[exc.type] = errors.get(exc.type, 0) + 1
            else:
                latencies.append((time.perf_counter() - began) * 1000)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    done = np.array(latencies) if latencies else None
    p50, p95, p99 = (
        (None, None, None) if done is None else (float(np.percentile(done, q)) for q in (50, 95, 99))
    )
    return LoadResult(sent, sum(errors.values()), seconds, p50, p95, p99, errors, sent < requests)


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g} ms"


@tool("performance", role=Role.OPERATOR)
async def load_test(
    call: ToolCall,
    model: str | None = None,
    collection: str | None = None,
    route: str | None = None,
    requests: int = 200,
    concurrency: int = 8,
) -> Outcome:
    """A bounded load test of /predict, /query or /v1 with latency percentiles against the SLO."""
    limits = call.limits
    requests = min(requests, limits["max_requests"])
    concurrency = max(1, min(concurrency, limits["max_concurrency"], requests))
    if model is not None:
        target, slo = f"/predict/{model}", limits["slo_predict_p99_ms"]
        instance = (await call.ops.describe(call.caller, model)).example  # the model's own example

        async def fire() -> None:
            await call.ops.predict_one(call.caller, model, instance)
    elif collection is not None:
        target, slo = f"/query ({collection})", limits["slo_query_p99_ms"]

        async def fire() -> None:
            await call.ops.query_one(call.caller, collection, QUESTION)
    elif route is not None:
        target, slo = f"/v1/chat/completions ({route})", limits["slo_chat_p99_ms"]

        async def fire() -> None:
            await call.ops.complete_one(call.caller, route, f"Say OK. ({uuid.uuid4().hex[:6]})")
    else:
        raise InvalidInputError("name a model, a collection or a route to load-test", field="model")

    result = await run_load(fire, requests, concurrency, limits["max_seconds"])
    error_rate = result.errors / result.requests if result.requests else 0.0
    holds = result.p99_ms is not None and result.p99_ms <= slo and error_rate <= limits["slo_error_rate"]
    summary = (
        f"{target}: {result.requests} requests at concurrency {concurrency} in {result.seconds:.3g} s,"
        f" {result.throughput:.4g} req/s, p50 {_ms(result.p50_ms)}, p95 {_ms(result.p95_ms)},"
        f" p99 {_ms(result.p99_ms)} (SLO {slo:g} ms), errors {result.errors}"
        f" ({error_rate:.1%}, SLO {limits['slo_error_rate']:.0%})"
        + ("; stopped at the time limit" if result.stopped_early else "")
        + ("" if holds else "; the SLO does not hold")
    )
    details = {
        **jsonable(result),
        "throughput": result.throughput,
        "target": target,
        "concurrency": concurrency,
        "slo_p99_ms": slo,
        "slo_error_rate": limits["slo_error_rate"],
        "error_rate": error_rate,
        "holds": holds,
    }
    return Outcome(summary, details, "ok" if holds else "failed")


@tool("performance", role=Role.VIEWER)
async def slo_check(call: ToolCall, name: str) -> Outcome:
    """Whether a running canary holds: not ended badly, its challenger's errors and p99 within the SLO."""
    report = call.ops.experiment(call.caller, name)
    challenger = next((v for v in report.variants if v.name == "challenger"), None)
    result = {
        "experiment": name,
        "status": report.status,
        "challenger": jsonable(challenger),
        "decision": jsonable(report.decision),
    }
    if report.status in ("rolled_back", "stopped", "failed"):
        return Outcome(
            f"{name} is {report.status}: {(report.decision or {}).get('reason', '')}", result, "failed"
        )
    if challenger is None or challenger.requests == 0:
        return Outcome(f"{name} ({report.status}): no challenger request yet to judge", result, "failed")
    slo = call.limits["slo_predict_p99_ms"]
    breaches = []
    if challenger.error_rate > call.limits["slo_error_rate"]:
        breaches.append(f"error rate {challenger.error_rate:.1%}")
    if challenger.p99_ms is not None and challenger.p99_ms > slo:
        breaches.append(f"p99 {challenger.p99_ms:.1f} ms > {slo:g} ms")
    summary = (
        f"{name} ({report.status}): challenger {challenger.requests} requests, error rate"
        f" {challenger.error_rate:.1%}, p99 {_ms(challenger.p99_ms)}"
    )
    if breaches:
        return Outcome(summary + "; breaches: " + ", ".join(breaches), result, "failed")
    return Outcome(summary + "; within the SLO", result)


TOOLS = (load_test, slo_check)
