"""Per-run configuration of the chat graph: the platform, the planner and each role's limits.

Separate from :class:`~agents.state.ChatState`: nothing here is checkpointed (it is given
again with every run and every resume), so it may hold live objects.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from agents.planning.offline import Planned
from agents.planning.slots import Catalog
from agents.ports import Operations
from opsloop.auth import Principal
from opsloop.telemetry import ChatMetrics

__all__ = ["Context", "Planner"]


class Planner(Protocol):
    """Turns a message into a plan, a clarifying question or a refusal."""

    async def plan(
        self, caller: Principal, message: str, catalog: Catalog, pending: Planned | None
    ) -> Planned:
        """Plan ``message`` of ``caller``; ``pending`` is the thread's unanswered question."""
        ...


@dataclass(frozen=True)
class Context:
    """What every node of one run may use."""

    ops: Operations
    planner: Planner
    limits: Mapping[str, Mapping[str, Any]]
    """Each role agent's limits, by agent name (its ``context.py`` builds them from the settings)."""
    thread_id: str
    audit: Callable[..., None]
    """``audit(actor=, tenant=, action=, target=, before=, after=)``: the platform's audit log."""
    metrics: ChatMetrics
