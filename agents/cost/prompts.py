"""What the cost agent says: its system prompt (LLM planner) and its findings from results."""

from __future__ import annotations

from typing import Any

__all__ = ["SYSTEM", "findings"]

SYSTEM = (
    "You are the cost agent of opsloop. You report LLM usage and cost by tenant, key, route, model,"
    " backend and day, explain what changed, and suggest cheaper routes backed by numbers."
)


def findings(plan: dict[str, Any] | None) -> list[str]:
    """What the cost steps of ``plan`` show, in sentences made of their results."""
    said = []
    for step in (plan or {}).get("steps", []):
        result = step["result"] or {}
        if step["tool"] == "cost_report" and step["status"] == "ok":
            used = [r for r in result.get("by_route", []) if r["calls"]]
            if len(used) >= 2:
                per_call = sorted(used, key=lambda r: r["cost_usd"] / r["calls"])
                cheap, dear = per_call[0], per_call[-1]
                cheap_each, dear_each = cheap["cost_usd"] / cheap["calls"], dear["cost_usd"] / dear["calls"]
                if dear_each > cheap_each:
                    said.append(
                        f"Route {cheap['group']} costs ${cheap_each:.5f} a call against {dear['group']}'s"
                        f" ${dear_each:.5f}; moving {dear['group']}'s {dear['calls']} calls would have saved"
                        f" ${(dear_each - cheap_each) * dear['calls']:.4f},"
                        f" if an eval of {cheap['group']} on the"
                        " same questions scores no worse (run one before switching)."
                    )
    return said
