"""The ml-ops agent's state: the thread's, of which it reads the plan and adds findings."""

from __future__ import annotations

from agents.plan import AgentName
from agents.state import ChatState

__all__ = ["AGENT", "State"]

AGENT: AgentName = "ml-ops"


class State(ChatState, total=False):
    """What the ml-ops subgraph reads and writes."""
