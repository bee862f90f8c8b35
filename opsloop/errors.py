"""The opsloop exception tree; every error a client can see carries its HTTP status.

    OpsloopError                 500 internal_error
    ├── ConfigError              500 config_error       bad or missing setting
    ├── BadRequestError          400 bad_request        malformed request (e.g. JSON)
    ├── UnauthorizedError        401 unauthorized       missing, unknown or revoked key
    ├── ForbiddenError           403 forbidden          key's role is too low
    ├── NotFoundError            404 not_found          unknown model, key, alias ...
    ├── ConflictError            409 conflict           already exists, concurrent change
    ├── PayloadTooLargeError     413 payload_too_large  body above the configured limit
    ├── InvalidInputError        422 invalid_input      well-formed but wrong values
    ├── RateLimitedError         429 rate_limited       a rate limit or budget is used up
    │   └── BudgetExceededError  (opsloop.budgets)      names the budget and when it resets
    └── BackendError             502 backend_error      a dependency (MLflow, DB, an LLM) failed
        └── OverloadedError      503 backend_overloaded an LLM backend or route is too busy now

Third-party errors are translated into the most specific of these at the boundary
where they occur, chained with ``raise ... from exc``; serving maps them to the JSON
error shape ``{"error": {"type", "message", "details"}}``.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "BackendError",
    "BadRequestError",
    "ConfigError",
    "ConflictError",
    "ForbiddenError",
    "InvalidInputError",
    "NotFoundError",
    "OpsloopError",
    "OverloadedError",
    "PayloadTooLargeError",
    "RateLimitedError",
    "UnauthorizedError",
]


class OpsloopError(Exception):
    """Base of every opsloop error; ``status`` and ``type`` say how clients see it."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "internal_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        """Return the body of the JSON error response."""
        return {"error": {"type": self.type, "message": self.message, "details": self.details}}


class ConfigError(OpsloopError):
    """A setting is missing or invalid."""

    type = "config_error"


class BadRequestError(OpsloopError):
    """The request could not be parsed."""

    status = 400
    type = "bad_request"


class UnauthorizedError(OpsloopError):
    """No key, or a key that is unknown or revoked."""

    status = 401
    type = "unauthorized"


class ForbiddenError(OpsloopError):
    """The key is valid but its role does not allow the action."""

    status = 403
    type = "forbidden"


class NotFoundError(OpsloopError):
    """The named resource does not exist."""

    status = 404
    type = "not_found"


class ConflictError(OpsloopError):
    """The resource already exists or changed underneath the caller."""

    status = 409
    type = "conflict"


class PayloadTooLargeError(OpsloopError):
    """The request body is larger than the configured maximum."""

    status = 413
    type = "payload_too_large"


class InvalidInputError(OpsloopError):
    """The request is well-formed but a value is wrong; ``details`` names the field."""

    status = 422
    type = "invalid_input"


class RateLimitedError(OpsloopError):
    """A rate limit or budget is used up; ``details["retry_after_s"]`` says when to retry."""

    status = 429
    type = "rate_limited"


class BackendError(OpsloopError):
    """A dependency (tracking server, database, LLM backend) failed."""

    status = 502
    type = "backend_error"


class OverloadedError(BackendError):
    """A backend, or every backend of a route, is too busy to take the request now.

    llama.cpp raises it past ``max_queue`` waiting requests, at once rather than piling up
    latency; the router when every backend of a route stayed at its ``max_concurrency`` for
    the route's ``queue_timeout_s``. A router tries another backend; a client may retry.
    """

    status = 503
    type = "backend_overloaded"
