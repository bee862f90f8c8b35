"""Chat ops in the console: threads, each reply's plan and outcomes, and approvals beside their evidence.

A thin adapter over :class:`agents.service.ChatService`, like ``POST /chat``: the agent acts as
the logged-in key, and approving needs an operator or admin (the service refuses anyone else,
whatever the browser sends).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Form, Query, Request
from starlette.responses import Response

from agents.registry import approver_role
from agents.service import MAX_MESSAGE_CHARS, ChatService
from opsloop.auth import Role
from opsloop.errors import OpsloopError
from serving.console.routes import Csrf, SessionDep, back, checked, console_router, render
from serving.console.session import Session

__all__ = ["router"]

router = console_router()

ThreadField = Annotated[str, Form(max_length=64, pattern=r"^[A-Za-z0-9_-]*$")]


async def _service(request: Request) -> ChatService:
    service: ChatService = await request.app.state.chat.get()
    return service


def _evidence(plan: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The steps that ran before the one waiting: what the approver decides on."""
    if not plan:
        return []
    return [step for step in plan["steps"] if step["status"] != "planned"]


@router.get("/chat")
async def chat_page(
    request: Request,
    caller: SessionDep,
    thread: Annotated[str, Query(max_length=64, pattern=r"^[A-Za-z0-9_-]*$")] = "",
) -> Response:
    """The caller's tenant's threads, and one thread with its plan, outcomes and pending approval."""
    return await _page(request, caller, thread)


async def _page(
    request: Request, caller: Session, thread: str, error: str = "", status: int = 200
) -> Response:
    service = await _service(request)
    threads = await service.threads(caller.principal)
    view = None
    if thread:
        try:
            view = await service.thread(caller.principal, thread)
        except OpsloopError as exc:
            error = exc.message
    approver = approver_role(view.pending["action"]) if view and view.pending else Role.OPERATOR
    context = {
        "title": "Chat ops",
        "threads": threads,
        "thread": view,
        "evidence": _evidence(view.plan) if view and view.pending else [],
        "can_approve": caller.principal.role >= approver,
        "approver_role": str(approver),
        "max_chars": MAX_MESSAGE_CHARS,
        "error": error,
    }
    return render(request, caller, "chat.html", context, page="chat", status=status)


@router.post("/chat")
async def send(
    request: Request,
    caller: SessionDep,
    csrf: Csrf,
    message: Annotated[str, Form(max_length=MAX_MESSAGE_CHARS)],
    thread: ThreadField = "",
) -> Response:
    """Ask the ops assistant; back to the thread with its answer."""
    checked(request, csrf)
    service = await _service(request)
    try:
        reply = await service.chat(caller.principal, message, thread or None)
    except OpsloopError as exc:
        return await _page(request, caller, thread, exc.message, exc.status)
    return back("/ui/chat", thread=reply.thread_id)


@router.post("/chat/{thread_id}/decision")
async def decide(
    request: Request,
    thread_id: str,
    caller: SessionDep,
    csrf: Csrf,
    decision: Annotated[str, Form(pattern="^(approve|deny)$")],
    comment: Annotated[str, Form(max_length=1000)] = "",
) -> Response:
    """Approve or deny the action the thread waits for (operators and admins)."""
    checked(request, csrf)
    service = await _service(request)
    await service.approve(caller.principal, thread_id, decision == "approve", comment or None)
    return back("/ui/chat", thread=thread_id)
