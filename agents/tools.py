"""The one registry of tools: each is read-only or mutating, and names the least role it needs.

Read-only tools run freely as the plan's steps reach them. Mutating tools are a fixed set of
typed actions, each run only after a person approved it (the graph's ``approve`` node), and
never in parallel. Every tool takes the caller's :class:`Principal` and the platform's
:class:`Operations`, and returns an :class:`Outcome` whose numbers all come from the platform.
A role agent's package defines its tools; this module only collects them.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal

from agents.plan import AgentName
from agents.ports import Operations
from opsloop.auth import Principal, Role

__all__ = ["Outcome", "Tool", "ToolCall", "jsonable", "tool"]


@dataclass(frozen=True)
class Outcome:
    """What a tool found or did: ``failed`` when its check did not pass (the plan stops there)."""

    summary: str
    result: dict[str, Any]
    status: Literal["ok", "failed"] = "ok"


@dataclass(frozen=True)
class ToolCall:
    """What a tool runs with: who asks, the platform, and the agent's limits."""

    caller: Principal
    ops: Operations
    limits: Mapping[str, Any]
    """Settings the tools honour (load-test bounds, SLOs), from the role agent's context."""


ToolFn = Callable[..., Awaitable[Outcome]]


@dataclass(frozen=True)
class Tool:
    """One tool: its name, owner, whether it changes anything, and the least role it needs."""

    name: str
    agent: AgentName
    mutating: bool
    role: Role
    run: ToolFn
    """``await run(call, **args)``."""

    @property
    def description(self) -> str:
        """The first line of the function's docstring."""
        return (self.run.__doc__ or self.name).strip().splitlines()[0]


def tool(agent: AgentName, *, role: Role, mutating: bool = False) -> Callable[[ToolFn], Tool]:
    """Declare a tool; its name is the function's."""

    def declare(fn: ToolFn) -> Tool:
        return Tool(fn.__name__, agent, mutating, role, fn)

    return declare


def jsonable(value: Any) -> Any:
    """``value`` as JSON-able data: dataclasses to dicts, dates to ISO text, enums to values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if hasattr(value, "model_dump"):
        return jsonable(value.model_dump(mode="json"))
    if isinstance(value, float) and value != value:  # NaN is not JSON
        return None
    return value
