"""API keys, roles and tenants.

A key reads ``olk_<id>_<secret>``. Only the SHA-256 of the whole key is stored; the
``id`` part finds the row, and the hashes are compared in constant time. Keys are
random 256-bit secrets, so a fast hash is enough (there is nothing to brute-force).

Roles are ordered: ``viewer < user < operator < admin``. Every key belongs to a tenant;
``admin`` keys manage the whole platform (keys, budgets and audit of every tenant).

The first admin key is written to its file (mode 0600) *before* its hash is stored, and the
file is removed again if storing fails: a stored hash whose only secret was lost would lock
everyone out of a fresh install.

The keys' table, :data:`api_keys`, is a Core table defined here, and the key store reads and
writes it with Core statements: ``opsloop keys list`` runs without SQLAlchemy's ORM
(:mod:`opsloop.db`). :class:`opsloop.tables.ApiKey` maps it for ORM queries.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr
from sqlalchemy import Column, Row, String, Table, insert, select, update

from opsloop.audit import AuditLog
from opsloop.db import Database, UTCDateTime, metadata, utcnow
from opsloop.errors import ConflictError, ForbiddenError, InvalidInputError, NotFoundError, UnauthorizedError
from opsloop.refreshing import RefreshAhead

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

__all__ = ["KeyInfo", "KeyStore", "NewKey", "Principal", "Role", "api_keys", "system_principal"]

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("tenant", String(64), nullable=False, index=True),
    Column("role", String(16), nullable=False),
    Column("name", String(128), nullable=False, default=""),
    Column("key_hash", String(64), nullable=False),
    Column("created_at", UTCDateTime, nullable=False, default=utcnow),
    Column("revoked_at", UTCDateTime),
)
"""One row per API key: only its SHA-256 hash is stored, never the key itself."""

_PREFIX = "olk"
_TENANT_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-_")
# Compared against when the key id is unknown, so that a miss costs what a hit costs.
_DUMMY_HASH = hashlib.sha256(b"opsloop-no-such-key").hexdigest()


class Role(IntEnum):
    """What a key may do; a higher role may do everything a lower one may."""

    VIEWER = 1
    USER = 2
    OPERATOR = 3
    ADMIN = 4

    @classmethod
    def parse(cls, name: str) -> Role:
        """Return the role called ``name``; InvalidInputError names the allowed ones."""
        try:
            return cls[name.upper()]
        except KeyError:
            allowed = ", ".join(r.name.lower() for r in cls)
            raise InvalidInputError(
                f"unknown role {name!r}; use one of {allowed}", field="role", value=name
            ) from None

    def __str__(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id, tenant and role (or a local CLI operator)."""

    key_id: str
    tenant: str
    role: Role

    @property
    def actor(self) -> str:
        """How the audit log names this caller."""
        return self.key_id

    def require(self, role: Role, action: str) -> None:
        """Refuse ``action`` unless this caller has ``role`` or higher.

        The routes gate on roles too; services check again so that every entry point (the
        CLI, the agents' tools, the console) gets the same rule.

        Raises:
            ForbiddenError: The caller's role is too low; the message names the action.
        """
        if self.role < role:
            raise ForbiddenError(
                f"{action} needs role '{role}' or higher; {self.key_id} has '{self.role}'",
                required=str(role),
                role=str(self.role),
            )

    def scope(self, tenant: str | None, what: str) -> str | None:
        """The tenant whose ``what`` this caller reads when it asks for ``tenant``.

        Admins read any tenant's (``None``: every tenant's); everyone else reads their own.

        Raises:
            ForbiddenError: A non-admin asked for another tenant's ``what``.
        """
        if self.role >= Role.ADMIN:
            return tenant
        if tenant is not None and tenant != self.tenant:
            raise ForbiddenError(
                f"only an admin key may read another tenant's {what}", tenant=tenant, role=str(self.role)
            )
        return self.tenant


def system_principal(tenant: str, actor: str = "system") -> Principal:
    """The caller of what opsloop does by itself (start-up, schedules) or the local CLI does."""
    return Principal(actor, tenant, Role.ADMIN)


@dataclass(frozen=True)
class KeyInfo:
    """A stored key, without its secret."""

    id: str
    tenant: str
    role: Role
    name: str
    created_at: datetime
    revoked_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as the API and the audit log show it."""
        return {
            "id": self.id,
            "tenant": self.tenant,
            "role": str(self.role),
            "name": self.name,
            "created_at": self.created_at.isoformat(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


@dataclass(frozen=True)
class NewKey:
    """A freshly created key; the only time the secret exists in plain form."""

    info: KeyInfo
    secret: SecretStr = field(repr=False)


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _new_secret() -> tuple[str, str]:
    """A new key's id and its whole secret, ``olk_<id>_<random>``."""
    key_id = secrets.token_hex(6)
    return key_id, f"{_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"


def _write_key_file(path: Path, secret: str) -> None:
    """Write ``secret`` to ``path``, readable by its owner only, never overwriting a file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConflictError(
            f"{path} exists, but the key store has no keys: the file holds a key of an earlier "
            f"store, which works nowhere. Move or delete {path} (keep it if that store may come "
            "back), then start again to create a new first admin key",
            path=str(path),
        ) from None
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secret + "\n")
            f.flush()
            os.fsync(f.fileno())  # on disk before the hash is stored: a crash must not lose it
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _info(row: Row[Any]) -> KeyInfo:
    return KeyInfo(row.id, row.tenant, Role.parse(row.role), row.name, row.created_at, row.revoked_at)


def check_tenant(tenant: str) -> str:
    """Return ``tenant`` if it is a valid tenant name (lowercase, digits, - and _)."""
    if not tenant or len(tenant) > 64 or not set(tenant) <= _TENANT_CHARS:
        raise InvalidInputError(
            "tenant must be 1-64 characters of a-z, 0-9, '-' and '_'", field="tenant", value=tenant
        )
    return tenant


class KeyStore:
    """Creates, lists, revokes and verifies API keys; every change is audited."""

    def __init__(self, db: Database, audit: AuditLog, *, cache_seconds: float = 2.0) -> None:
        self._db = db
        self._audit = audit
        self._rows = RefreshAhead(self._read, cache_seconds, name="opsloop-keys")

    def create(
        self, tenant: str, role: Role, *, name: str = "", actor: str, request_id: str | None = None
    ) -> NewKey:
        """Create a key for ``tenant`` with ``role``; the secret is returned only here."""
        check_tenant(tenant)
        key_id, secret = _new_secret()
        return self._store(key_id, secret, tenant, role, name=name, actor=actor, request_id=request_id)

    def _store(
        self,
        key_id: str,
        secret: str,
        tenant: str,
        role: Role,
        *,
        name: str,
        actor: str,
        request_id: str | None = None,
    ) -> NewKey:
        def add(session: Session) -> KeyInfo:
            info = KeyInfo(key_id, tenant, role, name, utcnow(), None)
            session.execute(
                insert(api_keys).values(
                    id=key_id,
                    tenant=tenant,
                    role=str(role),
                    name=name,
                    key_hash=_hash(secret),
                    created_at=info.created_at,
                )
            )
            self._audit.record(
                session,
                actor=actor,
                tenant=tenant,
                action="key.create",
                target=f"key:{key_id}",
                after=info.to_dict(),
                request_id=request_id,
            )
            return info

        return NewKey(self._db.write(add), SecretStr(secret))

    def create_first_admin(self, *, actor: str, key_file: Path | None = None) -> NewKey | None:
        """Create an admin key of tenant ``default`` if no key exists yet, else None.

        With ``key_file``, the secret is written there (mode 0600, never overwriting) before the
        key is stored, and removed again when storing fails or another process's first key won.
        Processes sharing the file's folder take turns (an ``flock`` on the folder).

        Raises:
            ConflictError: ``key_file`` exists although the store has no key: it holds the key of
                an earlier store, which works nowhere. Nothing is stored; the message says what to do.
        """
        if key_file is None:
            return self._first_admin(actor, None)
        folder = os.open(key_file.parent, os.O_RDONLY)
        try:
            fcntl.flock(folder, fcntl.LOCK_EX)  # released when the descriptor closes
            return self._first_admin(actor, key_file)
        finally:
            os.close(folder)

    def _first_admin(self, actor: str, key_file: Path | None) -> NewKey | None:
        if self._has_keys():
            return None
        key_id, secret = _new_secret()
        if key_file is not None:
            _write_key_file(key_file, secret)
        try:
            key = self._store(key_id, secret, "default", Role.ADMIN, name="first admin", actor=actor)
        except BaseException:
            if key_file is not None:
                key_file.unlink(missing_ok=True)
            raise
        # Two processes on one database but different homes may both have seen an empty
        # table; the earliest key wins, and the other's file goes with its revoked key.
        first = self._db.rows(select(api_keys.c.id).order_by(api_keys.c.created_at, api_keys.c.id).limit(1))
        if first[0].id != key.info.id:
            self.revoke(key.info.id, actor=actor)
            if key_file is not None:
                key_file.unlink(missing_ok=True)
            return None
        return key

    def _has_keys(self) -> bool:
        return bool(self._db.rows(select(api_keys.c.id).limit(1)))

    def list(self, *, tenant: str | None = None, include_revoked: bool = False) -> list[KeyInfo]:
        """Keys, oldest first, optionally of one tenant."""
        query = select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
        if tenant is not None:
            query = query.where(api_keys.c.tenant == tenant)
        if not include_revoked:
            query = query.where(api_keys.c.revoked_at.is_(None))
        return [_info(row) for row in self._db.rows(query)]

    def revoke(self, key_id: str, *, actor: str, request_id: str | None = None) -> KeyInfo:
        """Revoke a key; it stops working at once here and within the cache time elsewhere."""

        def mark(session: Session) -> KeyInfo:
            row = session.execute(select(api_keys).where(api_keys.c.id == key_id)).one_or_none()
            if row is None:
                raise NotFoundError(f"no key with id {key_id!r}", key_id=key_id)
            if row.revoked_at is not None:
                raise ConflictError(f"key {key_id!r} is already revoked", key_id=key_id)
            before = _info(row)
            info = replace(before, revoked_at=utcnow())
            session.execute(
                update(api_keys).where(api_keys.c.id == key_id).values(revoked_at=info.revoked_at)
            )
            self._audit.record(
                session,
                actor=actor,
                tenant=info.tenant,
                action="key.revoke",
                target=f"key:{key_id}",
                before=before.to_dict(),
                after=info.to_dict(),
                request_id=request_id,
            )
            return info

        info = self._db.write(mark)
        self._rows.forget(key_id)
        return info

    def authenticate(self, presented: str | None) -> Principal:
        """Return the principal of a presented key, or raise UnauthorizedError."""
        if not presented:
            raise UnauthorizedError("missing API key: send 'Authorization: Bearer <key>'")
        parts = presented.split("_")
        key_id = parts[1] if len(parts) >= 3 and parts[0] == _PREFIX else ""
        stored_hash, principal = (self._rows.get(key_id) if key_id else None) or (_DUMMY_HASH, None)
        if not hmac.compare_digest(stored_hash, _hash(presented)) or principal is None:
            raise UnauthorizedError("invalid or revoked API key")
        return principal

    def _read(self, key_id: str) -> tuple[str, Principal | None] | None:
        """The stored hash of ``key_id`` and its principal (None once revoked); None if no such key."""
        rows = self._db.rows(select(api_keys).where(api_keys.c.id == key_id))
        if not rows:
            return None
        row = rows[0]
        principal = None if row.revoked_at else Principal(row.id, row.tenant, Role.parse(row.role))
        return row.key_hash, principal
