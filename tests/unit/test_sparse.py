"""BM25 sparse encoding: tokens, stable term ids, saturation, length normalisation, queries."""

from __future__ import annotations

import subprocess
import sys

import pytest

from opsloop.errors import InvalidInputError
from rag.sparse import ENGLISH_STOP_WORDS, BM25Encoder, term_id, tokenize
from rag.stores import SparseVector


def weights(vector: SparseVector) -> dict[int, float]:
    return dict(zip(vector.indices, vector.values, strict=True))


def test_tokens_are_lowercase_unicode_words_keeping_codes_whole() -> None:
    text = "Error E4012: ERR_QUOTA_7731 in Zürich-Süd, naïve café 東京"
    assert tokenize(text) == [
        "error", "e4012", "err_quota_7731", "in", "zürich", "süd", "naïve", "café", "東京"
    ]  # fmt: skip


def test_stop_words_are_dropped_only_when_asked() -> None:
    assert tokenize("The cache of the node", stop_words=ENGLISH_STOP_WORDS) == ["cache", "node"]
    assert BM25Encoder(stop_words=False).encode_query("the") == SparseVector([term_id("the")], [1.0])
    assert BM25Encoder().encode_query("what is the") == SparseVector((), ())


def test_term_ids_are_stable_across_processes_and_in_range() -> None:
    # A fresh interpreter has another hash() seed; blake2b ids must not depend on it.
    code = "from rag.sparse import term_id; print(term_id('kubernetes'), term_id('東京'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == [str(term_id("kubernetes")), str(term_id("東京"))]
    assert term_id("kubernetes") != term_id("Kubernetes")
    assert all(0 <= term_id(word) < 2**32 for word in ("a", "b", "x" * 1000))


def test_document_weights_follow_bm25_term_frequency() -> None:
    encoder = BM25Encoder(k1=1.2, b=0.75, avg_doc_length=4, stop_words=False)
    [vector] = encoder.encode_documents(["cache cache miss node"])
    # |d| = avgdl, so the length factor is 1: weight = tf * (k1 + 1) / (tf + k1).
    assert weights(vector) == pytest.approx(
        {term_id("cache"): 2 * 2.2 / (2 + 1.2), term_id("miss"): 2.2 / 2.2, term_id("node"): 2.2 / 2.2}
    )
    assert list(vector.indices) == sorted(vector.indices)


def test_repeating_a_term_saturates() -> None:
    encoder = BM25Encoder(b=0.0, stop_words=False)
    rows = encoder.encode_documents([" ".join(["gpu"] * n) for n in (1, 2, 10, 1000)])
    values = [row.values[0] for row in rows]
    assert values == sorted(values)
    assert values[-1] < encoder.k1 + 1  # the BM25 bound
    assert values[1] - values[0] > values[3] - values[2]


def test_longer_documents_weigh_a_term_less() -> None:
    encoder = BM25Encoder(avg_doc_length=10, stop_words=False)
    short, long = encoder.encode_documents(["gpu memory", "gpu " + " ".join(f"w{i}" for i in range(40))])
    assert weights(short)[term_id("gpu")] > weights(long)[term_id("gpu")]
    flat = BM25Encoder(avg_doc_length=10, b=0.0, stop_words=False)
    short, long = flat.encode_documents(["gpu memory", "gpu " + " ".join(f"w{i}" for i in range(40))])
    assert weights(short)[term_id("gpu")] == weights(long)[term_id("gpu")]


def test_query_is_binary_over_distinct_terms() -> None:
    query = BM25Encoder().encode_query("Rollback the canary, rollback NOW")
    assert weights(query) == {term_id("rollback"): 1.0, term_id("canary"): 1.0, term_id("now"): 1.0}


def test_query_and_document_share_term_ids() -> None:
    encoder = BM25Encoder()
    [doc] = encoder.encode_documents(["Quota error ERR_QUOTA_7731 when the budget runs out"])
    query = encoder.encode_query("what does err_quota_7731 mean")
    assert set(query.indices) <= set(doc.indices) | {term_id("does"), term_id("mean")}
    assert term_id("err_quota_7731") in set(query.indices) & set(doc.indices)


def test_empty_texts_give_empty_vectors() -> None:
    assert BM25Encoder().encode_documents(["", "  ...  ", "the"]) == [SparseVector((), ())] * 3
    assert BM25Encoder().encode_documents([]) == []


@pytest.mark.parametrize(
    ("setting", "value"), [("k1", -0.1), ("b", 1.5), ("b", -0.1), ("avg_doc_length", 0.0)]
)
def test_bad_settings_name_the_field(setting: str, value: float) -> None:
    with pytest.raises(InvalidInputError) as info:
        BM25Encoder(**{setting: value})
    assert info.value.details["field"] == setting


def test_a_single_string_is_refused_as_a_batch() -> None:
    with pytest.raises(InvalidInputError) as info:
        BM25Encoder().encode_documents("one text")
    assert info.value.details["field"] == "texts"
