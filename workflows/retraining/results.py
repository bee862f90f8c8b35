"""What a retraining is asked to do and how it ended: the types the pipeline and its steps share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from opsloop.auth import Principal
from workflows.retraining.data import DataSpec
from workflows.retraining.store import Status
from workflows.retraining.training import SearchSpec

__all__ = ["Ended", "Handoff", "HandoffMode", "RetrainRequest", "RetrainResult", "Trigger"]

Trigger = Literal["manual", "drift", "concept_drift", "accuracy", "schedule"]
HandoffMode = Literal["canary", "promote", "none"]
Handoff = Callable[[Principal, str, int, HandoffMode], dict[str, Any]]
"""Hands a registered challenger to serving: ``(caller, model, version, mode) -> what it did``."""


@dataclass(frozen=True)
class RetrainRequest:
    """What a retraining is asked to do."""

    model: str
    trigger: Trigger = "manual"
    cause: dict[str, Any] = field(default_factory=dict)
    data: DataSpec = field(default_factory=DataSpec)
    search: SearchSpec = field(default_factory=SearchSpec)
    quality_threshold: float = 0.95
    min_rows: int = 100
    """Fewest new (production or user) labelled rows a run needs, its holdout included."""
    user_data: Path | None = None
    handoff: HandoffMode = "canary"


@dataclass(frozen=True)
class RetrainResult:
    """How a retraining ended; :meth:`to_dict` is ``opsloop retrain --format json``."""

    status: Status
    model: str
    run: int
    version: int | None = None
    parent_version: int | None = None
    reason: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    model_card: str | None = None
    experiment: str | None = None
    handoff: dict[str, Any] | None = None
    mlflow_run_id: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {**asdict(self), "seconds": round(self.seconds, 2)}


class Ended(Exception):
    """A step ended the run early (refused, not better) with this result."""

    def __init__(self, result: RetrainResult) -> None:
        super().__init__(result.status)
        self.result = result
