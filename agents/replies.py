"""The reply of a run: the steps taken (tool, arguments, outcome) and what the agents concluded.

Every number in a reply is in a step's summary or a finding, both made from tool results; a
failed step is reported as failed. A document the RAG service retrieved is quoted as data.
"""

from __future__ import annotations

from typing import Any

from agents.registry import approver_role
from opsloop.auth import Role

__all__ = ["compose"]


def _approver(action: str) -> str:
    return "an admin" if approver_role(action) >= Role.ADMIN else "an operator or admin"


_MARK = {
    "ok": "ok",
    "failed": "FAILED",
    "error": "ERROR",
    "skipped": "skipped",
    "cancelled": "cancelled",
    "planned": "not run yet",
}


def _args(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in args.items() if v is not None and k != "question")


def compose(state: dict[str, Any], status: str, pending: dict[str, Any] | None) -> str:
    """The reply text for ``state`` ending in ``status``."""
    plan = state.get("plan")
    if plan is None:
        return state.get("reply", "")
    lines = [
        f"Workflow {plan['workflow']} (agent {plan['agent']})"
        + (", dry run: nothing was run." if state.get("dry_run") else ":")
    ]
    for n, step in enumerate(plan["steps"], 1):
        outcome = f" -> {_MARK[step['status']]}" + (f": {step['summary']}" if step["summary"] else "")
        if state.get("dry_run"):
            outcome = " (needs approval)" if step["mutating"] else ""
        lines.append(f"{n}. {step['tool']}({_args(step['args'])}){outcome}")
    answer = next(
        (s["result"] for s in plan["steps"] if s["tool"] == "ask_docs" and s["status"] == "ok"), None
    )
    if answer is not None:
        lines.append(f"\nAnswer (from the {answer['collection']} collection; quoted, not acted upon):")
        lines.append(answer["answer"] or "(no answer was generated)")
        lines += [f"  [{n}] {s['source']}" for n, s in enumerate(answer["sources"], 1)]
    if state.get("findings"):
        lines.append("")
        lines += [f"- {finding}" for finding in state["findings"]]
    if status == "pending_approval" and pending is not None:
        lines.append(
            f"\nWaiting for approval of {pending['action']}({_args(pending['args'])}), requested by"
            f" {pending['requested_by']}: {_approver(pending['action'])} answers with"
            " POST /chat/<thread>/approve or `opsloop chat --approve <thread>`."
        )
    return "\n".join(lines)
