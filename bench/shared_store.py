"""``python -m bench.shared_store``: what the workers of ``serve --workers N`` pay to reach the store.

With several workers on the embedded defaults, the supervising process holds Qdrant Edge and each
worker's store calls cross a Unix socket (``rag.stores.shared``). This times the same dense and
sparse searches, and an upsert batch, on the store directly (the one-process server's path) and
through a ``SocketStore`` to a ``StoreServer`` in a second process, and reports the ratio. The
points are random unit vectors of the embedder's 384 dimensions with random sparse vectors; the
server process is started and stopped by this script.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rag.stores import EdgeStore, Point, SparseVector, VectorStore
from rag.stores.shared import SocketStore, StoreServer

DIMENSION = 384
COLLECTION = "bench"


def _points(rng: np.random.Generator, count: int) -> list[Point]:
    vectors = rng.normal(size=(count, DIMENSION)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    points = []
    for vector in vectors:
        indices = np.sort(rng.choice(30_000, size=24, replace=False)).astype(np.uint32)
        sparse = SparseVector(indices.tolist(), rng.random(24).astype(np.float32).tolist())
        points.append(Point(str(uuid.UUID(int=int(rng.integers(2**63)))), vector, sparse, {"source": "b.md"}))
    return points


def _serve(root: str, authkey: bytes, ready: Any) -> None:
    """The supervising process's side: hold the store, serve it until killed."""
    store = EdgeStore(Path(root))
    StoreServer(store, Path(root) / "store.sock", authkey)
    ready.set()
    while True:
        time.sleep(3600)


def _timed(call: Callable[[], object], repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return seconds


def _measure(store: VectorStore, queries: list[Point], batch: list[Point]) -> dict[str, list[float]]:
    dense = [q.vector for q in queries]
    sparse = [q.sparse for q in queries if q.sparse is not None]
    cycle = iter(range(10**9))

    def dense_search() -> object:
        return store.search_dense(COLLECTION, dense[next(cycle) % len(dense)], limit=10)

    def sparse_search() -> object:
        return store.search_sparse(COLLECTION, sparse[next(cycle) % len(sparse)], limit=10)

    return {
        "dense search": _timed(dense_search, len(queries)),
        "sparse search": _timed(sparse_search, len(queries)),
        "upsert 64 points": _timed(lambda: store.upsert(COLLECTION, batch), 20),
    }


def main(argv: list[str] | None = None) -> int:
    """Run both sides, print the table, write the JSON; see the module docs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=20_000, help="points in the collection")
    parser.add_argument("--queries", type=int, default=500, help="searches of each kind")
    parser.add_argument("--out", type=Path, default=Path("bench/results/shared-store.json"))
    args = parser.parse_args(argv)
    rng = np.random.default_rng(7)
    points, queries, batch = _points(rng, args.points), _points(rng, args.queries), _points(rng, 64)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        with EdgeStore(Path(tmp)) as store:
            store.create_collection(COLLECTION, DIMENSION)
            for start in range(0, len(points), 1000):
                store.upsert(COLLECTION, points[start : start + 1000])
            store.optimize(COLLECTION)
            direct = _measure(store, queries, batch)
        authkey = secrets.token_bytes(32)
        context = multiprocessing.get_context("spawn")
        ready = context.Event()
        holder = context.Process(target=_serve, args=(tmp, authkey, ready), daemon=True)
        holder.start()
        try:
            if not ready.wait(120):
                raise SystemExit("the store server did not start within 120 s")
            remote = SocketStore(Path(tmp) / "store.sock", authkey)
            socket = _measure(remote, queries, batch)
            remote.close()
        finally:
            holder.kill()
            holder.join(10)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    header = ("call", "direct p50", "socket p50", "direct p99", "socket p99", "ratio p50")
    print(f"{header[0]:<18}" + "".join(f"{h:>12}" for h in header[1:]))
    for name in direct:
        d, s = direct[name], socket[name]
        p50d, p50s = statistics.median(d) * 1e3, statistics.median(s) * 1e3
        p99d, p99s = float(np.percentile(d, 99)) * 1e3, float(np.percentile(s, 99)) * 1e3
        results[name] = {
            "direct_p50_ms": round(p50d, 3),
            "socket_p50_ms": round(p50s, 3),
            "direct_p99_ms": round(p99d, 3),
            "socket_p99_ms": round(p99s, 3),
            "ratio_p50": round(p50s / p50d, 2),
        }
        print(f"{name:<18}{p50d:>12.3f}{p50s:>12.3f}{p99d:>12.3f}{p99s:>12.3f}{p50s / p50d:>12.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"commit": commit, "points": args.points, "queries": args.queries, "results": results}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
