"""The data flowing through the chat graph: plain JSON-able values, as the checkpointer stores them."""

from __future__ import annotations

import operator
from typing import Annotated, Any, TypedDict

__all__ = ["AgentUpdate", "ChatState", "Message"]


class Message(TypedDict):
    """One turn of a thread."""

    role: str
    """``user`` or ``assistant``."""
    content: str
    by: str
    """The key that sent it (the assistant: ``assistant``)."""


class ChatState(TypedDict, total=False):
    """One thread's state. Nodes return partial updates; ``messages`` and ``findings`` accumulate."""

    messages: Annotated[list[Message], operator.add]
    caller: dict[str, str]
    """Who asked the current request: ``key_id``, ``tenant``, ``role`` (the agent acts as them)."""
    message: str
    dry_run: bool
    status: str
    """``done``, ``pending_approval``, ``needs_input`` or ``refused`` (``running`` in between)."""
    plan: dict[str, Any] | None
    cursor: int
    """Index of the next step to run."""
    asked: dict[str, Any] | None
    """The unanswered clarifying question: ``workflow`` and the ``slots`` found so far."""
    approvals: Annotated[list[dict[str, Any]], operator.add]
    findings: list[str]
    """What the role agents concluded from the steps' results (every number from them)."""
    reply: str


class AgentUpdate(TypedDict, total=False):
    """What a role agent's subgraph hands back to the supervisor (not the accumulating lists)."""

    plan: dict[str, Any] | None
    cursor: int
    findings: list[str]
