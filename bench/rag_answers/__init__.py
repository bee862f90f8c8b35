"""``python -m bench.rag_answers``: how well RAG answers the labelled questions about ``docs/``.

:mod:`bench.rag_answers.run` asks every question of ``evals/datasets/docs_golden.jsonl`` the way
a user's ``opsloop serve`` answers ``POST /query`` (the bundled docs in collection ``docs``, the
real SmolLM2-135M through the gateway, MiniLM retrieval) and reports the share of answers with a
valid citation, the semantic similarity to the reference (the eval runner's metric), the share of
generated texts that repeat themselves, the answer modes and the latency.
"""

from __future__ import annotations
