"""Incremental, kill-safe ingestion with real parts: Qdrant Edge on disk, MiniLM, its tokenizer.

The kill test runs an ingestion in a child process, SIGKILLs it part-way, runs it again here and
checks that the store ends with exactly the points an uninterrupted run writes.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rag.chunking import HFTokenizer
from rag.embedder import SentenceTransformerEmbedder
from rag.ingest import Ingestor, IngestProgress
from rag.stores import EdgeStore

REPO = Path(__file__).resolve().parents[2]
MAX_TOKENS = 64
OVERLAP = 8

CORPUS = {
    "gpu.md": """\
# GPU memory

## Out of memory

A CUDA out-of-memory error means the model, its activations and the KV cache need more device
memory than the card has. Lower the batch size, shorten the context, or quantise the weights.

## Monitoring

Watch memory use per process with nvidia-smi and export it to Prometheus with the DCGM exporter.
""",
    "billing.md": """\
# Billing and budgets

Every tenant has a monthly budget in dollars. When a request would push spending past the budget,
the gateway refuses it with error code ERR_QUOTA_7731 and the tenant's admin gets an email.

## Invoices

Invoices are issued on the first day of the month and list tokens and cost per model.
""",
    "gardening.md": """\
# Growing tomatoes

Tomatoes need six to eight hours of direct sun and deep, infrequent watering. Stake the plants
early and pinch the side shoots so the fruit ripens before autumn.
""",
    "canary.md": """\
# Canary releases

A new model version first serves five percent of the traffic. If its error rate and latency stay
within the limits for an hour, the rollout continues; otherwise it rolls back by itself.
""",
}


@pytest.fixture(scope="module")
def embedder() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder()


@pytest.fixture(scope="module")
def tokenizer() -> HFTokenizer:
    return HFTokenizer()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EdgeStore]:
    with EdgeStore(tmp_path / "qdrant") as opened:
        yield opened


@pytest.fixture
def ingestor(store: EdgeStore, embedder: SentenceTransformerEmbedder, tokenizer: HFTokenizer) -> Ingestor:
    return Ingestor(store, embedder, tokenizer, max_tokens=MAX_TOKENS, overlap_tokens=OVERLAP, batch_size=16)


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    write_files(root, CORPUS)
    return root


def write_files(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")


def ids_by_source(store: EdgeStore, sources: list[str]) -> dict[str, set[str]]:
    return {source: store.ids_where("docs", "source", source) for source in sources}


def all_ids(store: EdgeStore) -> set[str]:
    return store.ids_where("docs", "kind", "chunk")


def test_ingest_writes_chunks_with_payloads_and_reingest_changes_nothing(
    ingestor: Ingestor, store: EdgeStore, docs: Path
) -> None:
    events: list[IngestProgress] = []
    first = ingestor.ingest("docs", docs, progress=events.append)
    assert sorted(first.added) == sorted(CORPUS)
    assert first.replaced == first.unchanged == first.deleted == []
    assert first.skipped == []
    assert store.count("docs") == first.chunks_written > len(CORPUS)
    assert sorted(e.source for e in events) == sorted(CORPUS)
    assert [e.done for e in events] == [1, 2, 3, 4]
    assert sum(e.chunks for e in events) == first.chunks_written

    [point] = store.get("docs", sorted(store.ids_where("docs", "source", "billing.md"))[:1])
    assert point.payload["title"] == "Billing and budgets"
    assert point.payload["kind"] == "chunk"
    assert len(point.payload["doc_sha256"]) == 64
    assert point.payload["text"].startswith("Billing and budgets")
    assert point.sparse is not None and len(point.sparse.indices) > 0
    before = all_ids(store)

    again = ingestor.ingest("docs", docs)
    assert sorted(again.unchanged) == sorted(CORPUS)
    assert again.added == again.replaced == again.deleted == []
    assert again.chunks_written == again.chunks_deleted == 0
    assert all_ids(store) == before
    assert store.count("docs") == first.chunks_written


def test_changed_file_replaces_exactly_its_chunks(ingestor: Ingestor, store: EdgeStore, docs: Path) -> None:
    ingestor.ingest("docs", docs)
    before = ids_by_source(store, sorted(CORPUS))

    # Shorter text: fewer chunks, so some old ids must go; the unchanged first section keeps its ids.
    (docs / "gpu.md").write_text(CORPUS["gpu.md"].split("## Monitoring")[0], encoding="utf-8")
    report = ingestor.ingest("docs", docs)

    assert report.replaced == ["gpu.md"]
    assert sorted(report.unchanged) == sorted(set(CORPUS) - {"gpu.md"})
    after = ids_by_source(store, sorted(CORPUS))
    for source in set(CORPUS) - {"gpu.md"}:
        assert after[source] == before[source]
    assert after["gpu.md"] < before["gpu.md"]  # first section's chunks kept their ids
    assert report.chunks_deleted == len(before["gpu.md"] - after["gpu.md"]) > 0
    assert store.count("docs") == sum(map(len, after.values()))
    points = store.get("docs", sorted(after["gpu.md"]))
    assert len({p.payload["doc_sha256"] for p in points}) == 1
    assert all("nvidia-smi" not in p.payload["text"] for p in points)


def test_delete_missing_removes_chunks_of_vanished_files(
    ingestor: Ingestor, store: EdgeStore, docs: Path
) -> None:
    ingestor.ingest("docs", docs)
    (docs / "gardening.md").unlink()

    kept = ingestor.ingest("docs", docs)
    assert kept.deleted == []
    assert store.ids_where("docs", "source", "gardening.md")

    pruned = ingestor.ingest("docs", docs, delete_missing=True)
    assert pruned.deleted == ["gardening.md"]
    assert pruned.chunks_deleted > 0
    assert store.ids_where("docs", "source", "gardening.md") == set()
    assert sorted(pruned.unchanged) == sorted(set(CORPUS) - {"gardening.md"})
    assert store.count("docs") == len(all_ids(store))


def test_bad_files_are_skipped_and_reported_and_keep_earlier_chunks(
    ingestor: Ingestor, store: EdgeStore, docs: Path
) -> None:
    (docs / "notes.xyz").write_text("no loader for this", encoding="utf-8")
    (docs / "broken.pdf").write_bytes(b"%PDF-1.7 this is not really a pdf")
    report = ingestor.ingest("docs", docs)
    assert sorted(s.source for s in report.skipped) == ["broken.pdf", "notes.xyz"]
    assert sorted(report.added) == sorted(CORPUS)
    assert store.ids_where("docs", "source", ["broken.pdf", "notes.xyz"]) == set()

    # A file that breaks after it was ingested is skipped, and its chunks stay (it still exists).
    stored = store.ids_where("docs", "source", "canary.md")
    (docs / "canary.md").write_bytes(b"\xff\xfe not utf-8 \xff")
    broken = ingestor.ingest("docs", docs, delete_missing=True)
    assert "canary.md" in {s.source for s in broken.skipped}
    assert broken.deleted == []
    assert store.ids_where("docs", "source", "canary.md") == stored


# --------------------------------------------------------------------------- a real kill

CHILD = textwrap.dedent(
    """
    import sys, time
    from rag.chunking import HFTokenizer
    from rag.embedder import SentenceTransformerEmbedder
    from rag.ingest import Ingestor
    from rag.stores import EdgeStore

    store = EdgeStore(sys.argv[1])
    ingestor = Ingestor(
        store, SentenceTransformerEmbedder(), HFTokenizer(), max_tokens=64, overlap_tokens=8, batch_size=8
    )

    def progress(event):
        print(event.status, event.source, flush=True)
        time.sleep(0.05)  # slow enough that the parent's kill lands mid-run

    ingestor.ingest("docs", sys.argv[2], delete_missing=True, progress=progress)
    print("finished", flush=True)
    """
)

WORDS = [
    "cluster", "node", "pod", "replica", "shard", "index", "vector", "query", "latency", "token", "budget",
    "gateway", "canary", "drift", "metric", "alert", "rollout", "model", "prompt", "embedding", "cache",
    "queue", "batch", "schema", "tenant", "ledger", "audit",
]  # fmt: skip


def generated_corpus(version: int, count: int) -> dict[str, str]:
    files = {}
    for n in range(count):
        rng = random.Random(n * 1000 + (version if n % 2 else 0))  # odd files change between versions
        sections = []
        for s in range(rng.randint(1, 3) + (version if n % 4 == 1 else 0)):
            sentences = [
                " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 12))).capitalize() + "."
                for _ in range(rng.randint(3, 7))
            ]
            sections.append(f"## Part {s}\n\n" + " ".join(sentences))
        files[f"topic-{n:02d}.md"] = f"# Topic {n}\n\n" + "\n\n".join(sections) + "\n"
    return files


def snapshot(root: Path) -> dict[str, tuple[str, str]]:
    with EdgeStore(root) as store:
        ids = sorted(all_ids(store))
        assert store.count("docs") == len(ids)
        return {p.id: (p.payload["source"], p.payload["doc_sha256"]) for p in store.get("docs", ids)}


def test_killed_ingestion_rerun_matches_an_uninterrupted_one(
    tmp_path: Path, embedder: SentenceTransformerEmbedder, tokenizer: HFTokenizer
) -> None:
    docs = tmp_path / "docs"
    old = generated_corpus(version=0, count=40)
    write_files(docs, old)
    killed_dir, fresh_dir = tmp_path / "killed", tmp_path / "fresh"

    def ingest(store_dir: Path) -> tuple[object, float, int]:
        with EdgeStore(store_dir) as store:
            ingestor = Ingestor(store, embedder, tokenizer, max_tokens=MAX_TOKENS, overlap_tokens=OVERLAP)
            started = time.perf_counter()
            report = ingestor.ingest("docs", docs, delete_missing=True)
            return report, time.perf_counter() - started, store.count("docs")

    ingest(killed_dir)  # version 0 fully stored: the killed run has stale chunks to replace

    new = generated_corpus(version=1, count=40)
    for gone in ("topic-03.md", "topic-10.md", "topic-37.md"):
        del new[gone]
        (docs / gone).unlink()
    new.update(
        {f"extra-{n}.md": f"# Extra {n}\n\nAdded later: shard rollout number {n}.\n" for n in range(3)}
    )
    write_files(docs, new)
    assert sum(old[name] != text for name, text in new.items() if name in old) >= 15

    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(killed_dir), str(docs)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert child.stdout is not None
    lines: list[str] = []
    try:
        # Unchanged files report at once; wait until the child has written some changed ones.
        while sum(line.startswith(("added", "replaced")) for line in lines) < 4:
            line = child.stdout.readline()
            assert line, f"the child ended before it was killed: {lines}"
            lines.append(line)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert "finished\n" not in lines

    report, _, _ = ingest(killed_dir)  # the rerun
    assert report.added or report.replaced  # the child had not finished
    assert sorted(report.deleted) == ["topic-03.md", "topic-10.md", "topic-37.md"]

    _, seconds, points = ingest(fresh_dir)
    assert snapshot(killed_dir) == snapshot(fresh_dir)
    print(f"\nuninterrupted ingest: {points} chunks in {seconds:.2f} s = {points / seconds:.0f} chunks/s")
