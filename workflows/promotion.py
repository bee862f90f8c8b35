"""Moving a model's ``champion`` alias: promote a version, roll back to the one before.

Every move is audited with the version before and after; rollback reads that trail to
find where to go back to, so it works across processes (a CLI rollback undoes a
promotion made through the API, and the other way round). Both take the caller
(``Principal``), who needs the operator role and is named in the audit log under their
tenant; registering the version first is :mod:`workflows.registration`.
"""

from __future__ import annotations

from dataclasses import dataclass

from opsloop.audit import AuditFilter, AuditLog
from opsloop.auth import Principal, Role
from opsloop.errors import ConflictError, NotFoundError
from opsloop.registry import Registry

__all__ = ["AliasMove", "promote", "rollback"]

CHAMPION = "champion"
_MOVES = ("model.promote", "model.rollback")


@dataclass(frozen=True)
class AliasMove:
    """One alias move: which model, from which version to which."""

    model: str
    alias: str
    before: int | None
    after: int


def _record(audit: AuditLog, action: str, move: AliasMove, caller: Principal) -> None:
    audit.append(
        actor=caller.actor,
        tenant=caller.tenant,
        action=action,
        target=f"model:{move.model}",
        before={"alias": move.alias, "version": move.before},
        after={"alias": move.alias, "version": move.after},
    )


def promote(
    caller: Principal,
    registry: Registry,
    audit: AuditLog,
    model: str,
    version: int,
    *,
    alias: str = CHAMPION,
) -> AliasMove:
    """Point ``alias`` at ``version``; serving picks it up within its poll interval.

    Raises:
        ForbiddenError: The caller is below operator.
        NotFoundError: No such model or version.
    """
    caller.require(Role.OPERATOR, f"promoting model {model!r}")
    registry.get_version(model, version)  # NotFoundError before anything moves
    before = registry.set_alias(model, alias, version)
    move = AliasMove(model, alias, before, version)
    _record(audit, "model.promote", move, caller)
    return move


def rollback(
    caller: Principal,
    registry: Registry,
    audit: AuditLog,
    model: str,
    *,
    alias: str = CHAMPION,
) -> AliasMove:
    """Point ``alias`` back at the version it held before its last move.

    Raises:
        ForbiddenError: The caller is below operator.
        NotFoundError: The alias is not set.
        ConflictError: No earlier version is on record.
    """
    caller.require(Role.OPERATOR, f"rolling back model {model!r}")
    current = registry.get_alias(model, alias).version
    moves = [
        entry
        for entry in audit.query(AuditFilter(target=f"model:{model}", limit=1000))
        if entry.action in _MOVES and (entry.after or {}).get("alias") == alias
    ]
    last = next((m for m in moves if (m.after or {}).get("version") == current), None)
    previous = (last.before or {}).get("version") if last is not None else None
    if previous is None:
        raise ConflictError(
            f"model {model!r} has no earlier {alias} on record to roll back to", model=model, alias=alias
        )
    try:
        registry.set_alias(model, alias, previous)
    except NotFoundError as exc:
        raise ConflictError(
            f"the previous {alias}, version {previous}, no longer exists", model=model
        ) from exc
    move = AliasMove(model, alias, current, int(previous))
    _record(audit, "model.rollback", move, caller)
    return move
