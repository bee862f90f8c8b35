"""One contract for every vector store: Qdrant Edge on disk and qdrant-client against local mode.

``QdrantServerStore`` runs over ``QdrantClient(location=":memory:")``, qdrant-client's own
in-process engine, which takes the same client calls a server does.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient

from opsloop.errors import BackendError, ConflictError, InvalidInputError, NotFoundError, OpsloopError
from rag.stores import EdgeStore, Hit, Point, QdrantServerStore, SparseVector, VectorStore
from rag.stores.shared import SocketStore, StoreServer

DIM = 4


def _id(n: int) -> str:
    """A stable UUID per small integer, so tests can name points."""
    return str(uuid.UUID(int=n + 1))


def _point(n: int, vector: list[float], /, *, sparse: SparseVector | None = None, **payload: object) -> Point:
    return Point(_id(n), vector, sparse, dict(payload))


@pytest.fixture(params=["edge", "server", "socket"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorStore]:
    """Each store; "socket" is Edge as ``serve --workers N`` reaches it, through its Unix socket."""
    made: VectorStore
    if request.param == "server":
        made = QdrantServerStore(client=QdrantClient(location=":memory:"))
    else:
        made = EdgeStore(tmp_path / "qdrant")
    if request.param != "socket":
        yield made
        made.close()
        return
    holder = StoreServer(made, tmp_path / "store.sock", b"test-key")
    socket = SocketStore(holder.path, b"test-key")
    yield socket
    socket.close()
    holder.close()
    made.close()


@pytest.fixture
def docs(store: VectorStore) -> VectorStore:
    """A collection "docs" with five points: cosine-known vectors, sparse terms, payloads."""
    store.create_collection("docs", DIM)
    store.upsert(
        "docs",
        [
            _point(0, [1, 0, 0, 0], sparse=SparseVector([1, 2], [1.0, 1.0]), source="a.md", n=0, lang="en"),
            _point(1, [0.9, 0.1, 0, 0], sparse=SparseVector([2], [1.0]), source="a.md", n=1, lang="de"),
            _point(2, [0.5, 0.5, 0, 0], sparse=SparseVector([3], [2.0]), source="b.md", n=2, lang="en"),
            _point(3, [0.1, 1, 0, 0], sparse=SparseVector([1], [0.5]), source="c.md", n=3, lang="fr"),
            _point(4, [0, 0, 0, 1], source="c.md", n=4, lang="en"),
        ],
    )
    return store


def _ids(hits: list[Hit]) -> list[str]:
    return [h.id for h in hits]


# -- collections ---------------------------------------------------------------------


def test_create_collection_is_idempotent(store: VectorStore) -> None:
    store.create_collection("docs", DIM)
    store.upsert("docs", [_point(0, [1, 0, 0, 0])])
    store.create_collection("docs", DIM)
    assert store.collections() == ["docs"]
    assert store.count("docs") == 1


def test_create_collection_with_another_dimension_conflicts(store: VectorStore) -> None:
    store.create_collection("docs", DIM)
    with pytest.raises(ConflictError) as info:
        store.create_collection("docs", DIM + 1)
    assert info.value.details["field"] == "dimension"
    assert info.value.details["existing"] == DIM


def test_create_collection_with_other_sparse_setting_conflicts(store: VectorStore) -> None:
    store.create_collection("docs", DIM, sparse=True)
    with pytest.raises(ConflictError) as info:
        store.create_collection("docs", DIM, sparse=False)
    assert info.value.details["field"] == "sparse"


@pytest.mark.parametrize("name", ["", "../up", "a/b", "-x", ".hidden", "x" * 65, 3])
def test_bad_collection_name_is_invalid_input(store: VectorStore, name: object) -> None:
    with pytest.raises(InvalidInputError) as info:
        store.create_collection(name, DIM)  # type: ignore[arg-type]
    assert info.value.details["field"] == "name"


@pytest.mark.parametrize("dimension", [0, -1, True, 1.5])
def test_bad_dimension_is_invalid_input(store: VectorStore, dimension: object) -> None:
    with pytest.raises(InvalidInputError) as info:
        store.create_collection("docs", dimension)  # type: ignore[arg-type]
    assert info.value.details["field"] == "dimension"


def test_drop_collection(store: VectorStore) -> None:
    store.create_collection("keep", DIM)
    store.create_collection("docs", DIM)
    store.upsert("docs", [_point(0, [1, 0, 0, 0])])
    assert store.collections() == ["docs", "keep"]
    store.drop_collection("docs")
    assert store.collections() == ["keep"]
    with pytest.raises(NotFoundError):
        store.count("docs")
    store.create_collection("docs", DIM + 2)  # the name is free again, with any shape
    assert store.count("docs") == 0


def test_unknown_collection_is_not_found(store: VectorStore) -> None:
    calls = [
        lambda: store.count("nope"),
        lambda: store.upsert("nope", [_point(0, [1, 0, 0, 0])]),
        lambda: store.delete("nope", [_id(0)]),
        lambda: store.delete_where("nope", "source", "a.md"),
        lambda: store.ids_where("nope", "source", "a.md"),
        lambda: store.search_dense("nope", [1, 0, 0, 0]),
        lambda: store.search_sparse("nope", SparseVector([1], [1.0])),
        lambda: store.get("nope", [_id(0)]),
        lambda: store.drop_collection("nope"),
    ]
    for call in calls:
        with pytest.raises(NotFoundError) as info:
            call()
        assert info.value.details["collection"] == "nope"


# -- points --------------------------------------------------------------------------


def test_upsert_and_count(docs: VectorStore) -> None:
    assert docs.count("docs") == 5


def test_upsert_same_id_replaces(docs: VectorStore) -> None:
    docs.upsert("docs", [_point(0, [0, 0, 1, 0], source="z.md"), _point(0, [0, 0, 1, 0], source="last.md")])
    assert docs.count("docs") == 5
    (point,) = docs.get("docs", [_id(0)])
    assert point.payload == {"source": "last.md"}
    assert point.sparse is None
    np.testing.assert_allclose(point.vector, [0, 0, 1, 0], atol=1e-6)
    assert docs.search_dense("docs", [0, 0, 1, 0], limit=1)[0].id == _id(0)


def test_get_returns_points_in_the_order_asked(docs: VectorStore) -> None:
    got = docs.get("docs", [_id(3), str(uuid.uuid4()), _id(0).upper()])
    assert [p.id for p in got] == [_id(3), _id(0)]
    assert got[0].payload == {"source": "c.md", "n": 3, "lang": "fr"}
    assert got[0].sparse == SparseVector([1], [0.5])
    assert got[1].sparse == SparseVector([1, 2], [1.0, 1.0])
    # Cosine collections store unit vectors.
    np.testing.assert_allclose(docs.get("docs", [_id(2)])[0].vector, [math.sqrt(0.5)] * 2 + [0, 0], atol=1e-6)


def test_searches_without_payloads_then_the_payloads_of_some(docs: VectorStore) -> None:
    dense = docs.search_dense("docs", [1, 0, 0, 0], limit=2, with_payload=False)
    sparse = docs.search_sparse("docs", SparseVector([3], [1.0]), with_payload=False)
    assert _ids(dense) == [_id(0), _id(1)] and _ids(sparse) == [_id(2)]
    assert all(hit.payload == {} for hit in (*dense, *sparse))
    assert dense == [Hit(h.id, h.score, {}) for h in docs.search_dense("docs", [1, 0, 0, 0], limit=2)]
    unknown = str(uuid.uuid4())
    assert docs.payloads("docs", [_id(2), unknown, _id(0)]) == {
        _id(2): {"source": "b.md", "n": 2, "lang": "en"},
        _id(0): {"source": "a.md", "n": 0, "lang": "en"},
    }
    assert docs.payloads("docs", []) == {}
    with pytest.raises(InvalidInputError):
        docs.payloads("docs", ["not-a-uuid"])


def test_dense_scores_are_what_a_dense_search_scores(docs: VectorStore) -> None:
    query = [1.0, 0.5, 0.0, 0.25]
    searched = {h.id: h.score for h in docs.search_dense("docs", query, limit=10)}
    scored = docs.dense_scores("docs", np.array(query), [_id(3), str(uuid.uuid4()), _id(0).upper()])
    assert set(scored) == {_id(3), _id(0)}  # an unknown id is left out
    for point_id, score in scored.items():
        assert score == pytest.approx(searched[point_id], abs=1e-5)
    assert docs.dense_scores("docs", query, []) == {}
    with pytest.raises(InvalidInputError):
        docs.dense_scores("docs", [1.0, 0.0], [_id(0)])  # wrong dimension
    with pytest.raises(NotFoundError):
        docs.dense_scores("missing", query, [_id(0)])


def test_numpy_vectors_are_accepted(store: VectorStore) -> None:
    store.create_collection("docs", DIM)
    store.upsert("docs", [Point(_id(0), np.array([1, 2, 3, 4], dtype=np.float32))])
    hits = store.search_dense("docs", np.array([1, 2, 3, 4], dtype=np.float64))
    assert _ids(hits) == [_id(0)]
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)


def test_delete_by_ids(docs: VectorStore) -> None:
    docs.delete("docs", [_id(0), _id(1), str(uuid.uuid4())])
    assert docs.count("docs") == 3
    assert docs.get("docs", [_id(0), _id(1)]) == []
    docs.delete("docs", [])
    assert docs.count("docs") == 3


def test_delete_where_payload_field(docs: VectorStore) -> None:
    docs.delete_where("docs", "source", "a.md")
    assert docs.count("docs") == 3
    assert docs.ids_where("docs", "source", "a.md") == set()
    docs.delete_where("docs", "source", ["b.md", "c.md"])
    assert docs.count("docs") == 0


def test_ids_where(docs: VectorStore) -> None:
    assert docs.ids_where("docs", "source", "c.md") == {_id(3), _id(4)}
    assert docs.ids_where("docs", "n", [0, 2]) == {_id(0), _id(2)}
    assert docs.ids_where("docs", "source", "missing.md") == set()


def test_ids_where_pages_through_many_points(store: VectorStore) -> None:
    store.create_collection("docs", DIM)
    store.upsert("docs", [_point(i, [1, i % 7, 0, 1], source="big.md") for i in range(2500)])
    assert store.count("docs") == 2500
    assert store.ids_where("docs", "source", "big.md") == {_id(i) for i in range(2500)}


def test_wrong_vector_dimension_is_invalid_input(docs: VectorStore) -> None:
    with pytest.raises(InvalidInputError) as info:
        docs.upsert("docs", [_point(9, [1, 0, 0, 0]), _point(10, [1, 0, 0])])
    assert info.value.details["field"] == "vector"
    assert info.value.details["expected"] == DIM
    assert info.value.details["id"] == _id(10)
    with pytest.raises(InvalidInputError) as info:
        docs.search_dense("docs", [1, 0, 0, 0, 0])
    assert info.value.details["field"] == "vector"


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: Point("not-a-uuid", [1.0, 0, 0, 0]), "id"),
        (lambda: Point(_id(0), [math.nan, 0, 0, 0]), "vector"),
        (lambda: Point(_id(0), [0.0, 0, 0, 0]), "vector"),
        (lambda: Point(_id(0), [[1.0, 0], [0, 1]]), "vector"),  # type: ignore[list-item]
        (lambda: Point(_id(0), [1.0, 0, 0, 0], None, {"x": math.inf}), "payload.x"),
        (lambda: Point(_id(0), [1.0, 0, 0, 0], None, {"when": object()}), "payload.when"),
        (lambda: SparseVector([1, 1], [1.0, 2.0]), "sparse.indices"),
        (lambda: SparseVector([1, 2], [1.0]), "sparse"),
        (lambda: SparseVector([-1], [1.0]), "sparse.indices"),
    ],
)
def test_bad_points_are_invalid_input(make: object, field: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        make()  # type: ignore[operator]
    assert info.value.details["field"] == field


def test_sparse_point_into_dense_only_collection_is_invalid_input(store: VectorStore) -> None:
    store.create_collection("dense", DIM, sparse=False)
    with pytest.raises(InvalidInputError) as info:
        store.upsert("dense", [_point(0, [1, 0, 0, 0], sparse=SparseVector([1], [1.0]))])
    assert info.value.details["field"] == "sparse"
    with pytest.raises(InvalidInputError):
        store.search_sparse("dense", SparseVector([1], [1.0]))
    store.upsert("dense", [_point(0, [1, 0, 0, 0])])
    assert _ids(store.search_dense("dense", [1, 0, 0, 0])) == [_id(0)]


# -- dense search --------------------------------------------------------------------


def test_dense_search_orders_by_cosine(docs: VectorStore) -> None:
    hits = docs.search_dense("docs", [1, 0, 0, 0], limit=5)
    assert _ids(hits) == [_id(0), _id(1), _id(2), _id(3), _id(4)][: len(hits)]
    expected = [1.0, 0.9 / math.hypot(0.9, 0.1), math.sqrt(0.5)]
    assert [h.score for h in hits[:3]] == pytest.approx(expected, abs=1e-5)
    assert hits[0].payload == {"source": "a.md", "n": 0, "lang": "en"}


def test_dense_search_limit(docs: VectorStore) -> None:
    assert _ids(docs.search_dense("docs", [1, 0, 0, 0], limit=2)) == [_id(0), _id(1)]
    with pytest.raises(InvalidInputError) as info:
        docs.search_dense("docs", [1, 0, 0, 0], limit=0)
    assert info.value.details["field"] == "limit"


def test_dense_search_score_threshold(docs: VectorStore) -> None:
    hits = docs.search_dense("docs", [1, 0, 0, 0], limit=5, score_threshold=0.7)
    assert _ids(hits) == [_id(0), _id(1), _id(2)]
    assert docs.search_dense("docs", [0, 0, 1, 0], score_threshold=0.5) == []


def test_dense_search_filters(docs: VectorStore) -> None:
    assert _ids(docs.search_dense("docs", [1, 0, 0, 0], filter={"source": "c.md"})) == [_id(3), _id(4)]
    assert _ids(docs.search_dense("docs", [1, 0, 0, 0], filter={"lang": ["de", "fr"]})) == [_id(1), _id(3)]
    both = docs.search_dense("docs", [1, 0, 0, 0], filter={"lang": "en", "source": ["b.md", "c.md"]})
    assert _ids(both) == [_id(2), _id(4)]
    assert _ids(docs.search_dense("docs", [1, 0, 0, 0], filter={"n": 2})) == [_id(2)]
    assert docs.search_dense("docs", [1, 0, 0, 0], filter={"nothere": "x"}) == []


BAD_FILTERS = [{"n": 1.5}, {"n": []}, {"n": ["a", 1]}, {"n": [True]}, {"": "x"}, {"n": None}]


@pytest.mark.parametrize("bad", BAD_FILTERS)
def test_bad_filter_is_invalid_input(docs: VectorStore, bad: dict[str, object]) -> None:
    with pytest.raises(InvalidInputError) as info:
        docs.search_dense("docs", [1, 0, 0, 0], filter=bad)  # type: ignore[arg-type]
    assert str(info.value.details["field"]).startswith("filter")


# -- sparse search -------------------------------------------------------------------


def test_sparse_search_orders_by_idf_weighted_dot(docs: VectorStore) -> None:
    # Term 1 is in two of the four sparse points, term 3 in one: term 3 weighs more.
    hits = docs.search_sparse("docs", SparseVector([1, 3], [1.0, 1.0]), limit=10)
    assert _ids(hits) == [_id(2), _id(0), _id(3)]
    assert hits[0].score > hits[1].score > hits[2].score > 0
    assert hits[0].payload["source"] == "b.md"
    assert _ids(docs.search_sparse("docs", SparseVector([1, 3], [1.0, 1.0]), limit=1)) == [_id(2)]


def test_sparse_search_filter_and_empty_query(docs: VectorStore) -> None:
    hits = docs.search_sparse("docs", SparseVector([1, 2], [1.0, 1.0]), filter={"source": "a.md"})
    assert _ids(hits) == [_id(0), _id(1)]
    assert docs.search_sparse("docs", SparseVector([], [])) == []
    assert docs.search_sparse("docs", SparseVector([99], [1.0])) == []


# -- lifecycle -----------------------------------------------------------------------


# qdrant-client's local mode warns that it ignores payload indexes; a server builds them.
@pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning")
def test_keyword_fields_and_optimize_keep_results(store: VectorStore) -> None:
    store.create_collection("docs", DIM, keyword_fields=["source"])
    store.upsert("docs", [_point(i, [1, i, 0, 0], source=f"{i % 3}.md", n=i) for i in range(30)])
    store.create_collection("docs", DIM, keyword_fields=["source", "lang"])  # adds one, keeps one
    store.optimize("docs")
    assert store.count("docs") == 30
    assert store.ids_where("docs", "source", "1.md") == {_id(i) for i in range(1, 30, 3)}
    hits = store.search_dense("docs", [1, 0, 0, 0], limit=3, filter={"source": ["0.md", "2.md"]})
    assert _ids(hits) == [_id(0), _id(2), _id(3)]
    with pytest.raises(InvalidInputError) as info:
        store.create_collection("docs", DIM, keyword_fields=[""])
    assert info.value.details["field"] == "keyword_fields"


def test_closed_store_refuses_calls(store: VectorStore) -> None:
    store.create_collection("docs", DIM)
    store.close()
    store.close()
    with pytest.raises(OpsloopError, match="closed"):
        store.count("docs")


def test_edge_store_persists_across_reopen(tmp_path: Path) -> None:
    root = tmp_path / "qdrant"
    with EdgeStore(root) as first:
        first.create_collection("docs", DIM)
        first.create_collection("other", 3, sparse=False)
        first.upsert("docs", [_point(0, [1, 0, 0, 0], sparse=SparseVector([5], [1.0]), source="a.md")])
        first.upsert("docs", [_point(1, [0, 1, 0, 0], source="b.md")])
        first.delete("docs", [_id(1)])
    with EdgeStore(root) as second:
        assert second.collections() == ["docs", "other"]
        assert second.count("docs") == 1
        assert _ids(second.search_dense("docs", [1, 0, 0, 0])) == [_id(0)]
        assert _ids(second.search_sparse("docs", SparseVector([5], [1.0]))) == [_id(0)]
        assert second.get("docs", [_id(0)])[0].payload == {"source": "a.md"}
        with pytest.raises(ConflictError):
            second.create_collection("docs", DIM + 1)
        second.create_collection("other", 3, sparse=False)


def test_edge_store_keeps_collections_in_their_own_directories(tmp_path: Path) -> None:
    root = tmp_path / "qdrant"
    with EdgeStore(root) as store:
        store.create_collection("docs", DIM)
        store.create_collection("more", DIM)
        store.drop_collection("more")
    assert sorted(p.name for p in root.iterdir()) == ["docs"]
    assert (root / "docs" / "collection.json").is_file()


def test_edge_shard_open_in_another_store_is_a_backend_error(tmp_path: Path) -> None:
    root = tmp_path / "qdrant"
    with EdgeStore(root) as first, EdgeStore(root) as second:
        first.create_collection("docs", DIM)
        first.count("docs")
        with pytest.raises(BackendError, match="another process"):
            second.count("docs")


def test_a_server_collection_asks_for_the_configured_replication_factor() -> None:
    """In-process Qdrant keeps no replicas, so what is checked is the request a cluster would get."""
    asked: list[object] = []

    class Recording(QdrantClient):
        def create_collection(self, collection_name: str, **kwargs: object) -> bool:  # type: ignore[override]
            asked.append(kwargs.get("replication_factor"))
            return super().create_collection(collection_name, **kwargs)  # type: ignore[arg-type]

    with QdrantServerStore(client=Recording(location=":memory:"), replication_factor=2) as store:
        store.create_collection("docs", 4)
        store.create_collection("docs", 4)  # exists: not asked again
    assert asked == [2]
