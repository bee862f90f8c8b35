"""RAG end to end: `opsloop ingest` a folder, then `POST /query` on a real `opsloop serve`.

The CLI ingests before the server starts and again while it runs: with the embedded store
(Qdrant Edge) one process holds the store at a time, the server takes it at start, and the
CLI then hands its work to the server. The server also ingests the bundled docs at start.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from rag.answer import DONT_KNOW
from tests.e2e.server import Server, cli

DOCS = {
    "install.md": "# Installing Frobnicator\n\n## Linux\n\n"
    "Run `apt install frobnicator`, then start the daemon with `frobd --port 7311`.\n"
    "The frobnicator daemon listens on port 7311 by default.\n",
    "billing.md": "# Billing\n\nInvoices are sent on the first day of each month. Refunds are "
    "processed within 14 days of a written request to the billing team.\n",
    "security.md": "# Security\n\nAll API keys are stored as SHA-256 hashes. Rotate keys every 90 days.\n",
}
ENV = {
    "OPSLOOP_DRIFT_CHECK_SECONDS": "0",
    "OPSLOOP_BOOTSTRAP_DEMO": "false",
    "OPSLOOP_BOOTSTRAP_DOCS": "true",
    "OPSLOOP_RAG_MAX_ANSWER_TOKENS": "32",
    # Below the CLI's default: an ingest through the server must split what the server refuses.
    "OPSLOOP_MAX_BODY_BYTES": "16384",
}


@dataclass
class Setup:
    server: Server
    docs: Path
    first: subprocess.CompletedProcess[str]
    again: subprocess.CompletedProcess[str]
    acme: dict[str, str]
    globex: dict[str, str]
    acme_operator: dict[str, str]
    globex_operator: dict[str, str]


def _key(home: Path, tenant: str, role: str) -> dict[str, str]:
    done = cli(home, "keys", "create", "--tenant", tenant, "--role", role)
    assert done.returncode == 0, done.stderr
    return {"Authorization": f"Bearer {done.stdout.strip()}"}


def _ingest(home: Path, docs: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return cli(home, "ingest", str(docs), "--collection", "docs", "--tenant", "acme", *args)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    home = tmp_path_factory.mktemp("rag-home")
    docs = tmp_path_factory.mktemp("docs")
    for name, text in DOCS.items():
        (docs / name).write_text(text)
    first = _ingest(home, docs)
    again = _ingest(home, docs)
    keys = (
        _key(home, "acme", "user"),
        _key(home, "globex", "user"),
        _key(home, "acme", "operator"),
        _key(home, "globex", "operator"),
    )
    server = Server(home, env=ENV)
    try:
        yield Setup(server, docs, first, again, *keys)
    finally:
        assert server.stop() == 0, "".join(server.output)


def test_ingest_reports_added_then_unchanged(setup: Setup) -> None:
    assert setup.first.returncode == 0, setup.first.stderr
    assert "added" in setup.first.stdout and "chunks written: 3" in setup.first.stdout
    assert setup.again.returncode == 0, setup.again.stderr
    unchanged = next(line for line in setup.again.stdout.splitlines() if "unchanged" in line)
    assert "3" in unchanged and "chunks written: 0" in setup.again.stdout


def test_query_answers_from_the_right_file(setup: Setup) -> None:
    response = setup.server.http.post(
        "/query",
        json={"question": "Which port does the frobnicator daemon listen on?", "collection": "docs"},
        headers=setup.acme,
        timeout=120,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["sources"][0]["source"] == "install.md"
    assert body["sources"][0]["n"] == 1 and "7311" in body["sources"][0]["text"]
    assert body["answer"] and body["answer"] != DONT_KNOW
    assert body["usage"]["prompt_tokens"] > 0 and 0 < body["usage"]["completion_tokens"] <= 32
    assert body["prompt_version"] == 1 and body["model"] and body["request_id"]
    assert set(body["timings"]) == {"retrieval_ms", "prompt_ms", "generation_ms"}
    assert body["latency_ms"] >= body["timings"]["retrieval_ms"] > 0 and body["sources"][0]["chunk_id"]


def test_another_tenant_cannot_see_the_collection(setup: Setup) -> None:
    response = setup.server.http.post(
        "/query", json={"question": "Which port?", "collection": "docs"}, headers=setup.globex
    )
    assert response.status_code == 404, response.text
    assert response.json()["error"]["details"] == {"collection": "docs", "tenant": "globex"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"question": "  ", "collection": "docs"}, "question"),
        ({"question": "hi", "collection": "../etc"}, "collection"),
        ({"question": "hi", "collection": "docs", "top_k": 0}, "top_k"),
    ],
)
def test_bad_input_is_422_naming_the_field(setup: Setup, body: dict[str, object], field: str) -> None:
    response = setup.server.http.post("/query", json=body, headers=setup.acme)
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["error"]["details"]["errors"]] == [field]


def test_nothing_relevant_means_i_dont_know(setup: Setup) -> None:
    response = setup.server.http.post(
        "/query",
        json={"question": "What is the capital of Mongolia?", "collection": "docs"},
        headers=setup.acme,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["answer"] == DONT_KNOW and body["sources"] == [] and body["citations"] == []
    assert body["model"] is None and body["usage"] == {"prompt_tokens": 0, "completion_tokens": 0}


def _upload(setup: Setup, headers: dict[str, str], *files: tuple[str, bytes]) -> httpx.Response:
    return setup.server.http.post(
        "/collections/docs/documents", files=[("files", f) for f in files], headers=headers, timeout=120
    )


def test_upload_needs_operator_and_is_idempotent(setup: Setup) -> None:
    text = b"# Support\n\nThe support hotline is open from 9 to 17 on weekdays.\n"
    assert _upload(setup, setup.acme, ("support.md", text)).status_code == 403
    first = _upload(setup, setup.acme_operator, ("support.md", text))
    assert first.status_code == 200, first.text
    assert first.json()["added"] == ["support.md"] and first.json()["chunks_written"] == 1
    assert first.json()["chunk_tokens"] == 256 and first.json()["seconds"] >= 0
    again = _upload(setup, setup.acme_operator, ("support.md", text))
    assert again.json()["unchanged"] == ["support.md"] and again.json()["chunks_written"] == 0


def test_upload_of_several_files_reports_the_bad_ones(setup: Setup) -> None:
    mixed = _upload(
        setup,
        setup.acme_operator,
        ("faq/hours.txt", b"The office opens at 8 and closes at 18."),
        ("x.exe", b"MZ"),
    )
    assert mixed.status_code == 200, mixed.text
    assert mixed.json()["added"] == ["faq/hours.txt"]
    assert [s["source"] for s in mixed.json()["skipped"]] == ["x.exe"]
    bad = _upload(setup, setup.acme_operator, ("x.exe", b"MZ"))
    assert bad.status_code == 422, bad.text
    assert bad.json()["error"]["details"]["skipped"][0]["source"] == "x.exe"
    nothing = setup.server.http.post("/collections/docs/documents", headers=setup.acme_operator)
    assert nothing.status_code == 422, nothing.text


def test_collections_list_only_the_tenants_own(setup: Setup) -> None:
    listed = setup.server.http.get("/collections", headers=setup.acme)
    assert listed.status_code == 200, listed.text
    (docs,) = listed.json()["collections"]
    assert docs["name"] == "docs" and docs["documents"] >= 3 and docs["chunks"] >= docs["documents"]
    detail = setup.server.http.get("/collections/docs", headers=setup.acme).json()
    sources = {d["source"]: d for d in detail["documents"]}
    assert {"install.md", "billing.md", "security.md"} <= set(sources)
    assert sources["billing.md"]["title"] == "Billing" and sources["billing.md"]["chunks"] == 1
    assert detail["last_ingest_at"] and detail["last_ingest"]["collection"] == "docs"
    assert setup.server.http.get("/collections", headers=setup.globex).json() == {"collections": []}
    hidden = setup.server.http.get("/collections/docs", headers=setup.globex)
    assert hidden.status_code == 404, hidden.text


def test_another_tenants_upload_stays_in_its_own_namespace(setup: Setup) -> None:
    text = b"# Globex\n\nThe frobnicator daemon of Globex listens on port 9999.\n"
    assert _upload(setup, setup.globex_operator, ("globex.md", text)).status_code == 200
    acme = setup.server.http.get("/collections/docs", headers=setup.acme).json()
    assert "globex.md" not in {d["source"] for d in acme["documents"]}
    globex = setup.server.http.get("/collections/docs", headers=setup.globex).json()
    assert [d["source"] for d in globex["documents"]] == ["globex.md"]
    deleted = setup.server.http.delete("/collections/docs/documents/globex.md", headers=setup.globex_operator)
    assert deleted.status_code == 200 and deleted.json()["chunks_deleted"] == 1
    gone = setup.server.http.delete("/collections/docs/documents/globex.md", headers=setup.globex_operator)
    assert gone.status_code == 404, gone.text


def test_generate_false_retrieves_without_calling_the_model(setup: Setup) -> None:
    response = setup.server.http.post(
        "/query",
        json={"question": "How long do refunds take?", "collection": "docs", "generate": False},
        headers=setup.acme,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["answer"] is None and body["model"] is None and body["prompt_version"] is None
    assert body["usage"] == {"prompt_tokens": 0, "completion_tokens": 0} and body["citations"] == []
    assert body["sources"][0]["source"] == "billing.md" and body["sources"][0]["chunk_id"]
    assert body["timings"]["prompt_ms"] is None and body["timings"]["generation_ms"] is None
    assert body["latency_ms"] > 0


def test_admin_queries_shows_the_tenants_own_queries(setup: Setup) -> None:
    asked = setup.server.http.post(
        "/query",
        json={"question": "Which port does the frobnicator daemon listen on?", "collection": "docs"},
        headers={**setup.acme, "X-Request-ID": "logged-generate"},
        timeout=120,
    )
    assert asked.status_code == 200, asked.text
    retrieved = setup.server.http.post(
        "/query",
        json={"question": "How long do refunds take?", "collection": "docs", "generate": False},
        headers={**setup.acme, "X-Request-ID": "logged-retrieve"},
    )
    assert retrieved.status_code == 200, retrieved.text

    assert setup.server.http.get("/admin/queries", headers=setup.acme).status_code == 403
    response = setup.server.http.get("/admin/queries?collection=docs&limit=50", headers=setup.acme_operator)
    assert response.status_code == 200, response.text
    entries = {e["request_id"]: e for e in response.json()}
    asked_id, retrieved_id = asked.headers["x-request-id"], retrieved.headers["x-request-id"]
    assert list(entries)[:2] == [retrieved_id, asked_id]  # newest first, under the server's own ids
    generated, retrieval_only = entries[asked_id], entries[retrieved_id]
    body = asked.json()
    assert generated["chunk_ids"][0] == body["sources"][0]["chunk_id"]
    assert len(generated["chunk_ids"]) == len(generated["scores"]) == len(generated["dense_scores"])
    assert generated["answer"] == body["answer"] and generated["prompt_version"] == "1"
    assert generated["prompt_tokens"] == body["usage"]["prompt_tokens"] > 0
    assert generated["completion_tokens"] == body["usage"]["completion_tokens"] > 0
    assert generated["latency_ms"] == pytest.approx(body["latency_ms"]) and generated["generation_ms"] > 0
    assert retrieval_only["answer"] is None and retrieval_only["generation_ms"] is None
    assert retrieval_only["prompt_tokens"] == retrieval_only["completion_tokens"] == 0
    assert retrieval_only["chunk_ids"][0] == retrieved.json()["sources"][0]["chunk_id"]
    assert {e["tenant"] for e in entries.values()} == {"acme"}

    other = setup.server.http.get("/admin/queries", headers=setup.globex_operator)
    assert other.status_code == 200 and other.json() == []
    peek = setup.server.http.get("/admin/queries?tenant=acme", headers=setup.globex_operator)
    assert peek.status_code == 403, peek.text


def test_the_bundled_docs_answer_questions_about_opsloop(setup: Setup) -> None:
    setup.server.wait_for("/readyz", 200, seconds=180)
    # The docs belong to tenant "default", the first admin key's (here the keys came first).
    admin = _key(setup.server.home, "default", "user")
    response = setup.server.http.post(
        "/query",
        json={"question": "How do I revoke an API key?", "collection": "docs", "generate": False},
        headers=admin,
    )
    assert response.status_code == 200, response.text
    assert response.json()["sources"][0]["source"] == "auth.md"


def test_cli_works_through_the_server_that_holds_the_store(setup: Setup) -> None:
    (setup.docs / "billing.md").write_text("# Billing\n\nInvoices are sent on the last day of each month.\n")
    (setup.docs / "new.md").write_text("# New\n\nThe new guide explains the frobnicator's dashboard.\n")
    (setup.docs / "security.md").unlink()
    done = _ingest(setup.server.home, setup.docs, "--delete-missing", "--optimize")
    assert done.returncode == 0, done.stderr
    assert "holds the vector store" in done.stderr and "search index built in" in done.stdout
    rows = {line.split()[1]: line for line in done.stdout.splitlines() if line.startswith("│")}
    # The collection now mirrors the folder: also the files uploaded earlier are gone.
    counts = {
        status: int(rows[status].split()[3]) for status in ("added", "replaced", "unchanged", "deleted")
    }
    assert counts == {"added": 1, "replaced": 1, "unchanged": 1, "deleted": 3}, done.stdout
    detail = setup.server.http.get("/collections/docs", headers=setup.acme).json()
    assert {d["source"] for d in detail["documents"]} == {"billing.md", "install.md", "new.md"}
    # The folder went in as one upload: one rag.ingest naming its files, all in last_ingest.
    last = detail["last_ingest"]
    assert (last["added"], last["replaced"]) == (["new.md"], ["billing.md"])
    assert last["unchanged"] == ["install.md"]
    trail = cli(setup.server.home, "audit", "tail", "--action", "rag.ingest", "--tenant", "acme", "--json")
    uploads = [e for e in map(json.loads, trail.stdout.splitlines()) if e["after"]["via"] == "upload"]
    cli_uploads = [e for e in uploads if e["actor"].startswith("cli:")]
    assert [e["after"]["files"] for e in cli_uploads] == [{"added": ["new.md"], "replaced": ["billing.md"]}]

    asked = cli(
        setup.server.home,
        *("query", "When are invoices sent?", "--collection", "docs", "--tenant", "acme"),
        *("--no-generate", "--format", "json"),
    )
    assert asked.returncode == 0, asked.stderr
    body = json.loads(asked.stdout)
    assert body["sources"][0]["source"] == "billing.md" and "last day" in body["sources"][0]["text"]
    audit = cli(setup.server.home, "audit", "tail", "--action", "rag.delete", "--tenant", "acme", "--json")
    deletions = {e["target"]: e for e in map(json.loads, audit.stdout.splitlines())}
    assert deletions["docs/security.md"]["actor"].startswith("cli:")


def test_cli_ingest_halves_an_upload_the_server_finds_too_large(setup: Setup, tmp_path: Path) -> None:
    folder = tmp_path / "big"
    folder.mkdir()
    for name in ("a.md", "b.md", "c.md"):  # about 6 KB each: all three exceed the server's 16 KiB
        (folder / name).write_text(f"# {name}\n\n" + "The frobnicator hums quietly. " * 200)
    (folder / "huge.md").write_text("# Huge\n\n" + "word " * 5000)  # too big even alone
    done = cli(setup.server.home, "ingest", str(folder), "--collection", "big", "--tenant", "acme")
    assert done.returncode == 1, done.stderr  # a file was skipped
    assert "huge.md: request body of" in done.stdout and "exceeds the limit" in done.stdout, done.stdout
    detail = setup.server.http.get("/collections/big", headers=setup.acme).json()
    assert [d["source"] for d in detail["documents"]] == ["a.md", "b.md", "c.md"]
    trail = cli(setup.server.home, "audit", "tail", "--action", "rag.ingest", "--tenant", "acme", "--json")
    entries = [e for e in map(json.loads, trail.stdout.splitlines()) if e["target"] == "big"]
    added = sorted(name for e in entries for name in e["after"]["files"].get("added", []))
    assert added == ["a.md", "b.md", "c.md"] and len(entries) == 2  # [a, b] and [c] went in


def test_answers_go_through_the_gateway_under_the_asking_key(setup: Setup) -> None:
    asked = setup.server.http.post(
        "/query",
        json={"question": "How long do refunds take?", "collection": "docs"},
        headers={**setup.acme, "X-Request-ID": "costed-answer"},
        timeout=120,
    )
    assert asked.status_code == 200, asked.text
    key_id = setup.acme["Authorization"].split("_")[1]  # olk_<id>_<secret>
    done = cli(setup.server.home, "costs", "report", "--by", "key", "--since", "1h", "--format", "json")
    assert done.returncode == 0, done.stderr
    rows = {row["group"]: row for row in json.loads(done.stdout)["rows"]}
    assert rows[key_id]["calls"] >= 1 and rows[key_id]["completion_tokens"] > 0
