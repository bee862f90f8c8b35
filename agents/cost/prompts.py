"""What the cost agent says: its system prompt (LLM planner) and its findings from results."""

from __future__ import annotations

from typing import Any

__all__ = ["SYSTEM", "findings"]

SYSTEM = (
    "You are the cost agent of opsloop. You report LLM usage and cost by tenant, key, route, model,"
    " backend and day, explain what changed, and suggest cheaper routes backed by numbers."
)


SCORE_TOLERANCE = 0.01
"""How much lower a cheaper route's eval score may be and still count as "no worse"."""


def findings(plan: dict[str, Any] | None) -> list[str]:
    """What the cost steps of ``plan`` show: a cheaper route, and whether its eval scores hold up."""
    results = {
        step["tool"]: step["result"] or {} for step in (plan or {}).get("steps", []) if step["status"] == "ok"
    }
    used = [r for r in results.get("cost_report", {}).get("by_route", []) if r["calls"]]
    if len(used) < 2:
        return []
    per_call = sorted(used, key=lambda r: r["cost_usd"] / r["calls"])
    cheap, dear = per_call[0], per_call[-1]
    cheap_each, dear_each = cheap["cost_usd"] / cheap["calls"], dear["cost_usd"] / dear["calls"]
    if dear_each <= cheap_each:
        return []
    saved = (dear_each - cheap_each) * dear["calls"]
    saving = (
        f"Route {cheap['group']} costs ${cheap_each:.5f} a call against {dear['group']}'s ${dear_each:.5f};"
        f" {dear['group']}'s {dear['calls']} calls on it would have cost ${saved:.4f} less"
    )
    scores = results.get("route_quality", {}).get("routes", {})
    cheap_scores, dear_scores = scores.get(cheap["group"], {}), scores.get(dear["group"], {})
    shared = sorted(set(cheap_scores) & set(dear_scores))
    if not shared:
        return [
            f"{saving}; no eval has scored both routes on the same questions, so run one before switching."
        ]
    lower = [m for m in shared if cheap_scores[m] < dear_scores[m] - SCORE_TOLERANCE]
    compared = ", ".join(f"{m} {cheap_scores[m]:.3f} vs {dear_scores[m]:.3f}" for m in shared)
    if lower:
        return [f"{saving}, but its eval scores are lower ({compared}): keep {dear['group']}."]
    return [f"{saving}, and its eval scores are no worse ({compared}): a candidate to switch to."]
