"""Changing prompts in the registry: register a new version, point an alias at a version.

Both take the caller (``Principal``), who needs the operator role, and write one audit entry
under the caller's tenant: ``prompt.register`` (the new version) and ``prompt.alias`` (the
version the alias pointed at before and after). Reading prompts needs no workflow: callers
use :class:`opsloop.registry.Registry` directly.

What a template must contain depends on who renders it (the RAG answer prompt needs
``{{context}}`` and ``{{question}}``, and that rule lives in ``rag``, a layer above this
one), so the caller passes the check in as ``check``: a callable that raises
``InvalidInputError`` for a template it refuses. It runs before anything is written, on the
new template when registering and on the target version's template when moving an alias, so
an alias is never pointed at a version the renderer would refuse.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from opsloop.audit import AuditLog
from opsloop.auth import Principal, Role
from opsloop.errors import InvalidInputError
from opsloop.registry import PromptVersionInfo, Registry

__all__ = ["PromptAliasMove", "TemplateCheck", "register", "set_alias"]

TemplateCheck = Callable[[str], None]
"""Raises ``InvalidInputError`` for a template its renderer could not use."""


@dataclass(frozen=True)
class PromptAliasMove:
    """One alias move of a prompt: from which version (None: the alias was unset) to which."""

    prompt: str
    alias: str
    before: int | None
    after: int


def register(
    caller: Principal,
    registry: Registry,
    audit: AuditLog,
    name: str,
    template: str,
    *,
    message: str | None = None,
    check: TemplateCheck | None = None,
) -> PromptVersionInfo:
    """Register ``template`` as the next version of prompt ``name``; no alias moves.

    Args:
        caller: Who asks; needs the operator role.
        registry: The started registry.
        audit: Where the ``prompt.register`` entry goes.
        name: Prompt name, created if it does not exist.
        template: Text with ``{{ variable }}`` placeholders.
        message: What changed in this version (its commit message).
        check: Refuses templates the prompt's renderer cannot use.

    Raises:
        ForbiddenError: The caller is below operator.
        InvalidInputError: An empty template, one ``check`` refuses, or a bad name.
        ConflictError: ``name`` is taken by a model.
    """
    caller.require(Role.OPERATOR, f"registering prompt {name!r}")
    if not template.strip():
        raise InvalidInputError(f"the template of prompt {name!r} is empty", field="template", prompt=name)
    if check is not None:
        check(template)
    info = registry.register_prompt(name, template, commit_message=message or None)
    audit.append(
        actor=caller.actor,
        tenant=caller.tenant,
        action="prompt.register",
        target=f"prompt:{name}",
        after={"version": info.version, "message": info.commit_message, "variables": list(info.variables)},
    )
    return info


def set_alias(
    caller: Principal,
    registry: Registry,
    audit: AuditLog,
    name: str,
    alias: str,
    version: int,
    *,
    check: TemplateCheck | None = None,
) -> PromptAliasMove:
    """Point ``alias`` of prompt ``name`` at ``version``; readers of the alias see it at once.

    Raises:
        ForbiddenError: The caller is below operator.
        NotFoundError: No such prompt or version.
        InvalidInputError: A bad alias (all digits) or version, or ``check`` refuses the
            version's template.
    """
    caller.require(Role.OPERATOR, f"moving alias {alias!r} of prompt {name!r}")
    target = registry.load_prompt(name, version)  # NotFoundError before anything moves
    if check is not None:
        check(target.template)
    before = registry.set_prompt_alias(name, alias, target.version)
    move = PromptAliasMove(name, alias, before, target.version)
    audit.append(
        actor=caller.actor,
        tenant=caller.tenant,
        action="prompt.alias",
        target=f"prompt:{name}",
        before={"alias": alias, "version": before},
        after={"alias": alias, "version": target.version},
    )
    return move
