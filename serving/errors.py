"""Maps every error to the JSON shape ``{"error": {"type", "message", "details"}}``.

Under ``/v2/`` (the Open Inference Protocol) the shape is that protocol's, ``{"error": "<message>"}``.

Domain errors carry their status; framework errors (validation, unknown routes) are
translated; anything unexpected becomes a 500 that names the request id and never
shows the traceback to the client.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from opsloop.db import driver_reason
from opsloop.errors import BackendError, BadRequestError, InvalidInputError, OpsloopError

__all__ = ["install_error_handlers"]

log = logging.getLogger("opsloop.serving")

_HTTP_TYPES = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized", 403: "forbidden"}


def _json(
    request: Request, body: dict[str, Any], status: int, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The error's response; under ``/v2/`` in the Open Inference Protocol's ``{"error": "<message>"}``."""
    if request.url.path.startswith("/v2/"):
        body = {"error": body["error"]["message"]}
    return JSONResponse(body, status_code=status, headers=headers)


def _response(
    request: Request, error: OpsloopError, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return _json(request, error.to_dict(), error.status, headers)


async def _opsloop_error(request: Request, exc: OpsloopError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    if exc.status == 429 and isinstance(exc.details.get("retry_after_s"), int):
        headers = {"Retry-After": str(exc.details["retry_after_s"])}
    return _response(request, exc, headers)


_UNSUPPORTED = "not a parameter this route supports; remove it (the API docs at /docs list what it takes)"


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors: list[dict[str, Any]] = list(exc.errors())
    if any(err.get("type") == "json_invalid" for err in errors):
        ctx = errors[0].get("ctx", {})
        return _response(
            request,
            BadRequestError(
                f"request body is not valid JSON: {ctx.get('error', 'parse error')}",
                position=errors[0]["loc"][-1] if errors[0].get("loc") else None,
            ),
        )
    fields = [
        {
            "field": ".".join(str(part) for part in err["loc"] if part != "body"),
            # pydantic's "Extra inputs are not permitted" does not say what to do about it.
            "message": _UNSUPPORTED if err["type"] == "extra_forbidden" else err["msg"],
            "type": err["type"],
        }
        for err in errors
    ]
    message = "; ".join(f"{f['field'] or 'body'}: {f['message']}" for f in fields)
    return _response(request, InvalidInputError(f"invalid request: {message}", errors=fields))


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    error_type = _HTTP_TYPES.get(exc.status_code, "http_error")
    body = {"error": {"type": error_type, "message": str(exc.detail), "details": {}}}
    return _json(request, body, exc.status_code, exc.headers)


async def _database_down(request: Request, exc: OperationalError) -> JSONResponse:
    """The relational store went away under a running server: a dead backend, not a bug."""
    log.warning("the database does not answer (%s %s): %s", request.method, request.url.path, exc.orig)
    return _response(request, BackendError(f"the database does not answer: {driver_reason(exc)}"))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    request_id = getattr(request.state, "request_id", None)
    log.exception("unhandled error in %s %s (request %s)", request.method, request.url.path, request_id)
    body = {
        "error": {
            "type": "internal_error",
            "message": "internal server error; the server log has the details",
            "details": {"request_id": request_id},
        }
    }
    return _json(request, body, 500)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    app.exception_handler(OpsloopError)(_opsloop_error)
    app.exception_handler(RequestValidationError)(_validation_error)
    app.exception_handler(StarletteHTTPException)(_http_error)
    app.exception_handler(OperationalError)(_database_down)
    app.exception_handler(Exception)(_unexpected)
