"""Loaders on real files in a temporary folder, and chunks measured with the real MiniLM tokenizer."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from opsloop.errors import InvalidInputError
from rag.chunking import HFTokenizer, chunk_document
from rag.loaders import (
    CorruptDocumentError,
    Section,
    Skipped,
    UnsupportedDocumentError,
    load_bytes,
    load_file,
    load_folder,
)

MARKDOWN = """\
---
product: opsloop
---
Before any heading.

# Guide

Welcome.

## Install

Run this:

```bash
# comment, not a heading
## nor this
pip install opsloop
```

### Linux ###

Use apt.

~~~~
# still code
```
# still code after a shorter fence of the other kind
~~~~

## Usage

Call it.
"""

HTML = """\
<!doctype html>
<html><head><title>Ops  Handbook</title><style>body { color: red }</style></head>
<body>
<nav><a href="/">Home</a> | <a href="/docs">Docs</a></nav>
<p>Lead paragraph
   over two source lines.</p>
<h1>Handbook</h1>
<p>First <b>bold</b> words.</p>
<script>console.log("tracking")</script>
<h2>Alerts</h2>
<ul><li>Page the on-call.</li><li>Open an incident.</li></ul>
<h3>Silence</h3>
<div>Use amtool.<!-- hidden --></div>
<h2>Deploys</h2>
<pre>kubectl rollout
  status</pre>
</body></html>
"""


def pdf_bytes(pages: list[list[str]], *, title: str | None = None) -> bytes:
    """A minimal valid PDF: one Helvetica text page per entry, each line a text-showing operator."""

    def escape(text: str) -> str:
        return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    count = len(pages)
    page_ids = [4 + 2 * i for i in range(count)]
    objects: dict[int, bytes] = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: f"<< /Type /Pages /Kids [{' '.join(f'{i} 0 R' for i in page_ids)}] /Count {count} >>".encode(),
        3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    }
    for page_id, lines in zip(page_ids, pages, strict=True):
        content = (
            "BT /F1 12 Tf 14 TL 72 720 Td " + " ".join(f"({escape(line)}) Tj T*" for line in lines) + " ET"
        )
        stream = content.encode("latin-1")
        objects[page_id] = (
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
            f"/Contents {page_id + 1} 0 R >>"
        ).encode()
        objects[page_id + 1] = b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream"
    info_id = max(objects) + 1
    objects[info_id] = f"<< /Title ({escape(title)}) >>".encode() if title else b"<< >>"

    out = bytearray(b"%PDF-1.4\n")
    offsets = {}
    for number in sorted(objects):
        offsets[number] = len(out)
        out += b"%d 0 obj\n" % number + objects[number] + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (info_id + 1)
    out += b"".join(b"%010d 00000 n \n" % offsets[number] for number in range(1, info_id + 1))
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        info_id + 1,
        info_id,
        xref,
    )
    return bytes(out)


def require_pypdf() -> None:
    """Skip on a machine without pypdf; in CI (where it is a dependency) fail instead."""
    if importlib.util.find_spec("pypdf") is None:
        if os.environ.get("CI"):
            pytest.fail("pypdf is a dependency of opsloop but is not installed")
        pytest.skip("pypdf is not installed here")


def test_markdown_keeps_heading_paths_and_ignores_hashes_in_code_fences(tmp_path: Path) -> None:
    (tmp_path / "guide.md").write_text(MARKDOWN, encoding="utf-8")
    document = load_file(tmp_path / "guide.md", root=tmp_path)
    assert document.source == "guide.md"
    assert document.title == "Guide"
    assert document.metadata["product"] == "opsloop" and document.metadata["format"] == "markdown"
    assert [section.headings for section in document.sections] == [
        (),
        ("Guide",),
        ("Guide", "Install"),
        ("Guide", "Install", "Linux"),
        ("Guide", "Usage"),
    ]
    install = document.sections[2].text
    assert "# comment, not a heading" in install and "## nor this" in install
    linux = document.sections[3].text
    assert linux.startswith("Use apt.") and "# still code after a shorter fence" in linux
    assert document.sections[4].text == "Call it."


def test_html_uses_h1_to_h6_and_drops_script_style_and_nav(tmp_path: Path) -> None:
    (tmp_path / "handbook.html").write_text(HTML, encoding="utf-8")
    document = load_file(tmp_path / "handbook.html")
    assert document.title == "Ops Handbook"
    sections = {section.headings: section.text for section in document.sections}
    assert sections == {
        (): "Lead paragraph over two source lines.",
        ("Handbook",): "First bold words.",
        ("Handbook", "Alerts"): "Page the on-call.\n\nOpen an incident.",
        ("Handbook", "Alerts", "Silence"): "Use amtool.",
        ("Handbook", "Deploys"): "kubectl rollout\n  status",
    }
    everything = " ".join(sections.values())
    assert "tracking" not in everything and "color" not in everything and "Home" not in everything


def test_html_title_falls_back_to_the_first_h1_and_plain_text_to_the_stem() -> None:
    assert load_bytes(b"<h2>Sub</h2><h1>Main</h1><p>x</p>", source="a/page.htm").title == "Main"
    text = load_bytes(b"Just some notes.\n\nMore notes.\n", source="notes/todo.TXT")
    assert text.title == "todo"
    assert text.sections == (Section((), "Just some notes.\n\nMore notes."),)


def test_folder_walk_is_sorted_and_skips_bad_files_by_name(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "guide.md").write_text(MARKDOWN, encoding="utf-8")
    (tmp_path / "a.html").write_text(HTML, encoding="utf-8")
    (tmp_path / "notes.txt").write_text("Plain notes.", encoding="utf-8")
    (tmp_path / "report.docx").write_bytes(b"PK\x03\x04 not really a docx")
    (tmp_path / "binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    (tmp_path / "empty.md").write_text("# Only a heading\n", encoding="utf-8")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("[core]", encoding="utf-8")

    result = load_folder(tmp_path)
    assert [document.source for document in result.documents] == ["a.html", "b/guide.md", "notes.txt"]
    assert [skip.source for skip in result.skipped] == ["binary.txt", "empty.md", "report.docx"]
    reasons = {skip.source: skip.reason for skip in result.skipped}
    assert "not UTF-8" in reasons["binary.txt"]
    assert "no extractable text" in reasons["empty.md"]
    assert "no loader for '.docx'" in reasons["report.docx"]

    only_markdown = load_folder(str(tmp_path), patterns=["*.md"])
    assert [document.source for document in only_markdown.documents] == ["b/guide.md"]
    assert only_markdown.skipped == [Skipped("empty.md", "empty.md has no extractable text")]


def test_bad_input_raises_errors_from_the_opsloop_tree(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedDocumentError, match=r"report\.docx") as unsupported:
        load_bytes(b"", source="report.docx")
    assert unsupported.value.status == 422 and unsupported.value.details["field"] == "source"
    with pytest.raises(CorruptDocumentError, match="not UTF-8"):
        load_bytes(b"caf\xe9", source="menu.md")
    with pytest.raises(CorruptDocumentError, match="front matter"):
        load_bytes(b"---\n: [unclosed\n---\ntext\n", source="broken.md")
    with pytest.raises(InvalidInputError, match="not a folder") as missing:
        load_folder(tmp_path / "missing")
    assert missing.value.details["field"] == "root"


def test_pdf_pages_become_sections_with_their_page_number(tmp_path: Path) -> None:
    require_pypdf()
    pages = [["Runbook: disk full", "Check the volume."], [], ["Rotate the logs first."]]
    (tmp_path / "runbook.pdf").write_bytes(pdf_bytes(pages))
    document = load_file(tmp_path / "runbook.pdf")
    assert document.title == "Runbook: disk full"
    assert document.metadata["pages"] == 3 and document.metadata["format"] == "pdf"
    assert [section.metadata["page"] for section in document.sections] == [1, 3]
    assert "Check the volume." in document.sections[0].text
    assert "Rotate the logs first." in document.sections[1].text

    titled = load_bytes(pdf_bytes([["Body line."]], title="Disk Runbook"), source="t.pdf")
    assert titled.title == "Disk Runbook"


def test_a_corrupt_pdf_is_skipped_and_the_rest_load(tmp_path: Path) -> None:
    require_pypdf()
    (tmp_path / "good.pdf").write_bytes(pdf_bytes([["Fine text."]]))
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 9 0 R\n%%EOF")
    (tmp_path / "truncated.pdf").write_bytes(pdf_bytes([["Cut short."]])[:60])
    (tmp_path / "zzz.md").write_text("# After\n\nStill loaded.", encoding="utf-8")
    result = load_folder(tmp_path)
    assert [document.source for document in result.documents] == ["good.pdf", "zzz.md"]
    assert [skip.source for skip in result.skipped] == ["broken.pdf", "truncated.pdf"]
    assert all("not a readable PDF" in skip.reason for skip in result.skipped)
    with pytest.raises(CorruptDocumentError):
        load_bytes(b"not a pdf at all", source="x.pdf")


@pytest.fixture(scope="module")
def minilm_tokenizer() -> HFTokenizer:
    return HFTokenizer()


def test_chunks_fit_the_minilm_window_when_recounted(tmp_path: Path, minilm_tokenizer: HFTokenizer) -> None:
    paragraph = (
        "Prometheus scrapes the gateway every fifteen seconds; alerts fire when p99 latency exceeds "
        "the objective for ten minutes. Kubernetes' HorizontalPodAutoscaler adds replicas. "
    )
    unbroken = "supercalifragilistic-" * 120  # no sentence end at all: split on tokens
    text = (
        f"# Operations\n\n## Latency\n\n{paragraph * 12}\n\n{unbroken}\n\n## Costs\n\nBudgets per tenant.\n"
    )
    (tmp_path / "ops.md").write_text(text, encoding="utf-8")
    document = load_file(tmp_path / "ops.md")
    chunks = chunk_document(document, tokenizer=minilm_tokenizer, max_tokens=64, overlap_tokens=16)
    assert len(chunks) > 6
    for chunk in chunks:
        assert chunk.token_count == minilm_tokenizer.count(chunk.text) <= 64
    assert chunks[0].text.startswith("Operations > Latency\n\n")  # the h1 is the title: not repeated
    assert chunks[-1].headings == ("Operations", "Costs")
    # Text is sliced from the source, not decoded from ids: case and apostrophes survive.
    assert any("Kubernetes' HorizontalPodAutoscaler" in chunk.text for chunk in chunks)


@pytest.mark.timeout(60)
def test_the_reported_60_kb_heading_upload_loads_and_chunks(minilm_tokenizer: HFTokenizer) -> None:
    # The upload that took 24.6 s to load and froze the server; the megabyte-sized variants that
    # prove linear time are in tests/unit/test_linear_time_parsing.py. This one runs the real path.
    heading = "a" + " " * 60_000 + "b"
    document = load_bytes(f"# {heading}\n\nThe body under it.\n".encode(), source="upload.md")
    assert document.title == heading
    assert [section.headings for section in document.sections] == [(heading,)]
    (chunk,) = chunk_document(document, tokenizer=minilm_tokenizer, max_tokens=64, overlap_tokens=16)
    assert chunk.text == f"{heading}\n\nThe body under it."
    assert chunk.token_count == minilm_tokenizer.count(chunk.text) <= 64
