"""opsloop's kernel: settings, relational store, auth, audit, registry facade, telemetry.

Everything above (workflows, rag, evals, agents, serving) builds on these; nothing
here imports from those layers.
"""

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
