"""The LLM planner: tool calling over the workflows, into the same plan type as the offline planner.

The model sees one function per workflow (its slots as typed parameters), ``ask_user`` and
``refuse``, and calls one. Its call goes through the gateway route the deployment names
(Anthropic, vLLM or any OpenAI-compatible server behind it), so its tokens and cost land in the
ledger and count against the caller's budgets like any other call. What it proposes is checked
before anything is planned: names must be in the platform's catalog and numbers must be whole;
the rules of the offline planner read the request too, and what they read exactly wins over the
model's guess. A model that calls no tool leaves the request to the offline planner.

Only the request is shown to the model: documents and tool results never reach it, so nothing
retrieved can put words in the planner's mouth.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from agents.cost.prompts import SYSTEM as COST
from agents.infra.prompts import SYSTEM as INFRA
from agents.mlops.prompts import SYSTEM as MLOPS
from agents.performance.prompts import SYSTEM as PERFORMANCE
from agents.plan import SLOT_KINDS, WORKFLOWS
from agents.planning.offline import OfflinePlanner, Planned, answer_pending, complete, refusal
from agents.planning.slots import KEY_ID, MODEL_NAME, Catalog, extract_slots
from agents.quality.prompts import SYSTEM as QUALITY
from opsloop.auth import Principal
from opsloop.budgets.model import KINDS
from opsloop.durations import parse_duration
from opsloop.errors import InvalidInputError
from opsloop.llm.protocol import ChatMessage, ChatRequest, ChatResult, ToolCall

__all__ = ["Completer", "LLMPlanner", "planned_from_call", "workflow_tools"]

_NAMES = {"model": "models", "collection": "collections", "tenant": "tenants", "prompt": "prompts",
          "job": "jobs", "route": "routes"}  # fmt: skip
_JSON_TYPES = {str: "string", int: "integer", float: "number"}


class Completer(Protocol):
    """One chat completion as the caller, through the gateway route of the planner."""

    async def complete(self, caller: Principal, request: ChatRequest) -> ChatResult:
        """The completion, metered and admitted by the caller's budgets."""
        ...


def workflow_tools() -> list[dict[str, Any]]:
    """The functions the model chooses from, in OpenAI's shape (the gateway translates them)."""
    tools = []
    for name, spec in WORKFLOWS.items():
        properties = {slot: {"type": _JSON_TYPES[SLOT_KINDS[slot]]} for slot in spec.slots}
        description = f"{spec.summary}. Example: {spec.example}"
        tools.append(_function(name, description, properties))
    tools.append(_function("ask_user", "ask a clarifying question", {"question": {"type": "string"}}))
    tools.append(
        _function("refuse", "the request is outside these operations", {"reason": {"type": "string"}})
    )
    return tools


def _function(name: str, description: str, properties: dict[str, Any]) -> dict[str, Any]:
    parameters = {"type": "object", "properties": properties}
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": parameters},
    }


def _system(catalog: Catalog) -> str:
    known = "\n".join(f"- {kind}: {', '.join(getattr(catalog, kind)) or 'none'}" for kind in _NAMES.values())
    return (
        "You plan operations requests for opsloop's role agents:\n"
        + "\n".join(f"- {role}" for role in (MLOPS, INFRA, PERFORMANCE, QUALITY, COST))
        + "\nCall exactly one function: the workflow the request asks for, with only the arguments"
        " it states; ask_user when a required one is missing; refuse anything else. Names known now:\n"
        + known
    )


def planned_from_call(call: ToolCall, message: str, catalog: Catalog) -> Planned:
    """The plan a model's function call asks for, its arguments checked against ``catalog``."""
    try:
        arguments = json.loads(call.arguments or "{}")
    except json.JSONDecodeError:
        arguments = {}
    if not isinstance(arguments, dict):
        arguments = {}
    if call.name == "ask_user":
        return Planned("needs_input", None, reply=str(arguments.get("question") or "Could you say more?"))
    if call.name not in WORKFLOWS:
        return refusal(str(arguments.get("reason") or "That is outside what I can do here."))
    wanted = WORKFLOWS[call.name].slots
    proposed = {
        slot: value
        for slot, value in arguments.items()
        if slot in wanted and _valid(slot, value, catalog, registering=call.name == "register_model")
    }
    read = extract_slots(message, catalog, wanted)
    return complete(call.name, {**proposed, **read.slots}, read.ambiguous, catalog, message)


def _valid(slot: str, value: Any, catalog: Catalog, *, registering: bool = False) -> bool:
    """Whether a proposed value can stand: known names (a new model name when registering), kinds, numbers."""
    if slot == "model" and registering:
        return isinstance(value, str) and MODEL_NAME.fullmatch(value) is not None
    if SLOT_KINDS[slot] in (int, float):
        whole = SLOT_KINDS[slot] is int
        return (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and value > 0
            and (not whole or isinstance(value, int))
        )
    if slot in _NAMES:
        return value in getattr(catalog, _NAMES[slot])
    if slot == "budget":
        return value in KINDS
    if slot == "key":
        return isinstance(value, str) and KEY_ID.fullmatch(value) is not None
    if slot == "path":
        return isinstance(value, str) and bool(value.strip())
    try:
        parse_duration(str(value), field=slot)  # the window, the one slot left
    except InvalidInputError:
        return False
    return True


class LLMPlanner:
    """Plans with a tool-calling model; the offline planner answers what the model does not.

    Args:
        completer: The planner's gateway route, as the caller.
        rules: The offline planner (clarifying answers, and requests the model calls no tool for).
    """

    def __init__(self, completer: Completer, rules: OfflinePlanner) -> None:
        self._completer = completer
        self._rules = rules

    async def plan(
        self, caller: Principal, message: str, catalog: Catalog, pending: Planned | None
    ) -> Planned:
        """Plan ``message`` of ``caller`` (the call is metered under the caller's tenant and key)."""
        answered = answer_pending(message, catalog, pending)
        if answered is not None:
            return answered
        request = ChatRequest(
            messages=[
                ChatMessage(role="system", content=_system(catalog)),
                ChatMessage(role="user", content=message),
            ],
            tools=workflow_tools(),
            temperature=0.0,
            max_tokens=256,
        )
        result = await self._completer.complete(caller, request)
        if not result.tool_calls:
            return await self._rules.plan(caller, message, catalog, None)
        return planned_from_call(result.tool_calls[0], message, catalog)
