"""The quality agent's tools: drift (data, concept, queries), eval runs, and answers from the docs."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from agents.tools import Outcome, ToolCall, jsonable, tool
from opsloop.auth import Role
from opsloop.durations import parse_duration
from opsloop.errors import NotFoundError

__all__ = ["TOOLS", "ask_docs", "concept_drift", "data_drift", "data_quality", "query_drift", "run_eval"]


def _since(window: str | None) -> timedelta | None:
    return None if window is None else parse_duration(window, field="window")


def _drifted(report: dict[str, Any]) -> list[str]:
    return [name for name, feature in report.get("features", {}).items() if feature.get("drifted")]


@tool("quality", role=Role.OPERATOR)
async def data_drift(call: ToolCall, model: str, window: str | None = None) -> Outcome:
    """Drift of a model's live inputs against its reference, feature by feature."""
    report = jsonable(call.ops.drift(call.caller, model, _since(window)))
    drifted = _drifted(report)
    rows = report.get("current_rows")
    if report.get("status") == "insufficient_data":
        return Outcome(f"{model}: too few live rows to judge drift ({rows})", report)
    summary = (
        f"{model}: {len(drifted)} of {len(report.get('features', []))} features drifted over {rows} rows"
    )
    return Outcome(summary + (f": {', '.join(drifted)}" if drifted else ""), report)


@tool("quality", role=Role.OPERATOR)
async def concept_drift(call: ToolCall, model: str, window: str | None = None) -> Outcome:
    """Change points of the champion's error rate on labelled predictions (ADWIN)."""
    report = jsonable(call.ops.concept_drift(call.caller, model, _since(window)))
    worse = [p for p in report["change_points"] if p["worse"]]
    summary = (
        f"{model} v{report['version']}: {len(worse)} change points to a worse error rate over"
        f" {report['instances']} labelled instances (error {report['current_error_rate']:.3f} now,"
        f" {report['error_rate']:.3f} overall)"
    )
    return Outcome(summary, report)


@tool("quality", role=Role.OPERATOR)
async def data_quality(call: ToolCall, model: str, window: str | None = None) -> Outcome:
    """A model's live inputs against its schema and reference: types, ranges, categories, missing values."""
    report = call.ops.data_quality(call.caller, model, _since(window))
    failures = "; ".join(check.message for check in report.failures)
    summary = f"{model}: quality score {report.score:.3f} over {report.rows} live rows"
    summary += f" (threshold {report.threshold:g})" + (
        f"; {failures}" if failures else "; every check passed"
    )
    return Outcome(summary, report.to_dict(), "ok" if report.passed else "failed")


@tool("quality", role=Role.OPERATOR)
async def query_drift(call: ToolCall, collection: str, window: str | None = None) -> Outcome:
    """Drift of the questions asked of a collection against its reference questions."""
    report = jsonable(call.ops.query_drift(call.caller, collection, _since(window)))
    return Outcome(f"{collection}: queries {'drifted' if report.get('drifted') else 'did not drift'}", report)


@tool("quality", role=Role.OPERATOR)
async def run_eval(
    call: ToolCall, job: str | None = None, collection: str | None = None, prompt_version: int | None = None
) -> Outcome:
    """Run an eval job (or the job of a collection) and compare it with its baseline."""
    result = jsonable(await call.ops.run_eval(call.caller, job, collection, prompt_version))
    scores = ", ".join(
        f"{k} {v:.3f}" for k, v in (result.get("scores") or {}).items() if isinstance(v, float)
    )
    passed = result["passed"]
    summary = f"eval {result['job']} (MLflow run {result['run_id']}): {scores or 'no scores'}"
    summary += "" if passed else "; the gate failed"
    return Outcome(summary, result, "ok" if passed else "failed")


@tool("quality", role=Role.USER)
async def ask_docs(call: ToolCall, question: str, collection: str = "docs") -> Outcome:
    """Answer a how-to or runbook question from a collection, citing its sources."""
    try:
        answer = await call.ops.ask(call.caller, question, collection)
    except NotFoundError as exc:
        return Outcome(exc.message, {"error": exc.to_dict()["error"]}, "failed")
    sources = [{"n": s.n, "source": s.source, "title": s.title, "score": s.score} for s in answer.sources]
    cited = ", ".join(dict.fromkeys(s.source for s in answer.sources))
    return Outcome(
        f"answered from {len(sources)} passages of {collection}: {cited}",
        {
            "answer": None if answer.answer is None else answer.answer.answer,
            "sources": sources,
            "collection": collection,
        },
    )


TOOLS = (data_drift, concept_drift, data_quality, query_drift, run_eval, ask_docs)
