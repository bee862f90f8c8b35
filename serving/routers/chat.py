"""Chat-driven ops: ``POST /chat``, ``GET /chat/{thread_id}``, ``POST /chat/{thread_id}/approve``.

Thin adapters over :class:`agents.service.ChatService`: the agent acts as the key that calls,
so a viewer may ask for reports but anything its role may not do is refused before a step runs.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, Field

from agents.service import MAX_MESSAGE_CHARS, ChatService
from serving.deps import OperatorKey, ViewerKey

router = APIRouter(tags=["chat"])

ThreadId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


async def get_chat(request: Request) -> ChatService:
    """The process's chat service (built on the first request)."""
    return await request.app.state.chat.get()


ChatDep = Annotated[ChatService, Depends(get_chat)]


class ChatCreate(BaseModel):
    """A request in words."""

    message: str = Field(
        min_length=1,
        max_length=MAX_MESSAGE_CHARS,
        examples=["canary credit-risk version 4 at 10% and promote it if it holds"],
    )
    thread_id: str | None = Field(
        default=None,
        max_length=64,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Continue this thread (e.g. to answer its question).",
    )
    dry_run: bool = Field(default=False, description="Plan without running any step.")


class PlanPublic(BaseModel):
    """The workflow chosen, its arguments and its steps (each with its outcome)."""

    workflow: str
    agent: str
    args: dict[str, Any]
    steps: list[dict[str, Any]]


class PendingPublic(BaseModel):
    """The action waiting for approval."""

    action: str
    args: dict[str, Any]
    requested_by: str


class ChatPublic(BaseModel):
    """The answer to a chat request or an approval."""

    thread_id: str
    status: Literal["done", "pending_approval", "needs_input", "refused"]
    reply: str
    plan: PlanPublic | None
    pending: PendingPublic | None


class ApprovalCreate(BaseModel):
    """A decision on the action a thread waits for."""

    approve: bool
    comment: str | None = Field(default=None, max_length=1000)


@router.post("/chat", summary="Ask the ops assistant; risky actions pause for approval")
async def chat(body: ChatCreate, service: ChatDep, caller: ViewerKey) -> ChatPublic:
    """Plan the request into a documented workflow and run it as the caller."""
    reply = await service.chat(caller, body.message, body.thread_id, dry_run=body.dry_run)
    return ChatPublic.model_validate(asdict(reply))


@router.get("/chat/{thread_id}", summary="A chat thread: its messages, plan, approvals and status")
async def thread(thread_id: ThreadId, service: ChatDep, caller: ViewerKey) -> dict[str, Any]:
    """Only the thread's own tenant reads it."""
    return asdict(await service.thread(caller, thread_id))


@router.post("/chat/{thread_id}/approve", summary="Approve or reject the action a thread waits for")
async def approve(
    thread_id: ThreadId, body: ApprovalCreate, service: ChatDep, caller: OperatorKey
) -> ChatPublic:
    """Resume the thread (approve) or cancel its action (reject); an operator or admin decides."""
    reply = await service.approve(caller, thread_id, body.approve, body.comment)
    return ChatPublic.model_validate(asdict(reply))
