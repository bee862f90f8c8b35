"""What the agents need from the platform: typed operations, wired by ``serving/``.

Every tool calls one of these, in-process, with the caller's :class:`Principal`: the same
service functions the HTTP routes and the CLI call, so the agent can do exactly what its caller
could do through the API (each operation checks the role and the tenant itself). Results are
the services' own typed objects; the tools turn them into JSON for the graph's state.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from agents.planning.slots import Catalog
from opsloop.auth import Principal

if TYPE_CHECKING:
    from evals.schedule import JobStatus
    from opsloop.auth import KeyInfo
    from opsloop.budgets import Budget
    from opsloop.budgets.enforcer import BudgetUsage
    from opsloop.llm.ledger import CostRow
    from opsloop.models.service import ModelDescription, ServedModel
    from rag.service import QueryResult
    from workflows.experiments.service import ExperimentPlan, ExperimentReport
    from workflows.experiments.store import Experiment
    from workflows.promotion import AliasMove
    from workflows.registration import Registration, SourceInfo
    from workflows.retraining.validation import ValidationReport

__all__ = ["Operations"]


class Operations(Protocol):
    """The platform's operations, as the agents' tools call them."""

    # -- models (ml-ops) --------------------------------------------------------------
    def models(self, caller: Principal) -> list[ServedModel]:
        """The served models with their champion versions (``ServedModel``)."""
        ...

    async def describe(self, caller: Principal, model: str) -> ModelDescription:
        """A model's versions, champion and input schema (``ModelDescription``)."""
        ...

    def champion(self, caller: Principal, model: str) -> int:
        """The version the registry's champion alias points at now."""
        ...

    def signature(self, caller: Principal, model: str, version: int) -> list[tuple[str, str]]:
        """A version's input columns and their types, from its registered signature."""
        ...

    def promote(self, caller: Principal, model: str, version: int) -> AliasMove:
        """Point the champion alias at ``version`` (``AliasMove``); audited."""
        ...

    def rollback(self, caller: Principal, model: str) -> AliasMove:
        """Point the champion back at its version before (``AliasMove``); audited."""
        ...

    def inspect_model(self, caller: Principal, path: str) -> SourceInfo:
        """What the MLflow model folder at ``path`` holds, from its MLmodel file (nothing loaded)."""
        ...

    async def register(self, caller: Principal, model: str, path: str) -> Registration:
        """Register the model folder at ``path`` as the next version of ``model``; audited."""
        ...

    # -- experiments and retraining (ml-ops) ------------------------------------------
    def start_experiment(self, caller: Principal, plan: ExperimentPlan) -> ExperimentReport:
        """Start an ``ExperimentPlan``; returns its ``ExperimentReport``."""
        ...

    async def wait_routed(self, caller: Principal, name: str, timeout_s: float) -> bool:
        """Until this process routes a model experiment's traffic and has its challenger loaded."""
        ...

    def experiment(self, caller: Principal, name: str) -> ExperimentReport:
        """An experiment's ``ExperimentReport``."""
        ...

    def experiments(self, caller: Principal) -> list[Experiment]:
        """The caller's tenant's experiments (``Experiment``), newest first."""
        ...

    def end_experiment(self, caller: Principal, name: str, action: str, reason: str) -> Experiment:
        """``promote`` or ``rollback`` an experiment; returns the ``Experiment``."""
        ...

    def retrain(self, caller: Principal, model: str) -> Mapping[str, Any]:
        """Start retraining ``model`` in the background; the run's record once it has begun."""
        ...

    # -- infra --------------------------------------------------------------------------
    def components(self) -> Mapping[str, Any]:
        """Each component's readiness (``ComponentState``) and whether the whole is ready."""
        ...

    def queues(self) -> Mapping[str, int]:
        """Depth of each in-process queue and count of each running background job."""
        ...

    def stores(self) -> Mapping[str, Any]:
        """The state store, registry and vector store: kind, location, schema revision."""
        ...

    def key(self, caller: Principal, key_id: str) -> KeyInfo:
        """One API key's tenant, role, name and state (admins)."""
        ...

    def revoke_key(self, caller: Principal, key_id: str) -> KeyInfo:
        """Revoke an API key (admins); audited."""
        ...

    # -- performance --------------------------------------------------------------------
    async def predict_one(self, caller: Principal, model: str, instance: Mapping[str, Any]) -> None:
        """One prediction of ``instance``, as ``POST /predict`` makes it (kept out of the log)."""
        ...

    async def query_one(self, caller: Principal, collection: str, question: str) -> None:
        """One answered query of ``collection``, as ``POST /query`` makes it."""
        ...

    async def complete_one(self, caller: Principal, route: str, prompt: str) -> None:
        """One chat completion through the gateway ``route``, as ``POST /v1/chat/completions``."""
        ...

    # -- quality ------------------------------------------------------------------------
    def drift(self, caller: Principal, model: str, since: timedelta | None) -> Mapping[str, Any]:
        """The data-drift report of the caller's tenant's traffic of ``model``."""
        ...

    def concept_drift(self, caller: Principal, model: str, since: timedelta | None) -> Mapping[str, Any]:
        """ADWIN's change points of the champion's error rate."""
        ...

    def data_quality(self, caller: Principal, model: str, since: timedelta | None) -> ValidationReport:
        """The caller's tenant's live inputs of ``model`` checked against its schema and reference."""
        ...

    def query_drift(self, caller: Principal, collection: str, since: timedelta | None) -> Mapping[str, Any]:
        """Drift of the caller's tenant's queries of ``collection`` against its reference."""
        ...

    def eval_jobs(self, caller: Principal) -> list[JobStatus]:
        """The scheduled eval jobs the caller may see (``JobStatus``)."""
        ...

    async def run_eval(
        self, caller: Principal, job: str | None, collection: str | None, prompt_version: int | None
    ) -> Mapping[str, Any]:
        """Run an eval job (or the first job of ``collection``), answering with its scores and gate."""
        ...

    async def ask(self, caller: Principal, question: str, collection: str) -> QueryResult:
        """A RAG answer with its sources (``QueryResult``)."""
        ...

    # -- cost ---------------------------------------------------------------------------
    def costs(
        self, caller: Principal, by: str, since: timedelta, tenant: str | None, until: datetime | None = None
    ) -> list[CostRow]:
        """The ledger's usage and cost per group (``CostRow``) over ``since`` up to ``until`` (now)."""
        ...

    def budgets(self, caller: Principal, tenant: str) -> list[BudgetUsage]:
        """A tenant's budgets and rate limits with what their current windows used (admins)."""
        ...

    def set_budget(
        self, caller: Principal, tenant: str, kind: str, limit: float, key_id: str | None
    ) -> Budget:
        """Create or change one budget or rate limit of a tenant or one of its keys (admins); audited."""
        ...

    def route_scores(self, caller: Principal) -> Mapping[str, Mapping[str, float]]:
        """Per LLM route, the mean scores of the last run of each eval job that answers with it."""
        ...

    # -- the catalog the planner reads ------------------------------------------------
    def catalog(self, caller: Principal) -> Catalog:
        """The names a request of ``caller`` may mention (models, collections, tenants, prompts, ...)."""
        ...
