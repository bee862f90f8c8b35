"""Answers with citations: retrieved chunks become numbered sources, the LLM answers from them.

The prompt is the registered prompt ``rag-answer`` (MLflow prompt registry, alias
``production``), with MLflow's double-brace variables ``{{context}}`` and ``{{question}}``.
:func:`ensure_answer_prompt` registers :data:`DEFAULT_PROMPT` as its first version;
:class:`Answerer` takes the template text and version the caller loaded, so a prompt A/B test
can hand it either arm.

Context. Chunks are numbered in rank order and written as::

    [1] Title > Heading > Subheading (source)
    chunk text

    [2] ...

Sources are added while the whole context block stays within ``context_tokens`` (counted with
the given tokenizer, usually the embedding model's; the LLM's own count differs a little, so
leave headroom). The first source that does not fit *ends* the context: it and every source
ranked below it are left out whole, so a lower-ranked chunk never takes the place of a better
one. The one exception is the top-ranked source: when it alone exceeds the budget it is cut at
a whitespace boundary to fit, so a retrieval that found something never turns into "I don't
know" for lack of room. Only the sources given to the model are returned.

Citations. The model's ``[n]`` markers are parsed in the forms ``[1]``, ``[1, 2]`` and
``[1][2]``; a marker directly after a letter or digit (``x[0]``) is indexing, not a citation,
and is left alone. Numbers that match no returned source are removed from the answer text (an
empty marker goes with the space before it), so a reader never sees a citation that leads
nowhere; the rest, deduplicated in order of first appearance, are ``citations``. Nothing is
added that the model did not write.

When retrieval found nothing, the answer is :data:`DONT_KNOW` and the LLM is not called
(mode ``no_sources``).

Fallback. A small model's answer may cite none of the sources (SmolLM2-135M often does, or says
:data:`DONT_KNOW` while the sources hold the answer) or loop on one phrase until it runs out of
tokens. Such an answer is replaced by an extractive one (:func:`rag.extractive.extractive_answer`):
the sources' sentences closest to the question, each with its ``[n]``. Its ``mode`` is
``extractive`` instead of ``generated``, ``note`` says why, and ``generated`` keeps what the model
wrote. The order of the checks: repetition (:func:`rag.extractive.is_repetitive`) first, since a
looping answer is unusable even when it cites; then no valid citation.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from dataclasses import dataclass, replace
from typing import Literal, Protocol

from opsloop.errors import BackendError, ConflictError, InvalidInputError, NotFoundError
from opsloop.llm.protocol import ChatMessage, ChatRequest, LLMClient, Usage
from opsloop.registry import PromptVersionInfo, Registry
from rag.chunking import context_header
from rag.embedder import Embedder
from rag.extractive import extractive_answer, is_repetitive
from rag.retriever import RetrievedChunk

__all__ = [
    "ANSWER_PROMPT",
    "DEFAULT_PROMPT",
    "DONT_KNOW",
    "Answer",
    "AnswerMode",
    "Answerer",
    "Source",
    "TokenCounter",
    "build_context",
    "ensure_answer_prompt",
    "extract_citations",
    "load_answer_prompt",
    "render_prompt",
]

ANSWER_PROMPT = "rag-answer"
"""Name of the answer prompt in the prompt registry."""

PRODUCTION = "production"

DONT_KNOW = "I don't know based on the provided sources."
"""The fixed answer when the sources do not hold the answer (and when there are no sources)."""

DEFAULT_PROMPT = (
    "Answer the question using only the numbered sources below.\n"
    "Cite every source you use by its number in square brackets, like [1] or [1][2].\n"
    f"If the sources do not contain the answer, reply exactly: {DONT_KNOW}\n"
    "\n"
    "Sources:\n"
    "{{context}}\n"
    "\n"
    "Question: {{question}}\n"
    "Answer:"
)
"""Version 1 of the ``rag-answer`` prompt."""

MAX_QUESTION_CHARS = 2000

AnswerMode = Literal["generated", "extractive", "no_sources", "retrieval_only"]
"""How an answer was made: the LLM's text, the sources' sentences (the fallback), the fixed
:data:`DONT_KNOW` when nothing was retrieved, or none at all (a retrieval-only query)."""

NOTE_REPETITIVE = (
    "the generated answer repeated itself; these are the sources' sentences closest to the question"
)
NOTE_UNCITED = (
    "the generated answer cited no source; these are the sources' sentences closest to the question"
)
NOTE_DONT_KNOW = (
    "the model found no answer in the sources; these are the sources' sentences closest to the question"
)

# Tag on the versions ensure_answer_prompt registers; racing processes agree on version 1 by it.
_DEFAULT_TAG = "opsloop.default"
# Same syntax as MLflow's prompt variables (and opsloop.registry's).
_VARIABLE = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")
_REQUIRED_VARIABLES = ("context", "question")
# A run of markers such as "[1]", "[1, 2]" or "[1][2]", with the blanks before it; not right
# after a word character, where brackets index something (x[0]). The (?<![ \t]) finds the same
# matches as without it, but without it sub() rescans a long run of blanks from each of its blanks:
# quadratic on model output (20,000 blanks took 20 s).
_CITATION_RUN = re.compile(r"(?P<pre>(?<![ \t])[ \t]*)(?<!\w)(?P<run>(?:\[\s*\d+(?:\s*,\s*\d+)*\s*\])+)")
_MARKER = re.compile(r"\[([^\]]*)\]")


class TokenCounter(Protocol):
    """What the context budget needs of a tokenizer (``rag.chunking.HFTokenizer`` is one)."""

    def count(self, text: str) -> int:
        """Tokens in ``text``."""
        ...


@dataclass(frozen=True)
class Source:
    """One numbered source given to the model; ``text`` is exactly what the model saw."""

    n: int
    source: str
    title: str
    headings: tuple[str, ...]
    score: float
    text: str


@dataclass(frozen=True)
class Answer:
    """An answer with the sources it was written from and the ones it cites.

    ``model`` is None when the LLM was not called (no sources); ``prompt_version`` echoes the
    version the caller passed. ``mode``, ``note`` and ``generated``: see the module docs.
    """

    answer: str
    sources: list[Source]
    citations: list[int]
    usage: Usage
    prompt_version: str | int
    model: str | None
    backend: str
    mode: AnswerMode = "generated"
    note: str | None = None
    """Why the answer is not the model's (None when it is)."""
    generated: str | None = None
    """What the model wrote (citations cleaned); None when the LLM was not called."""
    cost_usd: float = 0.0
    """What its LLM call cost, as the gateway charged it (0 when unpriced or not called)."""


# -- prompt registry ---------------------------------------------------------------------------


def ensure_answer_prompt(registry: Registry, *, alias: str = PRODUCTION) -> PromptVersionInfo:
    """Return the answer prompt at ``alias``, registering :data:`DEFAULT_PROMPT` first if needed.

    Idempotent, and safe when several processes start at once: the prompt is registered only
    when it does not exist (a racing creator's conflict is caught), and ``alias`` is pointed at
    version 1 only if that version is one this function registered, so every racer sets the
    same alias to the same version. A prompt someone else created and left without ``alias``
    is not touched.

    Raises:
        NotFoundError: The prompt exists, has no ``alias``, and its version 1 is not the default.
        BackendError: The registry failed.
    """
    try:
        return registry.load_prompt(ANSWER_PROMPT, alias)
    except NotFoundError:
        pass
    if ANSWER_PROMPT not in registry.prompts():
        try:
            registry.register_prompt(
                ANSWER_PROMPT,
                DEFAULT_PROMPT,
                commit_message="default RAG answer prompt",
                tags={_DEFAULT_TAG: "true"},
            )
        except (ConflictError, BackendError):
            # Another process created the prompt meanwhile (MLflow's store reports some of these
            # races as internal errors); its version 1 is read below. Anything else re-raises.
            if ANSWER_PROMPT not in registry.prompts():
                raise
    first = _first_version(registry)
    if first.tags.get(_DEFAULT_TAG) != "true":
        raise NotFoundError(
            f"prompt {ANSWER_PROMPT!r} exists but has no alias {alias!r}; set it to the version to serve",
            prompt=ANSWER_PROMPT,
            alias=alias,
        )
    try:
        registry.set_prompt_alias(ANSWER_PROMPT, alias, first.version)
    except (ConflictError, BackendError):
        # Two first sets of one alias race on its unique row in MLflow's store, and the loser
        # gets an internal error; the alias is then set (to the same version), so re-read it.
        try:
            return registry.load_prompt(ANSWER_PROMPT, alias)
        except NotFoundError:
            pass
        raise
    return registry.load_prompt(ANSWER_PROMPT, alias)


def _first_version(registry: Registry, attempts: int = 20, pause_s: float = 0.05) -> PromptVersionInfo:
    # A racing creator makes the prompt and its version 1 in two steps; wait out the gap.
    for _ in range(attempts - 1):
        try:
            return registry.load_prompt(ANSWER_PROMPT, 1)
        except NotFoundError:
            time.sleep(pause_s)
    return registry.load_prompt(ANSWER_PROMPT, 1)


def load_answer_prompt(registry: Registry, alias_or_version: str | int = PRODUCTION) -> PromptVersionInfo:
    """Return the answer prompt by alias or version number.

    Raises:
        NotFoundError: No such prompt, alias or version.
    """
    return registry.load_prompt(ANSWER_PROMPT, alias_or_version)


def check_answer_template(template: str) -> None:
    """Refuse a template the answerer could not render (``InvalidInputError`` naming what is missing)."""
    # render_prompt is what the answerer runs on every query; rendering with empty values
    # applies exactly its rule for the required variables, without a copy of it here.
    render_prompt(template, context="", question="")


def render_prompt(template: str, *, context: str, question: str) -> str:
    """Fill ``{{context}}`` and ``{{question}}`` into ``template`` in one pass.

    One pass, so a question that itself contains ``{{context}}`` stays literal. Other variables
    are left as written.

    Raises:
        InvalidInputError: The template lacks one of the two variables (``field="prompt_template"``).
    """
    present = set(_VARIABLE.findall(template))
    missing = [name for name in _REQUIRED_VARIABLES if name not in present]
    if missing:
        raise InvalidInputError(
            f"the answer prompt must contain {{{{context}}}} and {{{{question}}}}; missing {missing}",
            field="prompt_template",
            missing=missing,
        )
    values = {"context": context, "question": question}
    return _VARIABLE.sub(lambda m: values.get(m.group(1), m.group(0)), template)


# -- context and citations (pure) --------------------------------------------------------------


def build_context(
    chunks: list[RetrievedChunk], tokenizer: TokenCounter, budget: int
) -> tuple[str, list[Source]]:
    """Number ``chunks`` (best first) into a context block of at most ``budget`` tokens.

    See the module docs for which sources are kept. Returns the block and its sources.
    """
    blocks: list[str] = []
    sources: list[Source] = []
    for chunk in chunks:
        n = len(sources) + 1
        header, body = _header(n, chunk), _body(chunk)
        block = f"{header}\n{body}"
        if tokenizer.count(_join([*blocks, block])) > budget:
            if sources:
                break
            body = _fit_prefix(header, body, tokenizer, budget)
            if not body:
                break
            block = f"{header}\n{body}"
        blocks.append(block)
        sources.append(Source(n, chunk.source, chunk.title, chunk.headings, chunk.score, body))
    return _join(blocks), sources


def extract_citations(text: str, valid: set[int]) -> tuple[str, list[int]]:
    """Return ``text`` without citation numbers outside ``valid``, and the cited valid numbers.

    Numbers come back deduplicated, in order of first appearance; markers that cite only valid
    numbers are left exactly as the model wrote them.
    """
    cited: list[int] = []

    def rewrite(match: re.Match[str]) -> str:
        kept_markers: list[str] = []
        changed = False
        for marker in _MARKER.findall(match.group("run")):
            numbers = [int(part) for part in marker.split(",")]
            kept = [number for number in numbers if number in valid]
            changed |= kept != numbers
            for number in kept:
                if number not in cited:
                    cited.append(number)
            if kept:
                kept_markers.append("[" + ", ".join(str(number) for number in kept) + "]")
        if not changed:
            return match.group(0)
        return match.group("pre") + "".join(kept_markers) if kept_markers else ""

    cleaned = _CITATION_RUN.sub(rewrite, text)
    return cleaned.strip(), cited


def _header(n: int, chunk: RetrievedChunk) -> str:
    crumb = context_header(chunk.title, chunk.headings)
    return f"[{n}] {crumb} ({chunk.source})" if crumb else f"[{n}] ({chunk.source})"


def _body(chunk: RetrievedChunk) -> str:
    # Ingested chunks start with the same "Title > Heading" breadcrumb the header shows.
    crumb = context_header(chunk.title, chunk.headings)
    text = chunk.text
    if crumb and text.startswith(crumb + "\n"):
        text = text[len(crumb) :]
    return text.strip()


def _join(blocks: list[str]) -> str:
    return "\n\n".join(blocks)


def _fit_prefix(header: str, body: str, tokenizer: TokenCounter, budget: int) -> str:
    """The longest whitespace-bounded prefix of ``body`` whose block fits ``budget``."""
    cuts = [m.start() for m in re.finditer(r"\s+", body)] + [len(body)]
    lo, hi = 0, len(cuts)  # cuts[:lo] fit; cuts[hi:] do not
    while lo < hi:
        mid = (lo + hi) // 2
        if tokenizer.count(f"{header}\n{body[: cuts[mid]]}") <= budget:
            lo = mid + 1
        else:
            hi = mid
    return body[: cuts[lo - 1]].rstrip() if lo else ""


# -- the answerer ------------------------------------------------------------------------------


class Answerer:
    """Answers a question from retrieved chunks with an LLM, citing them by number.

    Args:
        llm: The chat backend.
        tokenizer: Counts tokens for the context budget.
        context_tokens: Budget of the numbered-sources block.
        max_answer_tokens: ``max_tokens`` of the completion.
        temperature: Sampling temperature; 0 answers deterministically.
        frequency_penalty: The completion's ``frequency_penalty`` (-2 to 2); None sends none.
        max_question_chars: Longest question accepted.
        fallback: Replace an answer that cites no source or repeats itself by an extractive one
            (see the module docs); False returns whatever the model wrote.
        embedder: Ranks the sources' sentences for the extractive answer by cosine to the
            question; None ranks them by the question's words they contain.

    Raises:
        InvalidInputError: A setting is out of range; ``details["field"]`` names it.
    """

    def __init__(
        self,
        llm: LLMClient,
        tokenizer: TokenCounter,
        *,
        context_tokens: int = 1500,
        max_answer_tokens: int = 256,
        temperature: float = 0.0,
        max_question_chars: int = MAX_QUESTION_CHARS,
        frequency_penalty: float | None = None,
        fallback: bool = True,
        embedder: Embedder | None = None,
    ) -> None:
        for name, value in (
            ("context_tokens", context_tokens),
            ("max_answer_tokens", max_answer_tokens),
            ("max_question_chars", max_question_chars),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"{name} must be a positive integer", field=name, value=repr(value))
        if not isinstance(temperature, int | float) or not math.isfinite(temperature) or temperature < 0:
            raise InvalidInputError(
                "temperature must be a finite number >= 0", field="temperature", value=repr(temperature)
            )
        if frequency_penalty is not None and (
            isinstance(frequency_penalty, bool)
            or not isinstance(frequency_penalty, int | float)
            or not -2 <= frequency_penalty <= 2
        ):
            raise InvalidInputError(
                "frequency_penalty must be a number from -2 to 2",
                field="frequency_penalty",
                value=repr(frequency_penalty),
            )
        self.llm = llm
        self.tokenizer = tokenizer
        self.context_tokens = context_tokens
        self.max_answer_tokens = max_answer_tokens
        self.temperature = float(temperature)
        self.max_question_chars = max_question_chars
        self.frequency_penalty = None if frequency_penalty is None else float(frequency_penalty)
        self.fallback = fallback
        self.embedder = embedder

    async def answer(
        self,
        question: str,
        chunks: list[RetrievedChunk],
        prompt_template: str,
        prompt_version: str | int,
    ) -> Answer:
        """Answer ``question`` from ``chunks`` (best first) with the given prompt.

        Raises:
            InvalidInputError: Empty or too long question (``field="question"``), or a template
                without ``{{context}}``/``{{question}}`` (``field="prompt_template"``).
            BackendError: The LLM failed.
        """
        question = self._checked(question)
        context, sources = build_context(chunks, self.tokenizer, self.context_tokens)
        prompt = render_prompt(prompt_template, context=context, question=question)
        if not sources:
            return Answer(DONT_KNOW, [], [], Usage(), prompt_version, None, self.llm.name, mode="no_sources")
        result = await self.llm.chat(
            ChatRequest(
                messages=[ChatMessage(role="user", content=prompt)],
                max_tokens=self.max_answer_tokens,
                temperature=self.temperature,
                frequency_penalty=self.frequency_penalty,
            )
        )
        text, citations = extract_citations(result.text, {source.n for source in sources})
        answer = Answer(
            text,
            sources,
            citations,
            result.usage,
            prompt_version,
            result.model,
            result.backend,
            generated=text,
            cost_usd=result.cost_usd or 0.0,
        )
        note = _fallback_note(text, citations)
        if not self.fallback or note is None:
            return answer
        # Embedding the sentences is CPU work of tens of milliseconds: off the event loop.
        extract, cited = await asyncio.to_thread(
            extractive_answer, question, [(s.n, s.text) for s in sources], embedder=self.embedder
        )
        if not extract:  # no source has a whole sentence to quote: the model's text is all there is
            return answer
        return replace(answer, answer=extract, citations=cited, mode="extractive", note=note)

    def _checked(self, question: str) -> str:
        if not isinstance(question, str) or not question.strip():
            raise InvalidInputError(
                "question must be a non-empty string", field="question", value=repr(question)
            )
        if len(question) > self.max_question_chars:
            raise InvalidInputError(
                f"question is longer than {self.max_question_chars} characters",
                field="question",
                length=len(question),
                max_length=self.max_question_chars,
            )
        return question.strip()


def _fallback_note(text: str, citations: list[int]) -> str | None:
    """Why ``text`` (cleaned, with its valid ``citations``) is no usable answer; None when it is."""
    if is_repetitive(text):
        return NOTE_REPETITIVE
    if not citations:
        return NOTE_DONT_KNOW if DONT_KNOW.rstrip(".").lower() in text.lower() else NOTE_UNCITED
    return None
