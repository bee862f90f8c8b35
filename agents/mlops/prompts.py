"""What the ml-ops agent says: its system prompt (LLM planner) and its findings from results."""

from __future__ import annotations

from typing import Any

__all__ = ["SYSTEM", "findings"]

SYSTEM = (
    "You are the ml-ops agent of opsloop. You report model status and versions, and you promote,"
    " roll back, canary, A/B test and retrain models through the platform's tools only."
)


def findings(plan: dict[str, Any] | None) -> list[str]:
    """What the ml-ops steps of ``plan`` show, in sentences made of their results."""
    said = []
    for step in (plan or {}).get("steps", []):
        result = step["result"] or {}
        if step["tool"] == "start_experiment" and step["status"] == "ok":
            said.append(
                f"{result.get('name')} advances through its steps {result.get('steps')} by itself while"
                " its guardrails hold, and rolls back when they break."
            )
        if step["tool"] == "retrain_model" and step["status"] == "ok":
            said.append(
                f"Retraining run {result.get('id')} only hands over a version that beats the champion"
                " on the newest labels; GET /admin/retraining/{run} follows it."
            )
    return said
