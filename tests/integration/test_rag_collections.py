"""Collections through the RAG runtime: chunk settings per collection, listing, deletes, the store lock.

Real parts: Qdrant Edge under a temporary home, the packaged MiniLM tokenizer and embedder,
SQLite for the catalog and the audit log.
"""

from __future__ import annotations

import asyncio
import fcntl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from opsloop.audit import AuditFilter
from opsloop.auth import Principal, Role
from opsloop.errors import ConflictError, InvalidInputError, NotFoundError
from opsloop.settings import load_settings
from rag.service import RagService, store_holder
from serving.platform import Platform

LONG = b"# Guide\n\n" + b" ".join(b"The frobnicator turns word%d into dust." % i for i in range(120)) + b"\n"
SHORT = b"# Notes\n\nThe notes are short.\n"
ACME = Principal("test", "acme", Role.OPERATOR)
GLOBEX = Principal("test", "globex", Role.OPERATOR)
TENANTS = {"acme": ACME, "globex": GLOBEX}


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    platform = Platform.build(load_settings(home=tmp_path / "home", bootstrap_docs=False)).start_store()
    yield platform
    platform.close()


@pytest.fixture
def rag(platform: Platform) -> RagService:
    return platform.rag


def _upload(rag: RagService, *files: tuple[str, bytes], tenant: str = "acme", **chunking: int) -> dict:
    return rag.upload(TENANTS[tenant], "guides", list(files), **chunking).summary()


def test_chunk_settings_belong_to_the_collection(rag: RagService) -> None:
    first = _upload(rag, ("guide.md", LONG), chunk_tokens=64, overlap_tokens=8)
    assert (first["chunk_tokens"], first["overlap_tokens"]) == (64, 8) and first["added"] == ["guide.md"]
    many = rag.collection(ACME, "guides").chunks
    assert many > 4  # 120 sentences in 64-token chunks

    # A later upload without settings cuts the same way: the first file stays as it is.
    later = _upload(rag, ("guide.md", LONG), ("notes.md", SHORT))
    assert later["unchanged"] == ["guide.md"] and (later["chunk_tokens"], later["overlap_tokens"]) == (64, 8)

    # New settings re-chunk every file that is uploaded under them.
    rechunked = _upload(rag, ("guide.md", LONG), chunk_tokens=256, overlap_tokens=32)
    assert rechunked["replaced"] == ["guide.md"] and rechunked["chunks_deleted"] == many
    view = rag.collection(ACME, "guides")
    assert (view.chunk_tokens, view.overlap_tokens) == (256, 32) and view.chunks < many + 1
    assert view.last_ingest is not None and view.last_ingest["replaced"] == ["guide.md"]


def test_an_upload_of_several_files_is_one_ingest_like_a_folder_run(
    rag: RagService, platform: Platform, tmp_path: Path
) -> None:
    uploaded = _upload(rag, ("guide.md", LONG), ("notes.md", SHORT), ("x.exe", b"MZ"))
    (entry,) = platform.audit.query(AuditFilter(action="rag.ingest"))
    assert entry.target == "guides" and entry.after is not None
    assert entry.after["via"] == "upload" and (entry.after["added"], entry.after["skipped"]) == (2, 1)
    assert entry.after["files"] == {"added": ["guide.md", "notes.md"], "skipped": ["x.exe"]}
    last = rag.collection(ACME, "guides").last_ingest
    assert last == uploaded and last["added"] == ["guide.md", "notes.md"]

    # A folder run is the same kind of entry: only `via` tells them apart.
    folder = tmp_path / "handbook"
    folder.mkdir()
    (folder / "notes.md").write_bytes(SHORT)
    (folder / "faq.md").write_bytes(b"# FAQ\n\nAsk the notes.\n")
    rag.ingest(ACME, "guides", folder, delete_missing=True)
    latest = platform.audit.query(AuditFilter(action="rag.ingest"))[0]
    assert latest.after is not None and latest.after["via"] == "folder"
    assert latest.after["files"] == {"added": ["faq.md"], "deleted": ["guide.md"]}
    assert latest.after["unchanged"] == 1  # counted, not named
    last = rag.collection(ACME, "guides").last_ingest
    assert last is not None and (last["added"], last["unchanged"]) == (["faq.md"], ["notes.md"])


def test_optimize_builds_the_index_and_search_answers_the_same(rag: RagService, platform: Platform) -> None:
    _upload(rag, ("guide.md", LONG), ("notes.md", SHORT))
    asked = rag.query(ACME, "What are the notes?", "guides", generate=False)
    before = [c.id for c in asyncio.run(asked).chunks]
    assert rag.optimize(ACME, "guides") >= 0
    after = [
        c.id for c in asyncio.run(rag.query(ACME, "What are the notes?", "guides", generate=False)).chunks
    ]
    assert after == before
    (event,) = platform.audit.query(AuditFilter(action="rag.optimize"))
    assert event.target == "guides" and event.after is not None
    assert event.after["chunks"] == rag.collection(ACME, "guides").chunks
    with pytest.raises(NotFoundError):
        rag.optimize(GLOBEX, "guides")


def test_bad_chunk_settings_are_refused_before_they_are_stored(rag: RagService) -> None:
    _upload(rag, ("notes.md", SHORT), chunk_tokens=64, overlap_tokens=8)
    with pytest.raises(InvalidInputError) as caught:
        _upload(rag, ("notes.md", SHORT), chunk_tokens=32, overlap_tokens=40)
    assert caught.value.details["field"] == "overlap_tokens"
    view = rag.collection(ACME, "guides")
    assert (view.chunk_tokens, view.overlap_tokens) == (64, 8)


def test_collections_documents_and_deletes_stay_within_the_tenant(
    rag: RagService, platform: Platform
) -> None:
    _upload(rag, ("guide.md", LONG), ("notes.md", SHORT))
    _upload(rag, ("other.md", SHORT), tenant="globex")
    (acme,) = rag.collections(ACME)
    assert acme.name == "guides" and [d.source for d in acme.documents] == ["guide.md", "notes.md"]
    notes = next(d for d in acme.documents if d.source == "notes.md")
    assert (notes.title, notes.chunks, len(notes.sha256)) == ("Notes", 1, 64)
    assert [d.source for d in rag.collection(GLOBEX, "guides").documents] == ["other.md"]

    with pytest.raises(NotFoundError):
        rag.delete_document(GLOBEX, "guides", "notes.md")
    assert rag.delete_document(ACME, "guides", "notes.md") == 1
    assert [d.source for d in rag.collection(ACME, "guides").documents] == ["guide.md"]
    with pytest.raises(NotFoundError):
        rag.collection(ACME, "missing")
    events = platform.audit.query(AuditFilter(action="rag.delete"))
    assert [e.target for e in events] == ["guides/notes.md"]


def test_a_second_opener_of_the_store_is_refused_naming_the_holder(platform: Platform) -> None:
    platform.rag  # noqa: B018 - takes the store lock
    holder = store_holder(platform.settings.home)
    assert holder is not None and holder.get("url") is None  # not a server: the CLI cannot hand off
    other = Platform.build(platform.settings).start_store()
    try:
        with pytest.raises(ConflictError) as caught:
            other.rag  # noqa: B018
        assert caught.value.details["pid"] == holder["pid"]
    finally:
        other.close()
    platform.close()
    assert store_holder(platform.settings.home) is None


def test_the_holder_is_read_once_written_not_while_the_lock_file_is_empty(tmp_path: Path) -> None:
    # The holder takes the lock first and writes its entry a moment later: a reader in between
    # must wait for the entry, or the CLI would miss the server and collide with its lock.
    (tmp_path / "qdrant").mkdir()
    path = tmp_path / "qdrant" / ".lock"
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        writer = threading.Timer(
            0.2, lambda: (lock.write('{"pid": 7, "url": "u", "token": "t"}'), lock.flush())
        )
        writer.start()
        holder = store_holder(tmp_path)
        writer.join()
    assert holder == {"pid": 7, "url": "u", "token": "t"}
    assert store_holder(tmp_path) is None  # released
