r"""The chat graph: a supervisor routes each step of a plan to the role agent that owns its tool.

START -> plan -> route -> (ml-ops | infra | performance | quality | cost) -> route ...
                      \\-> approve -> execute -> route ...      \\-> reply -> END
"""

from __future__ import annotations

from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from agents import supervisor
from agents.context import Context
from agents.cost.graph import build as cost
from agents.infra.graph import build as infra
from agents.mlops.graph import build as mlops
from agents.performance.graph import build as performance
from agents.quality.graph import build as quality
from agents.state import ChatState

__all__ = ["build"]


def build(checkpointer: BaseCheckpointSaver[Any]) -> CompiledStateGraph[Any, Any, Any, Any]:
    """The compiled graph, its threads kept by ``checkpointer``."""
    graph = StateGraph(ChatState, context_schema=Context)
    graph.add_node("plan", supervisor.plan)
    graph.add_node("route", supervisor.route)
    graph.add_node("approve", supervisor.approve)
    graph.add_node("execute", supervisor.execute)
    graph.add_node("reply", supervisor.reply)
    for name, role in (
        ("ml-ops", mlops),
        ("infra", infra),
        ("performance", performance),
        ("quality", quality),
        ("cost", cost),
    ):
        graph.add_node(name, role())
        graph.add_edge(name, "route")
    graph.add_edge(START, "plan")
    graph.add_edge("plan", "route")
    graph.add_edge("execute", "route")
    graph.add_edge("reply", END)
    return graph.compile(checkpointer=checkpointer)
