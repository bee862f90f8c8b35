"""The usage and cost ledger: one row per LLM gateway call, and reports over them.

Every ``POST /v1/chat/completions`` ends in one :class:`LLMCall`: answered, failed, or
abandoned by its client midway (``outcome="disconnected"``, charged for the tokens generated
until the backend stream was closed). Rows are written off the request path by
:class:`opsloop.batch_writer.BatchWriter`, as the query log does; readers call
:meth:`Ledger.flush` first (:meth:`Ledger.report` does), so a call answered a moment ago counts.

Cost is :func:`cost_usd`, a pure function of the serving backend's prices, the tokens it
counted and the time it took; it is computed once, when the call is recorded, so a later
price change does not rewrite history.

This module is kernel: it knows rows, prices and numbers, not routers or HTTP.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import String, case, cast, func, select
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.sql.elements import ColumnElement

from opsloop.auth import Principal
from opsloop.batch_writer import BatchedLog
from opsloop.errors import InvalidInputError
from opsloop.llm.protocol import Usage
from opsloop.llm.routes import BackendSpec
from opsloop.tables import LLMCallRow, utcnow

__all__ = ["GROUPS", "CostRow", "GroupBy", "LLMCall", "Ledger", "Outcome", "cost_usd"]

Outcome = Literal["ok", "error", "disconnected"]
GroupBy = Literal["tenant", "key", "route", "model", "backend", "variant", "day"]
GROUPS: tuple[str, ...] = ("tenant", "key", "route", "model", "backend", "variant", "day")
_COLUMNS: dict[str, ColumnElement[str] | InstrumentedAttribute[str]] = {
    "tenant": LLMCallRow.tenant,
    "key": LLMCallRow.key_id,
    "route": LLMCallRow.route,
    "model": LLMCallRow.model,
    "backend": LLMCallRow.backend,
    # ``experiment:variant``; "" for the calls no experiment made.
    "variant": func.coalesce(LLMCallRow.experiment + ":" + LLMCallRow.variant, ""),
    # ``YYYY-MM-DD`` (UTC): the first ten characters of the time as SQLite and PostgreSQL print it
    "day": func.substr(cast(LLMCallRow.at, String), 1, 10),
}
_MILLION = 1_000_000
_MS_PER_HOUR = 3_600_000


def cost_usd(spec: BackendSpec, usage: Usage, latency_ms: float) -> float:
    """What one call cost on ``spec``, in US dollars.

    The first pricing ``spec`` sets wins:

    1. API prices per million tokens (``input_per_mtok``, ``output_per_mtok``,
       ``cached_per_mtok``): cached prompt tokens are charged at the cached price (the input
       price when no cached price is set) and left out of the input price. An unset price is 0.
    2. ``cost_per_token`` (self-hosted): every prompt and completion token alike.
    3. ``gpu_hour_usd`` (self-hosted): the call's serving time at the GPU's hourly price. Calls
       that share a GPU are each charged their whole time, so this is an upper bound.
    4. Nothing set: 0.

    Args:
        spec: The backend that served the call.
        usage: The tokens the backend counted.
        latency_ms: How long the call took, for GPU-hour pricing.
    """
    if (
        spec.input_per_mtok is not None
        or spec.output_per_mtok is not None
        or spec.cached_per_mtok is not None
    ):
        input_price = spec.input_per_mtok or 0.0
        cached_price = input_price if spec.cached_per_mtok is None else spec.cached_per_mtok
        cached = min(max(usage.cached_tokens, 0), usage.prompt_tokens)
        return (
            (usage.prompt_tokens - cached) * input_price
            + cached * cached_price
            + usage.completion_tokens * (spec.output_per_mtok or 0.0)
        ) / _MILLION
    if spec.cost_per_token is not None:
        return (usage.prompt_tokens + usage.completion_tokens) * spec.cost_per_token
    if spec.gpu_hour_usd is not None:
        return spec.gpu_hour_usd * max(latency_ms, 0.0) / _MS_PER_HOUR
    return 0.0


@dataclass(frozen=True)
class LLMCall:
    """One gateway call: who made it, what served it, what it used and cost, how it ended.

    ``backend`` is the backend that served the call; for a call every backend failed, the last
    one tried ("" when none was). ``model`` is the backend's own model name. ``ttft_ms`` is
    None when no token came back.
    """

    request_id: str
    tenant: str
    key_id: str
    route: str
    backend: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    ttft_ms: float | None
    latency_ms: float
    cost_usd: float
    streamed: bool
    outcome: Outcome
    error_type: str | None = None
    experiment: str | None = None
    """The experiment whose variant made the call (a prompt experiment's answer), if any."""
    variant: str | None = None
    at: datetime = field(default_factory=utcnow)
    id: int | None = None
    """Set on calls read back from the store."""


@dataclass(frozen=True)
class CostRow:
    """Totals of one group of calls (a tenant, key, route, model or backend) in a report."""

    group: str
    calls: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_usd: float
    errors: int
    disconnected: int
    p50_latency_ms: float | None
    p95_latency_ms: float | None

    def to_dict(self) -> dict[str, Any]:
        """The row as plain JSON-ready values."""
        return asdict(self)


class Ledger(BatchedLog[LLMCall]):
    """Batched, asynchronous writes of gateway calls; reports of their usage and cost.

    Its table needs the store migrated to ``0006`` or later; options as :class:`BatchedLog`.
    """

    table = LLMCallRow
    name = "llm-ledger"

    def calls(
        self, *, tenant: str | None = None, since: datetime | None = None, limit: int = 1000
    ) -> list[LLMCall]:
        """The newest calls matching every given filter (at or after ``since``), newest first."""
        self.flush()
        query = select(LLMCallRow)
        if tenant is not None:
            query = query.where(LLMCallRow.tenant == tenant)
        if since is not None:
            query = query.where(LLMCallRow.at >= since)
        with self._db.read() as session:
            rows = session.scalars(query.order_by(LLMCallRow.id.desc()).limit(limit)).all()
        return [_call(row) for row in rows]

    def spent(self, tenant: str, key_id: str | None, since: datetime) -> dict[str, float]:
        """What ``tenant`` (or only its key ``key_id``) used since ``since``, as budgets count it.

        Returns ``requests`` (calls a budget admitted: refused ones are left out), ``tokens``
        and ``usd``. Reads what is written: calls still in the writer's queue are not in it.
        """
        query = select(
            func.count(LLMCallRow.id),
            func.coalesce(func.sum(LLMCallRow.prompt_tokens + LLMCallRow.completion_tokens), 0),
            func.coalesce(func.sum(LLMCallRow.cost_usd), 0.0),
        ).where(
            LLMCallRow.tenant == tenant,
            LLMCallRow.at >= since,
            func.coalesce(LLMCallRow.error_type, "") != "rate_limited",
        )
        if key_id is not None:
            query = query.where(LLMCallRow.key_id == key_id)
        with self._db.read() as session:
            requests, tokens, usd = session.execute(query).one()
        return {"requests": float(requests), "tokens": float(tokens), "usd": float(usd)}

    def report(
        self,
        caller: Principal,
        by: GroupBy,
        since: timedelta,
        tenant: str | None = None,
        *,
        now: datetime | None = None,
    ) -> list[CostRow]:
        """Usage and cost per group over the last ``since``, most expensive first.

        Sums and counts are computed by the database; the latency percentiles are computed
        here from the window's latencies (one float per call), which is cheap for the windows
        a person asks about but grows with them.

        Args:
            caller: Who asks: an admin reads any tenant's calls, anyone else their own tenant's.
            by: Group by tenant, key (id), route (the route that served: a name's alias or an
                experiment's challenger route takes the name's place), model (the backend's),
                backend, experiment variant (``experiment:variant``, "" for calls outside one), or
                UTC day (``YYYY-MM-DD``).
            since: How far back from ``now``.
            tenant: Only this tenant's calls; all tenants when None (admins).
            now: The end of the window (default: now).

        Raises:
            ForbiddenError: A non-admin asked for another tenant's costs.
            InvalidInputError: ``by`` is not a known grouping.
        """
        tenant = caller.scope(tenant, "costs")
        if by not in _COLUMNS:
            raise InvalidInputError(
                f"by must be one of {', '.join(GROUPS)}, got {by!r}", field="by", value=by
            )
        self.flush()
        column = _COLUMNS[by]
        end = now or utcnow()
        where = [LLMCallRow.at >= end - since, LLMCallRow.at <= end]
        if tenant is not None:
            where.append(LLMCallRow.tenant == tenant)
        totals = (
            select(
                column,
                func.count(),
                func.coalesce(func.sum(LLMCallRow.prompt_tokens), 0),
                func.coalesce(func.sum(LLMCallRow.completion_tokens), 0),
                func.coalesce(func.sum(LLMCallRow.cached_tokens), 0),
                func.coalesce(func.sum(LLMCallRow.cost_usd), 0.0),
                func.sum(case((LLMCallRow.outcome == "error", 1), else_=0)),
                func.sum(case((LLMCallRow.outcome == "disconnected", 1), else_=0)),
            )
            .where(*where)
            .group_by(column)
        )
        latencies_query = select(column, LLMCallRow.latency_ms).where(*where)
        with self._db.read() as session:
            groups = session.execute(totals).all()
            latencies: dict[str, list[float]] = defaultdict(list)
            for group, latency in session.execute(latencies_query):
                latencies[group].append(latency)
        rows = []
        for group, calls, prompt, completion, cached, cost, errors, disconnected in groups:
            spread = sorted(latencies[group])
            rows.append(
                CostRow(
                    group=group,
                    calls=int(calls),
                    prompt_tokens=int(prompt),
                    completion_tokens=int(completion),
                    cached_tokens=int(cached),
                    cost_usd=float(cost),
                    errors=int(errors or 0),
                    disconnected=int(disconnected or 0),
                    p50_latency_ms=_percentile(spread, 0.50),
                    p95_latency_ms=_percentile(spread, 0.95),
                )
            )
        return sorted(rows, key=lambda row: (-row.cost_usd, -row.calls, row.group))


def _percentile(ordered: Sequence[float], q: float) -> float | None:
    """The nearest-rank ``q`` quantile of already sorted values; None for none."""
    if not ordered:
        return None
    return float(ordered[max(math.ceil(q * len(ordered)) - 1, 0)])


def _call(row: LLMCallRow) -> LLMCall:
    outcome: Outcome = row.outcome  # type: ignore[assignment]  # written only from Outcome values
    return LLMCall(
        request_id=row.request_id,
        tenant=row.tenant,
        key_id=row.key_id,
        route=row.route,
        backend=row.backend,
        model=row.model,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        cached_tokens=row.cached_tokens,
        ttft_ms=row.ttft_ms,
        latency_ms=row.latency_ms,
        cost_usd=row.cost_usd,
        streamed=row.streamed,
        outcome=outcome,
        error_type=row.error_type,
        experiment=row.experiment,
        variant=row.variant,
        at=row.at,
        id=row.id,
    )
