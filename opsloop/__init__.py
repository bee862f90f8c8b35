"""opsloop's kernel: settings, relational store, auth, audit, registry facade, telemetry.

Everything above (workflows, rag, evals, agents, serving) builds on these; nothing
here imports from those layers.

The names below load on first use (PEP 562 ``__getattr__``): importing any
``opsloop.*`` module runs this file first, and an eager import of the store here
would make ``opsloop --help`` and every ``from opsloop.errors import ...`` pay for
SQLAlchemy, pydantic-settings and prometheus-client.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opsloop.audit import AuditEntry, AuditFilter, AuditLog
    from opsloop.auth import KeyInfo, KeyStore, NewKey, Principal, Role
    from opsloop.db import Database
    from opsloop.errors import (
        BackendError,
        BadRequestError,
        ConfigError,
        ConflictError,
        ForbiddenError,
        InvalidInputError,
        NotFoundError,
        OpsloopError,
        PayloadTooLargeError,
        RateLimitedError,
        UnauthorizedError,
    )
    from opsloop.settings import Settings, load_settings
    from opsloop.telemetry import Metrics

_EXPORTS = {
    "opsloop.audit": ("AuditEntry", "AuditFilter", "AuditLog"),
    "opsloop.auth": ("KeyInfo", "KeyStore", "NewKey", "Principal", "Role"),
    "opsloop.db": ("Database",),
    "opsloop.errors": (
        "BackendError",
        "BadRequestError",
        "ConfigError",
        "ConflictError",
        "ForbiddenError",
        "InvalidInputError",
        "NotFoundError",
        "OpsloopError",
        "PayloadTooLargeError",
        "RateLimitedError",
        "UnauthorizedError",
    ),
    "opsloop.settings": ("Settings", "load_settings"),
    "opsloop.telemetry": ("Metrics",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "AuditEntry",
    "AuditFilter",
    "AuditLog",
    "BackendError",
    "BadRequestError",
    "ConfigError",
    "ConflictError",
    "Database",
    "ForbiddenError",
    "InvalidInputError",
    "KeyInfo",
    "KeyStore",
    "Metrics",
    "NewKey",
    "NotFoundError",
    "OpsloopError",
    "PayloadTooLargeError",
    "Principal",
    "RateLimitedError",
    "Role",
    "Settings",
    "UnauthorizedError",
    "load_settings",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'opsloop' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
