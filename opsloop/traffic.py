"""The seam between serving a request and the experiment that may route it.

A service (predict today; RAG queries and gateway routes next) asks its :class:`TrafficSplit`
which variant answers a request, answers with that variant, and reports the outcome. The
kernel only defines the seam: the experiments themselves (their store, sticky assignment
and statistics) live in :mod:`workflows.experiments`, one layer up, and ``serving`` wires
them in. With no experiment on a target, :meth:`TrafficSplit.assign` returns None and the
service answers as it always did.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "Assignment",
    "ExperimentVariant",
    "Outcome",
    "TargetKind",
    "TrafficSplit",
]

TargetKind = Literal["model", "prompt", "route"]
CHAMPION = "champion"
CHALLENGER = "challenger"

ExperimentVariant = tuple[str, str]
"""An experiment's name and one of its variants: what made a request, on the rows it leaves."""


@dataclass(frozen=True)
class Assignment:
    """Which variant of a running experiment answers one request."""

    experiment: str
    variant: str
    """``champion`` or ``challenger``."""
    target: str
    """What that variant runs: a model version, a prompt version or a route name."""
    shadow_target: str | None = None
    """A shadow experiment's challenger, sent a copy of the request; its answer is never returned."""
    tenant: str | None = None
    """The experiment's tenant, which pays for a shadow's copies (the caller did not ask for them)."""


@dataclass(frozen=True)
class Outcome:
    """How one variant handled one request."""

    experiment: str
    variant: str
    request_id: str
    ok: bool
    latency_ms: float
    cost_usd: float = 0.0
    error_type: str | None = None
    agreed: bool | None = None
    """For a shadow's copy: whether its answer equalled the champion's."""

    @classmethod
    def since(
        cls,
        assignment: Assignment,
        variant: str,
        request_id: str,
        started: float,
        error_type: str | None = None,
        cost_usd: float = 0.0,
    ) -> Outcome:
        """A request ``variant`` handled from ``started`` (perf_counter) to now; failed if ``error_type``."""
        latency_ms = (time.perf_counter() - started) * 1000
        ok = error_type is None
        return cls(
            assignment.experiment,
            variant,
            request_id,
            ok,
            latency_ms,
            cost_usd=cost_usd,
            error_type=error_type,
        )


class TrafficSplit(Protocol):
    """Routes requests of running experiments and collects their outcomes."""

    def assign(self, kind: TargetKind, target: str, unit: str) -> Assignment | None:
        """The variant that answers ``unit``'s request to ``target``; None when no experiment runs."""
        ...

    def record(self, outcome: Outcome) -> None:
        """Keep an outcome, off the request path (it must not block)."""
        ...
