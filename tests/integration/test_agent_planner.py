"""The offline planner on requests it was not tuned on: the labelled held-out half and a blind set."""

from __future__ import annotations

import pytest

from agents.planning.evaluate import evaluate
from rag.embedder import SentenceTransformerEmbedder


@pytest.mark.parametrize("split", ["held_out", "blind"])
def test_the_planner_reads_unseen_requests(split: str) -> None:
    report = evaluate(split, SentenceTransformerEmbedder())
    assert report["requests"] >= 130
    assert report["intent_accuracy"] >= 0.95, report["misses"]
    assert report["slot_exact_match"] >= 0.90, report["misses"]
