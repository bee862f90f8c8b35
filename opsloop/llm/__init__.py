"""LLM clients: one protocol (:mod:`opsloop.llm.protocol`) and its backends."""

from opsloop.llm.protocol import (
    ChatChunk,
    ChatMessage,
    ChatRequest,
    ChatResult,
    FinishReason,
    LLMClient,
    Role,
    Usage,
)

__all__ = [
    "ChatChunk",
    "ChatMessage",
    "ChatRequest",
    "ChatResult",
    "FinishReason",
    "LLMClient",
    "Role",
    "Usage",
]
