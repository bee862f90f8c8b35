"""How well the offline planner reads requests: intent accuracy and slot exact-match per workflow.

Slot exact-match is over the requests of a workflow that were classified right (a wrong
workflow reads other slots): the slots read equal the labelled ones, no more and no fewer.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from agents.plan import WORKFLOWS
from agents.planning.intents import BLIND_FILE, REQUESTS_FILE, labelled_requests
from agents.planning.offline import LABELLED_CATALOG, OfflinePlanner
from agents.planning.slots import extract_slots, mask_names
from rag.embedder import Embedder

__all__ = ["evaluate"]


def evaluate(split: str = "held_out", embedder: Embedder | None = None) -> dict[str, Any]:
    """The report of the planner on ``split`` (``held_out``, ``tune`` or ``blind``)."""
    from rag.embedder import SentenceTransformerEmbedder

    path = BLIND_FILE if split == "blind" else REQUESTS_FILE
    requests = [r for r in labelled_requests(path) if r.split == split]
    planner = OfflinePlanner(embedder or SentenceTransformerEmbedder())
    intents = planner.classifier.classify_many([mask_names(r.text, LABELLED_CATALOG) for r in requests])
    rows: dict[str, dict[str, int]] = defaultdict(
        lambda: {"requests": 0, "intent": 0, "slotted": 0, "slots": 0}
    )
    misses = []
    for request, intent in zip(requests, intents, strict=True):
        row = rows[request.workflow]
        row["requests"] += 1
        if intent.workflow != request.workflow:
            misses.append(f"intent: {request.text!r} is {request.workflow}, read as {intent.workflow}")
            continue
        row["intent"] += 1
        if request.workflow in WORKFLOWS:
            found = extract_slots(request.text, LABELLED_CATALOG, WORKFLOWS[request.workflow].slots).slots
            row["slotted"] += 1
            if found == request.slots:
                row["slots"] += 1
            else:
                misses.append(f"slots: {request.text!r} has {request.slots}, read {found}")
    total = {k: sum(r[k] for r in rows.values()) for k in ("requests", "intent", "slotted", "slots")}
    return {
        "split": split,
        "requests": total["requests"],
        "intent_accuracy": total["intent"] / total["requests"],
        "slot_exact_match": total["slots"] / total["slotted"] if total["slotted"] else None,
        "workflows": {
            name: {
                "requests": r["requests"],
                "intent_accuracy": r["intent"] / r["requests"],
                "slot_exact_match": r["slots"] / r["slotted"] if r["slotted"] else None,
            }
            for name, r in sorted(rows.items())
        },
        "misses": misses,
    }
