"""Moving a model's ``champion`` alias: promote a version, roll back to the one before, unset it.

Every move is audited with the version before and after; rollback reads that trail to
find where to go back to, so it works across processes (a CLI rollback undoes a
promotion made through the API, and the other way round). Both take the caller
(``Principal``), who needs the operator role and is named in the audit log under their
tenant; registering the version first is :mod:`workflows.registration`. Promotion loads
the version with the serving runtime's own loader first, so the alias never points at a
version that servers cannot load; unsetting the alias stops serving the model.
"""

from __future__ import annotations

from dataclasses import dataclass

from opsloop.audit import AuditFilter, AuditLog
from opsloop.auth import Principal, Role
from opsloop.errors import ConflictError, NotFoundError, OpsloopError
from opsloop.models.runtime import load_version
from opsloop.registry import Registry

__all__ = ["AliasMove", "AliasUnset", "promote", "rollback", "unset_alias"]

CHAMPION = "champion"
_MOVES = ("model.promote", "model.rollback")


@dataclass(frozen=True)
class AliasUnset:
    """An alias removed from a model, and the version it pointed at."""

    model: str
    alias: str
    before: int


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
        ConflictError: The serving runtime cannot load the version (the reason in the message).
    """
    caller.require(Role.OPERATOR, f"promoting model {model!r}")
    registry.get_version(model, version)  # NotFoundError before anything moves
    try:
        load_version(registry, model, version)
    except Exception as exc:  # a broken artifact raises anything; serving would fail the same way
        reason = exc.message if isinstance(exc, OpsloopError) else f"{type(exc).__name__}: {exc}"
        raise ConflictError(
            f"version {version} of model {model!r} cannot be served, so it was not promoted: {reason}",
            model=model,
            version=version,
        ) from exc
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


def unset_alias(
    caller: Principal,
    registry: Registry,
    audit: AuditLog,
    model: str,
    alias: str,
) -> AliasUnset:
    """Remove ``alias`` from ``model``; servers stop serving it as that alias within their poll interval.

    For ``champion`` that takes the model out of service, e.g. when no version of it can
    serve. Audited as ``model.alias_unset`` (not a move: rollback does not undo it).

    Raises:
        ForbiddenError: The caller is below operator.
        NotFoundError: No such model, or the alias is not set.
    """
    caller.require(Role.OPERATOR, f"unsetting alias {alias!r} of model {model!r}")
    before = registry.delete_alias(model, alias)
    audit.append(
        actor=caller.actor,
        tenant=caller.tenant,
        action="model.alias_unset",
        target=f"model:{model}",
        before={"alias": alias, "version": before},
        after={"alias": alias, "version": None},
    )
    return AliasUnset(model, alias, before)
