"""The typed plan both planners produce and the executor carries out.

A request becomes a :class:`Plan`: one of the documented workflows (fixed names that tests and
users rely on), the role agent that runs it, its arguments (slots) and its steps.
Each step is one tool call; a mutating step waits for a person's approval before it runs.
Plans and steps are plain JSON-able dicts in the graph's state (the checkpointer stores them),
built and read through the helpers here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

__all__ = [
    "AGENTS",
    "SLOT_KINDS",
    "WORKFLOWS",
    "AgentName",
    "ChatStatus",
    "Plan",
    "Step",
    "StepStatus",
    "WorkflowSpec",
    "step",
]

AgentName = Literal["ml-ops", "infra", "performance", "quality", "cost"]
AGENTS: tuple[AgentName, ...] = ("ml-ops", "infra", "performance", "quality", "cost")

ChatStatus = Literal["done", "pending_approval", "needs_input", "refused"]
StepStatus = Literal["planned", "ok", "failed", "error", "skipped", "cancelled"]
"""``failed``: the tool ran and its check did not pass; ``error``: the tool itself failed."""

SLOT_KINDS: dict[str, type] = {
    "model": str,
    "version": int,
    "percent": int,
    "prompt": str,
    "prompt_version": int,
    "collection": str,
    "window": str,
    "tenant": str,
    "route": str,
    "job": str,
    "requests": int,
    "concurrency": int,
    "replicas": int,
    "path": str,
    "budget": str,
    "limit": float,
    "key": str,
}
"""Every slot a request can fill, with its type (the labelled set uses the same names)."""


@dataclass(frozen=True)
class WorkflowSpec:
    """One documented workflow: who runs it, what it needs, how people ask for it."""

    agent: AgentName
    summary: str
    required: tuple[tuple[str, ...], ...] = ()
    """Alternatives of required slots: the plan needs every slot of at least one of them."""
    optional: tuple[str, ...] = ()
    example: str = ""

    @property
    def slots(self) -> tuple[str, ...]:
        """Every slot this workflow reads."""
        names = [s for group in self.required for s in group] + list(self.optional)
        return tuple(dict.fromkeys(names))


WORKFLOWS: dict[str, WorkflowSpec] = {
    "status_report": WorkflowSpec(
        "ml-ops",
        "how the platform and its models stand",
        optional=("model",),
        example="what's the status of credit-risk?",
    ),
    "deploy_model": WorkflowSpec(
        "ml-ops",
        "canary a version, load-test it, check the SLO and promote it",
        required=(("model", "version"),),
        optional=("percent",),
        example="canary credit-risk version 4 at 10% and promote it if it holds",
    ),
    "promote": WorkflowSpec(
        "ml-ops",
        "make a version the champion directly",
        required=(("model", "version"),),
        example="promote credit-risk version 2",
    ),
    "rollback": WorkflowSpec(
        "ml-ops",
        "move the champion back to the version before",
        required=(("model",),),
        example="roll credit-risk back",
    ),
    "ab_test": WorkflowSpec(
        "ml-ops",
        "start an A/B test of a model version or a prompt version",
        required=(("model", "version"), ("prompt", "prompt_version")),
        optional=("percent",),
        example="A/B test credit-risk version 3 with 20% of traffic",
    ),
    "drift_investigation": WorkflowSpec(
        "quality",
        "data and concept drift of a model, or drift of a collection's queries",
        required=(("model",), ("collection",)),
        optional=("window",),
        example="is credit-risk drifting this week?",
    ),
    "retrain": WorkflowSpec(
        "ml-ops",
        "retrain a model and hand the new version to a canary",
        required=(("model",),),
        example="retrain credit-risk",
    ),
    "eval_run": WorkflowSpec(
        "quality",
        "run an eval job and compare it with its baseline",
        required=(("job",), ("collection",)),
        optional=("prompt_version",),
        example="run the docs eval against prompt version 3",
    ),
    "cost_investigation": WorkflowSpec(
        "cost",
        "LLM spend by day, tenant, model and route, and what changed",
        optional=("window", "tenant", "route"),
        example="why did LLM spend go up this week?",
    ),
    "load_test": WorkflowSpec(
        "performance",
        "a bounded load test of /predict, /query or /v1 against the SLO",
        required=(("model",), ("collection",), ("route",)),
        optional=("requests", "concurrency"),
        example="load test credit-risk with 500 requests",
    ),
    "capacity_check": WorkflowSpec(
        "infra",
        "health of every component, queue depths, stores, and what a size needs",
        optional=("replicas",),
        example="do we have capacity for 3 replicas?",
    ),
    "ask_docs": WorkflowSpec(
        "quality",
        "answer a how-to or runbook question from the docs, with citations",
        optional=("collection",),
        example="how do I rotate an API key?",
    ),
    "register_model": WorkflowSpec(
        "ml-ops",
        "register an MLflow model saved at a path on the server as the next version of a model",
        required=(("path", "model"),),
        example="register ./models/churn-v2 as churn",
    ),
    "set_budget": WorkflowSpec(
        "cost",
        "set a tenant's (or one of its keys') spend budget or rate limit",
        required=(("tenant", "budget", "limit"), ("key", "budget", "limit")),
        optional=("tenant", "key"),
        example="set acme's monthly budget to $200",
    ),
    "revoke_key": WorkflowSpec(
        "infra",
        "revoke an API key by its id",
        required=(("key",),),
        example="revoke key 3f9a1c2b7d4e",
    ),
}


class Step(TypedDict):
    """One tool call of a plan, and what became of it."""

    tool: str
    args: dict[str, Any]
    mutating: bool
    status: StepStatus
    summary: str
    """One line on the outcome, every number in it from the result."""
    result: dict[str, Any] | None


@dataclass
class Plan:
    """A workflow with its arguments and steps; what ``POST /chat`` returns as ``plan``."""

    workflow: str
    agent: AgentName
    args: dict[str, Any]
    steps: list[Step] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape kept in the graph's state and returned to callers."""
        return {"workflow": self.workflow, "agent": self.agent, "args": self.args, "steps": self.steps}


def step(tool: str, **args: Any) -> Step:
    """A planned step (whether it mutates is the tool registry's to say)."""
    return Step(tool=tool, args=args, mutating=False, status="planned", summary="", result=None)
