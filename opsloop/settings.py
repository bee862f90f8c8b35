"""One validated Settings object for the whole platform.

Values come, highest priority first, from keyword arguments (CLI flags), ``OPSLOOP_*``
environment variables, an optional YAML file (``--config`` or ``OPSLOOP_CONFIG``), and
the defaults below. The app factory builds it once and passes it down.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from opsloop.errors import ConfigError
from opsloop.llm.routes import RouteConfig, RouteTable
from opsloop.privacy import DEFAULT_SCORE_THRESHOLD, PATTERN_ENTITIES, PiiEntity, PiiOverride

__all__ = ["DEFAULT_LLM_ROUTE", "Settings", "default_llm_routes", "load_settings"]

ENV_PREFIX = "OPSLOOP_"
DEFAULT_LLM_ROUTE = "smollm2"
"""The public model name of the embedded default route."""


def default_llm_routes(model_path: Path | str | None = None) -> dict[str, RouteConfig]:
    """The gateway's default: SmolLM2 (or ``model_path``) on llama.cpp in-process, free.

    One request at a time (``max_concurrency: 1``): a llama.cpp context runs one completion
    at a time anyway, and the router queues the rest for ``queue_timeout_s``.
    """
    backend: dict[str, Any] = {
        "name": "local",
        "kind": "llamacpp",
        "max_concurrency": 1,
        "cost_per_token": 0.0,
    }
    if model_path is not None:
        backend["model_path"] = model_path
    return {DEFAULT_LLM_ROUTE: RouteConfig.model_validate({"backends": [backend], "queue_timeout_s": 30.0})}


class Settings(BaseSettings):
    """Everything opsloop can be configured with; see ``opsloop --help`` for the CLI flags."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    home: Path = Field(
        default=Path(".opsloop"), description="Directory for all local state (databases, keys)."
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the relational store; default: SQLite in home.",
    )
    mlflow_tracking_uri: str | None = Field(
        default=None, description="MLflow tracking and registry URI; default: SQLite in home."
    )
    mlflow_artifact_root: str | None = Field(
        default=None, description="Where MLflow stores artifacts; default: home/mlartifacts."
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    max_body_bytes: int = Field(
        default=10 * 1024 * 1024, ge=1024, description="Requests with larger bodies get 413."
    )
    max_instances: int = Field(default=1000, ge=1, description="Most instances in one /predict request.")
    model_poll_seconds: float = Field(
        default=1.0, gt=0, description="How often serving checks the registry for moved champions."
    )
    bootstrap_demo: bool = Field(
        default=True, description="Train and register the demo credit-risk model when no model exists."
    )
    experiment_poll_seconds: float = Field(
        default=0.5,
        gt=0,
        description="How often serving re-reads the running experiments (a rollback "
        "reaches every process within this time).",
    )
    experiment_decide_seconds: float = Field(
        default=2.0, ge=0, description="How often serve judges running experiments; 0 turns the decider off."
    )
    scheduler_enabled: bool = Field(
        default=True,
        description="Run the periodic jobs (drift checks, eval jobs, retraining) in this process; "
        "off where Kubernetes CronJobs run them with `opsloop jobs run`. Replicas sharing the store "
        "run each fire once either way.",
    )
    pushgateway_url: str | None = Field(
        default=None,
        description="A Prometheus Pushgateway that `opsloop jobs run` pushes its metrics to when it ends "
        "(a CronJob's pod is gone before Prometheus would scrape it), e.g. http://pushgateway:9091.",
    )
    tracing: bool = Field(
        default=True,
        description="Record a trace of every /query, gateway call, eval sample and agent run in "
        "MLflow's tracing (experiment `tracing_experiment`), exported off the request path.",
    )
    tracing_experiment: str = Field(
        default="opsloop-traces", min_length=1, description="The MLflow experiment traces are logged to."
    )
    tracing_otlp_endpoint: str | None = Field(
        default=None,
        description="Also send every span to this OpenTelemetry collector (OTLP over HTTP), e.g. "
        "http://otel-collector:4318/v1/traces.",
    )
    tracing_max_pending: int = Field(
        default=1000, ge=1, description="Finished traces waiting for export before new ones are dropped."
    )
    drift_check_seconds: float = Field(
        default=300.0, ge=0, description="How often serve checks each model for drift; 0 turns it off."
    )
    drift_last: int = Field(default=1000, ge=1, description="Instances each scheduled drift check compares.")
    drift_min_rows: int = Field(
        default=300,
        ge=1,
        description="Fewest rows (and non-missing values per feature) each side of a drift check needs "
        "for a verdict; below it the result is insufficient_data and nothing alerts.",
    )
    retrain_triggers: list[Literal["drift", "concept_drift", "accuracy"]] = Field(
        default=["drift", "concept_drift", "accuracy"],
        description="What starts a retraining on its own in serve: dataset drift of a scheduled check, "
        "a worse error rate found by ADWIN, accuracy below retrain_accuracy_floor; [] for none.",
    )
    retrain_schedule: str = Field(
        default="", description="Cron expression (UTC) that retrains every served model; empty: none."
    )
    retrain_cooldown_seconds: float = Field(
        default=3600.0,
        ge=0,
        description="After a retraining of a model starts, its automatic triggers wait this long "
        "(one drift episode, one retraining).",
    )
    retrain_accuracy_floor: float | None = Field(
        default=None, ge=0, le=1, description="Retrain when the labelled accuracy of a champion falls below."
    )
    retrain_min_labels: int = Field(
        default=1000,
        ge=1,
        description="Labelled predictions that must arrive after a drift or accuracy signal before it "
        "starts a retraining (the challenger learns from them and is compared on them).",
    )
    retrain_window: str = Field(
        default="7d", description="Labelled production rows from this long back (all: every one)."
    )
    retrain_trials: int = Field(default=20, ge=1, description="Most hyperparameter trials of a retraining.")
    retrain_time_budget_seconds: float = Field(
        default=60.0, gt=0, description="Seconds the hyperparameter search may take."
    )
    retrain_metric: Literal["log_loss", "roc_auc", "accuracy"] = Field(
        default="log_loss", description="The holdout metric a challenger must beat the champion on."
    )
    retrain_quality_threshold: float = Field(
        default=0.95, ge=0, le=1, description="Data-quality score the new rows need, or the run is refused."
    )
    retrain_min_rows: int = Field(
        default=100, ge=10, description="Fewest new labelled rows a retraining needs (holdout included)."
    )
    retrain_half_life: str = Field(
        default="",
        description="If set (e.g. 2d), a production row's weight halves with each half-life of age "
        "behind the newest row; empty: every production row weighs 1.",
    )
    retrain_reference_weight: float = Field(
        default=0.2, ge=0, description="Sample weight of the champion's own training rows (new rows: 1)."
    )
    retrain_handoff: Literal["canary", "promote", "none"] = Field(
        default="canary",
        description="What happens to a registered challenger: a canary experiment, a direct promotion, "
        "or nothing.",
    )
    retrain_require_approval: bool = Field(
        default=False,
        description="A retrained challenger reaches champion only with a person's approval "
        "(the canary holds for it; a direct promotion waits for 'opsloop models promote').",
    )
    chat_planner: Literal["offline", "llm"] = Field(
        default="offline",
        description="How chat requests become plans: offline (MiniLM and rules, no LLM) or llm (tool "
        "calling through chat_planner_route, metered like any gateway call).",
    )
    chat_planner_route: str | None = Field(
        default=None, description="The gateway route the llm planner calls (e.g. one on Anthropic or vLLM)."
    )
    chat_approver_must_differ: bool = Field(
        default=False,
        description="An action asked for in chat is approved by a key other than the one that asked.",
    )
    load_test_max_requests: int = Field(
        default=2000, ge=1, description="Most requests one chat-driven load test sends."
    )
    load_test_max_concurrency: int = Field(
        default=64, ge=1, description="Most requests a load test has in flight."
    )
    load_test_max_seconds: float = Field(default=60.0, gt=0, description="A load test stops after this long.")
    slo_predict_p99_ms: float = Field(default=250.0, gt=0, description="SLO: p99 time of a /predict request.")
    slo_query_p99_ms: float = Field(default=5000.0, gt=0, description="SLO: p99 time of an answered /query.")
    slo_chat_p99_ms: float = Field(default=10000.0, gt=0, description="SLO: p99 time of a chat completion.")
    slo_error_rate: float = Field(
        default=0.01, ge=0, le=1, description="SLO: share of requests that may fail."
    )
    key_cache_seconds: float = Field(
        default=2.0,
        ge=0,
        description="How long a verified key is trusted before the store is asked again; "
        "a revocation made by another process takes effect within this time.",
    )
    vector_store: Literal["edge", "qdrant"] = Field(
        default="edge",
        description="edge: Qdrant Edge in-process under home/qdrant; qdrant: a Qdrant server at qdrant_url.",
    )
    qdrant_url: str | None = Field(
        default=None, validate_default=True, description="Qdrant server URL; needed by vector_store=qdrant."
    )
    qdrant_api_key: SecretStr | None = Field(default=None, description="API key of the Qdrant server.")
    qdrant_replication_factor: int = Field(
        default=1,
        ge=1,
        description="Copies of each shard a new collection keeps on a distributed Qdrant cluster; "
        "2 or more keeps RAG answering while one peer is down.",
    )
    rag_top_k: int = Field(default=5, ge=1, le=50, description="Chunks a /query retrieves by default.")
    embedder_backend: Literal["auto", "torch", "onnx-int8"] = Field(
        default="auto",
        description="How RAG runs MiniLM: torch (fp32), onnx-int8 (ONNX Runtime, int8 weights, exported "
        "once into embedder_cache), or auto: torch on a GPU, onnx-int8 on a CPU.",
    )
    embedder_cache: Path | None = Field(
        default=None,
        description="Where the onnx-int8 embedder's export is kept, shared by every home of the "
        "machine; default $XDG_CACHE_HOME/opsloop/embedders (~/.cache/opsloop/embedders).",
    )
    rag_chunk_tokens: int = Field(
        default=256,
        ge=16,
        le=256,
        description="Chunk size of a new collection, in MiniLM tokens (its window).",
    )
    rag_overlap_tokens: int = Field(
        default=32, ge=0, description="Tokens consecutive chunks share, for a new collection."
    )
    rag_auto_index_points: int = Field(
        default=20_000,
        ge=0,
        description="A server builds a collection's search index by itself once an ingestion leaves at "
        "least this many chunks unindexed (the embedded Qdrant Edge has no background optimizer; "
        "queries go on meanwhile); 0: only when asked (opsloop ingest --optimize).",
    )
    rag_max_document_chars: int = Field(
        default=1_000_000,
        ge=1,
        description="Most characters of text one uploaded document may have; a larger one is skipped "
        "with the reason (embedding a million characters takes minutes on a CPU).",
    )
    bootstrap_docs: bool = Field(
        default=True,
        description="serve: bring collection 'docs' of tenant 'default' up to date with docs_path at start.",
    )
    docs_path: Path | None = Field(
        default=None, description="The corpus bootstrap_docs ingests; default: the bundled user docs."
    )
    rag_score_threshold: float = Field(
        default=0.3, ge=-1.0, le=1.0, description="Cosine similarity below which a chunk is not a source."
    )
    rag_context_tokens: int = Field(
        default=1500, ge=16, description="Token budget of the sources block in the answer prompt."
    )
    rag_max_answer_tokens: int = Field(default=256, ge=1, description="Most tokens of a generated answer.")
    rag_answer_temperature: float = Field(
        default=0.0, ge=0.0, le=2.0, description="Sampling temperature of RAG answers; 0 is deterministic."
    )
    rag_answer_frequency_penalty: float | None = Field(
        default=0.5,
        ge=-2.0,
        le=2.0,
        description="OpenAI's frequency_penalty on RAG answers: above 0 discourages the loops small "
        "models fall into; null sends none (the backend's default).",
    )
    rag_answer_fallback: bool = Field(
        default=True,
        description="Replace a generated answer that cites no source or repeats itself by the sources' "
        "sentences closest to the question (answer_mode 'extractive').",
    )
    llm_model_path: Path | None = Field(
        default=None, description="GGUF file of the local LLM; default: the packaged SmolLM2-135M-Instruct."
    )
    llm_routes: RouteTable = Field(
        default_factory=default_llm_routes,
        description="Gateway routes: public model name -> backends tried in order (see docs/gateway.md); "
        f"default: {DEFAULT_LLM_ROUTE!r} on the local llama.cpp model.",
    )
    redis_url: SecretStr | None = Field(
        default=None,
        description="Redis for the budget and rate-limit counters, shared by every gateway process; "
        "default: counters in this process only.",
    )
    metrics_tenant_names: bool = Field(
        default=False,
        description="Label budget metrics with tenant names; false: 't_' + 12 hex of the name's SHA-256, "
        "since /metrics needs no key.",
    )
    budget_cache_seconds: float = Field(
        default=5.0,
        ge=0,
        description="How long budget rows are cached; another process's change applies within it.",
    )
    eval_jobs: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Scheduled evals run by serve: name, cron, dataset, collection and more "
        "(evals.schedule.EvalJob; checked when serve or `opsloop eval schedule` starts).",
    )
    rag_llm_route: str | None = Field(
        default=None,
        description="The gateway route (of llm_routes) that writes RAG answers; default: the first.",
    )
    llm_default_max_tokens: int = Field(
        default=512,
        ge=1,
        description="Most tokens a gateway completion generates when the request sets none "
        "(cut to the route's context window).",
    )
    embedding_max_inputs: int = Field(
        default=128,
        ge=1,
        le=2048,
        description="Most texts one POST /v1/embeddings request may embed; more is a 422.",
    )
    embedding_max_chars: int = Field(
        default=8192,
        ge=1,
        description="Most characters of each text of a POST /v1/embeddings request; more is a 422.",
    )
    embedding_per_mtok: float | None = Field(
        default=None,
        ge=0,
        description="USD per million embedding tokens, for the ledger and USD budgets; default: free.",
    )
    pii_redaction: bool = Field(
        default=True,
        description="Replace PII (e-mail addresses, phone numbers, card numbers, IBANs, IP addresses, API "
        "keys) by placeholders in what opsloop records, such as traces (opsloop.privacy).",
    )
    pii_entities: list[PiiEntity] = Field(
        default=list(PATTERN_ENTITIES),
        description="What pii_redaction finds; PERSON and LOCATION need an installed spaCy English model.",
    )
    pii_redact_outbound: bool = Field(
        default=False,
        description="Also redact requests before they leave for an external LLM backend (e.g. Anthropic); "
        "placeholders in the answer get their values back.",
    )
    pii_score_threshold: float = Field(
        default=DEFAULT_SCORE_THRESHOLD,
        ge=0,
        le=1,
        description="Least confidence a finding needs (phone numbers score 0.4, checksummed ones 1.0).",
    )
    pii_tenants: dict[str, PiiOverride] = Field(
        default_factory=dict,
        description='Per-tenant overrides of the pii_ settings, e.g. {"acme": {"redact_outbound": true}}.',
    )
    pii_routes: dict[str, PiiOverride] = Field(
        default_factory=dict,
        description="Per-route overrides (an operation such as query or chat.completions, or an LLM route's "
        "name), applied over the tenant's.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Add the YAML file between the environment and the defaults."""
        return init_settings, env_settings, YamlConfigSettingsSource(settings_cls)

    @model_validator(mode="after")
    def _rag_route_exists(self) -> Settings:
        if self.chat_planner == "llm" and self.chat_planner_route not in self.llm_routes:
            known = ", ".join(self.llm_routes) or "none"
            raise ValueError(f"chat_planner llm needs chat_planner_route, one of llm_routes ({known})")
        if self.rag_llm_route is not None and self.rag_llm_route not in self.llm_routes:
            known = ", ".join(self.llm_routes) or "none"
            raise ValueError(f"rag_llm_route {self.rag_llm_route!r} is no route of llm_routes ({known})")
        return self

    @model_validator(mode="before")
    @classmethod
    def _default_routes_follow_the_local_model(cls, data: Any) -> Any:
        # Not a data-dependent default_factory: that one fails whenever another field does,
        # adding a confusing second error to the one that names the bad setting.
        if isinstance(data, dict) and "llm_routes" not in data and data.get("llm_model_path") is not None:
            return {**data, "llm_routes": default_llm_routes(data["llm_model_path"])}
        return data

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, home: Path) -> Path:
        return home.expanduser().resolve()

    @field_validator("qdrant_url")
    @classmethod
    def _qdrant_needs_url(cls, url: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("vector_store") == "qdrant" and not url:
            raise ValueError(f"vector_store 'qdrant' needs a qdrant_url ({ENV_PREFIX}QDRANT_URL)")
        return url

    @field_validator("rag_overlap_tokens")
    @classmethod
    def _overlap_below_chunk(cls, overlap: int, info: ValidationInfo) -> int:
        chunk = info.data.get("rag_chunk_tokens")
        if chunk is not None and overlap >= chunk:
            raise ValueError(f"must be below rag_chunk_tokens ({chunk})")
        return overlap

    @field_validator("retrain_window", "retrain_half_life")
    @classmethod
    def _window(cls, window: str, info: ValidationInfo) -> str:
        if not window:
            if info.field_name == "retrain_window":
                raise ValueError("must be a duration such as 7d, or all")
            return window
        if window == "all" and info.field_name == "retrain_window":
            return window
        from opsloop.durations import parse_duration
        from opsloop.errors import InvalidInputError

        try:
            parse_duration(window, field=str(info.field_name))
        except InvalidInputError as exc:
            raise ValueError(exc.message) from exc
        return window

    @field_validator("retrain_schedule")
    @classmethod
    def _cron(cls, schedule: str) -> str:
        if schedule:
            from opsloop.scheduler import cron_trigger

            cron_trigger(schedule)
        return schedule

    @property
    def rag_route(self) -> str:
        """The gateway route that writes RAG answers: ``rag_llm_route``, else the first route."""
        return self.rag_llm_route or next(iter(self.llm_routes))

    @property
    def db_url(self) -> str:
        """The relational store's URL, SQLite under ``home`` unless configured."""
        return self.database_url or f"sqlite:///{self.home / 'opsloop.db'}"

    @property
    def tracking_uri(self) -> str:
        """MLflow's tracking and registry URI."""
        return self.mlflow_tracking_uri or f"sqlite:///{self.home / 'mlflow.db'}"

    @property
    def artifact_root(self) -> str:
        """Where MLflow stores model and run artifacts."""
        return self.mlflow_artifact_root or (self.home / "mlartifacts").as_uri()

    @property
    def embedder_cache_path(self) -> Path:
        """``embedder_cache``, or the user's cache folder's ``opsloop/embedders``."""
        if self.embedder_cache is not None:
            return self.embedder_cache
        cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(cache) / "opsloop" / "embedders"

    @property
    def admin_key_path(self) -> Path:
        """Where the first admin key is written, once, with mode 0600."""
        return self.home / "admin.key"

    def env(self) -> dict[str, str]:
        """These settings as ``OPSLOOP_*`` variables, to hand to worker processes.

        Routes go as JSON (which pydantic-settings parses back), their API keys in clear:
        the variables are for this machine's worker processes only.
        """
        env = {
            f"{ENV_PREFIX}{name.upper()}": value.get_secret_value()
            if isinstance(value, SecretStr)
            else json.dumps(value)
            if isinstance(value, list | dict)  # pydantic-settings reads these back as JSON
            else str(value)
            for name, value in self.model_dump(exclude={"llm_routes", "eval_jobs"}).items()
            if value is not None
        }
        env[f"{ENV_PREFIX}LLM_ROUTES"] = json.dumps(_routes_data(self.llm_routes))
        env[f"{ENV_PREFIX}EVAL_JOBS"] = json.dumps(self.eval_jobs, default=str)
        return env


def _routes_data(routes: dict[str, RouteConfig]) -> dict[str, Any]:
    """``routes`` as JSON-ready data that validates back to equal routes, secrets revealed."""
    data: dict[str, Any] = {}
    for public, route in routes.items():
        dumped = route.model_dump(mode="json", exclude_defaults=True)
        for spec, raw in zip(route.backends, dumped["backends"], strict=True):
            if spec.api_key is not None:
                raw["api_key"] = spec.api_key.get_secret_value()
        data[public] = dumped
    return data


def load_settings(config: Path | str | None = None, **overrides: Any) -> Settings:
    """Build and validate Settings; a bad value raises ConfigError naming the setting."""
    config = config or os.environ.get(f"{ENV_PREFIX}CONFIG") or None
    settings_cls: type[Settings] = Settings
    if config is not None:
        path = Path(config)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist", setting="config")
        settings_cls = type(
            "FileSettings", (Settings,), {"model_config": {**Settings.model_config, "yaml_file": path}}
        )
    try:
        return settings_cls(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = [_problem(err) for err in exc.errors()]
        raise ConfigError(
            "invalid settings: " + "; ".join(problems),
            settings=[".".join(map(str, err["loc"])) for err in exc.errors()],
        ) from None  # pydantic's own message echoes every rejected input, secrets included


_SECRET_NAME = re.compile(r"key|token(?!s)|passw|secret|credential", re.IGNORECASE)
"""Names of settings whose values are never echoed (``token`` but not ``max_tokens``, a count)."""
_MAX_SHOWN_CHARS = 80


def _problem(err: ErrorDetails) -> str:
    """One validation error as the setting, the rule, and the rejected value when that is safe."""
    shown = _shown_input(err)
    return f"{_setting_name(err['loc'])}: {err['msg']}" + (f" (got {shown})" if shown else "")


def _shown_input(err: ErrorDetails) -> str | None:
    """The rejected value, or None where echoing it could print a secret.

    Only short scalars of known, non-secret settings are shown: never a whole dict or list (a
    route's backend holds its ``api_key`` beside the bad field), nor the value of an unknown
    setting (it may be a misspelled secret).
    """
    value = err.get("input")
    if err["type"] == "extra_forbidden" or not isinstance(value, str | int | float):
        return None
    if any(_SECRET_NAME.search(str(part)) for part in err["loc"]):
        return None
    field = Settings.model_fields.get(str(err["loc"][0])) if err["loc"] else None
    if field is not None and "SecretStr" in repr(field.annotation):
        return None  # e.g. redis_url: a URL that may carry a password
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN_CHARS else text[: _MAX_SHOWN_CHARS - 3] + "..."


def _setting_name(loc: tuple[int | str, ...]) -> str:
    """``OPSLOOP_LLM_ROUTES.chat.backends.0.base_url``: the variable, then the path inside it."""
    head, *rest = [str(part) for part in loc] or ["settings"]
    return ".".join([f"{ENV_PREFIX}{head.upper()}", *rest])
