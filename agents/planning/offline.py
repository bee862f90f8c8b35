"""The offline planner (the embedded default): intent by classifier, slots by rules, plan by workflow.

SmolLM2-135M cannot call tools, so nothing here asks an LLM: a request is masked (names become
their kind), classified into a workflow or out of scope, its slots are read against the
platform's catalog, and a missing or ambiguous slot becomes a clarifying question whose answer,
the next message of the thread, completes the plan.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any, Literal

from agents.plan import WORKFLOWS, Plan
from agents.planning.intents import OUT_OF_SCOPE, IntentClassifier, example_bank, labelled_requests
from agents.planning.slots import Catalog, extract_slots, mask_names
from agents.workflows import build_plan, missing_slots
from opsloop.auth import Principal
from rag.embedder import Embedder

__all__ = [
    "LABELLED_CATALOG",
    "OfflinePlanner",
    "Planned",
    "answer_pending",
    "capabilities",
    "complete",
    "refusal",
]

LABELLED_CATALOG = Catalog(
    models=("credit-risk", "churn", "fraud-detector"),
    collections=("docs", "runbooks", "support-kb"),
    tenants=("acme", "globex", "default"),
    prompts=("rag-answer", "summarize"),
    jobs=("docs", "support"),
    routes=("smollm2", "claude-sonnet", "gpt-4o-mini"),
)
"""The names the labelled requests mention (they are masked with it before training)."""

_ASK = {
    "model": "Which model? {models}",
    "version": "Which version of {model}? Say e.g. 'version 3'.",
    "collection": "Which collection? {collections}",
    "route": "Which LLM route? {routes}",
    "prompt": "Which prompt? {prompts}",
    "prompt_version": "Which version of the prompt {prompt}? Say e.g. 'version 2'.",
    "job": "Which eval job or collection? {jobs}",
    "path": "Where is the model saved? Give the path of its MLflow model folder on the server.",
    "tenant": "Which tenant? {tenants}",
    "budget": "Which budget: daily or monthly USD or tokens, or a per-minute request (rpm) or token"
    " (tpm) limit?",
    "limit": "How much? Say e.g. '$200' or '2M tokens'.",
    "key": "Which key? Give its id (12 hex digits, as `opsloop keys list` shows).",
}


@dataclass
class Planned:
    """What the planner made of a message: a plan, a question back, or a refusal."""

    status: Literal["planned", "needs_input", "refused"]
    workflow: str | None
    slots: dict[str, Any] = field(default_factory=dict)
    plan: Plan | None = None
    reply: str = ""
    """The clarifying question or the refusal; empty for a plan."""


def capabilities() -> str:
    """What the assistant can do, one workflow per line."""
    return "\n".join(f'- {name}: {spec.summary} (e.g. "{spec.example}")' for name, spec in WORKFLOWS.items())


def _known(names: tuple[str, ...]) -> str:
    return f"Known: {', '.join(names)}." if names else "None is known yet."


class OfflinePlanner:
    """Plans requests without an LLM; the classifier is trained on first use (a few seconds).

    Args:
        embedder: MiniLM, shared with the RAG pipeline.
    """

    def __init__(self, embedder: Embedder) -> None:
        self._embedder = embedder
        self._classifier: IntentClassifier | None = None
        self._lock = threading.Lock()

    @property
    def classifier(self) -> IntentClassifier:
        """The intent classifier, trained once."""
        with self._lock:
            if self._classifier is None:
                tuned = [
                    (mask_names(r.text, LABELLED_CATALOG), r.workflow)
                    for r in labelled_requests()
                    if r.split == "tune"
                ]
                self._classifier = IntentClassifier(self._embedder, example_bank() + tuned)
            return self._classifier

    async def plan(
        self, caller: Principal, message: str, catalog: Catalog, pending: Planned | None
    ) -> Planned:
        """:meth:`plan_message` off the event loop (embedding takes milliseconds of CPU)."""
        return await asyncio.to_thread(self.plan_message, message, catalog, pending)

    def plan_message(self, message: str, catalog: Catalog, pending: Planned | None = None) -> Planned:
        """Plan ``message``; ``pending`` is the thread's unanswered question, if any."""
        answered = answer_pending(message, catalog, pending)
        if answered is not None:
            return answered
        intent = self.classifier.classify(mask_names(message, catalog))
        if intent.workflow == OUT_OF_SCOPE:
            return refusal("Sorry, that is outside what I can do here.")
        found = extract_slots(message, catalog, WORKFLOWS[intent.workflow].slots)
        return complete(intent.workflow, found.slots, found.ambiguous, catalog, message)


def refusal(lead: str) -> Planned:
    """A polite refusal that names what the assistant can do."""
    return Planned("refused", None, reply=f"{lead} I can run these operations:\n{capabilities()}")


def answer_pending(message: str, catalog: Catalog, pending: Planned | None) -> Planned | None:
    """``message`` read as the answer to the thread's question; None when it does not answer it."""
    if pending is None or pending.workflow is None:
        return None
    answer = extract_slots(message, catalog, WORKFLOWS[pending.workflow].slots)
    filled = set(answer.slots) & set(missing_slots(pending.workflow, pending.slots) or answer.slots)
    if not filled and not answer.ambiguous:
        return None
    return complete(pending.workflow, {**pending.slots, **answer.slots}, answer.ambiguous, catalog, message)


def complete(
    workflow: str, slots: dict[str, Any], ambiguous: dict[str, list[Any]], catalog: Catalog, message: str
) -> Planned:
    """The plan of ``workflow`` with ``slots``, or the question an ambiguous or missing slot raises."""
    if ambiguous:
        slot, values = next(iter(ambiguous.items()))
        choices = " or ".join(str(v) for v in values)
        return Planned(
            "needs_input", workflow, slots, reply=f"You named more than one {slot} ({choices}): which one?"
        )
    missing = missing_slots(workflow, slots)
    if missing:
        names = {
            "models": _known(catalog.models),
            "collections": _known(catalog.collections),
            "routes": _known(catalog.routes),
            "prompts": _known(catalog.prompts),
            "tenants": _known(catalog.tenants),
            "jobs": _known(catalog.jobs + catalog.collections),
            "model": slots.get("model", "the model"),
            "prompt": slots.get("prompt", ""),
        }
        question = _ASK[missing[0]].format(**names)
        lead = f"To run {workflow} ({WORKFLOWS[workflow].summary}) I need to know more. "
        return Planned("needs_input", workflow, slots, reply=lead + question)
    return Planned("planned", workflow, slots, plan=build_plan(workflow, slots, message))
