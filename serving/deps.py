"""FastAPI dependencies as ``Annotated`` aliases: the platform and the caller's role."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from opsloop.auth import Principal, Role
from opsloop.errors import ForbiddenError
from serving.platform import Platform

__all__ = ["AdminKey", "OperatorKey", "PlatformDep", "UserKey", "ViewerKey", "request_id"]

_bearer = HTTPBearer(auto_error=False, description="An opsloop API key.")


async def get_platform(request: Request) -> Platform:
    """The process's Platform, stored on the app by the factory (async: no thread-pool hop)."""
    platform: Platform = request.app.state.platform
    return platform


PlatformDep = Annotated[Platform, Depends(get_platform)]


def request_id(request: Request) -> str | None:
    """The id the request middleware gave this request."""
    return getattr(request.state, "request_id", None)


def require(role: Role) -> Callable[..., Awaitable[Principal]]:
    """A dependency that authenticates the bearer key and demands at least ``role``."""

    async def dependency(
        request: Request,
        platform: PlatformDep,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        principal = platform.keys.authenticate(credentials.credentials if credentials else None)
        if principal.role < role:
            raise ForbiddenError(
                f"this action needs role '{role}' or higher; key {principal.key_id} has '{principal.role}'",
                required=str(role),
                role=str(principal.role),
            )
        request.state.principal = principal
        return principal

    return dependency


ViewerKey = Annotated[Principal, Depends(require(Role.VIEWER))]
UserKey = Annotated[Principal, Depends(require(Role.USER))]
OperatorKey = Annotated[Principal, Depends(require(Role.OPERATOR))]
AdminKey = Annotated[Principal, Depends(require(Role.ADMIN))]
