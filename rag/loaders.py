"""Document loaders: Markdown, plain text, HTML and PDF into heading-structured Documents.

Each format has a pure parser over bytes or text (``parse_markdown``, ``parse_text``,
``parse_html``, ``parse_pdf``); ``load_bytes`` picks one by the source's suffix (what the ingest
route uses for uploads), ``load_file`` reads one file and ``load_folder`` walks a tree.

A ``Document`` is a list of ``Section``s, each the text under one heading path such as
``("Install", "Linux")``; chunking never crosses a section. A folder walk never stops on one bad
file: unsupported suffixes, undecodable text, broken PDFs and files without text are reported in
``LoadResult.skipped`` by source and reason, and the rest load.

Uploads are untrusted text, so Markdown and plain text parse in time linear in their size: no
regular expression here can backtrack over a long run of blanks or ``#`` (tested with megabyte
lines in ``tests/unit/test_linear_time_parsing.py``).

Errors (both ``InvalidInputError``, 422)::

    InvalidInputError
    ├── UnsupportedDocumentError   no loader for the suffix
    └── CorruptDocumentError       the bytes do not parse as the format says (chained)
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from opsloop.errors import BackendError, InvalidInputError

__all__ = [
    "SUPPORTED_SUFFIXES",
    "CorruptDocumentError",
    "Document",
    "LoadResult",
    "Section",
    "Skipped",
    "UnsupportedDocumentError",
    "folder_files",
    "load_bytes",
    "load_file",
    "load_folder",
    "parse_html",
    "parse_markdown",
    "parse_pdf",
    "parse_text",
]


class UnsupportedDocumentError(InvalidInputError):
    """No loader handles the file's suffix."""


class CorruptDocumentError(InvalidInputError):
    """The file does not parse as the format its suffix names."""


@dataclass(frozen=True)
class Section:
    """The text under one heading path; ``metadata`` holds per-section facts such as a PDF page."""

    headings: tuple[str, ...]
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Document:
    """One loaded file: ``source`` is its posix path relative to the ingested root."""

    source: str
    title: str
    sections: tuple[Section, ...]
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Skipped:
    """A file ``load_folder`` did not load, and why."""

    source: str
    reason: str


@dataclass(frozen=True)
class LoadResult:
    """What ``load_folder`` loaded and what it skipped, both in path order."""

    documents: list[Document]
    skipped: list[Skipped]


# --------------------------------------------------------------------------- shared helpers


class _SectionBuilder:
    """Collects text under a heading stack; a heading closes the open section."""

    def __init__(self) -> None:
        self._stack: list[tuple[int, str]] = []
        self._lines: list[str] = []
        self.sections: list[Section] = []

    def heading(self, level: int, text: str) -> None:
        self.flush()
        # A heading replaces every open heading at its level or deeper; skipped levels stay absent.
        while self._stack and self._stack[-1][0] >= level:
            self._stack.pop()
        self._stack.append((level, text))

    def add(self, text: str) -> None:
        self._lines.append(text)

    def flush(self) -> None:
        text = "\n".join(self._lines).strip("\n")
        self._lines = []
        if text.strip():
            self.sections.append(Section(tuple(h for _, h in self._stack), text.rstrip()))


def _decode(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CorruptDocumentError(
            f"{source} is not UTF-8 text (byte {exc.start}: {data[exc.start : exc.start + 1]!r})",
            source=source,
        ) from exc


def _stem(source: str) -> str:
    return PurePosixPath(source).stem


def _squash(text: str) -> str:
    return " ".join(text.split())


# --------------------------------------------------------------------------- plain text and Markdown


def parse_text(text: str, *, source: str) -> Document:
    """Plain text: one section without headings, titled by the file stem."""
    body = text.strip("\n").rstrip()
    sections = (Section((), body),) if body.strip() else ()
    return Document(source, _stem(source), sections, {"format": "text"})


# Uploads are untrusted and a backtracking pattern holds the GIL (one crafted heading line froze
# the server for 22 s), so the two patterns left are anchored and read each character a bounded
# number of times, and headings are parsed with string methods (see ``_atx_heading``).
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
# The lazy body stops only at a newline, and what must follow it (---, blanks, a newline) is
# checked once per line: linear even for an unclosed block.
_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?\n)?---[ \t]*(?:\n|\Z)", re.DOTALL)


def _atx_heading(line: str) -> tuple[int, str] | None:
    r"""``(level, text)`` when ``line`` is an ATX heading, else None.

    Up to three spaces, one to six ``#``, then a blank or the line's end; an optional closing
    run of ``#`` counts only after a blank (``# C#`` keeps its ``#``). String methods instead of
    a pattern: the patterns for this (``(.*?)[ \t]*$``, ``(?:^|[ \t]+)#+$``) try again from every
    blank of a long run of blanks, and a 60 KB heading line took 25 s.
    """
    indent = len(line) - len(line.lstrip(" "))
    if indent > 3:
        return None
    rest = line[indent:]
    level = len(rest) - len(rest.lstrip("#"))
    if not 1 <= level <= 6:
        return None
    rest = rest[level:]
    if rest[:1] not in ("", " ", "\t"):
        return None  # "#tag" and "#5" are text
    content = rest.strip(" \t")
    unclosed = content.rstrip("#")
    if not unclosed or unclosed[-1] in " \t":
        content = unclosed
    return level, content.strip()


def parse_markdown(text: str, *, source: str) -> Document:
    """Markdown split at ATX headings (``#`` to ``######``), keeping each section's heading path.

    Lines inside fenced code blocks (````` or ``~~~``) are text even when they start with ``#``;
    Setext headings (underlined with ``===``) are left as text. A leading YAML front matter block
    becomes document metadata, and its ``title`` wins over the first level-1 heading.
    """
    metadata: dict[str, Any] = {"format": "markdown"}
    title = ""
    front = _FRONT_MATTER.match(text)
    if front:
        try:
            values = yaml.safe_load(front.group(1) or "")
        except yaml.YAMLError as exc:
            raise CorruptDocumentError(
                f"{source} has invalid YAML front matter: {exc}", source=source
            ) from exc
        if isinstance(values, dict):
            metadata.update({str(key): value for key, value in values.items()})
            title = str(values.get("title") or "")
        text = text[front.end() :]

    builder = _SectionBuilder()
    fence: str | None = None
    for line in text.splitlines():
        opened = _FENCE.match(line)
        if fence is not None:
            # Only a bare fence of the same character, at least as long, closes the block.
            bare = line.strip()
            if opened and len(bare) >= len(fence) and bare == fence[0] * len(bare):
                fence = None
            builder.add(line)
            continue
        if opened:
            fence = opened.group(1)
            builder.add(line)
            continue
        heading = _atx_heading(line)
        if heading is not None:
            level, content = heading
            builder.heading(level, content)
            if level == 1 and not title and content:
                title = content
            continue
        builder.add(line)
    builder.flush()
    return Document(source, title or _stem(source), tuple(builder.sections), metadata)


# --------------------------------------------------------------------------- HTML

_DROPPED_TAGS = ("script", "style", "nav", "noscript", "template", "head")
_BLOCK_TAGS = frozenset(
    (
        "address", "article", "aside", "blockquote", "body", "caption", "dd", "details", "div", "dl", "dt",
        "fieldset", "figcaption", "figure", "footer", "form", "header", "hr", "html", "li", "main", "ol",
        "p", "pre", "section", "summary", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "ul",
    )
)  # fmt: skip
_HEADING_LEVEL = {f"h{level}": level for level in range(1, 7)}


def parse_html(data: bytes | str, *, source: str) -> Document:
    """HTML split at ``h1``..``h6``; ``script``, ``style``, ``nav`` (and ``noscript``) are dropped.

    The title is ``<title>``, else the first ``h1``, else the file stem. Bytes are read as UTF-8
    when they are valid UTF-8, else in the charset the page declares (as browsers do).
    """
    try:
        import lxml.etree
        import lxml.html
    except ImportError as exc:  # pragma: no cover - a dependency of opsloop
        raise BackendError("lxml is not installed: pip install lxml") from exc

    if isinstance(data, str):
        data = data.encode("utf-8")
    try:
        data.decode("utf-8")
        parser = lxml.html.HTMLParser(encoding="utf-8")
    except UnicodeDecodeError:
        parser = lxml.html.HTMLParser()
    if not data.strip():
        return Document(source, _stem(source), (), {"format": "html"})
    try:
        root = lxml.html.document_fromstring(data, parser=parser)
    except (lxml.etree.ParserError, ValueError) as exc:
        raise CorruptDocumentError(f"{source} is not parseable HTML: {exc}", source=source) from exc

    title = _squash(root.findtext(".//title") or "")
    lxml.etree.strip_elements(root, *_DROPPED_TAGS, with_tail=False)
    lxml.etree.strip_elements(root, lxml.etree.Comment, lxml.etree.ProcessingInstruction, with_tail=False)

    builder = _SectionBuilder()
    paragraph: list[str] = []
    first_h1 = ""

    def end_paragraph() -> None:
        lines = (_squash(line) for line in "".join(paragraph).split("\n"))
        text = "\n".join(line for line in lines if line)
        paragraph.clear()
        if text:
            builder.add(text + "\n")

    def inline(text: str | None) -> None:
        if text:
            # Source line breaks are layout, not content; only <br> makes a line break.
            paragraph.append(re.sub(r"\s+", " ", text))

    def walk(element: Any) -> None:
        nonlocal first_h1
        tag = element.tag if isinstance(element.tag, str) else ""
        if tag in _HEADING_LEVEL:
            end_paragraph()
            text = _squash(element.text_content())
            if text:
                builder.heading(_HEADING_LEVEL[tag], text)
                first_h1 = first_h1 or (text if tag == "h1" else "")
        elif tag == "pre":
            end_paragraph()
            builder.add(element.text_content().strip("\n") + "\n")
        elif tag == "br":
            paragraph.append("\n")
        else:
            block = tag in _BLOCK_TAGS
            if block:
                end_paragraph()
            inline(element.text)
            for child in element:
                walk(child)
            if block:
                end_paragraph()
        inline(element.tail)

    walk(root)
    end_paragraph()
    builder.flush()
    return Document(source, title or first_h1 or _stem(source), tuple(builder.sections), {"format": "html"})


# --------------------------------------------------------------------------- PDF


def parse_pdf(data: bytes, *, source: str) -> Document:
    """PDF text, one section per page with ``page`` (1-based) in the section's metadata.

    The title is the PDF's Title entry, else the first line of text. Pages without extractable
    text (scans) give no section. Encrypted PDFs load only when their user password is empty.
    """
    try:
        import pypdf
    except ImportError as exc:
        raise BackendError("PDF loading needs pypdf: pip install 'pypdf>=7.1'") from exc

    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise CorruptDocumentError(f"{source} is encrypted with a password", source=source)
        info = reader.metadata
        pdf_title = _squash(str(info.title or "")) if info is not None else ""
        texts = [page.extract_text() or "" for page in reader.pages]
    except CorruptDocumentError:
        raise
    except Exception as exc:
        # pypdf raises its own PdfReadError, but damaged files also surface as ValueError, KeyError,
        # TypeError, zlib.error ... from deep inside; all of them mean "this file is broken".
        raise CorruptDocumentError(f"{source} is not a readable PDF: {exc}", source=source) from exc

    sections = tuple(
        Section((), text.strip(), {"page": number})
        for number, text in enumerate(texts, start=1)
        if text.strip()
    )
    first_line = next((line.strip() for s in sections for line in s.text.splitlines() if line.strip()), "")
    title = pdf_title or first_line or _stem(source)
    return Document(source, title, sections, {"format": "pdf", "pages": len(texts)})


# --------------------------------------------------------------------------- dispatch and I/O

_PARSERS: dict[str, Callable[[bytes, str], Document]] = {
    ".md": lambda data, source: parse_markdown(_decode(data, source), source=source),
    ".markdown": lambda data, source: parse_markdown(_decode(data, source), source=source),
    ".txt": lambda data, source: parse_text(_decode(data, source), source=source),
    ".html": lambda data, source: parse_html(data, source=source),
    ".htm": lambda data, source: parse_html(data, source=source),
    ".pdf": lambda data, source: parse_pdf(data, source=source),
}
SUPPORTED_SUFFIXES: tuple[str, ...] = tuple(sorted(_PARSERS))


def _parser_for(source: str) -> Callable[[bytes, str], Document]:
    suffix = PurePosixPath(source).suffix.lower()
    parser = _PARSERS.get(suffix)
    if parser is None:
        raise UnsupportedDocumentError(
            f"{source}: no loader for {suffix or 'files without a suffix'!r}; "
            f"supported: {', '.join(SUPPORTED_SUFFIXES)}",
            field="source",
            value=source,
        )
    return parser


def load_bytes(data: bytes, *, source: str) -> Document:
    """Parse ``data`` with the loader for ``source``'s suffix (case-insensitive).

    ``metadata["sha256"]`` is the digest of ``data``, so re-ingesting can skip unchanged files.

    Raises:
        UnsupportedDocumentError: No loader handles the suffix.
        CorruptDocumentError: The bytes do not parse as that format.
    """
    document = _parser_for(source)(data, source)
    return replace(document, metadata={**document.metadata, "sha256": hashlib.sha256(data).hexdigest()})


def load_file(path: Path, *, root: Path | None = None) -> Document:
    """Read and parse one file; its source is the path relative to ``root`` (default: its name)."""
    source = path.relative_to(root).as_posix() if root is not None else path.name
    _parser_for(source)  # an unsupported file is refused before it is read
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"cannot read {source}: {exc.strerror}", field="path", value=source) from exc
    return load_bytes(data, source=source)


def load_folder(root: Path | str, *, patterns: Sequence[str] | None = None) -> LoadResult:
    """Load every file under ``root`` in sorted path order, skipping (and reporting) the bad ones.

    Args:
        root: The folder to walk; sources are posix paths relative to it.
        patterns: ``fnmatch`` patterns such as ``["*.md", "guides/*"]`` matched against each file's
            relative path and its name; files matching none are ignored, not reported. Default:
            every file. Hidden files and folders (``.git``, ``.DS_Store``) are always ignored.

    Raises:
        InvalidInputError: ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise InvalidInputError(f"{root} is not a folder", field="root", value=str(root))
    documents: list[Document] = []
    skipped: list[Skipped] = []
    for path in folder_files(root):
        source = path.relative_to(root).as_posix()
        if patterns is not None and not any(
            fnmatch.fnmatchcase(source, pattern) or fnmatch.fnmatchcase(path.name, pattern)
            for pattern in patterns
        ):
            continue
        try:
            document = load_file(path, root=root)
        except InvalidInputError as exc:
            skipped.append(Skipped(source, exc.message))
            continue
        if not document.sections:
            skipped.append(Skipped(source, f"{source} has no extractable text"))
            continue
        documents.append(document)
    return LoadResult(documents, skipped)


def folder_files(root: Path) -> list[Path]:
    """Every non-hidden file under ``root``, sorted by relative path (not by os.walk's order)."""
    paths: list[Path] = []
    for folder, dirnames, filenames in os.walk(root):
        dirnames[:] = [name for name in dirnames if not name.startswith(".")]
        paths.extend(Path(folder) / name for name in filenames if not name.startswith("."))
    return sorted(paths, key=lambda path: path.relative_to(root).as_posix())
