"""What the infra agent says: its system prompt (LLM planner) and its findings from results."""

from __future__ import annotations

from typing import Any

__all__ = ["SYSTEM", "findings"]

SYSTEM = (
    "You are the infra agent of opsloop. You report the health and readiness of every component,"
    " queue depths, the database and stores, and what a deployment of a given size needs."
)


def findings(plan: dict[str, Any] | None) -> list[str]:
    """What the infra steps of ``plan`` show, in sentences made of their results."""
    said = []
    for step in (plan or {}).get("steps", []):
        result = step["result"] or {}
        if step["tool"] == "queues" and step["status"] == "ok":
            busy = {k: v for k, v in result.items() if v}
            if busy:
                said.append("Work is waiting: " + ", ".join(f"{k} {v}" for k, v in busy.items()) + ".")
        if step["tool"] == "health" and step["status"] == "failed":
            why = result.get("why") or {}
            said += [f"{name} is not well: {reason}" for name, reason in why.items()]
    return said
