"""Retrieval latency: Qdrant Edge against qdrant-client's local mode on the same points and queries.

Three sides hold the same synthetic points (:mod:`bench.rag.synthetic`), loaded through the
``VectorStore`` Protocol in the same batches:

* ``edge``: ``rag.stores.EdgeStore``, left as ``Ingestor`` leaves a collection (what the CLI
  without a server leaves, and a server until ``rag_auto_index_points`` chunks are unindexed);
* ``edge_optimized``: the same after ``EdgeStore.optimize()`` (segments merged, HNSW built),
  as a server leaves a larger collection a moment after its ingestion;
* ``local``: ``rag.stores.QdrantServerStore`` over ``QdrantClient(location=":memory:")``,
  qdrant-client's own in-process mode, the peer.

Per collection size (grown in steps, so the 100k collection is the 10k one plus 90k points),
each query is sent to every side in two forms:

* dense: ``store.search_dense(collection, vector, limit=limit)``;
* hybrid: ``rag.retriever.HybridRetriever.retrieve`` with the default BM25 encoder, i.e. a dense
  and a sparse search of ``max(20, 4 * top_k)`` candidates each, a ``get`` of the vectors of the
  sparse-only hits, and rank fusion. Only the query's embedding is left out (a table lookup
  stands in for MiniLM); the quality part times MiniLM on real questions.

The order of the sides and of the two forms rotates query by query, so that machine noise (and
any cache one call leaves warm for the next) hits all alike. The first ``warmup`` queries are
not counted. The peer is orders of magnitude slower (its sparse search is a Python loop over
every point), so it answers only the first ``peer_queries`` of the queries; the Edge / peer
ratios compare the sides on exactly those common queries. While timing, the collector ignores
the loaded data (``gc.freeze``) and numpy's BLAS runs one thread (see ``measure``), so that one
side's leftovers do not land in another's calls. Latency is the wall time of the call
in this process; the CPU time the process spent in it (all its threads) is kept beside it,
which tells a slow search from one that waited for a core on a shared machine. ``local``
searches exactly (brute force), so its dense hits are the true neighbours and each Edge side's
dense recall is measured against them.
"""

from __future__ import annotations

import gc
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_client import QdrantClient
from threadpoolctl import threadpool_limits

from bench.rag import BenchError
from bench.rag.synthetic import BATCH, DIMENSION, Dataset, Query, TableEmbedder, point_id
from rag.ingest import KEYWORD_FIELDS
from rag.retriever import HybridRetriever
from rag.sparse import BM25Encoder
from rag.stores import EdgeStore, VectorStore
from rag.stores.server import QdrantServerStore

__all__ = [
    "EDGE_SIDES",
    "FORMS",
    "LABELS",
    "PEER",
    "SIDES",
    "Side",
    "grow",
    "latency_stats",
    "measure",
    "open_sides",
]

SIDES = ("edge", "edge_optimized", "local")
EDGE_SIDES = ("edge", "edge_optimized")
FORMS = ("dense", "hybrid")
LABELS = {
    "edge": "Qdrant Edge (as ingested)",
    "edge_optimized": "Qdrant Edge (optimized)",
    "local": "qdrant-client local mode",
}
PEER = "local"


@dataclass
class Side:
    """One store under test and the seconds spent loading (and optimizing) it so far."""

    name: str
    store: VectorStore
    collection: str
    load_s: float = 0.0
    optimize_s: float = 0.0


@contextmanager
def open_sides(work: Path) -> Iterator[dict[str, Side]]:
    """The three sides with an empty collection each (Edge under ``work``); closed on exit."""
    edge = EdgeStore(work / "qdrant-edge")
    local = QdrantServerStore(client=QdrantClient(location=":memory:"))
    sides = {
        "edge": Side("edge", edge, "asingested"),
        "edge_optimized": Side("edge_optimized", edge, "optimized"),
        "local": Side("local", local, "bench"),
    }
    try:
        for side in sides.values():
            with warnings.catch_warnings():
                # Local mode warns that payload indexes do nothing there; Ingestor asks for them.
                warnings.simplefilter("ignore", UserWarning)
                side.store.create_collection(
                    side.collection, DIMENSION, sparse=True, keyword_fields=KEYWORD_FIELDS
                )
        yield sides
    finally:
        edge.close()
        local.close()


def grow(sides: dict[str, Side], dataset: Dataset, start: int, stop: int, say: Callable[[str], None]) -> None:
    """Upsert points ``start`` to ``stop - 1`` into every side, then optimize ``edge_optimized``."""
    for done, batch in enumerate(dataset.batches(start, stop), start=1):
        for side in sides.values():
            with warnings.catch_warnings():
                # Local mode warns on every upsert above 20,000 points that it is not meant for it.
                warnings.filterwarnings("ignore", "Local mode is not recommended", UserWarning)
                begin = time.perf_counter()
                side.store.upsert(side.collection, batch)
                side.load_s += time.perf_counter() - begin
        if done % 20 == 0:
            say(f"  loaded {min(start + done * BATCH, stop):,} of {stop:,} points")
    optimized = sides["edge_optimized"]
    begin = time.perf_counter()
    optimized.store.optimize(optimized.collection)
    optimized.optimize_s += time.perf_counter() - begin
    for side in sides.values():
        count = side.store.count(side.collection)
        if count != stop:
            raise BenchError(f"{side.name} holds {count} points, not {stop}")


def measure(
    sides: dict[str, Side],
    dataset: Dataset,
    size: int,
    *,
    queries: int,
    peer_queries: int,
    warmup: int,
    limit: int,
    top_k: int,
) -> dict[str, Any]:
    """Dense and hybrid latency of every side at ``size`` points, Edge / peer ratios, dense recall.

    The Edge sides answer ``warmup + queries`` queries, the peer the first ``warmup +
    peer_queries`` of them (it is orders of magnitude slower). Ratios and recall compare the
    sides on those common queries only.
    """
    peer_queries = min(peer_queries, queries)
    every = dataset.queries(warmup + queries, within=size)
    embedder = TableEmbedder(every)
    retrievers = {
        name: HybridRetriever(side.store, embedder, BM25Encoder(), top_k=top_k)
        for name, side in sides.items()
    }

    def dense(name: str, query: Query) -> list[str]:
        side = sides[name]
        return [h.id for h in side.store.search_dense(side.collection, query.vector, limit=limit)]

    def hybrid(name: str, query: Query) -> list[str]:
        return [c.id for c in retrievers[name].retrieve(sides[name].collection, query.text)]

    searches: dict[str, Callable[[str, Query], list[str]]] = {"dense": dense, "hybrid": hybrid}
    # The loaded data (the peer keeps every point as Python objects, the dataset its texts) is
    # long-lived: freezing it keeps the collector's full passes, which would otherwise walk all
    # of it and land in whichever call happens to allocate, out of the timings.
    gc.collect()
    gc.freeze()
    # One BLAS thread: after each of the peer's numpy products OpenBLAS's idle workers spin on
    # the cores for a while, and the Edge call that follows shares two cores with them (its p99
    # went from 1.5 to 8 ms at 10k points that way). The peer's p50 is the same with one thread.
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            times, cpu, found = _time_queries(searches, every, warmup + peer_queries, warmup)
    finally:
        gc.unfreeze()

    measured = every[warmup:]
    results: dict[str, Any] = {
        "points": size,
        "queries": queries,
        "peer_queries": peer_queries,
        "warmup": warmup,
    }
    for form in FORMS:
        results[form] = {name: latency_stats(samples) for name, samples in times[form].items()}
        results[f"{form}_cpu"] = {name: latency_stats(samples) for name, samples in cpu[form].items()}
        results[f"{form}_common"] = {
            name: latency_stats(times[form][name][:peer_queries]) for name in EDGE_SIDES
        }
        if queries > peer_queries:  # the Edge sides after the peer stopped: nothing else between calls
            results[f"{form}_alone"] = {
                name: latency_stats(times[form][name][peer_queries:]) for name in EDGE_SIDES
            }
    results["edge_over_local"] = {
        form: {
            name: {
                q: results[f"{form}_common"][name][f"{q}_ms"] / results[form][PEER][f"{q}_ms"]
                for q in ("p50", "p99")
            }
            for name in EDGE_SIDES
        }
        for form in FORMS
    }
    exact = found[PEER]  # the first peer_queries queries; zip stops there
    results["dense_recall_vs_local"] = {
        name: float(
            np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found[name], exact, strict=False)])
        )
        for name in EDGE_SIDES
    }
    results["dense_target_found"] = {
        name: float(
            np.mean([point_id(q.target) in ids for q, ids in zip(measured, found[name], strict=False)])
        )
        for name in SIDES
    }
    results["load_s"] = {name: side.load_s for name, side in sides.items()}
    results["optimize_s"] = sides["edge_optimized"].optimize_s
    return results


def _time_queries(
    searches: dict[str, Callable[[str, Query], list[str]]], queries: list[Query], peer_until: int, warmup: int
) -> tuple[dict[str, dict[str, list[float]]], dict[str, dict[str, list[float]]], dict[str, list[list[str]]]]:
    """Every search of every query on every side (the peer up to ``peer_until``), timed.

    Returns wall times and process CPU times (ms) by search and side, and the dense results by
    side, all without the first ``warmup`` queries.
    """
    times: dict[str, dict[str, list[float]]] = {form: {name: [] for name in SIDES} for form in searches}
    cpu: dict[str, dict[str, list[float]]] = {form: {name: [] for name in SIDES} for form in searches}
    found: dict[str, list[list[str]]] = {name: [] for name in SIDES}
    forms = tuple(searches)
    for i, query in enumerate(queries):
        # Rotate which side and which search go first, so that machine noise hits all alike.
        names: tuple[str, ...] = SIDES if i < peer_until else EDGE_SIDES
        names = names[i % len(names) :] + names[: i % len(names)]
        for form in forms if i % 2 == 0 else forms[::-1]:
            for name in names:
                begin, begin_cpu = time.perf_counter_ns(), time.process_time_ns()
                result = searches[form](name, query)
                elapsed = (time.perf_counter_ns() - begin) / 1e6
                elapsed_cpu = (time.process_time_ns() - begin_cpu) / 1e6
                if i >= warmup:
                    times[form][name].append(elapsed)
                    cpu[form][name].append(elapsed_cpu)
                    if form == "dense":
                        found[name].append(result)
    return times, cpu, found


def latency_stats(samples_ms: list[float]) -> dict[str, float]:
    """p50, p90, p99, mean and max of ``samples_ms`` (linear interpolation between ranks)."""
    values = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {
        "n": int(values.size),
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "mean_ms": float(values.mean()),
        "max_ms": float(values.max()),
    }
