"""A server builds a collection's search index by itself once an upload leaves enough chunks unindexed.

The embedded Qdrant Edge has no background optimizer; ``rag_auto_index_points`` (5 here) stands
in for the default 20,000 so that a small upload crosses it. Real parts: the app over HTTP,
Qdrant Edge in the home, MiniLM, the audit log.
"""

from __future__ import annotations

import time

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from opsloop.audit import AuditEntry, AuditFilter
from opsloop.settings import load_settings
from serving.app import create_app
from serving.platform import Platform

MANY = "\n\n".join(f"## Step {i}\n\nTurn valve {i} until the gauge reads {i * 10} bar." for i in range(40))


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    home = tmp_path_factory.mktemp("auto-index") / "home"
    return create_app(
        load_settings(home=home, bootstrap_docs=False, bootstrap_demo=False, rag_auto_index_points=5)
    )


def _upload(client: TestClient, headers: dict[str, str], collection: str, text: str) -> int:
    uploaded = client.post(
        f"/collections/{collection}/documents",
        files=[("files", ("manual.md", text.encode(), "text/markdown"))],
        headers=headers,
        params={"chunk_tokens": 32, "overlap_tokens": 0},
    )
    assert uploaded.status_code == 200, uploaded.text
    return int(uploaded.json()["chunks_written"])


def _index_builds(platform: Platform) -> list[AuditEntry]:
    return platform.audit.query(AuditFilter(action="rag.optimize"))


def test_an_upload_over_the_threshold_is_indexed_in_the_background(
    client: TestClient, platform: Platform, operator: dict[str, str]
) -> None:
    assert _upload(client, operator, "small", "# Note\n\nOne short chunk.") < 5
    assert _upload(client, operator, "manual", "# Manual\n\n" + MANY) >= 5
    deadline = time.monotonic() + 120
    while not _index_builds(platform):
        assert time.monotonic() < deadline, "no index was built"
        answered = client.post(
            "/query",
            json={"question": "valve 7", "collection": "manual", "generate": False},
            headers=operator,
        )
        assert answered.status_code == 200, answered.text  # queries go on meanwhile
        time.sleep(0.2)
    (built,) = _index_builds(platform)
    assert (built.actor, built.target) == ("system", "manual") and built.after is not None
    assert built.after["chunks"] == built.after["unindexed"] >= 5
    answered = client.post(
        "/query", json={"question": "valve 7", "collection": "manual", "generate": False}, headers=operator
    )
    assert any("valve 7 " in source["text"] for source in answered.json()["sources"]), answered.json()
    assert [e.target for e in _index_builds(platform)] == ["manual"]  # "small" stayed under 5
