"""LLM clients: one protocol (:mod:`opsloop.llm.protocol`) and its backends.

The backends import heavy SDKs; import them from their modules (``opsloop.llm.llamacpp``,
``opsloop.llm.openai_compat``, ``opsloop.llm.anthropic``) where they are wired, so
``import opsloop.llm`` stays light.
"""

from opsloop.llm.protocol import (
    ChatChunk,
    ChatMessage,
    ChatRequest,
    ChatResult,
    FinishReason,
    LLMClient,
    MeteredStream,
    Role,
    ToolCall,
    ToolCallDelta,
    Usage,
)

__all__ = [
    "ChatChunk",
    "ChatMessage",
    "ChatRequest",
    "ChatResult",
    "FinishReason",
    "LLMClient",
    "MeteredStream",
    "Role",
    "ToolCall",
    "ToolCallDelta",
    "Usage",
]
