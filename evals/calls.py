"""The LLM calls of an eval run: their price, the judge's options, its failures and per-sample tally.

Shared by the scorers (``evals.scoring``), the ragas judge adapter (``evals.judge``) and the
runner (``evals.runner``). It lives apart from them so that the judge adapter, which imports
ragas, and the scorers, which import the adapter only when a run needs a judge, do not import
each other.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from opsloop.llm.protocol import Usage

__all__ = ["CostFn", "FailureReason", "JudgeError", "JudgeOptions", "JudgeTally", "current_tally"]

FailureReason = Literal["timeout", "backend_error", "unparsable", "rejected"]
CostFn = Callable[[str, Usage, float], float]
"""Cost in USD of one LLM call: (backend that served it, its usage, its latency in ms)."""


class JudgeError(Exception):
    """The judge gave no usable answer after its retries; ``reason`` says why."""

    def __init__(self, reason: FailureReason, message: str, attempts: int) -> None:
        super().__init__(message)
        self.reason: FailureReason = reason
        self.attempts = attempts


@dataclass
class JudgeTally:
    """What the judge used for one sample: calls, retries, tokens and cost."""

    calls: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """The tally as JSON-ready values."""
        return asdict(self)


current_tally: contextvars.ContextVar[JudgeTally | None] = contextvars.ContextVar(
    "opsloop_eval_judge_tally", default=None
)
"""The tally of the sample whose task is running; None outside a sample."""


@dataclass(frozen=True)
class JudgeOptions:
    """How the judge is called: completion limit, per-call timeout and retries."""

    max_tokens: int = 512
    timeout_s: float = 120.0
    retries: int = 2
