"""The supervisor's nodes: plan, route each step to its agent, ask for approval, act, reply.

A request is planned, each step goes to the role agent that owns its tool, and the approved
action runs before the reply.

Approvals live here, in the parent graph: :func:`approve` holds the one ``interrupt()`` of the
graph and nothing else (LangGraph runs a node again from its start on resume), and the approved
action runs in the node after it (:func:`execute`), so a resumed thread never repeats a side
effect before the decision.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from langgraph.runtime import Runtime
from langgraph.types import Command, interrupt

from agents.context import Context
from agents.plan import AGENTS
from agents.planning.offline import Planned
from agents.registry import REGISTRY
from agents.replies import compose
from agents.state import ChatState
from agents.steps import caller_of, run_step, skip_rest, stop_after_failure

__all__ = ["approve", "execute", "plan", "reply", "route"]

Next = Literal["approve", "reply", "ml-ops", "infra", "performance", "quality", "cost"]


async def plan(state: ChatState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Plan the request, and refuse it at once if the caller may not run one of its steps."""
    context = runtime.context
    caller = caller_of(dict(state))
    asked = state.get("asked")
    pending = None if asked is None else Planned("needs_input", asked["workflow"], dict(asked["slots"]))
    catalog = context.ops.catalog(caller)
    planned = await context.planner.plan(caller, state["message"], catalog, pending)
    update: dict[str, Any] = {
        "plan": None,
        "cursor": 0,
        "findings": [],
        "asked": None,
        "reply": planned.reply,
    }
    if planned.status == "needs_input":
        return update | {
            "status": "needs_input",
            "asked": {"workflow": planned.workflow, "slots": planned.slots},
        }
    if planned.status == "refused" or planned.plan is None:
        return update | {"status": "refused"}
    found = planned.plan.to_dict()
    for step in found["steps"]:
        tool = REGISTRY[step["tool"]]
        if caller.role < tool.role:
            reason = (
                f"Refused: {found['workflow']} runs {tool.name}, which needs role '{tool.role}' or higher;"
                f" your key {caller.key_id} has '{caller.role}'. Nothing was run."
            )
            return update | {"status": "refused", "plan": found, "reply": reason}
    return update | {"status": "running", "plan": found}


def route(state: ChatState) -> Command[Next]:
    """Send the next step to its role agent, to approval if it mutates, or on to the reply."""
    found = state.get("plan")
    if state.get("status") != "running" or found is None or state.get("dry_run"):
        return Command(goto="reply")
    cursor = state.get("cursor", 0)
    if cursor >= len(found["steps"]):
        return Command(goto="reply")
    step = found["steps"][cursor]
    if step["mutating"]:
        return Command(goto="approve")
    agent = REGISTRY[step["tool"]].agent
    if agent not in AGENTS:
        raise ValueError(f"tool {step['tool']} belongs to no agent ({agent!r})")
    return Command(goto=agent)


def approve(state: ChatState) -> Command[Literal["execute", "reply"]]:
    """Wait for a person's decision on the next (mutating) step; the only interrupt of the graph."""
    found = state["plan"]
    if found is None:
        raise ValueError("approve() reached without a plan")  # route() sends only a running plan here
    cursor = state["cursor"]
    step = found["steps"][cursor]
    decision = interrupt(
        {"action": step["tool"], "args": step["args"], "requested_by": state["caller"]["key_id"]}
    )
    record = {"step": cursor, "action": step["tool"], **decision}
    if decision.get("approve"):
        return Command(update={"approvals": [record]}, goto="execute")
    rejected = copy.deepcopy(found)
    why = f"rejected by {decision.get('by')}" + (
        f": {decision['comment']}" if decision.get("comment") else ""
    )
    rejected["steps"][cursor].update(status="cancelled", summary=why)
    skip_rest(rejected, cursor, "cancelled", f"not run: step {cursor + 1} was {why}")
    return Command(
        update={"approvals": [record], "plan": rejected, "cursor": len(rejected["steps"])}, goto="reply"
    )


async def execute(state: ChatState, runtime: Runtime[Context]) -> dict[str, Any]:
    """Run the approved step as the requester, and audit it naming both people and the thread."""
    context = runtime.context
    found = copy.deepcopy(state["plan"])
    if found is None:
        raise ValueError("execute() reached without a plan")
    cursor = state["cursor"]
    caller = caller_of(dict(state))
    approval = state["approvals"][-1]
    agent = REGISTRY[found["steps"][cursor]["tool"]].agent
    done = await run_step(found["steps"][cursor], caller, context, agent)
    found["steps"][cursor] = done
    context.audit(
        actor=caller.actor,
        tenant=caller.tenant,
        action="chat.action",
        target=f"chat:{context.thread_id}",
        before=None,
        after={
            "action": done["tool"],
            "args": done["args"],
            "status": done["status"],
            "summary": done["summary"],
            "requested_by": caller.actor,
            "approved_by": approval.get("by"),
            "comment": approval.get("comment"),
        },
    )
    if done["status"] != "ok" and stop_after_failure(found, cursor):
        skip_rest(found, cursor, "skipped", f"not run: step {cursor + 1} ({done['tool']}) did not pass")
        return {"plan": found, "cursor": len(found["steps"])}
    return {"plan": found, "cursor": cursor + 1}


def reply(state: ChatState) -> dict[str, Any]:
    """The run's reply, and the thread's status once nothing waits for approval."""
    status = "done" if state.get("status") == "running" else state.get("status", "done")
    text = compose(dict(state), status, None)
    if status in ("refused", "needs_input"):  # the planner's question or the refusal's reason leads
        text = "\n\n".join(t for t in (state.get("reply", ""), text if state.get("plan") else "") if t)
    return {
        "status": status,
        "reply": text,
        "messages": [{"role": "assistant", "content": text, "by": "assistant"}],
    }
