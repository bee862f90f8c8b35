"""One validated Settings object for the whole platform.

Values come, highest priority first, from keyword arguments (CLI flags), ``OPSLOOP_*``
environment variables, an optional YAML file (``--config`` or ``OPSLOOP_CONFIG``), and
the defaults below. The app factory builds it once and passes it down.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from opsloop.errors import ConfigError

__all__ = ["Settings", "load_settings"]

ENV_PREFIX = "OPSLOOP_"


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
    drift_check_seconds: float = Field(
        default=300.0, ge=0, description="How often serve checks each model for drift; 0 turns it off."
    )
    drift_last: int = Field(default=1000, ge=1, description="Instances each scheduled drift check compares.")
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
    rag_top_k: int = Field(default=5, ge=1, le=50, description="Chunks a /query retrieves by default.")
    rag_chunk_tokens: int = Field(
        default=256,
        ge=16,
        le=256,
        description="Chunk size of a new collection, in MiniLM tokens (its window).",
    )
    rag_overlap_tokens: int = Field(
        default=32, ge=0, description="Tokens consecutive chunks share, for a new collection."
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
    llm_model_path: Path | None = Field(
        default=None, description="GGUF file of the local LLM; default: the packaged SmolLM2-135M-Instruct."
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
    def admin_key_path(self) -> Path:
        """Where the first admin key is written, once, with mode 0600."""
        return self.home / "admin.key"

    def env(self) -> dict[str, str]:
        """These settings as ``OPSLOOP_*`` variables, to hand to worker processes."""
        return {
            f"{ENV_PREFIX}{name.upper()}": value.get_secret_value()
            if isinstance(value, SecretStr)
            else str(value)
            for name, value in self.model_dump().items()
            if value is not None
        }


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
        problems = [
            f"{ENV_PREFIX}{'.'.join(map(str, err['loc'])).upper()}: {err['msg']} (got {err.get('input')!r})"
            for err in exc.errors()
        ]
        raise ConfigError(
            "invalid settings: " + "; ".join(problems),
            settings=[".".join(map(str, err["loc"])) for err in exc.errors()],
        ) from exc
