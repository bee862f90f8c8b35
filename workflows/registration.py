"""Registering a model version for someone: the model, its reference profile, the audit entry.

:func:`register` is the one implementation behind ``opsloop models register`` and
``opsloop models train``; moving aliases afterwards is :mod:`workflows.promotion`.

Nothing is registered that serving could not serve: the source must exist, be an MLflow
model whose flavor loads, and have a column-based input signature (the runtime validates
requests against it), or come with rows of inputs to infer one from (``signature_from``;
the model is then copied with that signature into a run of its own). A reference (rows of
the model's inputs, e.g. its training set) is checked against the signature and profiled
before anything is registered too, so a bad one leaves no version behind; stored with the
version, it lets the scheduled drift checks run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opsloop.auth import Principal, Role
from opsloop.errors import InvalidInputError, NotFoundError, OpsloopError
from opsloop.registry import Lineage, ModelVersionInfo, Registry

if TYPE_CHECKING:  # pandas is only needed when a reference is given
    import pandas as pd

    from opsloop.audit import AuditLog

__all__ = ["Registration", "SourceInfo", "inspect_source", "register"]


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
    signature_from: pd.DataFrame | None = None,
    lineage: Lineage | None = None,
    description: str | None = None,
    trainer: str | None = None,
    label: str | None = None,
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
        signature_from: Rows of the model's inputs (only its input columns) to infer the
            input signature from, for a model saved without one; the version is a copy of
            the model with that signature.
        lineage: Version tags; default: the source and the git commit checked out here.
        description: Free text for the version.
        trainer: The model's trainer, ``module:function`` (``workflows.retraining.training``):
            imported first, then kept as the model's ``opsloop.trainer`` tag so it can be retrained.
        label: The label column its training data has (the model's ``opsloop.label`` tag).

    Raises:
        ForbiddenError: The caller is below operator.
        InvalidInputError: ``source`` is not an MLflow model (a folder without MLmodel), its
            flavor fails to load it, or it has no column-based signature and no
            ``signature_from``; the reference lacks the model's input columns, has no rows
            or holds text where the model takes numbers; a bad name; a trainer that does not import.
        NotFoundError: Nothing at ``source``.
        ConflictError: ``name`` is a prompt.
    """
    caller.require(Role.OPERATOR, f"registering model {name!r}")
    if trainer is not None:
        from workflows.retraining.training import resolve_trainer

        resolve_trainer(trainer)  # a typo is refused now, not at the first retraining
    uri = _checked_source(registry, source)
    if signature_from is not None or uri.startswith("file://"):  # a folder: registered as a copy
        uri = registry.log_model_copy(
            uri, run_name=f"{name}-register", signature_from=signature_from
        ).model_uri
    try:
        columns = registry.signature_columns(uri)
    except InvalidInputError as exc:
        raise InvalidInputError(
            f"model {source!r} has no column-based input signature, so requests to it cannot be "
            "checked: save it with signature=mlflow.models.infer_signature(<DataFrame of inputs>), "
            "or pass rows of its inputs (--signature-from DATA) to infer one",
            source=source,
        ) from exc
    profile = None
    if isinstance(reference, dict):
        profile = reference
    elif reference is not None:
        from workflows.reference import profile_for_signature

        profile = profile_for_signature(reference, columns)
    info = registry.register_model(
        name, uri, lineage or Lineage.capture(params={"source": source}), description=description
    )
    stored: int | None = None
    try:
        from workflows.retraining.training import LABEL_TAG, TRAINER_TAG

        for tag, value in ((TRAINER_TAG, trainer), (LABEL_TAG, label)):
            if value is not None:
                registry.set_model_tag(name, tag, value)
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
            after={
                "version": info.version,
                "source": info.source,
                "reference_rows": stored,
                **({"trainer": trainer} if trainer else {}),
            },
        )
    return Registration(registry.get_version(name, info.version), stored)


@dataclass(frozen=True)
class SourceInfo:
    """What a model to register holds, read from its MLmodel file without loading it.

    Attributes:
        source: As given.
        location: The folder it resolves to on this machine.
        flavors: The flavors it was saved with (``sklearn``, ``xgboost``, ``python_function``, ...).
        columns: Its input signature's ``(column, type)`` pairs; None when it has none that
            names columns (:func:`register` refuses it then, unless given ``signature_from``).
        size_bytes: The folder's size on disk.
    """

    source: str
    location: str
    flavors: list[str]
    columns: list[tuple[str, str]] | None
    size_bytes: int


def inspect_source(caller: Principal, registry: Registry, source: str) -> SourceInfo:
    """What the MLflow model folder ``source`` holds, before anyone approves registering it.

    Nothing of the model is loaded: unpickling runs the model's code, which waits for
    :func:`register` (and, from chat, for a person's approval).

    Raises:
        ForbiddenError: The caller is below operator.
        NotFoundError: The path does not exist.
        InvalidInputError: It is not an MLflow model folder.
    """
    caller.require(Role.OPERATOR, f"inspecting the model at {source!r}")
    folder = _model_folder(source)
    try:
        columns: list[tuple[str, str]] | None = registry.signature_columns(str(folder))
    except InvalidInputError:
        columns = None
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return SourceInfo(source, str(folder), registry.flavors(str(folder)), columns, size)


def _model_folder(source: str) -> Path:
    """The folder of the MLflow model at the path ``source``; say what is wrong before MLflow does."""
    path = Path(source).expanduser()
    if not path.exists():
        missing = str(path.resolve())
        raise NotFoundError(f"no model at {missing!r}: the path does not exist", source=source)
    if not (path / "MLmodel").is_file():
        raise InvalidInputError(
            f"{source!r} is not an MLflow model: it has no MLmodel file "
            "(save the model with mlflow.sklearn.save_model or mlflow.xgboost.save_model)",
            source=source,
        )
    return path.resolve()


def _checked_source(registry: Registry, source: str) -> str:
    """The URI to register ``source`` under, once it is known to be an MLflow model that loads.

    Loaded the way the runtime loads a version (the scikit-learn flavor, else pyfunc), so a
    model that registers is one that serves.
    """
    if "://" in source or source.startswith(("models:/", "runs:/")):
        uri = source
    else:  # a path: say which, and what is wrong with it, before MLflow says something vaguer
        uri = _model_folder(source).as_uri()
    try:
        try:
            registry.load_model_uri(uri, flavor="sklearn")
        except OpsloopError:  # not a scikit-learn model: MLflow's pyfunc, as the runtime does
            registry.load_model_uri(uri)
    except NotFoundError:
        raise
    except Exception as exc:  # a broken artifact raises anything: refuse it with the reason
        reason = exc.message if isinstance(exc, OpsloopError) else f"{type(exc).__name__}: {exc}"
        raise InvalidInputError(f"model {source!r} does not load: {reason}", source=source) from exc
    return uri
