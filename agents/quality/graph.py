"""The quality agent's graph: run its steps from the cursor, then say what they show."""

from __future__ import annotations

from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime

from agents.context import Context
from agents.quality.prompts import findings
from agents.quality.state import AGENT, State
from agents.state import AgentUpdate
from agents.steps import run_agent_steps

__all__ = ["build"]


async def _run(state: State, runtime: Runtime[Context]) -> dict[str, Any]:
    return await run_agent_steps(dict(state), runtime.context, AGENT)


def _assess(state: State) -> dict[str, Any]:
    known = list(state.get("findings") or [])
    return {"findings": list(dict.fromkeys(known + findings(state.get("plan"))))}


def build() -> CompiledStateGraph[Any, Any, Any, Any]:
    """The subgraph the supervisor routes the quality steps to."""
    graph = StateGraph(State, context_schema=Context, output_schema=AgentUpdate)
    graph.add_node("run", _run)
    graph.add_node("assess", _assess)
    graph.add_edge(START, "run")
    graph.add_edge("run", "assess")
    graph.add_edge("assess", END)
    return graph.compile()
