"""Chat-driven ops as one typed service: ``chat``, ``approve`` and ``thread``, each as the caller.

The HTTP routes and ``opsloop chat`` are thin adapters over :class:`ChatService`. A thread
belongs to the tenant of the key that opened it; only that tenant reads or continues it. The
agent acts as the caller (a viewer's "promote" is refused before any step runs); an action that
changes anything waits for an operator's or admin's approval, by another key when
``approver_must_differ``; the checkpointer keeps the waiting thread across restarts.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.types import Command, StateSnapshot

from agents.context import Context, Planner
from agents.graph import build
from agents.ports import Operations
from agents.registry import approver_role
from agents.replies import compose
from opsloop.auth import Principal, Role
from opsloop.errors import ConflictError, ForbiddenError, InvalidInputError, NotFoundError
from opsloop.telemetry import ChatMetrics
from opsloop.tracing import Span, Tracer

__all__ = ["ChatReply", "ChatService", "ThreadSummary", "ThreadView"]

MAX_MESSAGE_CHARS = 4000
_TENANT_KEY = "opsloop_tenant"
"""Checkpoint metadata naming the thread's tenant, so threads can be listed per tenant."""
_SCAN = 2000
"""Checkpoints read at most to list threads (a run writes about ten)."""


@dataclass(frozen=True)
class ChatReply:
    """The answer of ``POST /chat`` and of an approval."""

    thread_id: str
    status: str
    reply: str
    plan: dict[str, Any] | None
    pending: dict[str, Any] | None


@dataclass(frozen=True)
class ThreadSummary:
    """A thread in a list: its latest request and where it stands."""

    thread_id: str
    title: str
    status: str
    updated_at: str


@dataclass(frozen=True)
class ThreadView:
    """A thread's history and where it stands (``GET /chat/{thread_id}``)."""

    thread_id: str
    tenant: str
    status: str
    messages: list[dict[str, Any]]
    plan: dict[str, Any] | None
    pending: dict[str, Any] | None
    approvals: list[dict[str, Any]]


class ChatService:
    """Plans, runs and resumes chat requests on one graph and one checkpointer (one per process)."""

    def __init__(
        self,
        ops: Operations,
        planner: Planner,
        checkpointer: BaseCheckpointSaver[Any],
        *,
        limits: Mapping[str, Mapping[str, Any]],
        audit: Callable[..., None],
        metrics: ChatMetrics,
        approver_must_differ: bool = False,
        tracer: Tracer | None = None,
    ) -> None:
        self._graph = build(checkpointer)
        self._checkpointer = checkpointer
        self._tracer = tracer or Tracer(None)
        self._ops = ops
        self._planner = planner
        self._limits = limits
        self._audit = audit
        self._metrics = metrics
        self._approver_must_differ = approver_must_differ

    def _context(self, thread_id: str) -> Context:
        return Context(self._ops, self._planner, self._limits, thread_id, self._audit, self._metrics)

    @staticmethod
    def _config(thread_id: str, tenant: str | None = None) -> RunnableConfig:
        config: RunnableConfig = {"configurable": {"thread_id": thread_id}}
        if tenant is not None:
            # Kept in each checkpoint's metadata: threads() lists a tenant's threads by it.
            config["metadata"] = {_TENANT_KEY: tenant}
        return config

    async def chat(
        self, caller: Principal, message: str, thread_id: str | None = None, *, dry_run: bool = False
    ) -> ChatReply:
        """Plan ``message`` and run it until it is done or waits for approval or an answer.

        Raises:
            ForbiddenError: The caller is a viewer, or the thread is another tenant's.
            ConflictError: The thread waits for an approval.
            InvalidInputError: An empty or oversized message.
        """
        caller.require(Role.VIEWER, "chatting with the ops assistant")
        text = message.strip()
        if not text or len(text) > MAX_MESSAGE_CHARS:
            raise InvalidInputError(
                f"message must hold 1 to {MAX_MESSAGE_CHARS} characters, got {len(text)}", field="message"
            )
        thread_id = thread_id or uuid.uuid4().hex
        snapshot = await self._graph.aget_state(self._config(thread_id))
        if snapshot.values:
            self._check_tenant(caller, snapshot.values, thread_id)
            if snapshot.interrupts:
                raise ConflictError(
                    f"thread {thread_id} waits for approval of {snapshot.interrupts[0].value['action']};"
                    " approve or reject it first (POST /chat/{thread_id}/approve)",
                    thread_id=thread_id,
                )
        start = {
            "messages": [{"role": "user", "content": text, "by": caller.actor}],
            "caller": {"key_id": caller.key_id, "tenant": caller.tenant, "role": str(caller.role)},
            "message": text,
            "dry_run": dry_run,
            "status": "running",
        }
        with self._traced("agent.run", caller, thread_id, {"message": text, "dry_run": dry_run}) as traced:
            await self._graph.ainvoke(
                start, self._config(thread_id, caller.tenant), context=self._context(thread_id)
            )
            reply = await self._reply(thread_id, count=True)
            traced.end({"status": reply.status, "reply": reply.reply})
        return reply

    async def approve(
        self, caller: Principal, thread_id: str, approve: bool, comment: str | None = None
    ) -> ChatReply:
        """Resume (approve) or cancel (reject) the action the thread waits for.

        Raises:
            ForbiddenError: The caller is below operator or below the role the action needs
                (budgets and keys: admin), of another tenant, or (with ``approver_must_differ``)
                the key that asked.
            NotFoundError: No such thread.
            ConflictError: Nothing waits for approval in the thread.
        """
        caller.require(Role.OPERATOR, "approving an action asked for in chat")
        snapshot = await self._graph.aget_state(self._config(thread_id))
        if not snapshot.values:
            raise NotFoundError(f"no chat thread {thread_id!r}", thread_id=thread_id)
        self._check_tenant(caller, snapshot.values, thread_id)
        if not snapshot.interrupts:
            raise ConflictError(f"nothing in thread {thread_id} waits for approval", thread_id=thread_id)
        waiting = snapshot.interrupts[0]
        caller.require(approver_role(waiting.value["action"]), f"approving {waiting.value['action']}")
        requester = waiting.value["requested_by"]
        if self._approver_must_differ and caller.key_id == requester:
            raise ForbiddenError(
                f"{waiting.value['action']} was asked for by {requester}; another key must approve it",
                thread_id=thread_id,
            )
        decision = {"approve": approve, "by": caller.actor, "role": str(caller.role), "comment": comment}
        self._audit(
            actor=caller.actor,
            tenant=caller.tenant,
            action="chat.approve" if approve else "chat.reject",
            target=f"chat:{thread_id}",
            before=None,
            after={
                "action": waiting.value["action"],
                "args": waiting.value["args"],
                "requested_by": requester,
                "comment": comment,
            },
        )
        self._metrics.approvals.labels(waiting.value["action"], "approved" if approve else "rejected").inc()
        inputs = {"action": waiting.value["action"], "approve": approve, "comment": comment}
        with self._traced("agent.resume", caller, thread_id, inputs) as traced:
            await self._graph.ainvoke(
                Command(resume={waiting.id: decision}),
                self._config(thread_id, caller.tenant),
                context=self._context(thread_id),
            )
            reply = await self._reply(thread_id, count=True)
            traced.end({"status": reply.status, "reply": reply.reply})
        return reply

    def _traced(
        self, name: str, caller: Principal, thread_id: str, inputs: dict[str, Any]
    ) -> AbstractContextManager[Span]:
        """A trace of one run of the graph; its request id is the thread's."""
        return self._tracer.trace(
            name, "AGENT", request_id=thread_id, tenant=caller.tenant, inputs=inputs, thread_id=thread_id
        )

    async def threads(self, caller: Principal, *, limit: int = 30) -> list[ThreadSummary]:
        """The caller's tenant's threads, most recently active first, each titled by its first request."""
        caller.require(Role.VIEWER, "listing chat threads")
        latest: dict[str, str] = {}
        async for checkpoint in self._checkpointer.alist(
            None, filter={_TENANT_KEY: caller.tenant}, limit=_SCAN
        ):
            latest.setdefault(checkpoint.config["configurable"]["thread_id"], checkpoint.checkpoint["ts"])
            if len(latest) == limit:
                break
        summaries = []
        for thread_id, updated_at in latest.items():
            snapshot = await self._graph.aget_state(self._config(thread_id))
            messages = snapshot.values.get("messages", [])
            title = next((m["content"] for m in messages if m.get("role") == "user"), thread_id)
            summaries.append(ThreadSummary(thread_id, title[:120], _status(snapshot), updated_at))
        return summaries

    async def thread(self, caller: Principal, thread_id: str) -> ThreadView:
        """A thread's messages, plan, approvals and status (only its own tenant reads it).

        Raises:
            NotFoundError: No such thread.
            ForbiddenError: Another tenant's thread.
        """
        snapshot = await self._graph.aget_state(self._config(thread_id))
        if not snapshot.values:
            raise NotFoundError(f"no chat thread {thread_id!r}", thread_id=thread_id)
        self._check_tenant(caller, snapshot.values, thread_id)
        reply = await self._reply(thread_id)
        values = snapshot.values
        return ThreadView(
            thread_id,
            values["caller"]["tenant"],
            reply.status,
            list(values.get("messages", [])),
            reply.plan,
            reply.pending,
            list(values.get("approvals", [])),
        )

    @staticmethod
    def _check_tenant(caller: Principal, values: Mapping[str, Any], thread_id: str) -> None:
        owner = values["caller"]["tenant"]
        if owner != caller.tenant:
            # the same answer as a missing thread would leak that it exists; 404 hides it
            raise NotFoundError(f"no chat thread {thread_id!r}", thread_id=thread_id)

    async def _reply(self, thread_id: str, *, count: bool = False) -> ChatReply:
        snapshot = await self._graph.aget_state(self._config(thread_id))
        values = dict(snapshot.values)
        pending = dict(snapshot.interrupts[0].value) if snapshot.interrupts else None
        status = _status(snapshot)
        text = compose(values, status, pending) if pending else values.get("reply", "")
        plan = values.get("plan")
        if count:
            self._metrics.requests.labels((plan or {}).get("workflow", "none"), status).inc()
        return ChatReply(thread_id, status, text, plan, pending)


def _status(snapshot: StateSnapshot) -> str:
    """Where a thread stands: waiting for approval, or the status its last run left."""
    return "pending_approval" if snapshot.interrupts else str(snapshot.values.get("status", "done"))
