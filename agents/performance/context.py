"""The performance agent's limits: a load test's bounds and the SLOs it is judged against."""

from __future__ import annotations

from typing import Any

from opsloop.settings import Settings

__all__ = ["limits"]


def limits(settings: Settings) -> dict[str, Any]:
    """What the performance tools read (``ToolCall.limits``): never an open-ended load test."""
    return {
        "max_requests": settings.load_test_max_requests,
        "max_concurrency": settings.load_test_max_concurrency,
        "max_seconds": settings.load_test_max_seconds,
        "slo_predict_p99_ms": settings.slo_predict_p99_ms,
        "slo_query_p99_ms": settings.slo_query_p99_ms,
        "slo_chat_p99_ms": settings.slo_chat_p99_ms,
        "slo_error_rate": settings.slo_error_rate,
    }
