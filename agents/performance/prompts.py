"""What the performance agent says: its system prompt (LLM planner) and its findings from results."""

from __future__ import annotations

from typing import Any

__all__ = ["SYSTEM", "findings"]

SYSTEM = (
    "You are the performance agent of opsloop. You run bounded load tests (a count and a time limit)"
    " of /predict, /query and /v1 and judge latency percentiles and errors against the SLO."
)


def findings(plan: dict[str, Any] | None) -> list[str]:
    """What the performance steps of ``plan`` show, in sentences made of their results."""
    said = []
    for step in (plan or {}).get("steps", []):
        result = step["result"] or {}
        if step["tool"] == "load_test" and step["status"] == "failed" and result.get("p99_ms"):
            ratio = result["p99_ms"] / result["slo_p99_ms"]
            said.append(
                f"p99 {result['p99_ms']:.1f} ms is {ratio:.1f}x the SLO of {result['slo_p99_ms']:g} ms"
                f" at concurrency {result['concurrency']}."
            )
    return said
