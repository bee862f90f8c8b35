"""Who uses the console: an API key kept in an HttpOnly cookie, and CSRF tokens bound to it.

Logging in checks the key exactly as ``Authorization: Bearer`` does and keeps it in a
``SameSite=Strict``, ``HttpOnly`` cookie, so every page and action authenticates it again
(a revoked key ends its sessions at once, a role change shows on the next click). Forms carry
a token derived from the key (an HMAC keyed with it): a page of another site cannot know it, and
no server-side secret or session table is needed, so replicas behind a load balancer agree.
The login form, which has no key yet, uses a random cookie echoed in the form instead.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from fastapi import Request
from starlette.responses import Response

from opsloop.auth import Principal
from opsloop.errors import ForbiddenError, UnauthorizedError

__all__ = [
    "SESSION_COOKIE",
    "Session",
    "check_csrf",
    "check_login_csrf",
    "csrf_for",
    "end",
    "keep_login_token",
    "login_token",
    "presented_key",
    "start",
]

SESSION_COOKIE = "opsloop_console"
LOGIN_COOKIE = "opsloop_console_login"
_PURPOSE = b"opsloop console csrf v1"
SESSION_S = 8 * 3600
"""How long a login lasts: a working day; the key's revocation ends it sooner."""


@dataclass(frozen=True)
class Session:
    """A logged-in caller and the token its forms must send back."""

    principal: Principal
    csrf: str


def csrf_for(key: str) -> str:
    """The CSRF token of a session: knowable only to who holds the key."""
    return hmac.new(key.encode(), _PURPOSE, hashlib.sha256).hexdigest()


def _cookie(response: Response, name: str, value: str, request: Request, max_age: int | None) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def start(response: Response, request: Request, key: str) -> None:
    """Keep ``key`` (already authenticated) in the session cookie."""
    _cookie(response, SESSION_COOKIE, key, request, SESSION_S)
    response.delete_cookie(LOGIN_COOKIE, path="/ui")


def end(response: Response) -> None:
    """Forget the session."""
    response.delete_cookie(SESSION_COOKIE, path="/ui")


def login_token(request: Request) -> str:
    """The login form's token: the browser's login cookie, or a new one."""
    token = request.cookies.get(LOGIN_COOKIE, "")
    return token if len(token) == 43 else secrets.token_urlsafe(32)


def keep_login_token(response: Response, request: Request, token: str) -> None:
    """Set the login cookie that the form's token must equal."""
    _cookie(response, LOGIN_COOKIE, token, request, None)


def check_login_csrf(request: Request, sent: str) -> None:
    """Refuse a login form that did not come from this console's login page."""
    _check_origin(request)
    expected = request.cookies.get(LOGIN_COOKIE, "")
    if not expected or not hmac.compare_digest(expected.encode(), sent.encode()):
        raise ForbiddenError(
            "the login form expired or came from another site; reload the page and try again"
        )


def check_csrf(request: Request, key: str, sent: str) -> None:
    """Refuse an action whose form was not served by this console to this session.

    Raises:
        ForbiddenError: The token is missing or wrong, or the request names another origin.
    """
    _check_origin(request)
    if not hmac.compare_digest(csrf_for(key).encode(), sent.encode()):
        raise ForbiddenError("the form's CSRF token is missing or wrong; reload the page and try again")


def _check_origin(request: Request) -> None:
    # Browsers send Origin on POSTs; one naming another site is refused even with a token.
    origin = request.headers.get("origin")
    if origin and origin != "null" and origin.rstrip("/") != f"{request.url.scheme}://{request.url.netloc}":
        raise ForbiddenError(f"cross-site request from {origin} refused")


def presented_key(request: Request) -> str:
    """The session's key.

    Raises:
        UnauthorizedError: No session cookie.
    """
    key = request.cookies.get(SESSION_COOKIE)
    if not key:
        raise UnauthorizedError("not logged in")
    return key
