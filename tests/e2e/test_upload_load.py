"""Uploads never stall serving: crafted, oversized and large legitimate files against a live server.

A 60 KB Markdown heading line once took 24.6 s to load and kept ``/healthz`` from answering for
22 s, for every tenant. Here a probe asks ``/healthz`` every 20 ms while one operator uploads
the crafted line, a 5 MB single-line file (refused as too large) and a legitimate file of a few
hundred chunks (loaded, chunked and embedded on the RAG service's own worker thread). The bounds
are generous on purpose (a shared 2-core machine): the failure they catch is seconds, not tens
of milliseconds.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from tests.e2e.server import Server

CRAFTED = b"# a" + b" " * 60_000 + b"b\n\nThe text under the heading.\n"
HUGE = b"word " * 1_000_000 + b"\n"  # 5 MB on one line
LEGIT = b"\n\n".join(
    b"## Part %d\n\n" % n + b" ".join(b"Sentence %d of part %d says something." % (i, n) for i in range(40))
    for n in range(60)
)


def test_uploads_leave_healthz_answering(tmp_path: Path) -> None:
    server = Server(tmp_path / "home", env={"OPSLOOP_BOOTSTRAP_DEMO": "false"})
    try:
        server.wait_for("/readyz", 200)
        key = (tmp_path / "home" / "admin.key").read_text().strip()
        waits: list[float] = []
        stop = threading.Event()

        def probe() -> None:
            with httpx.Client(base_url=server.url, timeout=60) as client:
                while not stop.is_set():
                    started = time.perf_counter()
                    assert client.get("/healthz").status_code == 200
                    waits.append(time.perf_counter() - started)
                    time.sleep(0.02)

        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        answers = {}
        with httpx.Client(
            base_url=server.url, timeout=300, headers={"Authorization": f"Bearer {key}"}
        ) as client:
            for name, data in (("crafted.md", CRAFTED), ("huge.md", HUGE), ("legit.md", LEGIT)):
                started = time.perf_counter()
                response = client.post("/collections/load/documents", files=[("files", (name, data))])
                answers[name] = (response, time.perf_counter() - started)
        stop.set()
        prober.join(timeout=60)

        crafted, huge, legit = (answers[name][0] for name in ("crafted.md", "huge.md", "legit.md"))
        assert crafted.status_code == 200 and crafted.json()["added"] == ["crafted.md"], crafted.text
        assert huge.status_code == 422 and "above the limit of 1000000" in huge.text, huge.text
        assert legit.status_code == 200 and legit.json()["chunks_written"] > 30, legit.text
        assert answers["crafted.md"][1] < 30 and answers["huge.md"][1] < 30
        assert len(waits) > 10 and max(waits) < 1.0, sorted(waits)[-5:]
    finally:
        server.stop()
