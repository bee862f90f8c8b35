"""Every role agent's tools in one registry, by name (a name is unique across agents)."""

from __future__ import annotations

from agents.cost.tools import TOOLS as COST
from agents.infra.tools import TOOLS as INFRA
from agents.mlops.tools import TOOLS as MLOPS
from agents.performance.tools import TOOLS as PERFORMANCE
from agents.quality.tools import TOOLS as QUALITY
from agents.tools import Tool
from opsloop.auth import Role

__all__ = ["MUTATING", "REGISTRY", "approver_role"]

REGISTRY: dict[str, Tool] = {t.name: t for t in (*MLOPS, *INFRA, *PERFORMANCE, *QUALITY, *COST)}
MUTATING: frozenset[str] = frozenset(name for name, t in REGISTRY.items() if t.mutating)


def approver_role(action: str) -> Role:
    """The least role that may approve ``action``: operator, or the action's own if higher (admin)."""
    return max(Role.OPERATOR, REGISTRY[action].role)
