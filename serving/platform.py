"""The composition root: builds every component of one opsloop process from Settings."""

from __future__ import annotations

import asyncio
import fcntl
import gc
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opsloop.audit import AuditLog
from opsloop.auth import KeyStore, Principal, system_principal
from opsloop.budgets import BudgetEnforcer, BudgetStore, InProcessCounters, RedisCounters
from opsloop.db import Database
from opsloop.errors import ConflictError
from opsloop.llm.ledger import Ledger
from opsloop.models.runtime import LoadedModel, LoadFailure, ModelRuntime
from opsloop.models.service import ModelService
from opsloop.predictions import PredictionLog
from opsloop.privacy import PrivacyPolicies, Redactor, trace_redactor
from opsloop.registry import Registry
from opsloop.settings import Settings
from opsloop.telemetry import Metrics
from opsloop.trace_export import ExportConfig, ProcessExporter
from opsloop.tracing import Tracer
from rag.catalog import CollectionCatalog
from rag.query_log import QueryLog
from serving.experiment_wiring import Experiments
from serving.local import cli_actor, cli_principal, local_url, prepare_home  # the CLI's caller: re-exported
from serving.logs import quiet_mlflow
from serving.retraining_wiring import Retraining
from serving.shared_store import server_token, worker_store
from serving.startup import (
    ComponentState,
    FileProgress,
    Readiness,
    Startup,
    Ticker,
    plural,
    reason,
    versions,
)
from workflows.drift_monitor import DriftMonitor

if TYPE_CHECKING:
    from evals.schedule import EvalScheduler
    from evals.tasks import EvalTasks
    from opsloop.llm.gateway import Gateway
    from opsloop.llm.protocol import LLMClient
    from opsloop.scheduler import Job, Scheduler
    from opsloop.traffic import ExperimentVariant
    from rag.service import RagService

__all__ = [
    "DOCS_COLLECTION",
    "DOCS_TENANT",
    "Platform",
    "bundled_docs",
    "cli_actor",
    "cli_principal",
]

log = logging.getLogger("opsloop")

DOCS_TENANT = "default"
DOCS_COLLECTION = "docs"
"""Where ``bootstrap_docs`` keeps the bundled user docs: the first admin key's tenant."""


def bundled_docs() -> Path:
    """The user documentation shipped beside the packages (``docs/`` of the source tree)."""
    return Path(__file__).resolve().parent.parent / "docs"


def _preload_evals() -> None:
    from evals.scoring import preload

    try:
        preload()
    except Exception:  # the first run imports them again and reports what fails, where it is seen
        log.warning("preloading ragas for the scheduled evals failed", exc_info=True)


@dataclass
class Platform:
    """Every long-lived component, built once per process and passed down explicitly."""

    settings: Settings
    db: Database
    audit: AuditLog
    keys: KeyStore
    registry: Registry
    runtime: ModelRuntime
    predictions: PredictionLog
    models: ModelService
    drift: DriftMonitor
    metrics: Metrics
    queries: QueryLog
    ledger: Ledger
    budgets: BudgetStore
    enforcer: BudgetEnforcer
    experiments: Experiments
    retraining: Retraining
    tracer: Tracer = field(default_factory=lambda: Tracer(None))
    """Records traces and exports them to MLflow (off unless ``tracing`` is set)."""
    privacy: PrivacyPolicies = field(default_factory=PrivacyPolicies)
    """The PII policy of each tenant and route (the ``pii_*`` settings)."""
    redactor: Redactor = field(default_factory=Redactor)
    """Finds and replaces PII for the query log, traces and redacted gateway calls."""
    startup: Startup = field(default_factory=lambda: Startup(log))
    """Each component's state while it starts: what ``/readyz`` and the start-up log lines say."""
    _starting: list[threading.Thread] = field(default_factory=list)
    scheduler: Scheduler | None = None
    """The one scheduler of every periodic job, while serving."""
    _rag: RagService | None = None
    _gateway: Gateway | None = None
    evals: EvalScheduler | None = None
    """The eval schedules, while serving with ``eval_jobs``."""
    local_token: str | None = None
    """Set while serving: the CLI presents it (from the store's lock file) to act through this server."""
    _eval_tasks: EvalTasks | None = None
    _rag_lock: threading.Lock = field(default_factory=threading.Lock)
    _gateway_lock: threading.Lock = field(default_factory=threading.Lock)
    _registry_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def build(cls, settings: Settings) -> Platform:
        """Construct the components; nothing opens until start_store() and start_serving()."""
        db = Database(settings.db_url)
        audit = AuditLog(db)
        keys = KeyStore(db, audit, cache_seconds=settings.key_cache_seconds)
        registry = Registry(settings.tracking_uri, settings.artifact_root)
        metrics = Metrics(hash_tenants=not settings.metrics_tenant_names)

        def swapped(model: LoadedModel) -> None:
            metrics.models.champion.labels(model.name).set(model.version)
            metrics.models.load_failing.labels(model.name).set(0)

        def load_failed(failure: LoadFailure) -> None:
            metrics.models.load_failures.labels(failure.name).inc()
            metrics.models.load_failing.labels(failure.name).set(1)

        def dropped(name: str) -> None:
            # 0, not removed series: removal is not implemented for multi-process metrics.
            metrics.models.champion.labels(name).set(0)
            metrics.models.load_failing.labels(name).set(0)

        runtime = ModelRuntime(
            registry,
            poll_seconds=settings.model_poll_seconds,
            on_swap=swapped,
            on_load_failed=load_failed,
            on_drop=dropped,
        )
        predictions = PredictionLog(
            db, on_dropped=metrics.models.log_dropped.inc, on_written=metrics.models.log_written.inc
        )
        experiments = Experiments.build(
            db,
            registry,
            audit,
            runtime,
            metrics.experiments,
            poll_seconds=settings.experiment_poll_seconds,
            max_instances=settings.max_instances,
            routes=settings.llm_routes,
        )
        models = ModelService(
            runtime,
            registry,
            predictions,
            metrics.models,
            max_instances=settings.max_instances,
            traffic=experiments.router,
            shadows=experiments.shadows,
        )
        drift = DriftMonitor(
            db, registry, predictions, audit, metrics.drift,
            last=settings.drift_last, min_rows=settings.drift_min_rows,
        )  # fmt: skip
        privacy = PrivacyPolicies.from_settings(settings)
        redactor = Redactor()
        queries = QueryLog(db, redact=trace_redactor(privacy, redactor))
        ledger = Ledger(db, on_dropped=metrics.llm.ledger_dropped.inc)
        budgets = BudgetStore(db, audit, cache_seconds=settings.budget_cache_seconds)
        counters = RedisCounters(settings.redis_url) if settings.redis_url else InProcessCounters()
        enforcer = BudgetEnforcer(
            budgets, counters, audit=audit, metrics=metrics.budgets, history=ledger.spent
        )
        retraining = Retraining.build(
            settings, db, registry, predictions, audit, experiments.service, metrics.retraining
        )
        drift.subscribe(retraining.triggers.on_drift)
        drift.subscribe_concept(retraining.triggers.on_concept)
        tracer = Tracer(
            ProcessExporter(
                ExportConfig(
                    settings.tracking_uri,
                    settings.tracing_experiment,
                    artifact_root=settings.artifact_root,
                    otlp_endpoint=settings.tracing_otlp_endpoint,
                    privacy=privacy.to_dict(),
                ),
                max_in_flight=settings.tracing_max_pending,
                on_dropped=metrics.traces_dropped.inc,
                on_failed=metrics.trace_export_failures.inc,
            )
            if settings.tracing
            else None,
            max_pending=settings.tracing_max_pending,
            on_dropped=metrics.traces_dropped.inc,
            on_failed=metrics.trace_export_failures.inc,
        )
        return cls(
            settings, db, audit, keys, registry, runtime, predictions, models, drift, metrics, queries,
            ledger, budgets, enforcer, experiments, retraining,
            tracer=tracer, privacy=privacy, redactor=redactor,
        )  # fmt: skip

    def start_store(self) -> Platform:
        """Create ``home``, open the database and migrate it; enough for the CLI's key commands.

        ``home`` is created owner-only (0700) and the SQLite databases in it 0600: they hold key
        hashes, every tenant's ledger and audit log. MLflow's file is created here, before
        MLflow opens it, because MLflow would leave its mode to the umask.
        """
        prepare_home(self.settings)  # shared with serving.local, which the CLI's store commands open
        self.startup.begin("store", "migrating the database")
        self.db.start().upgrade()
        self.metrics.retraining.runs.source = self.retraining.store.counts
        summary = None
        if log.isEnabledFor(logging.INFO):  # a count for the start-up line; the CLI's commands skip it
            keys = len(self.keys.list())
            summary = f"{self.db.engine.dialect.name}, {plural(keys, 'key')}"
        self.startup.ready("store", summary)
        return self

    def start_serving(self) -> None:
        """Start what the server needs beyond the store; models load in the background.

        Call it from the server's event loop: the scheduler fires its jobs there.
        """
        self.predictions.start()
        self.startup.begin("registry", "opening the MLflow store")
        self.startup.begin("models", "waiting for the registry")
        if self.settings.bootstrap_docs:  # before the thread runs: /readyz waits for the docs
            self.startup.begin("rag", "opening the vector store")
        self.startup.all_begun()
        self.local_token = server_token()
        routes = self.gateway.routes()  # built now (SDK imports included), not by a first request
        log.info("gateway ready (%s: %s)", plural(len(routes), "route"), ", ".join(routes))
        for target, name in ((self._start_models, "models-start"), (self._start_rag, "rag-start")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._starting.append(thread)
        self._start_scheduler()

    def _start_scheduler(self) -> None:
        """One scheduler for every periodic job (:meth:`periodic_jobs`) and the experiment decider.

        Replicas sharing the store run each fire of a periodic job once (``opsloop.job_runs``).
        With ``scheduler_enabled`` off (Kubernetes CronJobs run ``opsloop jobs run`` instead) only
        the decider runs here: it judges every few seconds under a lease of its own.
        """
        from opsloop.job_runs import JobRuns
        from opsloop.scheduler import Scheduler

        self.scheduler = Scheduler(JobRuns(self.db))
        self.experiments.run_evals(self, self.eval_tasks, asyncio.get_running_loop())
        if self.settings.experiment_decide_seconds > 0:
            decide_every = self.settings.experiment_decide_seconds
            self.scheduler.every("experiment-decider", decide_every, self._decide, once=False)
        # Models load in the background; until they have, a drift check finds nothing to check.
        jobs = self.periodic_jobs(lambda: list(self.runtime.loaded()))
        if self.settings.scheduler_enabled:
            for job_id, job in jobs.items():
                self.scheduler.add(job_id, job)
        if self.evals is not None:
            self.evals.attach(self.scheduler if self.settings.scheduler_enabled else None)
        self.scheduler.start()
        log.info("scheduler started (%s)", ", ".join(self.scheduler.jobs()) or "no periodic jobs")

    def periodic_jobs(self, models: Callable[[], list[str]]) -> dict[str, Job]:
        """The periodic jobs by id: what ``opsloop serve`` schedules and ``opsloop jobs run`` runs once.

        ``drift-checks`` (every ``drift_check_seconds``; 0: none), ``retraining``
        (``retrain_schedule``), and ``eval:NAME`` for each of ``eval_jobs``.

        Args:
            models: The models the drift checks and retraining go over (a server: the ones it
                has loaded; a one-shot run: the registry's champions).
        """
        from evals.schedule import EvalScheduler, parse_jobs
        from opsloop.scheduler import Job

        jobs: dict[str, Job] = {}
        if self.settings.drift_check_seconds > 0:
            drift = self.drift
            checks = self.settings.drift_check_seconds
            jobs["drift-checks"] = Job.blocking(lambda: drift.check_all(models()), seconds=checks)
        if self.settings.retrain_schedule:
            triggers = self.retraining.triggers
            schedule = self.settings.retrain_schedule
            jobs["retraining"] = Job.blocking(lambda: triggers.on_schedule(models()), cron=schedule)
        eval_jobs = parse_jobs(self.settings.eval_jobs)
        if eval_jobs and self.evals is None:
            from serving.eval_wiring import job_executor

            self.evals = EvalScheduler(eval_jobs, job_executor(self), self.metrics.evals, self.audit)
            threading.Thread(target=_preload_evals, name="eval-preload", daemon=True).start()
        if self.evals is not None:
            jobs.update(self.evals.periodic())
        return jobs

    def _decide(self) -> None:
        """Judge the running experiments, once the models (and the registry that moves aliases) are up."""
        if self.components.get("models") == "ready":
            self.experiments.decider.tick()

    def _start_models(self) -> None:
        try:
            self.start_registry()
            self.startup.ready("registry", f"MLflow, {plural(len(self.registry.models()), 'model')}")
            if self.settings.bootstrap_demo:
                from workflows.demo import bootstrap_demo

                self.startup.doing("models", "looking for the demo model")
                info = bootstrap_demo(
                    self.registry,
                    self.audit,
                    self.settings.home / "bootstrap.lock",
                    progress=lambda step: self.startup.doing("models", f"training the demo model: {step}"),
                )
                if info is not None:
                    log.info("registered the demo model %s version %s as champion", info.name, info.version)
            champions = self.registry.alias_versions(self.runtime.alias)
            listed = f" ({versions(champions)})" if champions else ""
            self.startup.doing("models", f"loading {plural(len(champions), 'champion')}{listed}")
            self.runtime.start()
            self.experiments.start()  # challengers load beside the champions started above
            # Move everything loaded so far (MLflow, scikit-learn, the models) out of the
            # collector's reach: full collections of that heap stalled requests 200-300 ms.
            gc.collect()
            gc.freeze()
            # A full collection runs once the objects that survived younger ones grow by a
            # quarter of those its last one kept, and frozen objects do not count there: under
            # load that was one 7-13 ms stall a second. A hundred times rarer now; reference
            # cycles on the request path are broken by hand (opsloop.tracing) and die young.
            gc.set_threshold(*gc.get_threshold()[:2], 1000)
            served = {name: model.version for name, model in self.runtime.loaded().items()}
            summary = f"serving {versions(served)}" if served else "no champion to serve"
            failing = len(self.runtime.failures())
            if failing:
                summary += f"; {failing} cannot load, see /readyz"
            self.startup.ready("models", summary)
        except Exception as exc:
            log.exception("models failed to start")
            for name in ("registry", "models"):
                if self.startup.state(name) != "ready":
                    self.startup.failed(name, reason(exc))

    def _start_rag(self) -> None:
        """Take the RAG store now, so CLI runs find this server holding it; ingest the bundled docs."""
        try:
            rag = self.rag
            collections = len(rag.store.collections())
        except ConflictError as exc:  # another process (a sibling worker, a CLI run) has it
            log.warning("RAG is served by another process: %s", exc.message)
            self.startup.drop("rag")
            return
        except Exception as exc:
            if not self.settings.bootstrap_docs:  # queries will say so; the start goes on
                log.warning("the vector store does not answer yet: %s", reason(exc))
                return
            log.exception("opening the vector store failed")
            self.startup.failed("rag", f"opening the vector store failed: {reason(exc)}")
            return
        log.info("vector store open (%s, %s)", self.settings.vector_store, plural(collections, "collection"))
        if self.settings.bootstrap_docs:
            # Workers of one server share the store: they take turns, and those after the first
            # find every file unchanged. The lock is released when the file closes.
            with open(self.settings.home / "docs-ingest.lock", "a") as turn:
                fcntl.flock(turn, fcntl.LOCK_EX)
                self._ingest_docs(rag)

    def _ingest_docs(self, rag: RagService) -> None:
        """Bring the bundled docs' collection up to date, saying how far it got (``/readyz``, the log)."""
        docs = self.settings.docs_path or bundled_docs()
        try:
            self.startup.doing("rag", "loading the embedder")
            rag.embedder.dimension  # noqa: B018 - loaded (and logged) now, not inside the first file
            self.startup.doing("rag", "docs ingestion")
            progress = FileProgress(self.startup, "rag", "docs ingestion", Ticker(log, "docs"))
            run = rag.ingest(
                system_principal(DOCS_TENANT), DOCS_COLLECTION, docs, delete_missing=True, progress=progress
            )
        except Exception as exc:
            log.exception("ingesting the bundled docs from %s failed", docs)
            self.startup.failed("rag", f"ingesting the bundled docs failed: {reason(exc)}")
            return
        self._warm_up(rag)
        report = run.report
        files = len(report.added) + len(report.replaced) + len(report.unchanged)
        counts = [(len(report.added), "added"), (len(report.replaced), "replaced")]
        counts += [(len(report.unchanged), "unchanged"), (len(report.deleted), "deleted")]
        counts += [(len(report.skipped), "skipped")] if report.skipped else []
        self.startup.ready(
            "rag",
            f"docs: {plural(files, 'file')}, {plural(progress.chunks, 'chunk')} in collection "
            f"{DOCS_COLLECTION!r}; " + ", ".join(f"{n} {what}" for n, what in counts),
        )

    def _warm_up(self, rag: RagService) -> None:
        """Load what the first query would otherwise wait for, before RAG says it is ready.

        That is the embedder's first run, the answer prompt and the answer route's in-process model.
        """
        self.startup.doing("rag", "warming up the answer prompt and LLM")
        try:
            rag.warm_up()
            loaded = self.gateway.router.warm_up(self.settings.rag_route)
        except Exception as exc:  # the first query tries again, and says what fails
            log.warning("warming up RAG failed; the first query will load what it needs: %s", reason(exc))
        else:
            log.info("RAG warmed up (in-process models loaded: %s)", ", ".join(loaded) or "none")

    def start_registry(self) -> Registry:
        """Start the registry once, whichever thread (model start-up or a first query) asks first."""
        with self._registry_lock:
            registry = self.registry.start()
            quiet_mlflow(self.settings.log_level)  # MLflow is imported now
            return registry

    @property
    def rag(self) -> RagService:
        """The RAG runtime, built on first use (see ``rag.service`` for the store lock).

        Raises:
            ConflictError: Another process holds the embedded vector store.
        """
        with self._rag_lock:
            if self._rag is None:
                from rag.service import RagService

                # The query log's writer runs only in processes that answer queries.
                self.queries.start()
                shared = worker_store()  # a worker of `serve --workers N`: the supervisor holds the store
                holder = {}
                if self.local_token is not None and shared is None:
                    holder = {"url": self.local_url, "token": self.local_token}
                self._rag = RagService(
                    self.settings,
                    self.registry,
                    self.audit,
                    self.queries,
                    CollectionCatalog(self.db),
                    self.start_registry,
                    holder,
                    answer_llm=self._answer_llm,
                    meter=lambda *args, **kwargs: self.gateway.meter_embedding(*args, **kwargs),
                    traffic=self.experiments.router,
                    store=shared,
                    auto_index=self.local_token is not None,  # a server: it stays up to build
                    tracer=self.tracer,
                )
            return self._rag

    def _answer_llm(self, caller: Principal, request_id: str, variant: ExperimentVariant | None) -> LLMClient:
        """RAG's answers: ``rag_llm_route`` through the gateway, so they are budgeted and costed."""
        from opsloop.llm.gateway import GatewayClient

        return GatewayClient(
            self.gateway,
            self.settings.rag_route,
            caller.tenant,
            key_id=caller.key_id,
            request_id=request_id,
            variant=variant,
        )

    @property
    def gateway(self) -> Gateway:
        """The LLM gateway (router over ``llm_routes``, ledger writer), built on first use.

        Building it opens nothing: llama.cpp loads its model on the first request, remote
        clients connect on theirs. The RAG answerer still has a llama.cpp client of its own.
        """
        with self._gateway_lock:
            if self._gateway is None:
                from opsloop.llm.aliases import RouteAliases
                from opsloop.llm.gateway import Gateway, TextEmbedder, TokenCounter

                def minilm() -> tuple[TextEmbedder, TokenCounter]:
                    # Imported on the first embeddings request, not here: rag pulls in the model libraries.
                    from rag.chunking import HFTokenizer
                    from rag.embedder import SentenceTransformerEmbedder

                    return SentenceTransformerEmbedder(), HFTokenizer()

                self._gateway = Gateway(
                    self.settings.llm_routes,
                    self.ledger,
                    self.metrics.llm,
                    self.enforcer.start(),
                    default_max_tokens=self.settings.llm_default_max_tokens,
                    embedding=minilm,
                    embedding_max_inputs=self.settings.embedding_max_inputs,
                    embedding_max_chars=self.settings.embedding_max_chars,
                    embedding_per_mtok=self.settings.embedding_per_mtok,
                    traffic=self.experiments.router,
                    aliases=RouteAliases(self.db).all,
                    on_shadow_dropped=lambda name: self.metrics.experiments.shadow_dropped.labels(name).inc(),
                    tracer=self.tracer,
                    privacy=self.privacy,
                    redactor=self.redactor,
                )
                self.experiments.pollers.append(self._gateway.reload_aliases)
            return self._gateway

    @property
    def eval_tasks(self) -> EvalTasks:
        """The eval runs this server runs for its callers, with their progress; built on first use.

        Used from the event loop only (the routes), so it needs no lock.
        """
        if self._eval_tasks is None:
            from evals.tasks import EvalTasks

            self._eval_tasks = EvalTasks()
        return self._eval_tasks

    async def aclose_eval_tasks(self) -> None:
        """Cancel the eval runs still going, on the loop that runs them (before close())."""
        if self._eval_tasks is not None:
            await self._eval_tasks.aclose()

    async def aclose_gateway(self) -> None:
        """Close the gateway's backends on the event loop that served them (before close())."""
        with self._gateway_lock:
            gateway, self._gateway = self._gateway, None
        if gateway is not None:
            self.experiments.pollers.remove(gateway.reload_aliases)
            await gateway.aclose()

    def ensure_admin_key(self) -> Path | None:
        """On first start with no keys, create an admin key and return where it was written.

        The file is written before the key is stored (``KeyStore.create_first_admin``).

        Raises:
            ConflictError: A stale ``admin.key`` is in ``home`` while the store has no keys.
        """
        path = self.settings.admin_key_path
        return path if self.keys.create_first_admin(actor="system", key_file=path) else None

    @property
    def local_url(self) -> str:
        """Where a process on this machine reaches this server."""
        return local_url(self.settings)

    @property
    def components(self) -> dict[str, ComponentState]:
        """Each component's start-up state (:meth:`readiness` also says which are degraded)."""
        return self.startup.snapshot().components

    @property
    def ready(self) -> bool:
        """Whether every component has started."""
        return self.startup.snapshot().ready

    def readiness(self) -> Readiness:
        """Each component's state, what the starting ones wait for, and why any failed or is degraded.

        The models component is degraded while some model's champion version cannot be
        loaded; ``why["models"]`` names each such model with the version and the reason.
        """
        now = self.startup.snapshot()
        failures = self.runtime.failures()
        if not failures or now.components.get("models") != "ready":
            return now
        why: dict[str, Any] = {
            name: {"version": f.version, "reason": f.reason} for name, f in sorted(failures.items())
        }
        return Readiness({**now.components, "models": "degraded"}, now.pending, {**now.why, "models": why})

    def join_starting(self) -> None:
        """Wait for the components still starting (each may build the gateway or the RAG runtime).

        Waiting matters because MLflow migrates its store with Alembic, whose context is
        process-global: a later Platform in this process must not migrate at the same time.
        """
        for thread in self._starting:
            thread.join(timeout=120)
        self._starting.clear()

    def close(self) -> None:
        """Wait for components still starting, then release connections."""
        self.join_starting()
        if self.scheduler is not None:
            self.scheduler.shutdown()
            self.scheduler = None
        self.evals = None
        with self._rag_lock:
            rag, self._rag = self._rag, None
        if rag is not None:
            try:
                rag.close()
            except Exception:  # the rest must still close; the failure is logged, not lost
                log.exception("closing the RAG runtime failed")
        # A retraining still running is cut off with the process; the next run marks it abandoned.
        self.retraining.triggers.join(timeout=5)
        if self._gateway is not None:  # no event loop served it (the CLI): close it on a new one
            asyncio.run(self.aclose_gateway())
        self.experiments.close()
        self.runtime.close()
        self.predictions.close()
        self.queries.close()
        # A stopping server waits (a little) for its traces to be written; a CLI run hands them
        # to the exporting process, which writes them after the command has returned.
        self.tracer.close(wait=self.local_token is not None)
        self.ledger.close()
        self.enforcer.close()
        self.registry.close()
        self.db.close()
