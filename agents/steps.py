"""Running a plan's steps: each as the caller, its outcome recorded, failures reported as such.

A tool that raises is an ``error`` step with the error's message; a check that does not pass is
``failed``. Either stops a plan that has a mutating step after it (nothing risky runs on a
failed premise, the rest is ``skipped``); an investigation goes on to its other steps.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime

from agents.context import Context
from agents.plan import AgentName, Step
from agents.registry import REGISTRY
from agents.state import AgentUpdate, ChatState
from agents.tools import ToolCall
from opsloop import tracing
from opsloop.auth import Principal, Role
from opsloop.errors import OpsloopError

__all__ = ["caller_of", "role_graph", "run_agent_steps", "run_step", "skip_rest", "stop_after_failure"]

log = logging.getLogger("opsloop.agents")


def caller_of(state: dict[str, Any]) -> Principal:
    """The requester of the thread's current request, as the services take it."""
    who = state["caller"]
    return Principal(who["key_id"], who["tenant"], Role.parse(who["role"]))


async def run_step(step: Step, caller: Principal, context: Context, agent: str) -> Step:
    """``step`` run, with its status, summary and result filled in."""
    tool = REGISTRY[step["tool"]]
    call = ToolCall(caller, context.ops, context.limits.get(agent, {}))
    done = copy.deepcopy(step)
    try:
        with tracing.span(f"tool {tool.name}", "TOOL", inputs=step["args"], agent=agent) as traced:
            outcome = await tool.run(call, **step["args"])
            traced.end({"status": outcome.status, "summary": outcome.summary})
    except OpsloopError as exc:
        error = exc.to_dict()["error"]
        done |= {"status": "error", "summary": f"{tool.name} failed: {exc.message}", "result": error}
        context.metrics.tool_errors.labels(tool.name).inc()
    except Exception as exc:  # a tool's own bug must not lose the thread: reported, not papered over
        log.exception("tool %s failed", tool.name)
        failure = f"{type(exc).__name__}: {exc}"
        done |= {
            "status": "error",
            "summary": f"{tool.name} failed: {failure}",
            "result": {"message": failure},
        }
        context.metrics.tool_errors.labels(tool.name).inc()
    else:
        done |= {"status": outcome.status, "summary": outcome.summary, "result": outcome.result}
    return done


def stop_after_failure(plan: dict[str, Any], cursor: int) -> bool:
    """Whether a failed step at ``cursor`` stops the plan: a mutating step follows it."""
    return any(s["mutating"] for s in plan["steps"][cursor + 1 :])


def skip_rest(plan: dict[str, Any], after: int, status: str, why: str) -> None:
    """Mark every step after ``after`` ``status`` (skipped, cancelled) with ``why``."""
    for later in plan["steps"][after + 1 :]:
        later.update(status=status, summary=why)


async def run_agent_steps(state: dict[str, Any], context: Context, agent: str) -> dict[str, Any]:
    """Run the read-only steps from the cursor that belong to ``agent``; the state update."""
    plan = copy.deepcopy(state["plan"])
    cursor = state.get("cursor", 0)
    caller = caller_of(state)
    steps: list[Step] = plan["steps"]
    while cursor < len(steps):
        current = steps[cursor]
        if current["mutating"] or REGISTRY[current["tool"]].agent != agent:
            break
        steps[cursor] = await run_step(current, caller, context, agent)
        if steps[cursor]["status"] != "ok" and stop_after_failure(plan, cursor):
            skip_rest(plan, cursor, "skipped", f"not run: step {cursor + 1} ({current['tool']}) did not pass")
            cursor = len(steps)
            break
        cursor += 1
    return {"plan": plan, "cursor": cursor}


def role_graph(
    agent: AgentName, schema: type[ChatState], findings: Callable[[dict[str, Any] | None], list[str]]
) -> CompiledStateGraph[Any, Any, Any, Any]:
    """A role agent's subgraph: run its steps from the cursor, then add what they show (``findings``)."""

    async def run(state: ChatState, runtime: Runtime[Context]) -> dict[str, Any]:
        return await run_agent_steps(dict(state), runtime.context, agent)

    def assess(state: ChatState) -> dict[str, Any]:
        known = list(state.get("findings") or [])
        return {"findings": list(dict.fromkeys(known + findings(state.get("plan"))))}

    graph = StateGraph(schema, context_schema=Context, output_schema=AgentUpdate)
    graph.add_node("run", run)
    graph.add_node("assess", assess)
    graph.add_edge(START, "run")
    graph.add_edge("run", "assess")
    graph.add_edge("assess", END)
    return graph.compile()
