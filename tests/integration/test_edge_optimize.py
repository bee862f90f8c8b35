"""Optimizing a Qdrant Edge collection beside the live one: nothing waits, nothing is lost.

``EdgeStore.optimize`` builds the index on a copy in a child process (the engine holds the GIL
while it builds), replays the updates made meanwhile and swaps the copy in. These tests make
updates and searches while the child runs, make the child fail, and reopen what is left.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from opsloop.errors import BackendError
from rag.stores import EdgeStore, Point, SparseVector
from rag.stores import edge as edge_module

DIM = 32


def _id(n: int) -> str:
    return str(uuid.UUID(int=n + 1))


def _points(first: int, count: int, source: str = "bulk.md") -> list[Point]:
    vectors = np.random.default_rng(first).standard_normal((count, DIM)).astype(np.float32)
    return [
        Point(
            _id(first + i), vectors[i], SparseVector([first + i], [1.0]), {"source": source, "n": first + i}
        )
        for i in range(count)
    ]


def _shard_dirs(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "docs").iterdir() if p.is_dir())


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "qdrant"


def test_updates_made_while_the_copy_is_optimized_are_kept(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = EdgeStore(root)
    store.create_collection("docs", DIM, keyword_fields=["source"])
    store.upsert("docs", _points(0, 500))
    (root / "docs" / "shard-0123abcd").mkdir()  # what a killed optimization leaves
    build = EdgeStore._build

    def build_while_writing(self: EdgeStore, shard_dir: Path, name: str) -> None:
        store.upsert("docs", _points(1000, 20, source="late.md"))
        store.delete("docs", [_id(0), _id(1)])
        store.delete_where("docs", "source", "late.md")
        store.upsert("docs", _points(2000, 5, source="later.md"))
        store.create_collection("docs", DIM, keyword_fields=["source", "lang"])
        assert store.count("docs") == 503  # the live shard answers meanwhile
        build(self, shard_dir, name)

    monkeypatch.setattr(EdgeStore, "_build", build_while_writing)
    store.optimize("docs")

    manifest = json.loads((root / "docs" / "collection.json").read_text())
    assert _shard_dirs(root) == [manifest["shard"]] != ["shard"]
    _check_kept(store)
    store.close()
    with EdgeStore(root) as reopened:
        _check_kept(reopened)


def _check_kept(store: EdgeStore) -> None:
    assert store.count("docs") == 503
    assert store.get("docs", [_id(0), _id(1), _id(1000)]) == []
    assert store.ids_where("docs", "source", "later.md") == {_id(2000 + i) for i in range(5)}
    late = _points(2000, 5)[3]
    assert store.search_dense("docs", late.vector, limit=1)[0].id == late.id
    assert store.search_sparse("docs", SparseVector([2003], [1.0]), limit=1)[0].id == late.id


def test_searches_are_answered_while_the_index_is_built(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = EdgeStore(root)
    store.create_collection("docs", DIM)
    store.upsert("docs", _points(0, 3000))
    build = EdgeStore._build
    building: list[float] = []

    def timed_build(self: EdgeStore, shard_dir: Path, name: str) -> None:
        building.append(time.monotonic())
        build(self, shard_dir, name)
        building.append(time.monotonic())

    monkeypatch.setattr(EdgeStore, "_build", timed_build)
    optimizing = threading.Thread(target=store.optimize, args=("docs",))
    answered: list[float] = []
    query = _points(0, 1)[0]
    optimizing.start()
    deadline = time.monotonic() + 120
    while optimizing.is_alive() and time.monotonic() < deadline:
        assert store.search_dense("docs", query.vector, limit=1)[0].id == query.id
        answered.append(time.monotonic())
    optimizing.join()
    started, finished = building
    assert any(started < t < finished for t in answered), "no search was answered during the build"
    assert store.search_dense("docs", query.vector, limit=1)[0].id == query.id
    store.close()


def test_a_failed_build_is_a_backend_error_and_the_live_shard_serves_on(
    root: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    failing = tmp_path / "fail.py"
    failing.write_text("import sys\nsys.exit('out of disk space, say')\n")
    monkeypatch.setattr(edge_module, "_OPTIMIZER", failing)
    with EdgeStore(root) as store:
        store.create_collection("docs", DIM)
        store.upsert("docs", _points(0, 10))
        with pytest.raises(BackendError, match="failed to optimize 'docs': out of disk space, say"):
            store.optimize("docs")
        assert _shard_dirs(root) == ["shard"]
        store.upsert("docs", _points(10, 5))
        assert store.count("docs") == 15
    with EdgeStore(root) as reopened:
        assert reopened.count("docs") == 15


def test_a_collection_from_before_optimized_shards_opens(root: Path) -> None:
    with EdgeStore(root) as store:
        store.create_collection("docs", DIM)
        store.upsert("docs", _points(0, 3))
    manifest = root / "docs" / "collection.json"
    manifest.write_text(json.dumps({"format": 1, "dimension": DIM, "sparse": True}))  # no "shard"
    with EdgeStore(root) as store:
        assert store.count("docs") == 3
        store.optimize("docs")
        assert store.count("docs") == 3
    assert json.loads(manifest.read_text())["shard"] != "shard"


def test_closing_the_store_stops_a_build(root: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    slow = tmp_path / "slow.py"
    slow.write_text("import time\ntime.sleep(600)\n")
    monkeypatch.setattr(edge_module, "_OPTIMIZER", slow)
    store = EdgeStore(root)
    store.create_collection("docs", DIM)
    store.upsert("docs", _points(0, 10))
    failed: list[BaseException] = []

    def optimize() -> None:
        try:
            store.optimize("docs")
        except BackendError as exc:
            failed.append(exc)

    optimizing = threading.Thread(target=optimize)
    optimizing.start()
    deadline = time.monotonic() + 60
    while not store._builds and time.monotonic() < deadline:
        time.sleep(0.01)
    store.close()
    optimizing.join(timeout=60)
    assert not optimizing.is_alive() and failed, "the build outlived the store"
    assert _shard_dirs(root) == ["shard"]
    with EdgeStore(root) as reopened:
        assert reopened.count("docs") == 10


def test_unindexed_counts_what_an_optimization_indexes(root: Path) -> None:
    """7,000 384-d points: over the size under which Qdrant leaves a segment unindexed on purpose."""
    vectors = np.random.default_rng(0).standard_normal((7000, 384)).astype(np.float32)
    with EdgeStore(root) as store:
        store.create_collection("docs", 384)
        store.upsert("docs", [Point(_id(i), vectors[i], SparseVector([i], [1.0]), {}) for i in range(7000)])
        assert store.unindexed("docs") == 7000
        store.optimize("docs")
        assert store.unindexed("docs") == 0
        later = [Point(_id(7000 + i), vectors[i], SparseVector([i], [1.0]), {}) for i in range(3)]
        store.upsert("docs", later)
        assert store.unindexed("docs") == 3
