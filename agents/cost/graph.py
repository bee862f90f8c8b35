"""The cost agent's graph: run its steps from the cursor, then say what they show."""

from __future__ import annotations

from typing import Any

from langgraph.graph.state import CompiledStateGraph

from agents.cost.prompts import findings
from agents.cost.state import AGENT, State
from agents.steps import role_graph

__all__ = ["build"]


def build() -> CompiledStateGraph[Any, Any, Any, Any]:
    """The subgraph the supervisor routes the cost steps to."""
    return role_graph(AGENT, State, findings)
