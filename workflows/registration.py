"""Registering a model version for someone: the model, its reference profile, the audit entry.

:func:`register` is the one implementation behind ``opsloop models register`` and
``opsloop models train``; moving aliases afterwards is :mod:`workflows.promotion`.

A reference (rows of the model's inputs, e.g. its training set) is checked against the
model's input signature and profiled before anything is registered, so a bad one leaves
no version behind; stored with the version, it lets the scheduled drift checks run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opsloop.auth import Principal, Role
from opsloop.registry import Lineage, ModelVersionInfo, Registry

if TYPE_CHECKING:  # pandas is only needed when a reference is given
    import pandas as pd

    from opsloop.audit import AuditLog

__all__ = ["Registration", "register"]


@dataclass(frozen=True)
class Registration:
    """A registered model version.

    Attributes:
        version: The new version, as the registry has it.
        reference_rows: Rows profiled as its reference; None when it has none.
    """

    version: ModelVersionInfo
    reference_rows: int | None = None


def register(
    caller: Principal,
    registry: Registry,
    audit: AuditLog,
    name: str,
    source: str,
    *,
    reference: pd.DataFrame | dict[str, Any] | None = None,
    lineage: Lineage | None = None,
    description: str | None = None,
) -> Registration:
    """Register ``source`` as the next version of ``name``, store its reference, audit it.

    Args:
        caller: Who registers; needs the operator role. Named in the audit log.
        registry: A started registry.
        audit: Where the ``model.register`` entry goes (tenant: the caller's).
        name: Registered model name.
        source: An MLflow model: ``models:/<id>``, ``runs:/<run>/<path>``, or a local folder
            (relative to the working directory).
        reference: Rows of the model's inputs to profile (extra columns are ignored), or a
            ready profile (``workflows.reference``); None stores none.
        lineage: Version tags; default: the source and the git commit checked out here.
        description: Free text for the version.

    Raises:
        ForbiddenError: The caller is below operator.
        InvalidInputError: The reference lacks the model's input columns, has no rows or
            holds text where the model takes numbers, or the model has no column-based
            signature to check it against; a bad name or source.
        NotFoundError: Nothing at ``source``.
        ConflictError: ``name`` is a prompt.
    """
    caller.require(Role.OPERATOR, f"registering model {name!r}")
    path = Path(source)
    uri = path.resolve().as_uri() if path.exists() else source
    profile = None
    if isinstance(reference, dict):
        profile = reference
    elif reference is not None:
        from workflows.reference import profile_for_signature

        profile = profile_for_signature(reference, registry.signature_columns(uri))
    info = registry.register_model(
        name, uri, lineage or Lineage.capture(params={"source": source}), description=description
    )
    stored: int | None = None
    try:
        if profile is not None:
            registry.log_reference(name, info.version, profile)
            stored = profile.get("rows")
    finally:
        # The version exists whether or not its reference could be stored: audit it either way.
        audit.append(
            actor=caller.actor,
            tenant=caller.tenant,
            action="model.register",
            target=f"model:{name}",
            after={"version": info.version, "source": info.source, "reference_rows": stored},
        )
    return Registration(registry.get_version(name, info.version), stored)
