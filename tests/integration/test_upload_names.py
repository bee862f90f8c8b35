"""Uploaded file names are data, not paths: refused when they read as one, encoded when sent back.

Through the real app served by uvicorn on loopback (not TestClient, which percent-decodes a path
twice, so ``%2F`` in a name could not round-trip), and through the CLI's client of a server
(``ServerRag``, what ``opsloop ingest`` uses while ``opsloop serve`` holds the store). Real
parts: Qdrant Edge under a temporary home, MiniLM, SQLite.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from fastapi import FastAPI

from opsloop.auth import Principal, Role
from opsloop.errors import InvalidInputError
from opsloop.settings import load_settings
from rag.ingest import Ingestor
from rag.loaders import load_bytes
from rag.service import physical_name
from serving.app import create_app
from serving.cli.remote import ServerRag
from tests.e2e.server import free_port, uvicorn_thread

DOC = b"# Victim\n\nThe victim document must survive another collection's ingest.\n"
ACME = Principal("test", "acme", Role.OPERATOR)


@dataclass
class Served:
    app: FastAPI
    url: str
    http: httpx.Client


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("upload-names") / "home"
    port = free_port()
    settings = load_settings(
        home=home, port=port, bootstrap_demo=False, bootstrap_docs=False, drift_check_seconds=0
    )
    app = create_app(settings)
    with uvicorn_thread(app, port=port, start_s=120):
        url = f"http://127.0.0.1:{port}"
        key = app.state.platform.keys.create("acme", Role.OPERATOR, actor="test").secret.get_secret_value()
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as http:
            yield Served(app, url, http)


def _upload(served: Served, collection: str, name: str) -> httpx.Response:
    return served.http.post(f"/collections/{collection}/documents", files=[("files", (name, DOC))])


def _sources(served: Served, collection: str) -> set[str]:
    response = served.http.get(f"/collections/{collection}")
    if response.status_code == 404:
        return set()
    assert response.status_code == 200, response.text
    return {d["source"] for d in response.json()["documents"]}


@pytest.mark.parametrize(
    ("name", "rule"),
    [
        ("../../other/documents/victim.md", "'..' segments"),
        ("guide/../victim.md", "'..' segments"),
        ("./victim.md", "'.' or '..' segments"),
        ("/etc/victim.md", "relative, not absolute"),
        ("guide\\victim.md", "backslashes"),
        ("guide//victim.md", "empty segments"),
        ("guide/", "empty segments"),
        ("guide/vic\x1btim.md", "control characters"),
        ("a" * 1100 + ".md", "at most 1024 characters"),
        ("a" * 300 + "/victim.md", "at most 255 bytes"),
    ],
)
def test_a_path_like_upload_name_is_refused_naming_rule_and_name_and_nothing_is_stored(
    served: Served, name: str, rule: str
) -> None:
    response = _upload(served, "attack", name)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert rule in error["message"] and repr(name)[:60] in error["message"]
    assert error["details"]["field"] == "files"
    assert _sources(served, "attack") == set()


def test_one_bad_name_refuses_the_whole_upload(served: Served) -> None:
    files = [("files", ("fine.md", DOC)), ("files", ("../victim.md", DOC))]
    response = served.http.post("/collections/mixed/documents", files=files)
    assert response.status_code == 422, response.text
    assert _sources(served, "mixed") == set()


def test_the_service_refuses_nul_for_every_entry_point(served: Served) -> None:
    # A NUL cannot travel in a multipart header; callers of the service (agents' tools) can send one.
    with pytest.raises(InvalidInputError, match="control characters"):
        served.app.state.platform.rag.upload(ACME, "nul", [("a\x00.md", DOC)])


@pytest.mark.parametrize("name", ["guide/setup.md", "notes 100% #1?.md", "a%2Fb/c d%20e.md"])
def test_odd_but_plain_names_round_trip_through_upload_and_delete(served: Served, name: str) -> None:
    response = _upload(served, "odd", name)
    assert response.status_code == 200, response.text
    assert response.json()["added"] == [name]
    assert name in _sources(served, "odd")
    # Percent-encoded as one segment, as the CLI sends it: the server sees the stored name.
    deleted = served.http.delete(f"/collections/odd/documents/{quote(name, safe='')}")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["source"] == name
    assert name not in _sources(served, "odd")


def _server_rag(served: Served) -> ServerRag:
    """The CLI's client of the server, with the token the server leaves for CLI runs."""
    return ServerRag(served.url, served.app.state.platform.local_token, tenant="acme", actor="cli:test")


def test_cli_delete_missing_addresses_only_the_collection_it_ingests(served: Served, tmp_path: Path) -> None:
    assert _upload(served, "other", "victim.md").status_code == 200
    # A name stored before uploads were checked: written below the service's check.
    rag = served.app.state.platform.rag
    legacy = "../../other/documents/victim.md"
    rag.upload(ACME, "evil", [("seed.md", DOC)])
    Ingestor(rag.store, rag.embedder, rag.tokenizer, sparse_encoder=rag.sparse).ingest_documents(
        physical_name("acme", "evil"), [load_bytes(DOC, source=legacy)]
    )
    assert legacy in _sources(served, "evil")

    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "seed.md").write_bytes(DOC)
    with _server_rag(served) as server:
        report, _ = server.ingest("evil", folder, delete_missing=True)
    assert report.deleted == [legacy]
    assert _sources(served, "evil") == {"seed.md"}
    assert _sources(served, "other") == {"victim.md"}


def test_cli_ingest_through_the_server_sends_odd_names_intact(served: Served, tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    (folder / "sub dir").mkdir(parents=True)
    odd = "sub dir/100% #1?%41.md"
    (folder / odd).write_bytes(DOC)
    (folder / "keep.md").write_bytes(DOC)
    with _server_rag(served) as server:
        report, _ = server.ingest("cli-odd", folder)
        assert sorted(report.added) == ["keep.md", odd]
        (folder / odd).unlink()
        report, _ = server.ingest("cli-odd", folder, delete_missing=True)
    assert report.deleted == [odd]
    assert _sources(served, "cli-odd") == {"keep.md"}
