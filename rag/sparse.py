r"""BM25-style sparse vectors for keyword search, without a vocabulary to store.

The BM25 score of a document ``d`` for a query ``q`` is::

    sum over terms t in q:  idf(t) * tf(t, d) * (k1 + 1) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl))

The store computes ``idf(t)`` itself at search time (both Qdrant backends create the sparse
vector with the IDF modifier, over the collection as it is then), so this module only produces
the other factor:

* ``encode_documents`` gives each distinct term of a text its saturated term frequency, the
  fraction above. ``avgdl`` is a fixed setting rather than the corpus mean: a corpus mean would
  change whenever a file is added and force every stored vector to be rewritten. Chunks are cut
  to a bounded size, so a fixed value near their typical length is close to the true mean.
* ``encode_query`` gives each distinct query term weight 1.0, so the dot product is the sum
  above.

Tokens are lower-cased Unicode word runs (``\w+``: letters, digits, underscore), so error codes
such as ``E4012`` or ``ERR_QUOTA_7731`` stay one token. Term ids are the first four bytes of the
token's BLAKE2b digest: stable across processes and machines (unlike ``hash()``), in the
``[0, 2**32)`` range stores accept, and no vocabulary has to be kept in sync with the
collection. Two tokens sharing an id (about one pair in 2**32 / vocabulary) are counted as one
term, which at worst blurs the score of that pair.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Sequence

from opsloop.errors import InvalidInputError
from rag.stores.protocol import SparseVector

__all__ = ["ENGLISH_STOP_WORDS", "BM25Encoder", "term_id", "tokenize"]

_WORD = re.compile(r"\w+")

ENGLISH_STOP_WORDS: frozenset[str] = frozenset(
    (
        "a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "has", "have", "how", "i", "if",
        "in", "into", "is", "it", "its", "of", "on", "or", "that", "the", "their", "then", "there",
        "these", "this", "to", "was", "were", "what", "when", "where", "which", "who", "why", "will",
        "with", "you", "your",
    )
)  # fmt: skip
"""Function words that carry no topic; short on purpose, since the store's IDF already discounts
frequent terms and a long list starts removing words that matter ("not", "off", "up")."""


def tokenize(text: str, *, stop_words: Iterable[str] = ()) -> list[str]:
    r"""Lower-cased ``\w+`` tokens of ``text`` in order, without those in ``stop_words``."""
    stops = frozenset(stop_words)
    return [token for token in _WORD.findall(text.lower()) if token not in stops]


def term_id(token: str) -> int:
    """The stable sparse index of ``token``: its 4-byte BLAKE2b digest as an unsigned integer."""
    return int.from_bytes(hashlib.blake2b(token.encode("utf-8"), digest_size=4).digest(), "little")


class BM25Encoder:
    """Texts to BM25 term-frequency sparse vectors; queries to binary term vectors.

    Args:
        k1: Term-frequency saturation: how quickly repeating a term stops adding score; >= 0.
        b: Length normalisation, 0 (none) to 1 (full).
        avg_doc_length: The assumed mean document length in tokens (after stop words); > 0.
            The default suits chunks of about 256 model tokens.
        stop_words: Drop ``ENGLISH_STOP_WORDS`` from documents and queries.

    Raises:
        InvalidInputError: A setting is out of range; ``details["field"]`` names it.
    """

    def __init__(
        self, *, k1: float = 1.2, b: float = 0.75, avg_doc_length: float = 120.0, stop_words: bool = True
    ) -> None:
        if not k1 >= 0:
            raise InvalidInputError("k1 must be at least 0", field="k1", value=k1)
        if not 0 <= b <= 1:
            raise InvalidInputError("b must be in [0, 1]", field="b", value=b)
        if not avg_doc_length > 0:
            raise InvalidInputError(
                "avg_doc_length must be above 0", field="avg_doc_length", value=avg_doc_length
            )
        self.k1 = float(k1)
        self.b = float(b)
        self.avg_doc_length = float(avg_doc_length)
        self.stop_words: frozenset[str] = ENGLISH_STOP_WORDS if stop_words else frozenset()

    def encode_documents(self, texts: Sequence[str]) -> list[SparseVector]:
        """One vector per text: each distinct term weighted by its saturated term frequency."""
        if isinstance(texts, str):
            raise InvalidInputError("encode_documents takes a list of texts, not one string", field="texts")
        return [self._encode_document(text) for text in texts]

    def encode_query(self, text: str) -> SparseVector:
        """Each distinct query term with weight 1.0 (the store multiplies in the IDF)."""
        if not isinstance(text, str):
            raise InvalidInputError("query must be a string", field="query", type=type(text).__name__)
        ids = sorted({term_id(token) for token in tokenize(text, stop_words=self.stop_words)})
        return SparseVector(ids, [1.0] * len(ids))

    def _encode_document(self, text: str) -> SparseVector:
        tokens = tokenize(text, stop_words=self.stop_words)
        if not tokens:
            return SparseVector((), ())
        counts = Counter(term_id(token) for token in tokens)
        norm = self.k1 * (1.0 - self.b + self.b * len(tokens) / self.avg_doc_length)
        ids = sorted(counts)
        return SparseVector(ids, [counts[i] * (self.k1 + 1.0) / (counts[i] + norm) for i in ids])
