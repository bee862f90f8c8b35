"""Vector stores behind one Protocol: Qdrant Edge in-process, and a Qdrant server.

    VectorStore (Protocol)      protocol.py
    ├── EdgeStore               edge.py    embedded default, shards under $OPSLOOP_HOME/qdrant
    └── QdrantServerStore       server.py  scale-out twin, through qdrant-client

``QdrantServerStore`` loads on first access: importing qdrant-client takes seconds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rag.stores.edge import EdgeStore
from rag.stores.protocol import FilterValue, Hit, Point, SparseVector, VectorStore

if TYPE_CHECKING:
    from rag.stores.server import QdrantServerStore

__all__ = ["EdgeStore", "FilterValue", "Hit", "Point", "QdrantServerStore", "SparseVector", "VectorStore"]


def __getattr__(name: str) -> Any:
    if name == "QdrantServerStore":
        from rag.stores.server import QdrantServerStore

        return QdrantServerStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
