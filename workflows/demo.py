"""The demo model that ships with opsloop: synthetic credit risk, from data to a registered version.

Each row is a loan applicant; the label ``default`` (0/1) says whether the loan defaulted.
The data-generating process, per row (``U``: uniform, ``N``: normal):

- ``age`` ~ integers U[21, 75]; ``employment_type`` is ``retired`` with probability 0.65 from
  age 62 on and 0.02 before, otherwise salaried / self_employed / unemployed at 0.70 / 0.20 / 0.10.
- ``income`` = exp(N(ln 48000, 0.45)) times 1.0 / 1.15 / 0.35 / 0.6 by employment type.
- ``home_ownership``: rent / own / mortgage at 0.40 / 0.20 / 0.40; ``purpose``: car / home /
  education / business / other at 0.30 / 0.20 / 0.15 / 0.15 / 0.20.
- ``loan_amount`` = exp(N(ln 12000, 0.6)) clipped to [500, 150000]; ``loan_term_months`` one of
  12 / 24 / 36 / 48 / 60 at 0.10 / 0.20 / 0.35 / 0.15 / 0.20.
- ``credit_history_years`` ~ Gamma(2, 4) capped at age - 18; ``num_late_payments`` ~ Poisson(0.6).
- ``debt_to_income`` = Beta(2, 6) (existing debt) + yearly loan repayment / income, capped at 3.

The label is Bernoulli(sigmoid(z)), a logistic model with known coefficients::

    z = -2.2 + 3.0 * (debt_to_income - 0.4) + 0.7 * num_late_payments
        + 1.2 * [unemployed] + 0.3 * [self_employed] - 0.1 * (credit_history_years - 8)
        - 0.5 * ln(income / 48000) + 0.4 * [purpose = business] - 0.3 * [home_ownership = own]

so a higher debt-to-income ratio, late payments, unemployment, a business loan and a low
income raise the risk of default, and a long credit history and owning a home lower it.
About 23% of the rows default, and a logistic regression reaches a holdout ROC AUC near 0.78.

``shift=True`` draws from a drifted world for drift detection: incomes are 25% lower and
loans 30% larger (so ``debt_to_income`` rises too), late payments ~ Poisson(1.2), the
non-retired are unemployed at 0.25 (salaried 0.60, self_employed 0.15), business loans
double (purpose car / home / education / business / other at 0.20 / 0.15 / 0.10 / 0.30 /
0.25), and the concept moves: the ``debt_to_income`` coefficient grows from 3.0 to 5.0 and
the intercept from -2.2 to -1.7 (the same applicant is riskier). Six of the ten inputs
change, so a drift check calls it dataset drift at the usual 0.5 share. About 56% of those
rows default; a model trained before the shift loses about 0.05 of accuracy on them and a
retrained one wins it back (``workflows.retraining``).

:func:`log_demo_run` fits :func:`build_pipeline` on such data, logs the run (params,
holdout metrics, the model) through the registry and profiles the training split
(:func:`reference_profile`, for drift checks); :func:`train_demo` also registers the model
with lineage and that reference under an alias.
"""

from __future__ import annotations

import fcntl
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, brier_score_loss, log_loss, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from opsloop.audit import AuditLog
from opsloop.auth import system_principal
from opsloop.errors import InvalidInputError, NotFoundError
from opsloop.registry import Lineage, ModelVersionInfo, Registry
from workflows.reference import Column, build_profile
from workflows.retraining.data import TRAINING_DATA_ARTIFACT, frame_hash
from workflows.retraining.training import LABEL_TAG, SKLEARN_REQUIREMENTS, TRAINER_TAG

if TYPE_CHECKING:
    import optuna

__all__ = [
    "CLASSIFIER_PARAMS",
    "DEMO_TRAINER",
    "FEATURES",
    "FEATURE_NAMES",
    "LABEL",
    "DemoRun",
    "Feature",
    "build_pipeline",
    "data_hash",
    "generate_credit_data",
    "log_demo_run",
    "reference_profile",
    "train_credit_risk",
    "train_demo",
]


@dataclass(frozen=True)
class Feature:
    """One input column of the demo model.

    Attributes:
        name: Column name.
        kind: ``numeric`` (scaled) or ``categorical`` (one-hot encoded).
        dtype: MLflow's type name for the column: ``long``, ``double`` or ``string``.
        categories: The allowed values of a categorical feature; ``()`` for numeric ones.
        description: What the column means.
    """

    name: str
    kind: Literal["numeric", "categorical"]
    dtype: Literal["long", "double", "string"]
    categories: tuple[str, ...] = ()
    description: str = ""


FEATURES: tuple[Feature, ...] = (
    Feature("age", "numeric", "long", description="applicant's age in years, 21-75"),
    Feature("income", "numeric", "double", description="yearly income"),
    Feature("loan_amount", "numeric", "double", description="amount borrowed"),
    Feature("loan_term_months", "numeric", "long", description="12, 24, 36, 48 or 60"),
    Feature("credit_history_years", "numeric", "double", description="years since the first credit"),
    Feature("num_late_payments", "numeric", "long", description="late payments on record"),
    Feature("debt_to_income", "numeric", "double", description="yearly debt service / income"),
    Feature(
        "employment_type",
        "categorical",
        "string",
        ("salaried", "self_employed", "unemployed", "retired"),
        "how the applicant earns a living",
    ),
    Feature("home_ownership", "categorical", "string", ("rent", "own", "mortgage"), "housing"),
    Feature(
        "purpose",
        "categorical",
        "string",
        ("car", "home", "education", "business", "other"),
        "what the loan is for",
    ),
)
"""The model's inputs, in the order the pipeline reads them (by position)."""

FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
LABEL = "default"
CLASSIFIER_PARAMS: dict[str, Any] = {"C": 1.0, "max_iter": 1000, "solver": "lbfgs"}
"""Hyperparameters of the LogisticRegression, logged as ``classifier.*`` params."""

_PANDAS_DTYPES = {"long": "int64", "double": "float64", "string": "str"}
_COLUMNS = tuple(Column(f.name, f.kind, f.categories) for f in FEATURES)
# The FunctionTransformer below calls numpy.asarray; skops refuses unlisted callables on load.
_SKOPS_TRUSTED = ["numpy.asarray"]


def generate_credit_data(rows: int, *, seed: int = 0, shift: bool = False) -> pd.DataFrame:
    """Draw ``rows`` applicants and their labels from the process in the module docstring.

    Args:
        rows: Number of rows, at least 100.
        seed: Seed of numpy's default generator; the same seed gives the same frame.
        shift: Draw from the drifted world (lower incomes, more late payments and
            unemployment, a heavier ``debt_to_income`` coefficient).

    Returns:
        The FEATURES columns in order (int64, float64 and string dtypes), then ``default`` (int64).

    Raises:
        InvalidInputError: ``rows`` is below 100.
    """
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 100:
        raise InvalidInputError(f"rows must be an integer of at least 100, got {rows!r}", field="rows")
    rng = np.random.default_rng(seed)
    age = rng.integers(21, 76, rows)
    retired_p = np.where(age >= 62, 0.65, 0.02)
    draw = rng.random(rows)
    rest = (draw - retired_p) / (1.0 - retired_p)  # uniform on [0, 1) for the non-retired
    salaried, self_employed = (0.60, 0.15) if shift else (0.70, 0.20)
    employment = np.select(
        [draw < retired_p, rest < salaried, rest < salaried + self_employed],
        ["retired", "salaried", "self_employed"],
        "unemployed",
    )
    factor = {"salaried": 1.0, "self_employed": 1.15, "unemployed": 0.35, "retired": 0.6}
    income = np.exp(rng.normal(np.log(48_000), 0.45, rows)) * pd.Series(employment).map(factor).to_numpy()
    income = np.round(income * (0.75 if shift else 1.0), 2)
    home = rng.choice(["rent", "own", "mortgage"], rows, p=[0.4, 0.2, 0.4])
    purpose_mix = [0.2, 0.15, 0.1, 0.3, 0.25] if shift else [0.3, 0.2, 0.15, 0.15, 0.2]
    purpose = rng.choice(["car", "home", "education", "business", "other"], rows, p=purpose_mix)
    typical_loan = 15_600 if shift else 12_000
    loan = np.round(np.clip(np.exp(rng.normal(np.log(typical_loan), 0.6, rows)), 500, 150_000), 2)
    term = rng.choice([12, 24, 36, 48, 60], rows, p=[0.1, 0.2, 0.35, 0.15, 0.2])
    history = np.round(np.minimum(rng.gamma(2.0, 4.0, rows), age - 18), 1)
    late = rng.poisson(1.2 if shift else 0.6, rows)
    dti = np.round(np.minimum(rng.beta(2, 6, rows) + loan * 12 / term / income, 3.0), 4)
    z = (
        (-1.7 if shift else -2.2)
        + (5.0 if shift else 3.0) * (dti - 0.4)
        + 0.7 * late
        + 1.2 * (employment == "unemployed")
        + 0.3 * (employment == "self_employed")
        - 0.1 * (history - 8)
        - 0.5 * np.log(income / 48_000)
        + 0.4 * (purpose == "business")
        - 0.3 * (home == "own")
    )
    label = (rng.random(rows) < 1.0 / (1.0 + np.exp(-z))).astype(np.int64)
    columns = [age, income, loan, term, history, late, dti, employment, home, purpose]
    frame = pd.DataFrame(dict(zip(FEATURE_NAMES, columns, strict=True)))
    frame = frame.astype({f.name: _PANDAS_DTYPES[f.dtype] for f in FEATURES})
    frame[LABEL] = label
    return frame


def build_pipeline() -> Pipeline:
    """Return the unfitted model: scaling and one-hot encoding by column position, then a classifier.

    The first step turns any input into a 2-D object array, so the fitted pipeline takes a
    DataFrame in FEATURES order or the plain object array serving builds per request, and
    gives both the same answer without feature-name warnings. Fit it on an object array
    (as :func:`train_demo` does) so that it records no column names.
    """
    numeric = [i for i, f in enumerate(FEATURES) if f.kind == "numeric"]
    categorical = [i for i, f in enumerate(FEATURES) if f.kind == "categorical"]
    encode = ColumnTransformer(
        [
            ("numeric", StandardScaler(), numeric),
            ("categorical", OneHotEncoder(handle_unknown="ignore"), categorical),
        ]
    )
    return Pipeline(
        [
            ("to_array", FunctionTransformer(np.asarray, kw_args={"dtype": "O"})),
            ("encode", encode),
            ("classifier", LogisticRegression(**CLASSIFIER_PARAMS)),
        ]
    )


DEMO_TRAINER = "workflows.demo:train_credit_risk"
"""The demo model's trainer, as its ``opsloop.trainer`` tag names it for retraining."""


def train_credit_risk(features: pd.DataFrame, labels: Any, weights: Any, trial: optuna.Trial) -> Pipeline:
    """The demo model's trainer for retraining (``workflows.retraining.training``).

    Searches the classifier's regularisation and class weighting; fits :func:`build_pipeline`
    on an object array, as :func:`log_demo_run` does, so serving keeps its fast path.
    """
    c = trial.suggest_float("C", 1e-3, 100.0, log=True)
    balanced = trial.suggest_categorical("class_weight", ["none", "balanced"]) == "balanced"
    pipeline = build_pipeline().set_params(
        classifier__C=c, classifier__class_weight="balanced" if balanced else None
    )
    return pipeline.fit(features.to_numpy(dtype=object), labels, classifier__sample_weight=weights)


def reference_profile(
    frame: pd.DataFrame, probabilities: Any, *, sample_rows: int = 5000, seed: int = 0
) -> dict[str, Any]:
    """Summarise the demo model's inputs and predicted probabilities for later drift checks.

    :func:`workflows.reference.build_profile` over FEATURES, every declared category counted.

    Args:
        frame: At least the FEATURES columns.
        probabilities: P(default) per row, or a ``predict_proba`` array (column 1 is used).
        sample_rows: How many rows to keep as the profile's ``sample``.
        seed: Seed of that draw.

    Raises:
        InvalidInputError: A feature column is missing or empty, or the lengths differ.
    """
    return build_profile(frame, _COLUMNS, probabilities, sample_rows=sample_rows, seed=seed)


def data_hash(frame: pd.DataFrame) -> str:
    """Return ``sha256:<hex>`` of the frame's CSV bytes (no index): the lineage's data hash."""
    return frame_hash(frame)


@dataclass(frozen=True)
class DemoRun:
    """A trained and logged demo model, not registered yet.

    Attributes:
        name: The registered model name it is meant for.
        model_uri: The logged model, ``models:/m-...``.
        lineage: Data hash, git commit and training parameters for the version tags.
        description: Holdout metrics and data hash, for the version's description.
        reference: The :func:`reference_profile` of the training split, to store with the version.
    """

    name: str
    model_uri: str
    lineage: Lineage
    description: str
    reference: dict[str, Any]


def log_demo_run(
    registry: Registry,
    *,
    rows: int = 5000,
    seed: int = 0,
    shift: bool = False,
    name: str = "credit-risk",
    progress: Callable[[str], None] | None = None,
) -> DemoRun:
    """Generate data, train, evaluate on a holdout, log the run, and profile the training split.

    Args:
        registry: A started registry; the run goes into its experiment.
        rows: Rows to generate; 80% train, 20% stratified holdout.
        seed: Seed of the data and the split.
        shift: Train on drifted data (see the module docstring).
        name: Registered model name the run is for (it names the run).
        progress: Called with a line per step.

    Raises:
        InvalidInputError: ``rows`` is below 100.
        BackendError: MLflow failed to log the run.
    """
    say = progress or (lambda message: None)
    say(f"generating {rows} rows (seed {seed}{', shifted' if shift else ''})")
    frame = generate_credit_data(rows, seed=seed, shift=shift)
    digest = data_hash(frame)
    inputs = frame[list(FEATURE_NAMES)]
    x_train, x_test, y_train, y_test = train_test_split(
        inputs, frame[LABEL].to_numpy(), test_size=0.2, stratify=frame[LABEL], random_state=seed
    )
    say(f"fitting on {len(x_train)} rows")
    # Fitted on an object array, the model carries no ``feature_names_in_``; serving reads
    # that as "takes plain arrays" and skips building a DataFrame per request.
    pipeline = build_pipeline().fit(x_train.to_numpy(dtype=object), y_train)
    train_proba = pipeline.predict_proba(x_train)
    holdout = pipeline.predict_proba(x_test)[:, 1]
    metrics = {
        "roc_auc": float(roc_auc_score(y_test, holdout)),
        "accuracy": float(accuracy_score(y_test, holdout >= 0.5)),
        "log_loss": float(log_loss(y_test, holdout, labels=[0, 1])),
        "brier": float(brier_score_loss(y_test, holdout)),
    }
    summary = " ".join(f"{key}={value:.4f}" for key, value in metrics.items())
    say(f"holdout ({len(x_test)} rows): {summary}")
    params: dict[str, Any] = {"rows": rows, "seed": seed, "shift": shift, "test_size": 0.2}
    params["classifier"] = "LogisticRegression"
    params.update({f"classifier.{key}": value for key, value in CLASSIFIER_PARAMS.items()})
    say(f"logging the run to experiment {registry.experiment_id}")
    logged = registry.log_sklearn_model(
        pipeline,
        run_name=f"{name}-demo",
        inputs=x_train,
        outputs=train_proba,
        params=params,
        metrics=metrics,
        tags={"opsloop.data_hash": digest},
        requirements=[f"{dist}=={installed_version(dist)}" for dist in SKLEARN_REQUIREMENTS],
        predict_fn="predict_proba",  # pyfunc answers probabilities, like the estimator
        trusted_types=_SKOPS_TRUSTED,
    )
    # The rows it was fit on, with their labels: a retraining's reference (workflows.retraining.data).
    fitted = x_train.assign(**{LABEL: y_train}).reset_index(drop=True)
    registry.log_run(logged.run_id, artifacts={TRAINING_DATA_ARTIFACT: fitted})
    lineage = Lineage.capture(data_hash=digest, params=params, cwd=Path(__file__).resolve().parent)
    description = f"demo credit-risk model; holdout {summary}; data {digest}"
    return DemoRun(name, logged.model_uri, lineage, description, reference_profile(x_train, train_proba))


def train_demo(
    registry: Registry,
    *,
    rows: int = 5000,
    seed: int = 0,
    shift: bool = False,
    name: str = "credit-risk",
    alias: str | None = "champion",
    progress: Callable[[str], None] | None = None,
) -> ModelVersionInfo:
    """:func:`log_demo_run`, then register the model with its lineage and reference, and alias it.

    The registration is not audited: callers that act for someone register a
    :func:`log_demo_run` with ``workflows.registration.register`` instead.

    Args:
        registry: A started registry; the run goes into its experiment.
        rows: Rows to generate; 80% train, 20% stratified holdout.
        seed: Seed of the data and the split.
        shift: Train on drifted data (see the module docstring).
        name: Registered model name.
        alias: Alias pointed at the new version; None leaves aliases alone (callers that
            audit alias moves use ``workflows.promotion.promote`` instead).
        progress: Called with a line per step.

    Returns:
        The new version, with its alias, lineage tags and holdout metrics in the description.

    Raises:
        InvalidInputError: ``rows`` is below 100, or a bad name or alias.
        BackendError: MLflow failed to log the run.
    """
    run = log_demo_run(registry, rows=rows, seed=seed, shift=shift, name=name, progress=progress)
    say = progress or (lambda message: None)
    say(f"registering {name!r}")
    created = registry.register_model(name, run.model_uri, run.lineage, description=run.description)
    registry.log_reference(name, created.version, run.reference)
    declare_trainer(registry, name)
    if alias is not None:
        registry.set_alias(name, alias, created.version)
        say(f"{name!r} version {created.version} is {alias!r}")
    return registry.get_version(name, created.version)


def declare_trainer(registry: Registry, name: str) -> None:
    """Tag a registered demo model with its trainer and label column, so it can be retrained."""
    registry.set_model_tag(name, TRAINER_TAG, DEMO_TRAINER)
    registry.set_model_tag(name, LABEL_TAG, LABEL)


def _declare_older_demo(registry: Registry, name: str = "credit-risk") -> None:
    """A demo model a release without retraining registered gets its trainer now, so it can be retrained."""
    try:
        if TRAINER_TAG in registry.model_tags(name):
            return
        if not (registry.get_alias(name, "champion").description or "").startswith("demo credit-risk model"):
            return  # a model of the user's that happens to share the name: not ours to declare
    except NotFoundError:
        return
    declare_trainer(registry, name)


def bootstrap_demo(
    registry: Registry,
    audit: AuditLog,
    lock: Path,
    *,
    progress: Callable[[str], None] | None = None,
) -> ModelVersionInfo | None:
    """Train the demo model and make it champion if the registry has no model yet, else do nothing.

    Once, however many server workers start at the same time: they take turns on an
    exclusive ``flock`` of ``lock`` and only the first finds the registry empty. The promotion
    is audited as done by ``system``. ``progress`` is called with a line per step of the training.

    Returns:
        The new champion version, or None when the registry already had a model.
    """
    from workflows.promotion import promote

    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # released when the file closes
        if registry.models():
            _declare_older_demo(registry)
            return None
        info = train_demo(registry, alias=None, progress=progress)
        promote(system_principal("default"), registry, audit, info.name, info.version)
    return info
