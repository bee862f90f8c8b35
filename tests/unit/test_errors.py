"""The error tree carries HTTP statuses and the JSON error shape."""

import pytest

from opsloop import errors


@pytest.mark.parametrize(
    ("cls", "status", "kind"),
    [
        (errors.BadRequestError, 400, "bad_request"),
        (errors.UnauthorizedError, 401, "unauthorized"),
        (errors.ForbiddenError, 403, "forbidden"),
        (errors.NotFoundError, 404, "not_found"),
        (errors.ConflictError, 409, "conflict"),
        (errors.PayloadTooLargeError, 413, "payload_too_large"),
        (errors.InvalidInputError, 422, "invalid_input"),
        (errors.RateLimitedError, 429, "rate_limited"),
        (errors.BackendError, 502, "backend_error"),
    ],
)
def test_each_error_has_its_status_and_shape(cls: type[errors.OpsloopError], status: int, kind: str) -> None:
    error = cls("it broke", field="x")
    assert isinstance(error, errors.OpsloopError)
    assert error.status == status
    assert error.to_dict() == {"error": {"type": kind, "message": "it broke", "details": {"field": "x"}}}
