"""``POST /query`` on the bundled docs with the real embedded models: cited answers and their mode.

Real parts: the app and its lifespan, the start-up ingestion of docs (``bootstrap_docs``, two of
the bundled files), Qdrant Edge, MiniLM, and SmolLM2-135M in llama.cpp through the gateway. The
answer's wording is the model's (or the sources', when it falls back): what is checked is that
it cites a retrieved source, says how it was made, and that the query log has the same.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from opsloop.settings import load_settings
from rag.answer import extract_citations
from serving.app import create_app
from serving.platform import bundled_docs

QUESTION = "How do I revoke an API key?"  # the README's example question


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, dict[str, str]]]:
    docs = tmp_path_factory.mktemp("docs")
    for name in ("auth.md", "troubleshooting.md"):
        shutil.copy(bundled_docs() / name, docs / name)
    home = tmp_path_factory.mktemp("home")
    app: FastAPI = create_app(
        load_settings(
            home=home, bootstrap_demo=False, bootstrap_docs=True, docs_path=docs, drift_check_seconds=0
        )
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        platform = app.state.platform
        deadline = time.monotonic() + 300
        while platform.components.get("rag") == "starting" and time.monotonic() < deadline:
            time.sleep(0.5)
        assert platform.components.get("rag") == "ready", platform.components
        key = platform.settings.admin_key_path.read_text().strip()
        yield client, {"Authorization": f"Bearer {key}"}


def test_a_question_the_docs_answer_gets_a_cited_answer_and_its_mode(
    served: tuple[TestClient, dict[str, str]],
) -> None:
    client, auth = served
    response = client.post("/query", json={"question": QUESTION, "collection": "docs"}, headers=auth)
    assert response.status_code == 200, response.text
    body = response.json()
    numbers = {source["n"] for source in body["sources"]}
    assert body["sources"][0]["source"] == "auth.md"
    assert body["answer_mode"] in {"generated", "extractive"}
    assert body["citations"] and set(body["citations"]) <= numbers
    # Every citation is a marker in the answer text, and the text cites nothing else.
    assert extract_citations(body["answer"], numbers) == (body["answer"], body["citations"])
    assert (body["answer_note"] is None) == (body["answer_mode"] == "generated")
    assert body["model"] and body["usage"]["completion_tokens"] > 0  # the model was asked either way

    logged = client.get("/admin/queries", params={"limit": 1}, headers=auth)
    assert logged.status_code == 200, logged.text
    [entry] = logged.json()
    assert (entry["request_id"], entry["answer_mode"]) == (body["request_id"], body["answer_mode"])


def test_retrieval_only_and_nothing_retrieved_have_their_own_modes(
    served: tuple[TestClient, dict[str, str]],
) -> None:
    client, auth = served
    plain = client.post(
        "/query", json={"question": QUESTION, "collection": "docs", "generate": False}, headers=auth
    ).json()
    assert (plain["answer"], plain["answer_mode"], plain["answer_note"]) == (None, "retrieval_only", None)
    nothing = client.post(
        "/query", json={"question": "zqxv wvut plmk?", "collection": "docs"}, headers=auth
    ).json()
    assert (nothing["answer_mode"], nothing["sources"], nothing["model"]) == ("no_sources", [], None)
