"""The one skeleton of every metered stream here: chunks from a generator, usage settled on close.

Each backend's stream and the router's are :class:`~opsloop.llm.protocol.MeteredStream`
objects built the same way, as a :class:`ChunkStream`: the chunks come from one async
generator, ``_run()``, whose ``finally`` sets :attr:`~ChunkStream.usage` for what was
generated, however the stream ends. That is what makes an early stop cheap and charged: a
consumer that stops calls :meth:`~ChunkStream.aclose`, which closes the generator where it
waits (running its ``finally``, which closes the HTTP response or the inner stream, so the
server stops generating), then :meth:`~ChunkStream._stop` for work that runs outside the
generator (llama.cpp's worker thread). A stream closed before it sent anything, or refused
before sending, used nothing: ``Usage()``.

A subclass writes ``_run`` and, where it has one, ``_stop``; :class:`BackendStream` adds
what the backends' streams share: the finish reason, the time to first token, whether
usage is estimated, and the final chunk that carries them.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator
from typing import Self

from opsloop.llm.protocol import ChatChunk, FinishReason, Usage

__all__ = ["BackendStream", "ChunkStream"]


class ChunkStream(ABC):
    """A :class:`~opsloop.llm.protocol.MeteredStream` whose chunks come from ``_run()``.

    Iterate it, then ``await stream.aclose()`` (also after an early stop) and read
    :attr:`usage`.
    """

    def __init__(self) -> None:
        self.usage: Usage | None = None
        """Tokens used; set with the final chunk, or by :meth:`aclose` after an early stop."""
        self._chunks = self._run()  # runs nothing until the first iteration

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> ChatChunk:
        return await self._chunks.__anext__()

    async def aclose(self) -> None:
        """Stop generating and settle :attr:`usage` for what was generated up to now."""
        await self._chunks.aclose()
        await self._stop()
        if self.usage is None:  # closed before the first iteration, or refused before sending
            self.usage = Usage()

    @abstractmethod
    def _run(self) -> AsyncGenerator[ChatChunk, None]:
        """Produce the chunks; its ``finally`` sets :attr:`usage`."""

    async def _stop(self) -> None:  # noqa: B027 - a hook, not abstract: most streams need none
        """Stop what runs outside ``_run`` once it is closed; nothing does by default."""


class BackendStream(ChunkStream):
    """One backend's streamed completion: a :class:`ChunkStream` with its finish reason and TTFT.

    Args:
        backend: the backend's name, as the final chunk's ``extra`` reports it.
    """

    def __init__(self, backend: str) -> None:
        super().__init__()
        self.backend = backend
        self.finish_reason: FinishReason | None = None
        self.ttft_ms: float | None = None
        """Milliseconds from the start of the call to its first text or tool-call piece."""
        self.usage_estimated = False
        """Whether :attr:`usage` is partly estimated because the backend sent no count."""

    def _first_piece(self, started: float) -> None:
        """Take the time to first token, if this is the first piece with text or a tool call."""
        if self.ttft_ms is None:
            self.ttft_ms = (time.perf_counter() - started) * 1000

    def _final(self, **extra: object) -> ChatChunk:
        """The last chunk: finish reason, :attr:`usage`, and the TTFT and backend in ``extra``."""
        return ChatChunk(
            finish_reason=self.finish_reason or "stop",
            usage=self.usage,
            extra={
                "ttft_ms": self.ttft_ms,
                "backend": self.backend,
                **extra,
                "usage_estimated": self.usage_estimated,
            },
        )
