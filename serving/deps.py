"""FastAPI dependencies as ``Annotated`` aliases: the services a route calls and the caller's role.

Routes take the service they call (``ModelsDep``, ``RagDep``, ...) rather than the whole
``Platform``, so each route shows what it depends on.

Besides API keys, a server accepts its own ``Platform.local_token``: the CLI on the same
machine reads it from the embedded store's lock file (owner-only, like ``admin.key``) and
hands its RAG work to the server that holds the store. The CLI needs no key for local state,
so this grants nothing new; it acts for the tenant in ``X-Opsloop-Tenant`` and is audited as
the ``X-Opsloop-Actor`` it names (``cli:<user>``).
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param

from evals.tasks import EvalTasks
from opsloop.auth import Principal, Role, check_tenant
from opsloop.errors import ForbiddenError, InvalidInputError
from opsloop.models.service import ModelService
from rag.service import RagService
from serving.platform import Platform
from workflows.experiments.assignment import UNIT_HEADER

__all__ = [
    "LOCAL_ACTOR_HEADER",
    "LOCAL_TENANT_HEADER",
    "AdminKey",
    "EvalTasksDep",
    "ModelsDep",
    "OperatorKey",
    "PlatformDep",
    "RagDep",
    "UserKey",
    "ViewerKey",
    "authorize",
    "bearer_key",
    "request_id",
]

LOCAL_TENANT_HEADER = "X-Opsloop-Tenant"
LOCAL_ACTOR_HEADER = "X-Opsloop-Actor"

_bearer = HTTPBearer(auto_error=False, description="An opsloop API key.")


async def get_platform(request: Request) -> Platform:
    """The process's Platform, stored on the app by the factory (async: no thread-pool hop)."""
    platform: Platform = request.app.state.platform
    return platform


PlatformDep = Annotated[Platform, Depends(get_platform)]


async def get_models(platform: PlatformDep) -> ModelService:
    """The classical models' service."""
    return platform.models


async def get_rag(platform: PlatformDep) -> RagService:
    """The RAG service; built by the first request that needs it (off the event loop: it takes the store).

    Raises:
        ConflictError: Another process holds the embedded vector store.
    """
    return await run_in_threadpool(lambda: platform.rag)


async def get_eval_tasks(platform: PlatformDep) -> EvalTasks:
    """The eval runs the server runs for its callers."""
    return platform.eval_tasks


EvalTasksDep = Annotated[EvalTasks, Depends(get_eval_tasks)]
ModelsDep = Annotated[ModelService, Depends(get_models)]
RagDep = Annotated[RagService, Depends(get_rag)]


def request_id(request: Request) -> str | None:
    """The id the request middleware gave this request."""
    return getattr(request.state, "request_id", None)


def require(role: Role) -> Callable[..., Awaitable[Principal]]:
    """A dependency that authenticates the bearer key and demands at least ``role``."""

    async def dependency(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        return authorize(request, credentials.credentials if credentials else None, role)

    return dependency


def bearer_key(request: Request) -> str | None:
    """The key of the request's ``Authorization: Bearer`` header, as :data:`UserKey` reads it."""
    scheme, key = get_authorization_scheme_param(request.headers.get("Authorization"))
    return key if key and scheme.lower() == "bearer" else None


def authorize(request: Request, presented: str | None, role: Role) -> Principal:
    """The caller ``presented`` authenticates, with at least ``role``; kept on ``request.state``.

    Raises:
        UnauthorizedError: No key, or one that is unknown or revoked.
        ForbiddenError: The key's role is below ``role``.
    """
    platform: Platform = request.app.state.platform
    principal = _local(platform, presented, request) or platform.keys.authenticate(presented)
    if principal.role < role:
        raise ForbiddenError(
            f"this action needs role '{role}' or higher; key {principal.key_id} has '{principal.role}'",
            required=str(role),
            role=str(principal.role),
        )
    request.state.principal = principal
    return principal


def _local(platform: Platform, presented: str | None, request: Request) -> Principal | None:
    """The CLI acting through this server, when it presents the server's own token."""
    token = platform.local_token
    # As bytes: compare_digest refuses str with non-ASCII characters, which a client may send.
    if token is None or presented is None or not hmac.compare_digest(presented.encode(), token.encode()):
        return None
    tenant = check_tenant(request.headers.get(LOCAL_TENANT_HEADER, ""))
    actor = request.headers.get(LOCAL_ACTOR_HEADER, "cli")
    if not actor.startswith("cli") or len(actor) > 64 or not actor.isprintable():
        raise InvalidInputError("the local actor must be 'cli' or 'cli:<user>'", field=LOCAL_ACTOR_HEADER)
    return Principal(actor, tenant, Role.ADMIN)


ViewerKey = Annotated[Principal, Depends(require(Role.VIEWER))]
UserKey = Annotated[Principal, Depends(require(Role.USER))]
OperatorKey = Annotated[Principal, Depends(require(Role.OPERATOR))]
AdminKey = Annotated[Principal, Depends(require(Role.ADMIN))]

VARIANT_HEADER = "X-Opsloop-Variant"
UNIT_MAX_LENGTH = 256
Unit = Annotated[
    str | None,
    Header(
        alias=UNIT_HEADER,
        max_length=UNIT_MAX_LENGTH,
        description="Who the request is for, in an experiment: the same unit always gets the same "
        "variant (default: the API key).",
    ),
]
"""The experiment unit a request names, for the routes an experiment may split."""
