"""The model and prompt registry: a small facade over MLflow 3's registry.

Models are registered versions with aliases (``champion``, ``challenger``; MLflow 3
deprecates stages) and opsloop's lineage (data hash, git commit, training params) as
version tags. A version's reference profile (``workflows.reference``: what its training
inputs looked like, for drift checks) is a JSON artifact of the version's run; a version
registered without a run (from a folder) gets a run of its own for it, named in a version
tag. Training code logs its runs here too (:meth:`Registry.log_sklearn_model`), so the
workflows never call MLflow themselves. Prompts live in MLflow's prompt registry,
versioned and aliased the same way. Nothing MLflow-specific leaks out: callers get frozen
dataclasses of plain values, and every ``MlflowException`` becomes an opsloop error
(``NotFoundError``, ``ConflictError``, ``InvalidInputError``, else ``BackendError``)
naming what was asked for.

The embedded store is ``sqlite:///``, which ``opsloop serve`` and the CLI may open at the
same time; MLflow's store handles that, so this module keeps no state of its own beyond
the two URIs and the client built from them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import urlparse
from urllib.request import url2pathname

from opsloop.errors import (
    BackendError,
    ConfigError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    OpsloopError,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion, PromptVersion

__all__ = [
    "EXPERIMENT_NAME",
    "REFERENCE_ARTIFACT",
    "Lineage",
    "LoggedModel",
    "ModelVersionInfo",
    "PromptVersionInfo",
    "Registry",
    "current_git_sha",
    "is_version",
    "version_number",
]

_SERVER_PATIENCE = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
"""How long a call waits for a tracking server that does not answer (see :meth:`Registry.start`)."""

EXPERIMENT_NAME = "opsloop"
"""The MLflow experiment that holds opsloop's runs and logged models."""

TAG_DATA_HASH = "opsloop.data_hash"
TAG_GIT_SHA = "opsloop.git_sha"
TAG_PARAMS = "opsloop.params"
TAG_REFERENCE_RUN = "opsloop.reference_run"

REFERENCE_ARTIFACT = "reference_profile.json"
"""Where in a run's artifacts a model version's reference profile is kept."""

# MLflow's double-brace variables, e.g. ``{{ question }}`` (mlflow.prompt.constants).
_PROMPT_VARIABLE = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*(?:\.[a-zA-Z_][a-zA-Z0-9_]*)*)\s*\}\}")

_ERRORS: dict[str, type[OpsloopError]] = {
    "RESOURCE_DOES_NOT_EXIST": NotFoundError,
    "NOT_FOUND": NotFoundError,
    "RESOURCE_ALREADY_EXISTS": ConflictError,
    "ALREADY_EXISTS": ConflictError,
    "INVALID_PARAMETER_VALUE": InvalidInputError,
}

T = TypeVar("T")

_log = logging.getLogger(__name__)


def current_git_sha(cwd: str | Path | None = None) -> str | None:
    """Return the commit checked out at ``cwd``, or None outside a repository or without git."""
    git = shutil.which("git")
    if git is None:
        return None
    try:
        done = subprocess.run(
            [git, "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


@dataclass(frozen=True)
class Lineage:
    """Where a model version came from, stored as ``opsloop.*`` tags on the version.

    Attributes:
        data_hash: Hash of the training data, if known.
        git_sha: Commit of the training code, if known.
        params: Training parameters; must be JSON-serialisable.
    """

    data_hash: str | None = None
    git_sha: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def capture(
        cls, data_hash: str | None = None, params: dict[str, Any] | None = None, cwd: str | Path | None = None
    ) -> Lineage:
        """Build a Lineage whose ``git_sha`` is the commit checked out at ``cwd`` (default: here)."""
        return cls(data_hash=data_hash, git_sha=current_git_sha(cwd), params=dict(params or {}))

    def to_tags(self) -> dict[str, str]:
        """Return the version tags that store this lineage; unknown values are left out.

        Raises:
            InvalidInputError: ``params`` cannot be written as JSON.
        """
        try:
            params = json.dumps(self.params, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(
                f"lineage params are not JSON-serialisable: {exc}", field="params"
            ) from exc
        tags = {TAG_PARAMS: params}
        if self.data_hash is not None:
            tags[TAG_DATA_HASH] = self.data_hash
        if self.git_sha is not None:
            tags[TAG_GIT_SHA] = self.git_sha
        return tags

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> Lineage:
        """Read a Lineage back from version tags; a version registered elsewhere has none."""
        try:
            params = json.loads(tags.get(TAG_PARAMS) or "{}")
        except json.JSONDecodeError:
            params = {}  # written by hand outside opsloop; the raw tag is still in ``tags``
        return cls(
            data_hash=tags.get(TAG_DATA_HASH),
            git_sha=tags.get(TAG_GIT_SHA),
            params=params if isinstance(params, dict) else {},
        )


@dataclass(frozen=True)
class ModelVersionInfo:
    """One registered model version.

    Attributes:
        name: Registered model name.
        version: Version number, from 1.
        source: Where the version's artifacts are (``models:/m-...`` for MLflow 3 logged models).
        run_id: The run that produced it, if any.
        description: Free text, if set.
        aliases: Aliases pointing at this version, sorted.
        tags: All version tags, lineage included.
        created_ms: Creation time in milliseconds since the epoch.
    """

    name: str
    version: int
    source: str
    run_id: str | None = None
    description: str | None = None
    aliases: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)
    created_ms: int | None = None

    @property
    def lineage(self) -> Lineage:
        """The lineage stored in this version's tags."""
        return Lineage.from_tags(self.tags)

    @property
    def uri(self) -> str:
        """The ``models:/`` URI that pins this exact version."""
        return f"models:/{self.name}/{self.version}"


@dataclass(frozen=True)
class LoggedModel:
    """A model logged under a run, ready to register.

    Attributes:
        run_id: The run that holds it, its parameters and metrics.
        model_uri: The logged model, ``models:/m-...``, or the URI of its artifacts.
    """

    run_id: str
    model_uri: str


@dataclass(frozen=True)
class PromptVersionInfo:
    """One registered prompt version, with MLflow's ``{{ variable }}`` template syntax.

    Attributes:
        name: Prompt name.
        version: Version number, from 1.
        template: The template text.
        commit_message: What changed in this version, if given.
        aliases: Aliases pointing at this version, sorted.
        tags: The version's user tags.
    """

    name: str
    version: int
    template: str
    commit_message: str | None = None
    aliases: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def variables(self) -> tuple[str, ...]:
        """The template's variable names, sorted."""
        return tuple(sorted(set(_PROMPT_VARIABLE.findall(self.template))))

    @property
    def uri(self) -> str:
        """The ``prompts:/`` URI that pins this exact version."""
        return f"prompts:/{self.name}/{self.version}"

    def format(self, **variables: Any) -> str:
        """Fill in the template; extra variables are ignored.

        Args:
            **variables: A value for every variable in the template.

        Raises:
            InvalidInputError: A template variable has no value.
        """
        missing = [name for name in self.variables if name not in variables]
        if missing:
            raise InvalidInputError(
                f"prompt {self.name!r} version {self.version} needs variables {missing}",
                field="variables",
                missing=missing,
            )
        # One pass, so a value that itself contains ``{{ x }}`` is not expanded again.
        return _PROMPT_VARIABLE.sub(lambda match: str(variables[match.group(1)]), self.template)


class Registry:
    """Models and prompts in an MLflow tracking store and registry.

    Args:
        tracking_uri: MLflow tracking and registry URI, e.g. ``sqlite:///home/mlflow.db``.
        artifact_root: Artifact location of the ``opsloop`` experiment, e.g. a ``file://`` URI.
    """

    def __init__(self, tracking_uri: str, artifact_root: str) -> None:
        if not tracking_uri:
            raise ConfigError("the MLflow tracking URI is empty", setting="mlflow_tracking_uri")
        if not artifact_root:
            raise ConfigError("the MLflow artifact root is empty", setting="mlflow_artifact_root")
        self.tracking_uri = tracking_uri
        self.artifact_root = artifact_root
        self._client: MlflowClient | None = None
        self._experiment_id: str | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Registry:
        """Open the client and ensure the ``opsloop`` experiment; returns self for chaining.

        Raises:
            ConfigError: MLflow is not installed.
            BackendError: The store cannot be opened.
        """
        if self._client is not None:
            return self
        if self.tracking_uri.startswith(("http://", "https://")):
            # MLflow's client retries a server that does not answer 7 times with a backoff of 2:
            # a request waited 4 minutes before it failed. Fail within about 15 s instead, unless
            # the user set MLflow's own variables (read when MLflow opens its session).
            for variable, value in _SERVER_PATIENCE.items():
                os.environ.setdefault(variable, value)
        mlflow = _import_mlflow()
        if self.tracking_uri.startswith("sqlite:///"):
            # SQLite creates the file but not its directory.
            Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self._bind_globals()
        # MLflow hints, whenever it infers a schema, that integer columns cannot hold missing
        # values: serving refuses missing values anyway, so the hint only alarms. Set once here,
        # not per call: catch_warnings() is not thread-safe, and runs log from server threads.
        warnings.filterwarnings("ignore", "Hint: Inferred schema contains integer", UserWarning)
        client = mlflow.MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        self._experiment_id = self._ensure_experiment(client)
        self._client = client
        return self

    def close(self) -> None:
        """Forget the client; MLflow keeps no connection that needs closing."""
        self._client = None
        self._experiment_id = None

    @property
    def experiment_id(self) -> str:
        """The id of the ``opsloop`` experiment; log runs and models there."""
        if self._experiment_id is None:
            raise RuntimeError("Registry.start() was not called")
        return self._experiment_id

    # -- models ----------------------------------------------------------------------------

    def register_model(
        self,
        name: str,
        model_uri: str,
        lineage: Lineage,
        *,
        description: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> ModelVersionInfo:
        """Register a logged model as the next version of ``name``, creating ``name`` if needed.

        Args:
            name: Registered model name.
            model_uri: The logged model, ``models:/<model_id>`` or ``runs:/<run_id>/<path>``.
            lineage: Stored as ``opsloop.*`` version tags.
            description: Free text for the version.
            tags: More version tags, created with the version (not one by one afterwards).

        Raises:
            ConflictError: ``name`` is taken by a prompt.
            NotFoundError: The run in ``model_uri`` does not exist.
            InvalidInputError: A bad name or URI.
        """
        client = self._started()
        version_tags = {**lineage.to_tags(), **dict(tags or {})}
        what = f"registering {model_uri!r} as model {name!r}"
        with _translated(what, model=name, model_uri=model_uri):
            # MLflow would otherwise file the model version under the prompt.
            if client.get_prompt(name) is not None:
                raise ConflictError(f"{name!r} is already the name of a prompt", model=name)
            # mlflow.register_model, not the client, because only it resolves MLflow 3's
            # ``runs:/`` URIs to the logged model (the run holds no MLmodel any more) and
            # links the logged model to the version; it reads the global registry URI.
            self._bind_globals()
            mv = _import_mlflow().register_model(model_uri, name, tags=version_tags)
            if description is not None:
                mv = client.update_model_version(name, str(mv.version), description=description)
        return _model_version_info(mv, aliases=())

    def models(self) -> list[str]:
        """Return the names of all registered models (prompts excluded), sorted."""
        client = self._started()
        with _translated("listing models"):
            found = _all_pages(lambda token: client.search_registered_models(page_token=token))
        return sorted(rm.name for rm in found)

    def model_tags(self, name: str) -> dict[str, str]:
        """The tags of a registered model (not of its versions).

        Raises:
            NotFoundError: No model has this name.
        """
        client = self._started()
        with _translated(f"model {name!r}", model=name):
            return dict(client.get_registered_model(name).tags or {})

    def set_model_tag(self, name: str, key: str, value: str) -> None:
        """Set a tag of a registered model, e.g. the trainer retraining calls.

        Raises:
            NotFoundError: No model has this name.
        """
        client = self._started()
        with _translated(f"tagging model {name!r}", model=name, tag=key):
            client.set_registered_model_tag(name, key, value)

    def alias_versions(self, alias: str) -> dict[str, int]:
        """Every model that has ``alias``, with the version it points at (one store query)."""
        client = self._started()
        with _translated(f"listing the {alias!r} versions"):
            found = _all_pages(lambda token: client.search_registered_models(page_token=token))
        return {rm.name: int(rm.aliases[alias]) for rm in found if alias in (rm.aliases or {})}

    def versions(self, name: str) -> list[ModelVersionInfo]:
        """Return every version of a model, oldest first, each with its aliases.

        Raises:
            NotFoundError: No model has this name.
        """
        client = self._started()
        with _translated(f"model {name!r}", model=name):
            by_version = _aliases_by_version(client.get_registered_model(name).aliases)
            found = _all_pages(
                lambda token: client.search_model_versions(_name_filter(name), page_token=token)
            )
        infos = [_model_version_info(mv, by_version.get(int(mv.version), ())) for mv in found]
        return sorted(infos, key=lambda info: info.version)

    def get_version(self, name: str, version: int | str) -> ModelVersionInfo:
        """Return one version of a model.

        Raises:
            NotFoundError: No such model or version.
            InvalidInputError: ``version`` is not a positive integer.
        """
        client = self._started()
        number = version_number(version)
        with _translated(f"model {name!r} version {number}", model=name, version=number):
            mv = client.get_model_version(name, str(number))
        return _model_version_info(mv, tuple(sorted(mv.aliases or ())))

    def set_alias(self, name: str, alias: str, version: int | str) -> int | None:
        """Point ``alias`` at a version of a model; returns the version it pointed at before.

        Raises:
            NotFoundError: No such model or version.
            InvalidInputError: A bad alias name or version.
        """
        client = self._started()
        _check_alias(alias)
        number = version_number(version)
        what = f"setting alias {alias!r} of model {name!r} to version {number}"
        with _translated(what, model=name, alias=alias, version=number):
            previous = client.get_registered_model(name).aliases.get(alias)
            client.set_registered_model_alias(name, alias, str(number))
        return None if previous is None else int(previous)

    def get_alias(self, name: str, alias: str) -> ModelVersionInfo:
        """Return the version an alias points at.

        Raises:
            NotFoundError: No such model, or the alias is not set.
        """
        client = self._started()
        what = f"model {name!r} alias {alias!r}"
        with _translated(what, model=name, alias=alias, invalid_means_missing=True):
            mv = client.get_model_version_by_alias(name, alias)
        return _model_version_info(mv, tuple(sorted(mv.aliases or ())))

    def delete_alias(self, name: str, alias: str) -> int:
        """Remove an alias from a model; returns the version it pointed at.

        Raises:
            NotFoundError: No such model, or the alias is not set (MLflow itself ignores that).
        """
        client = self._started()
        with _translated(f"deleting alias {alias!r} of model {name!r}", model=name, alias=alias):
            previous = client.get_registered_model(name).aliases.get(alias)
            if previous is None:
                raise NotFoundError(f"model {name!r} has no alias {alias!r}", model=name, alias=alias)
            client.delete_registered_model_alias(name, alias)
        return int(previous)

    def model_uri(self, name: str, alias_or_version: str | int) -> str:
        """Return the ``models:/`` URI for an alias (``@alias``) or a version number."""
        if is_version(alias_or_version):
            return f"models:/{name}/{version_number(alias_or_version)}"
        return f"models:/{name}@{alias_or_version}"

    def load_model(
        self, name: str, alias_or_version: str | int, *, flavor: Literal["pyfunc", "sklearn"] = "pyfunc"
    ) -> Any:
        """Load a model version for inference.

        An alias is resolved to its version first, so the artifacts loaded are those of the
        version the alias pointed at when asked, even if it moves meanwhile.

        Args:
            name: Registered model name.
            alias_or_version: An alias, or a version number.
            flavor: ``pyfunc`` for MLflow's generic ``predict`` wrapper, ``sklearn`` for the
                scikit-learn estimator itself (``predict_proba`` and all).

        Returns:
            An ``mlflow.pyfunc.PyFuncModel`` or the scikit-learn estimator.

        Raises:
            NotFoundError: No such model, version or alias.
        """
        version = self._resolve(name, alias_or_version).version
        _import_mlflow()  # for the install hint
        import mlflow.pyfunc
        import mlflow.sklearn

        load = mlflow.sklearn.load_model if flavor == "sklearn" else mlflow.pyfunc.load_model
        with _translated(f"loading model {name!r} version {version}", model=name, version=version):
            self._bind_globals()  # MLflow's loaders resolve models:/ URIs with the global registry
            return load(f"models:/{name}/{version}")

    def input_columns(self, name: str, version: int) -> list[tuple[str, str]]:
        """The ``(column, type)`` pairs of a version's input signature, in order.

        Types are MLflow's names: ``long``, ``integer``, ``double``, ``float``, ``string``,
        ``boolean``, ``datetime``, ``binary``.

        Raises:
            NotFoundError: No such model or version.
            InvalidInputError: The version was logged without a column-based signature.
        """
        what = f"model {name!r} version {version}"
        return self._signature_columns(f"models:/{name}/{version}", what, model=name, version=version)

    def signature_columns(self, model_uri: str) -> list[tuple[str, str]]:
        """:meth:`input_columns` of a model not registered yet: a folder, ``runs:/`` or ``models:/`` URI.

        Raises:
            NotFoundError: Nothing at ``model_uri``.
            InvalidInputError: The model has no column-based signature.
        """
        return self._signature_columns(_local(model_uri), f"model {model_uri!r}", model_uri=model_uri)

    def flavors(self, model_uri: str) -> list[str]:
        """The flavors a model not registered yet was saved with, read from its MLmodel file only.

        Raises:
            NotFoundError: Nothing at ``model_uri``.
        """
        from mlflow.models import get_model_info

        with _translated(f"model {model_uri!r}", model_uri=model_uri):
            self._bind_globals()
            return sorted(get_model_info(_local(model_uri)).flavors)

    def load_model_uri(self, model_uri: str, *, flavor: Literal["pyfunc", "sklearn"] = "pyfunc") -> Any:
        """:meth:`load_model` of a model not registered yet: a folder, ``runs:/`` or ``models:/`` URI.

        Raises:
            NotFoundError: Nothing at ``model_uri``.
            BackendError: MLflow could not load it (e.g. it lacks ``flavor``).
            Exception: Whatever the flavor's loader raises for a broken artifact.
        """
        self._started()
        _import_mlflow()  # for the install hint
        import mlflow.pyfunc
        import mlflow.sklearn

        load = mlflow.sklearn.load_model if flavor == "sklearn" else mlflow.pyfunc.load_model
        with _translated(f"loading model {model_uri!r}", model_uri=model_uri):
            self._bind_globals()
            return load(_local(model_uri))

    def log_model_copy(self, model_uri: str, *, run_name: str, signature_from: Any = None) -> LoggedModel:
        """Copy a model into a new run of the ``opsloop`` experiment; register the returned ``model_uri``.

        The copy lives in the tracking server's artifact store, so the version it becomes does
        not depend on the folder it came from, and a remote MLflow server (which registers no
        ``file://`` source of its clients) accepts it. With ``signature_from`` (a DataFrame of
        input rows), the copy's MLmodel gets their columns and types as its input signature, for
        models saved without one; the original is left as it is.

        Raises:
            NotFoundError: Nothing at ``model_uri``.
            InvalidInputError: MLflow cannot infer a signature from ``signature_from``.
            BackendError: MLflow failed to copy or log the model.
        """
        self._started()
        mlflow = _import_mlflow()
        from mlflow.models import Model, infer_signature

        what = f"logging a copy of model {model_uri!r}"
        with _translated(what, model_uri=model_uri), tempfile.TemporaryDirectory() as tmp:
            self._bind_globals()
            local = Path(mlflow.artifacts.download_artifacts(_local(model_uri), dst_path=tmp))
            if signature_from is not None:
                model = Model.load(local)
                try:
                    model.signature = infer_signature(signature_from)
                except Exception as exc:  # MLflow raises plain errors for frames it cannot type
                    raise InvalidInputError(f"no signature can be inferred from these rows: {exc}") from exc
                model.save(local / "MLmodel")
            with mlflow.start_run(experiment_id=self.experiment_id, run_name=run_name) as run:
                # Artifacts of a run, not a logged model: any flavor copies this way, and the
                # registered version's source stays valid as long as the run's artifacts do.
                mlflow.log_artifacts(str(local), artifact_path="model")
        # runs:/, not the artifact URI: a version registered from it names its run, which an
        # MLflow server requires of a source in its artifact store.
        return LoggedModel(run_id=run.info.run_id, model_uri=f"runs:/{run.info.run_id}/model")

    # -- training runs and reference profiles ------------------------------------------------

    def log_sklearn_model(
        self,
        model: Any,
        *,
        run_name: str,
        inputs: Any,
        outputs: Any,
        params: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, str] | None = None,
        requirements: Sequence[str] | None = None,
        predict_fn: str = "predict",
        trusted_types: Sequence[str] = (),
        run_id: str | None = None,
    ) -> LoggedModel:
        """Log a fitted scikit-learn model under a new run of the ``opsloop`` experiment.

        Args:
            model: The fitted estimator or pipeline.
            run_name: Name of the run.
            inputs: Training inputs (a DataFrame names the signature's columns); the first
                row is kept as the input example.
            outputs: What the model answers for ``inputs``, for the output signature.
            params: Run parameters.
            metrics: Run metrics.
            tags: Run tags.
            requirements: pip requirements; None lets MLflow infer them (slow: it imports
                the model in a subprocess).
            predict_fn: The estimator method behind the pyfunc flavour's ``predict``.
            trusted_types: Callables that skops may load besides its defaults.
            run_id: Log into this open run (:meth:`open_run`) instead of a new one; it stays open.

        Raises:
            BackendError: MLflow failed to log the run.
            InvalidInputError: MLflow refused a parameter or metric.
        """
        self._started()
        _import_mlflow()  # for the install hint
        import mlflow.sklearn
        from mlflow.models import infer_signature

        example = inputs.iloc[:1] if hasattr(inputs, "iloc") else inputs[:1]
        with _translated(f"logging the model run {run_name!r}", run=run_name):
            signature = infer_signature(inputs, outputs)
            # Another Registry may have pointed MLflow's process-global URIs elsewhere since start().
            self._bind_globals()
            opened = (
                mlflow.start_run(run_id=run_id, log_system_metrics=False)
                if run_id is not None
                else mlflow.start_run(experiment_id=self.experiment_id, run_name=run_name)
            )
            with opened as run:
                mlflow.log_params(dict(params or {}))
                mlflow.log_metrics(dict(metrics or {}))
                mlflow.set_tags(dict(tags or {}))
                logged = mlflow.sklearn.log_model(
                    model,
                    name="model",
                    signature=signature,
                    input_example=example,
                    pip_requirements=None if requirements is None else list(requirements),
                    pyfunc_predict_fn=predict_fn,
                    skops_trusted_types=list(trusted_types) or None,
                )
            if run_id is not None:  # leaving the block ended it; the caller ends it, with its status
                self._started().update_run(run_id, status="RUNNING")
        return LoggedModel(run_id=run.info.run_id, model_uri=logged.model_uri)

    # -- runs that several steps log into ----------------------------------------------------

    def open_run(self, run_name: str, *, tags: Mapping[str, str] | None = None) -> str:
        """Start a run in the ``opsloop`` experiment and return its id; end it with :meth:`end_run`."""
        client = self._started()
        with _translated(f"starting run {run_name!r}", run=run_name):
            return str(
                client.create_run(self.experiment_id, run_name=run_name, tags=dict(tags or {})).info.run_id
            )

    def log_run(
        self,
        run_id: str,
        *,
        params: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, str] | None = None,
        artifacts: Mapping[str, Any] | None = None,
    ) -> None:
        """Log into an open run: params, metrics, tags, and artifacts by path.

        An artifact is a dict or list (written as JSON), a str (text), or a pandas DataFrame
        (Parquet).

        Raises:
            InvalidInputError: MLflow refused a value (e.g. a param logged twice with another value).
            BackendError: The store failed.
        """
        client = self._started()
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        with _translated(f"logging into run {run_id}", run=run_id):
            client.log_batch(
                run_id,
                metrics=[Metric(key, float(value), now, 0) for key, value in (metrics or {}).items()],
                params=[Param(key, str(value)[:6000]) for key, value in (params or {}).items()],
                tags=[RunTag(key, str(value)) for key, value in (tags or {}).items()],
            )
            for path, content in (artifacts or {}).items():
                if isinstance(content, dict | list):
                    client.log_dict(run_id, content, path)  # type: ignore[arg-type]  # lists are JSON too
                elif isinstance(content, str):
                    client.log_text(run_id, content, path)
                else:  # a DataFrame
                    with tempfile.TemporaryDirectory() as tmp:
                        local = Path(tmp) / Path(path).name
                        content.to_parquet(local, index=False)
                        parent = str(Path(path).parent)
                        client.log_artifact(run_id, str(local), None if parent == "." else parent)

    def log_run_dataset(
        self, run_id: str, frame: Any, *, name: str, digest: str, context: str, label: str
    ) -> None:
        """Record a DataFrame as an input of an open run (MLflow's dataset tracking), under ``digest``."""
        client = self._started()
        from mlflow.data.pandas_dataset import from_pandas
        from mlflow.entities import DatasetInput, InputTag

        with _translated(f"logging data set {name!r} into run {run_id}", run=run_id):
            dataset = from_pandas(frame, name=name, digest=digest[:36], targets=label)
            tag = InputTag(key="mlflow.data.context", value=context)
            client.log_inputs(run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), tags=[tag])])

    def end_run(self, run_id: str, status: Literal["FINISHED", "FAILED", "KILLED"] = "FINISHED") -> None:
        """End a run opened with :meth:`open_run` (or left running by a process that died)."""
        client = self._started()
        with _translated(f"ending run {run_id}", run=run_id):
            client.set_terminated(run_id, status)

    def run_frame(self, run_id: str, path: str) -> Any:
        """A Parquet artifact of a run as a DataFrame.

        Raises:
            NotFoundError: The run has no such artifact.
        """
        client = self._started()
        import pandas as pd

        try:
            with (
                tempfile.TemporaryDirectory() as tmp,
                _translated(f"artifact {path!r} of run {run_id}", run=run_id),
            ):
                return pd.read_parquet(client.download_artifacts(run_id, path, tmp))
        except FileNotFoundError as exc:
            raise NotFoundError(f"run {run_id} has no artifact {path!r}", run=run_id, path=path) from exc

    def run_text(self, uri: str, *, max_bytes: int = 1_000_000) -> str:
        """A text artifact of a run by its ``runs:/RUN_ID/PATH`` URI (a version's model card).

        Raises:
            InvalidInputError: Not a ``runs:/`` URI.
            NotFoundError: The run has no such artifact.
        """
        run_id, _, path = uri.removeprefix("runs:/").partition("/")
        if not uri.startswith("runs:/") or not run_id or not path:
            raise InvalidInputError(f"not a runs:/RUN_ID/PATH artifact URI: {uri!r}", field="uri")
        client = self._started()
        try:
            with (
                tempfile.TemporaryDirectory() as tmp,
                _translated(f"artifact {path!r} of run {run_id}", run=run_id),
                open(
                    client.download_artifacts(run_id, path, tmp), encoding="utf-8", errors="replace"
                ) as file,
            ):
                return file.read(max_bytes)
        except FileNotFoundError as exc:
            raise NotFoundError(f"run {run_id} has no artifact {path!r}", run=run_id, path=path) from exc

    def log_reference(self, name: str, version: int | str, profile: Mapping[str, Any]) -> str:
        """Keep ``profile`` as the reference of a model version, replacing any earlier one.

        It goes into the version's run; a version without one (registered from a folder)
        gets a run in the ``opsloop`` experiment, which a version tag names.

        Returns:
            The id of the run that holds the profile.

        Raises:
            NotFoundError: No such model or version.
            InvalidInputError: ``profile`` cannot be written as JSON.
        """
        client = self._started()
        info = self.get_version(name, version)
        try:
            json.dumps(profile)  # before a run is made for it
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"the reference profile is not JSON: {exc}", field="reference") from exc
        what = f"storing the reference profile of model {name!r} version {info.version}"
        with _translated(what, model=name, version=info.version):
            run_id = info.run_id or info.tags.get(TAG_REFERENCE_RUN)
            made = run_id is None
            if run_id is None:
                run = client.create_run(self.experiment_id, run_name=f"{name}-v{info.version}-reference")
                run_id = run.info.run_id
            client.log_dict(run_id, dict(profile), REFERENCE_ARTIFACT)
            if made:
                client.set_terminated(run_id)
                client.set_model_version_tag(name, str(info.version), TAG_REFERENCE_RUN, run_id)
        return run_id

    def reference(self, name: str, alias_or_version: str | int) -> dict[str, Any]:
        """The reference profile kept with a model version (by alias or version number).

        Raises:
            NotFoundError: No such model, version or alias, or the version has no reference.
            BackendError: The store failed otherwise, or the stored profile is not JSON.
        """
        client = self._started()
        info = self._resolve(name, alias_or_version)
        what = f"reference profile of model {name!r} version {info.version}"
        details: dict[str, Any] = {"model": name, "version": info.version}
        missing = (
            f"model {name!r} version {info.version} has no reference profile; "
            "register it with 'opsloop models register ... --reference DATA'"
        )
        run_id = info.tags.get(TAG_REFERENCE_RUN) or info.run_id
        if run_id is None:
            raise NotFoundError(missing, **details)
        try:
            with tempfile.TemporaryDirectory() as tmp, _translated(what, **details):
                path = client.download_artifacts(run_id, REFERENCE_ARTIFACT, tmp)
                profile: dict[str, Any] = json.loads(Path(path).read_text())
        # The local artifact store reports a missing file as FileNotFoundError, others by code.
        except (NotFoundError, FileNotFoundError) as exc:
            raise NotFoundError(missing, **details) from exc
        except (OSError, ValueError) as exc:  # JSONDecodeError is a ValueError
            raise BackendError(f"{what}: {exc}", **details) from exc
        return profile

    # -- prompts ---------------------------------------------------------------------------

    def register_prompt(
        self,
        name: str,
        template: str,
        *,
        commit_message: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> PromptVersionInfo:
        """Register ``template`` as the next version of prompt ``name``, creating it if needed.

        Args:
            name: Prompt name: letters, digits, ``_``, ``-`` and ``.``.
            template: Text with ``{{ variable }}`` placeholders.
            commit_message: What changed in this version.
            tags: Version tags.

        Raises:
            ConflictError: ``name`` is taken by a model.
            InvalidInputError: A bad name.
        """
        client = self._started()
        with _translated(f"registering prompt {name!r}", prompt=name):
            # MLflow reports this clash as a bad parameter; it is a conflict.
            if client.search_registered_models(_name_filter(name)):
                raise ConflictError(f"{name!r} is already the name of a model", prompt=name)
            pv = client.register_prompt(name, template, commit_message=commit_message, tags=dict(tags or {}))
        return _prompt_version_info(pv)

    def prompts(self) -> list[str]:
        """Return the names of all registered prompts, sorted."""
        client = self._started()
        with _translated("listing prompts"):
            found = _all_pages(lambda token: client.search_prompts(page_token=token))
        return sorted(prompt.name for prompt in found)

    def prompt_versions(self, name: str) -> list[PromptVersionInfo]:
        """Return every version of a prompt, oldest first, each with its aliases.

        Raises:
            NotFoundError: No prompt has this name.
            InvalidInputError: A version is a chat prompt (only text prompts are supported).
        """
        client = self._started()
        with _translated(f"prompt {name!r}", prompt=name, invalid_means_missing=True):
            found = _all_pages(lambda token: client.search_prompt_versions(name, page_token=token))
            # The search leaves ``aliases`` empty; reading each version fills them in.
            versions = [client.get_prompt_version(name, int(pv.version)) for pv in found]
        return sorted(
            (_prompt_version_info(pv) for pv in versions if pv is not None), key=lambda info: info.version
        )

    def set_prompt_alias(self, name: str, alias: str, version: int | str) -> int | None:
        """Point ``alias`` at a version of a prompt; returns the version it pointed at before.

        Raises:
            NotFoundError: No such prompt or version.
            InvalidInputError: A bad alias name or version.
        """
        client = self._started()
        _check_alias(alias)
        number = version_number(version)
        try:
            previous: int | None = self._prompt_by_alias(name, alias).version
        except NotFoundError:
            previous = None
        what = f"setting alias {alias!r} of prompt {name!r} to version {number}"
        with _translated(what, prompt=name, alias=alias, version=number):
            client.set_prompt_alias(name, alias, number)
        return previous

    def load_prompt(self, name: str, alias_or_version: str | int) -> PromptVersionInfo:
        """Return a prompt version by alias or version number.

        This asks the store every time: MlflowClient.load_prompt would cache alias lookups
        per process (so a move made by another process shows late) and start a thread that
        tags the prompt with the active experiment on every uncached load.

        Raises:
            NotFoundError: No such prompt, version or alias.
        """
        if isinstance(alias_or_version, str) and not is_version(alias_or_version):
            return self._prompt_by_alias(name, alias_or_version)
        client = self._started()
        number = version_number(alias_or_version)
        what = f"prompt {name!r} version {number}"
        with _translated(what, prompt=name, version=number, invalid_means_missing=True):
            pv = client.get_prompt_version(name, number)
        if pv is None:
            raise NotFoundError(f"prompt {name!r} has no version {number}", prompt=name, version=number)
        return _prompt_version_info(pv)

    # -- internals -------------------------------------------------------------------------

    def _started(self) -> MlflowClient:
        if self._client is None:
            raise RuntimeError("Registry.start() was not called")
        return self._client

    def _resolve(self, name: str, alias_or_version: str | int) -> ModelVersionInfo:
        if isinstance(alias_or_version, str) and not is_version(alias_or_version):
            return self.get_alias(name, alias_or_version)
        return self.get_version(name, alias_or_version)

    def _signature_columns(self, uri: str, what: str, **details: Any) -> list[tuple[str, str]]:
        from mlflow.models import get_model_info

        with _translated(what, **details):
            self._bind_globals()
            signature = get_model_info(uri).signature
        inputs = signature.inputs if signature is not None else None
        if inputs is None or not inputs.has_input_names():
            raise InvalidInputError(
                f"{what} has no column-based input signature; "
                "log it with signature=infer_signature(<DataFrame of inputs>)",
                **details,
            )
        return [(spec.name, getattr(spec.type, "name", str(spec.type))) for spec in inputs.inputs]

    def _prompt_by_alias(self, name: str, alias: str) -> PromptVersionInfo:
        client = self._started()
        what = f"prompt {name!r} alias {alias!r}"
        with _translated(what, prompt=name, alias=alias, invalid_means_missing=True):
            pv = client.get_prompt_version_by_alias(name, alias)
        return _prompt_version_info(pv)

    def _bind_globals(self) -> None:
        # MLflow's fluent API (register_model, the flavors' load_model, log_model under
        # start_run) reads the process-global tracking and registry URIs, not a client's;
        # point them at this store so nothing lands in ./mlruns or another store.
        mlflow = _import_mlflow()
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)

    def _ensure_experiment(self, client: MlflowClient) -> str:
        with _translated(f"experiment {EXPERIMENT_NAME!r} in {self.tracking_uri}"):
            experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
            if experiment is None:
                try:
                    return client.create_experiment(EXPERIMENT_NAME, artifact_location=self.artifact_root)
                except _import_mlflow().exceptions.MlflowException as exc:
                    if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                        raise
                    # Another process (serve and CLI share the store) created it meanwhile.
                    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
                    if experiment is None:
                        raise
            if experiment.lifecycle_stage == "deleted":
                client.restore_experiment(experiment.experiment_id)
            if experiment.artifact_location.rstrip("/") != self.artifact_root.rstrip("/"):
                # An experiment's artifact location is fixed at creation; say where they go.
                _log.warning(
                    "experiment %r keeps its artifacts in %s, not the configured %s",
                    EXPERIMENT_NAME,
                    experiment.artifact_location,
                    self.artifact_root,
                )
            return str(experiment.experiment_id)


def _import_mlflow() -> ModuleType:
    try:
        import mlflow
    except ImportError as exc:
        raise ConfigError(
            "the registry needs MLflow: pip install 'mlflow>=3.1'", setting="mlflow_tracking_uri"
        ) from exc
    return mlflow


@contextmanager
def _translated(what: str, *, invalid_means_missing: bool = False, **details: Any) -> Iterator[None]:
    """Turn an MlflowException raised inside into the matching opsloop error.

    With ``invalid_means_missing`` (lookups whose arguments were checked already), the SQL
    store's INVALID_PARAMETER_VALUE means "alias not set" or "that name is a model, not a
    prompt": both are a NotFoundError (MlflowClient.load_prompt's ``allow_missing`` reads
    that code the same way).
    """
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        code = str(exc.error_code)
        error = _ERRORS.get(code, BackendError)
        if invalid_means_missing and code == "INVALID_PARAMETER_VALUE":
            error = NotFoundError
        raise error(f"{what}: {exc.message}", **details, mlflow_error=code) from exc


def _local(model_uri: str) -> str:
    # MLflow finds a folder's MLmodel by path only: a file:// URI reads as a missing model.
    parsed = urlparse(model_uri)
    return url2pathname(parsed.path) if parsed.scheme == "file" else model_uri


def _all_pages(fetch: Callable[[str | None], list[T]]) -> list[T]:
    items: list[T] = []
    token: str | None = None
    while True:
        page = fetch(token)
        items.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return items


def _name_filter(name: str) -> str:
    # MLflow's filter grammar has no escape character, only a choice of quotes.
    if "'" not in name:
        return f"name = '{name}'"
    if '"' not in name:
        return f'name = "{name}"'
    raise InvalidInputError(f"model name {name!r} cannot be searched for", field="name", value=name)


def is_version(alias_or_version: str | int) -> bool:
    """Whether an alias-or-version argument names a version: everywhere, digits mean a version."""
    return isinstance(alias_or_version, int) or (alias_or_version.isascii() and alias_or_version.isdigit())


def _check_alias(alias: str) -> None:
    # Everywhere an alias or a version is accepted, digits mean a version, so an all-digit
    # alias (which MLflow allows) could never be reached.
    if is_version(alias):
        raise InvalidInputError(f"alias must not be all digits, got {alias!r}", field="alias", value=alias)


def version_number(version: int | str) -> int:
    """A version argument as a number, checked to be a positive integer."""
    if isinstance(version, bool) or not is_version(version):
        raise InvalidInputError(f"version must be a positive integer, got {version!r}", field="version")
    number = int(version)
    if number < 1:
        raise InvalidInputError(f"version must be a positive integer, got {version!r}", field="version")
    return number


def _aliases_by_version(aliases: dict[str, Any]) -> dict[int, tuple[str, ...]]:
    by_version: dict[int, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(int(version), []).append(alias)
    return {version: tuple(sorted(names)) for version, names in by_version.items()}


def _model_version_info(mv: ModelVersion, aliases: tuple[str, ...]) -> ModelVersionInfo:
    return ModelVersionInfo(
        name=mv.name,
        version=int(mv.version),
        source=str(mv.source),
        run_id=mv.run_id or None,
        description=mv.description or None,
        aliases=aliases,
        tags=dict(mv.tags or {}),
        created_ms=mv.creation_timestamp,
    )


def _prompt_version_info(pv: PromptVersion) -> PromptVersionInfo:
    if not isinstance(pv.template, str):
        raise InvalidInputError(
            f"prompt {pv.name!r} version {pv.version} is a chat prompt; only text prompts are supported",
            prompt=pv.name,
            version=pv.version,
        )
    return PromptVersionInfo(
        name=pv.name,
        version=int(pv.version),
        template=pv.template,
        commit_message=pv.commit_message or None,
        aliases=tuple(sorted(pv.aliases or ())),
        tags=dict(pv.tags or {}),
    )
