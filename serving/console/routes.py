"""The console's routes under ``/ui``: log in, the pages, and the actions their forms post.

Every page reads the same services as the API with the logged-in key as the caller, so the
console may show and do exactly what that key may through the API: the server refuses the
rest whatever a browser sends. Actions are plain form posts (CSRF-checked) answered with a
redirect back to the page, so a reload never repeats one. Errors are pages, not JSON: an
expired or revoked key goes back to the login form, a refused action shows why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Depends, Form, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from starlette.responses import RedirectResponse, Response

from opsloop.auth import Role
from opsloop.errors import OpsloopError, UnauthorizedError
from serving.console import pages, session
from serving.console.session import Session
from serving.deps import PlatformDep

__all__ = ["SessionDep", "auth", "checked", "console_router", "render", "templates"]

log = logging.getLogger("opsloop.console")

_HERE = Path(__file__).parent
templates = Jinja2Templates(directory=_HERE / "templates")
templates.env.filters["when"] = pages.when
templates.env.filters["number"] = pages.number

PAGES: tuple[tuple[str, str, Role], ...] = (
    ("chat", "Chat ops", Role.VIEWER),
    ("models", "Models", Role.VIEWER),
    ("experiments", "Experiments", Role.VIEWER),
    ("drift", "Drift", Role.OPERATOR),
    ("costs", "Costs", Role.OPERATOR),
    ("evals", "Evals", Role.OPERATOR),
    ("audit", "Audit", Role.ADMIN),
)

# Nothing from another origin, no inline script; inline styles carry chart colours and meter widths.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:;"
        " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}


class ConsoleRoute(APIRoute):
    """A console route: a missing or dead session goes to the login page, other errors render a page."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except UnauthorizedError:
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                response: Response = RedirectResponse(f"/ui/login?next={quote(target)}", status_code=303)
                session.end(response)
                return response
            except OpsloopError as exc:
                return render(request, None, "error.html", {"title": exc.message}, status=exc.status)
            except RequestValidationError as exc:
                fields = ", ".join(str(e["loc"][-1]) for e in exc.errors())
                return render(
                    request, None, "error.html", {"title": f"incomplete form: {fields}"}, status=400
                )

        return guarded


def console_router() -> APIRouter:
    """A router of console pages: under ``/ui``, errors as pages, not in the OpenAPI schema."""
    return APIRouter(prefix="/ui", route_class=ConsoleRoute, include_in_schema=False)


auth = console_router()
"""Logging in and out."""


async def current(request: Request, platform: PlatformDep) -> Session:
    """The logged-in caller, authenticated again on every request."""
    key = session.presented_key(request)
    return Session(platform.keys.authenticate(key), session.csrf_for(key))


SessionDep = Annotated[Session, Depends(current)]
Csrf = Annotated[str, Form(max_length=128)]


def checked(request: Request, sent: str) -> None:
    """Refuse a form post that this console did not serve to this session."""
    session.check_csrf(request, session.presented_key(request), sent)


def render(
    request: Request,
    caller: Session | None,
    template: str,
    context: dict[str, Any],
    *,
    page: str = "",
    status: int = 200,
) -> Response:
    """A page of the console, with the navigation the caller's role may use."""
    allowed = [
        (slug, name) for slug, name, role in PAGES if caller is not None and caller.principal.role >= role
    ]
    response = templates.TemplateResponse(
        request,
        template,
        {
            "session": caller,
            "pages": allowed,
            "page": page,
            "is_admin": caller is not None and caller.principal.role >= Role.ADMIN,
            **context,
        },
        status_code=status,
    )
    response.headers.update(_HEADERS)
    return response


def back(path: str, **query: str) -> RedirectResponse:
    """Answer an action with a redirect to the page (post/redirect/get)."""
    suffix = "&".join(f"{k}={quote(v)}" for k, v in query.items() if v)
    return RedirectResponse(path + (f"?{suffix}" if suffix else ""), status_code=303)


def _local_path(next_path: str) -> str:
    """Where to go after logging in: a console page only (never another host)."""
    parts = urlsplit(next_path)
    if parts.scheme or parts.netloc or not parts.path.startswith("/ui") or "\\" in next_path:
        return "/ui/"
    return next_path


@auth.get("/login")
async def login_page(request: Request, next: str = "/ui/") -> Response:
    """The login form."""
    token = session.login_token(request)
    context = {"title": "Log in", "next": _local_path(next), "login_csrf": token}
    response = render(request, None, "login.html", context)
    session.keep_login_token(response, request, token)
    return response


@auth.post("/login")
async def login(
    request: Request,
    platform: PlatformDep,
    key: Annotated[str, Form(max_length=256)],
    csrf: Csrf,
    next: Annotated[str, Form(max_length=2048)] = "/ui/",
) -> Response:
    """Check the key as the API would and keep it in the session cookie."""
    session.check_login_csrf(request, csrf)
    key = key.strip()
    try:
        principal = platform.keys.authenticate(key)
    except UnauthorizedError as exc:
        context = {"title": "Log in", "next": _local_path(next), "error": exc.message, "login_csrf": csrf}
        return render(request, None, "login.html", context, status=401)
    log.info("console login by %s (tenant %s, %s)", principal.key_id, principal.tenant, principal.role)
    response = back(_local_path(next))
    session.start(response, request, key)
    return response


@auth.post("/logout")
async def logout(request: Request, caller: SessionDep, csrf: Csrf) -> Response:
    """End the session."""
    checked(request, csrf)
    response = back("/ui/login")
    session.end(response)
    return response


@auth.get("/")
async def home(caller: SessionDep) -> Response:
    """The console starts at chat ops."""
    return back("/ui/chat")
