"""The agents' :class:`~agents.ports.Operations` over this process's services, and the chat service.

Each operation is the call a route or the CLI makes, with the caller passed through (the
services check roles and tenants themselves); nothing here goes over HTTP or runs SQL.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from sqlalchemy import make_url

from agents.planning.slots import Catalog
from opsloop.auth import Principal, Role, system_principal
from opsloop.errors import InvalidInputError, NotFoundError
from opsloop.llm.protocol import ChatMessage, ChatRequest, ChatResult

if TYPE_CHECKING:
    from agents.service import ChatService
    from opsloop.settings import Settings
    from serving.platform import Platform

__all__ = ["ChatHost", "GatewayCompleter", "PlatformOperations", "open_checkpoints"]

CHECKPOINTS_FILE = "checkpoints.sqlite"


class PlatformOperations:
    """The platform's services as the agents' tools call them (``agents.ports.Operations``)."""

    def __init__(self, platform: Platform) -> None:
        self._p = platform

    # -- ml-ops -------------------------------------------------------------------------
    def models(self, caller: Principal) -> list[Any]:
        return self._p.models.served(caller)

    async def describe(self, caller: Principal, model: str) -> Any:
        return await self._p.models.describe(caller, model)

    def champion(self, caller: Principal, model: str) -> int:
        caller.require(Role.VIEWER, "reading a model's champion")
        return self._p.start_registry().get_alias(model, "champion").version

    def signature(self, caller: Principal, model: str, version: int) -> list[tuple[str, str]]:
        caller.require(Role.VIEWER, "reading a model's signature")
        return self._p.registry.input_columns(model, version)

    def promote(self, caller: Principal, model: str, version: int) -> Any:
        from workflows.promotion import promote

        return promote(caller, self._p.registry, self._p.audit, model, version)

    def rollback(self, caller: Principal, model: str) -> Any:
        from workflows.promotion import rollback

        return rollback(caller, self._p.registry, self._p.audit, model)

    def inspect_model(self, caller: Principal, path: str) -> Any:
        from workflows.registration import inspect_source

        return inspect_source(caller, self._p.start_registry(), path)

    async def register(self, caller: Principal, model: str, path: str) -> Any:
        from workflows.registration import register

        # Loading the model to check it takes seconds of CPU: off the serving loop.
        return await asyncio.to_thread(register, caller, self._p.start_registry(), self._p.audit, model, path)

    def start_experiment(self, caller: Principal, plan: Any) -> Any:
        service = self._p.experiments.service
        experiment = service.create(caller, plan)
        return service.show(caller, experiment.name)

    async def wait_routed(self, caller: Principal, name: str, timeout_s: float) -> bool:
        experiment = self._p.experiments.service.get(caller, name)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while asyncio.get_running_loop().time() < deadline:
            assignment = self._p.experiments.router.assign("model", experiment.target, "probe")
            loaded = self._p.runtime.challenger(experiment.target, int(experiment.challenger))
            if assignment is not None and assignment.experiment == name and loaded is not None:
                return True
            await asyncio.sleep(0.1)
        return False

    def experiment(self, caller: Principal, name: str) -> Any:
        self._p.experiments.outcomes.flush()  # the requests just sent (a load test's) count too
        return self._p.experiments.service.show(caller, name)

    def experiments(self, caller: Principal) -> list[Any]:
        return self._p.experiments.service.experiments(caller)

    def end_experiment(self, caller: Principal, name: str, action: str, reason: str) -> Any:
        service = self._p.experiments.service
        if action == "promote":
            return service.promote(caller, name, reason)
        return service.rollback(caller, name, reason)

    def retrain(self, caller: Principal, model: str) -> Mapping[str, Any]:
        retraining = self._p.retraining
        return retraining.start(caller, retraining.request(model)).to_dict()

    # -- infra ----------------------------------------------------------------------------
    def components(self) -> Mapping[str, Any]:
        readiness = self._p.readiness()
        return {
            "ready": readiness.ready,
            "components": dict(readiness.components),
            "why": readiness.why,
            "pending": readiness.pending,
        }

    def queues(self) -> Mapping[str, int]:
        p = self._p
        return {
            "prediction_log": p.predictions.pending,
            "llm_ledger": p.ledger.pending,
            "rag_query_log": p.queries.pending,
            "eval_runs": sum(t.state == "running" for t in p.eval_tasks.visible(system_principal("default"))),
            "retraining_runs": sum(r.status == "running" for r in p.retraining.store.history(limit=50)),
        }

    def stores(self) -> Mapping[str, Any]:
        settings = self._p.settings
        url = settings.db_url
        return {
            "state": {"kind": url.split(":", 1)[0].split("+", 1)[0]},
            "registry": {
                "kind": settings.tracking_uri.split(":", 1)[0],
                "models": len(self._p.start_registry().models()),
            },
            "vectors": {"kind": "qdrant-edge" if settings.vector_store == "edge" else "qdrant"},
        }

    def key(self, caller: Principal, key_id: str) -> Any:
        caller.require(Role.ADMIN, "reading API keys")
        found = [k for k in self._p.keys.list(include_revoked=True) if k.id == key_id]
        if not found:
            raise NotFoundError(f"no key with id {key_id!r}", key_id=key_id)
        return found[0]

    def revoke_key(self, caller: Principal, key_id: str) -> Any:
        caller.require(Role.ADMIN, "revoking API keys")
        return self._p.keys.revoke(key_id, actor=caller.actor)

    # -- performance ------------------------------------------------------------------------
    async def predict_one(self, caller: Principal, model: str, instance: Mapping[str, Any]) -> None:
        await self._p.models.predict(caller, model, [dict(instance)], unit=uuid.uuid4().hex, log=False)

    async def query_one(self, caller: Principal, collection: str, question: str) -> None:
        await self._p.rag.query(caller, question, collection, log_query=False)

    async def complete_one(self, caller: Principal, route: str, prompt: str) -> None:
        request = ChatRequest(messages=[ChatMessage(role="user", content=prompt)], max_tokens=8)
        await self._p.gateway.chat(caller, route, request, request_id=uuid.uuid4().hex)

    # -- quality ------------------------------------------------------------------------------
    def drift(self, caller: Principal, model: str, since: timedelta | None) -> Mapping[str, Any]:
        from workflows.drift_monitor import live_report

        caller.require(Role.OPERATOR, "reading a drift report")
        report = live_report(
            self._p.registry,
            self._p.predictions,
            model,
            tenant=caller.scope(None, "predictions"),
            since=None if since is None else datetime.now(UTC) - since,
            min_rows=self._p.settings.drift_min_rows,
        )
        return report.to_dict()

    def concept_drift(self, caller: Principal, model: str, since: timedelta | None) -> Mapping[str, Any]:
        from workflows.concept_drift import concept_report

        caller.require(Role.OPERATOR, "reading a concept-drift report")
        version = self._p.registry.get_alias(model, "champion").version
        report = concept_report(
            self._p.predictions,
            model,
            version,
            tenant=caller.scope(None, "predictions"),
            since=None if since is None else datetime.now(UTC) - since,
        )
        return report.to_dict()

    def data_quality(self, caller: Principal, model: str, since: timedelta | None) -> Any:
        import pandas as pd

        from workflows.retraining.validation import validate

        caller.require(Role.OPERATOR, "checking the quality of a model's live inputs")
        registry = self._p.start_registry()
        version = registry.get_alias(model, "champion").version
        tenant = caller.scope(None, "predictions")
        start = None if since is None else datetime.now(UTC) - since
        logged = self._p.predictions.recent(model, tenant=tenant, limit=5000, since=start)
        rows = [instance for record in logged for instance in record.inputs]
        if not rows:
            raise NotFoundError(f"no logged predictions of {model!r} to check", model=model, tenant=tenant)
        return validate(
            pd.DataFrame(rows),
            registry.input_columns(model, version),
            registry.reference(model, version),
            None,
            threshold=self._p.settings.retrain_quality_threshold,
            max_duplicates=1.0,  # live traffic repeats itself; a training set should not
            min_rows=self._p.settings.drift_min_rows,
        )

    def query_drift(self, caller: Principal, collection: str, since: timedelta | None) -> Mapping[str, Any]:
        """This window's questions against the window before it, of the caller's tenant."""
        from workflows.query_drift import query_drift

        caller.require(Role.OPERATOR, "reading query drift")
        length = since or timedelta(days=7)
        now = datetime.now(UTC)
        logged = self._p.queries.recent(caller, collection=collection, since=now - 2 * length, limit=5000)
        current = [q.question for q in logged if q.at >= now - length]
        reference = [q.question for q in logged if q.at < now - length]
        if min(len(current), len(reference)) < 20:
            raise InvalidInputError(
                f"query drift needs 20 questions in each window; {collection} has {len(reference)} in the"
                f" {length} before and {len(current)} in the last {length}",
                field="window",
            )
        embedder = self._p.rag.embedder
        report = query_drift(embedder.embed(reference), embedder.embed(current))
        return {
            "collection": collection,
            "reference": len(reference),
            "current": len(current),
            **report.to_dict(),
        }

    def eval_jobs(self, caller: Principal) -> list[Any]:
        return [] if self._p.evals is None else self._p.evals.jobs(caller)

    async def run_eval(
        self, caller: Principal, job: str | None, collection: str | None, prompt_version: int | None
    ) -> Mapping[str, Any]:
        evals = self._p.evals
        jobs = [] if evals is None else evals.jobs(caller)
        by_collection = (j["name"] for j in self._p.settings.eval_jobs if j.get("collection") == collection)
        chosen = job or next(by_collection, None)
        if evals is None or chosen is None:
            raise NotFoundError(
                f"no eval job {repr(job) if job else 'for collection ' + repr(collection)}; configure one"
                " in eval_jobs (known: " + (", ".join(j.name for j in jobs) or "none") + ")",
                job=job,
            )
        status = await evals.trigger(
            caller, chosen, prompt=None if prompt_version is None else str(prompt_version)
        )
        return {
            "job": chosen,
            "prompt": prompt_version,
            "outcome": status.last_outcome,
            "run_id": status.last_run_id,
            "scores": status.last_scores,
            "passed": status.last_outcome == "ok",
        }

    async def ask(self, caller: Principal, question: str, collection: str) -> Any:
        return await self._p.rag.query(caller, question, collection)

    # -- cost ---------------------------------------------------------------------------------
    def costs(
        self, caller: Principal, by: str, since: timedelta, tenant: str | None, until: datetime | None = None
    ) -> list[Any]:
        caller.require(Role.OPERATOR, "reading LLM costs")
        return self._p.ledger.report(caller, by, since, tenant, now=until)  # type: ignore[arg-type]

    def budgets(self, caller: Principal, tenant: str) -> list[Any]:
        caller.require(Role.ADMIN, "reading budgets")
        return self._p.enforcer.usage(self._p.budgets.list(tenant=tenant))

    def set_budget(self, caller: Principal, tenant: str, kind: str, limit: float, key_id: str | None) -> Any:
        caller.require(Role.ADMIN, "setting budgets")
        return self._p.budgets.set(tenant, kind, limit, key_id=key_id, actor=caller.actor)

    def route_scores(self, caller: Principal) -> Mapping[str, Mapping[str, float]]:
        settings = self._p.settings
        answering = settings.rag_llm_route or next(iter(settings.llm_routes), "")
        routes = {job["name"]: job.get("route") or answering for job in settings.eval_jobs}
        scores: dict[str, dict[str, float]] = {}
        for status in self.eval_jobs(caller):
            if status.last_scores:
                scores.setdefault(routes[status.name], {}).update(status.last_scores)
        return scores

    # -- the planner's catalog -----------------------------------------------------------------
    def catalog(self, caller: Principal) -> Catalog:
        from rag.catalog import CollectionCatalog

        p = self._p
        registry = p.start_registry()
        collections = tuple(c.name for c in CollectionCatalog(p.db).list(caller.tenant))
        tenants = (
            tuple(sorted({k.tenant for k in p.keys.list()}))
            if caller.role >= Role.ADMIN
            else (caller.tenant,)
        )
        jobs = tuple(j.name for j in self.eval_jobs(caller)) if caller.role >= Role.OPERATOR else ()
        return Catalog(
            models=tuple(registry.models()),
            collections=collections,
            tenants=tenants,
            prompts=tuple(registry.prompts()),
            jobs=jobs,
            routes=tuple(p.settings.llm_routes),
        )


class GatewayCompleter:
    """The LLM planner's calls, through the gateway route the settings name, as the caller."""

    def __init__(self, platform: Platform, route: str) -> None:
        self._platform = platform
        self._route = route

    async def complete(self, caller: Principal, request: ChatRequest) -> ChatResult:
        """One completion: admitted by the caller's budgets, recorded in the ledger."""
        routed = await self._platform.gateway.chat(caller, self._route, request, request_id=uuid.uuid4().hex)
        return routed.result


class ChatHost:
    """The process's chat service, built on first use on the serving loop, and its checkpointer."""

    def __init__(self, platform: Platform) -> None:
        self._platform = platform
        self._service: ChatService | None = None
        self._close: Callable[[], Awaitable[None]] | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> ChatService:
        """The chat service; the first call opens the checkpoints and trains the planner (seconds)."""
        async with self._lock:
            if self._service is None:
                self._service = await self._build()
            return self._service

    async def _build(self) -> ChatService:
        from agents.context import Planner
        from agents.performance.context import limits
        from agents.planning.llm import LLMPlanner
        from agents.planning.offline import OfflinePlanner
        from agents.service import ChatService
        from rag.embedder import SentenceTransformerEmbedder

        platform = self._platform
        settings = platform.settings
        saver, self._close = await open_checkpoints(settings)
        rules = OfflinePlanner(SentenceTransformerEmbedder())
        await asyncio.to_thread(lambda: rules.classifier)  # trained off the loop
        planner: Planner = rules
        if settings.chat_planner == "llm" and settings.chat_planner_route is not None:
            planner = LLMPlanner(GatewayCompleter(platform, settings.chat_planner_route), rules)
        return ChatService(
            PlatformOperations(platform),
            planner,
            saver,
            limits={"performance": limits(platform.settings)},
            audit=platform.audit.append,
            metrics=platform.metrics.chat,
            approver_must_differ=platform.settings.chat_approver_must_differ,
            tracer=platform.tracer,
        )

    async def aclose(self) -> None:
        """Close the checkpoints' connections (an open SQLite one's thread keeps the process alive)."""
        if self._close is not None:
            await self._close()
            self._close, self._service = None, None


async def open_checkpoints(
    settings: Settings,
) -> tuple[BaseCheckpointSaver[Any], Callable[[], Awaitable[None]]]:
    """LangGraph's saver beside the state store, and how to close it.

    SQLite (``$OPSLOOP_HOME/checkpoints.sqlite``) by default; the PostgreSQL saver, on a pool
    of connections to the same database, when the state store is PostgreSQL.
    """
    url = make_url(settings.db_url)
    if url.get_backend_name() == "postgresql":
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
        from psycopg.rows import dict_row
        from psycopg_pool import AsyncConnectionPool

        conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            conninfo,
            open=False,
            max_size=4,
            kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row},
        )
        await pool.open()
        postgres = AsyncPostgresSaver(pool)
        await postgres.setup()
        return postgres, pool.close
    import aiosqlite
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    connection = await aiosqlite.connect(settings.home / CHECKPOINTS_FILE)
    sqlite = AsyncSqliteSaver(connection)
    await sqlite.setup()
    return sqlite, connection.close
