"""The packaged MiniLM behind the Embedder protocol: offline, batched, unit-length rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from opsloop.errors import InvalidInputError
from rag.embedder import Embedder, SentenceTransformerEmbedder


def test_minilm_embeds_batches_into_unit_vectors() -> None:
    embedder: Embedder = SentenceTransformerEmbedder(batch_size=2)
    texts = ["How do I reset my password?", "Reset a forgotten password", "Kubernetes pod evicted"]
    vectors = embedder.embed(texts)
    assert vectors.shape == (3, 384) == (len(texts), embedder.dimension)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    similar, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert similar > unrelated + 0.3
    assert embedder.embed([]).shape == (0, 384)


def test_bad_input_and_paths_are_named(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="not one string"):
        SentenceTransformerEmbedder().embed("one string")
    with pytest.raises(InvalidInputError, match="batch_size"):
        SentenceTransformerEmbedder(batch_size=0)
    with pytest.raises(InvalidInputError, match="not a sentence-transformers model directory"):
        SentenceTransformerEmbedder(tmp_path).embed(["x"])
