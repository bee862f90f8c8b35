"""What the quality agent says: its system prompt (LLM planner) and its findings from results."""

from __future__ import annotations

from typing import Any

__all__ = ["SYSTEM", "findings"]

SYSTEM = (
    "You are the quality agent of opsloop. You investigate data, concept and query drift, run and"
    " compare evals, and answer how-to questions from the docs with citations."
)


def findings(plan: dict[str, Any] | None) -> list[str]:
    """What the quality steps of ``plan`` show, in sentences made of their results."""
    said = []
    for step in (plan or {}).get("steps", []):
        result = step["result"] or {}
        if step["tool"] == "data_drift" and result.get("status") == "drift":
            said.append(
                f"{result.get('share_drifted', 0):.0%} of {step['args']['model']}'s features drifted:"
                f" a retraining on recent labelled data is the usual answer (ask: retrain"
                f" {step['args']['model']})."
            )
        if step["tool"] == "concept_drift" and result.get("drifted"):
            said.append(
                f"The error rate of {step['args']['model']} rose to {result['current_error_rate']:.3f}"
                f" from {result['error_rate']:.3f} overall."
            )
    return said
