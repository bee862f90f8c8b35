"""What `opsloop serve` says while it starts: a line per component, /readyz naming what it waits for.

One server, with the demo model and a small docs folder to ingest at start (the bundled docs
take minutes on a busy CI machine); its output must hold no MLflow, alembic or tqdm chatter.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from tests.e2e.server import Server

NOISE = (
    "Successfully registered model",
    "Created version",
    "Creating initial MLflow database tables",
    "Updating database tables",
    "alembic",
    "Loading weights",
    "Batches",
    "it/s]",
    "View run",
)


def test_serve_logs_each_component_as_it_becomes_ready_and_readyz_names_what_is_pending(
    tmp_path: Path,
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for n in range(3):
        (docs / f"page{n}.md").write_text(f"# Page {n}\n\nopsloop serves model {n}.\n", encoding="utf-8")
    env = {
        "OPSLOOP_BOOTSTRAP_DOCS": "true",
        "OPSLOOP_DOCS_PATH": str(docs),
        "OPSLOOP_DRIFT_CHECK_SECONDS": "0",
    }
    server = Server(tmp_path / "home", env=env)
    try:
        waiting = []
        deadline = time.monotonic() + 180
        while (answer := server.http.get("/readyz")).status_code != 200:
            assert answer.status_code == 503 and time.monotonic() < deadline, answer.text
            waiting.append(answer.json())
            time.sleep(0.2)
        # The embedder alone takes seconds to load: the first answers after /healthz wait for it.
        assert waiting, "ready before the first /readyz"
        for body in waiting:
            starting = {name for name, state in body["components"].items() if state == "starting"}
            assert {entry.split(":")[0] for entry in body["pending"]} == starting, body
            assert not body["ready"] and body["why"] == {}
        assert any(entry.startswith("rag: ") for body in waiting for entry in body["pending"]), waiting
        assert answer.json()["pending"] == []
    finally:
        assert server.stop() == 0
    output = "".join(server.output)
    lines = [
        r"store ready \(sqlite, 1 key\) in [\d.]+ s",
        r"gateway ready \(1 route: \S+\)",
        r"vector store open \(edge, 0 collections\)",
        r"registry ready \(MLflow, 0 models\) in [\d.]+ s",
        r"registered the demo model credit-risk version 1 as champion",
        r"serving credit-risk version 1 \(champion\), loaded in [\d.]+ s",
        r"models ready \(serving credit-risk v1\) in [\d.]+ s",
        r"embedder all-MiniLM-L6-v2 loaded in [\d.]+ s",
        r"rag ready \(docs: 3 files, 3 chunks in collection 'docs'; 3 added, 0 replaced, 0 unchanged, "
        r"0 deleted\) in [\d.]+ s",
        r"INFO: +ready in [\d.]+ s",
    ]
    for line in lines:
        assert re.search(line, output), f"{line!r} not in:\n{output}"
    shown = [noise for noise in NOISE if noise in output]
    assert not shown, f"{shown} in:\n{output}"
