"""The packaged MiniLM behind the Embedder protocol, on torch and on ONNX Runtime int8.

Offline, batched, unit-length rows, and the same vectors either way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from opsloop.errors import BackendError, InvalidInputError
from rag.embedder import Embedder, SentenceTransformerEmbedder, make_embedder
from rag.onnx_embedder import OnnxEmbedder, export_int8


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


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache with the packaged MiniLM exported to ONNX int8 (made once for the module)."""
    cache = tmp_path_factory.mktemp("embedders")
    OnnxEmbedder(cache).embed(["warm up"])
    return cache


def test_onnx_int8_gives_the_vectors_torch_gives(exported: Path) -> None:
    texts = [
        "How do I reset my password?",
        "Reset a forgotten password",
        "Kubernetes pod evicted",
        "opsloop keys revoke KEY_ID removes a key at once; requests with it get 401.",
        "x",
        " ".join(["long"] * 400),  # beyond MiniLM's 256 tokens: truncated, like torch truncates
    ]
    onnx: Embedder = OnnxEmbedder(exported, batch_size=4)
    vectors = onnx.embed(texts)
    assert vectors.shape == (len(texts), 384) == (len(texts), onnx.dimension)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    torch = SentenceTransformerEmbedder().embed(texts)
    agreement = np.sum(vectors * torch, axis=1)
    assert agreement.min() > 0.97, agreement  # int8 weights move each vector a little
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3
    assert onnx.embed([]).shape == (0, 384)
    np.testing.assert_array_equal(onnx.embed(texts[::-1]), vectors[::-1])  # batching changes nothing


def test_onnx_export_is_made_once_and_reused(exported: Path) -> None:
    [made] = exported.glob("*-int8.onnx")
    stamp = made.stat().st_mtime_ns
    assert export_int8(OnnxEmbedder(exported).model_dir, exported) == made
    assert made.stat().st_mtime_ns == stamp and not list(exported.glob(".*int8*"))


def test_onnx_refuses_what_it_cannot_export(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="not one string"):
        OnnxEmbedder(tmp_path).embed("one string")
    with pytest.raises(InvalidInputError, match="batch_size"):
        OnnxEmbedder(tmp_path, batch_size=0)
    with pytest.raises(InvalidInputError, match="embedder_backend: torch"):
        OnnxEmbedder(tmp_path / "cache", tmp_path).embed(["x"])


def test_an_unwritable_cache_is_named_with_the_way_out(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    with pytest.raises(BackendError, match="embedder_cache at a writable folder"):
        OnnxEmbedder(blocked / "embedders").embed(["x"])


def test_the_setting_picks_the_backend(tmp_path: Path) -> None:
    assert isinstance(make_embedder("torch", tmp_path), SentenceTransformerEmbedder)
    assert isinstance(make_embedder("onnx-int8", tmp_path), OnnxEmbedder)
    assert isinstance(make_embedder("auto", tmp_path), OnnxEmbedder)  # no GPU here
    with pytest.raises(InvalidInputError, match="embedder_backend"):
        make_embedder("tensorrt", tmp_path)
