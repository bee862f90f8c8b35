"""A retraining's data set: the champion's training rows plus labelled production rows, hashed.

Three sources, in this order:

- ``reference``: rows the parent version was trained on (its run's ``data/train.parquet``),
  at most ``reference_rows`` of them (a seeded draw), weighted ``reference_weight``;
- ``production``: every labelled instance of the model in the window (the prediction log
  joined with ``/feedback`` labels, all versions and tenants), oldest first, weighted 1 or
  halved every ``half_life`` of age;
- ``data``: rows a user handed in (``opsloop retrain --data FILE``), weight 1; the pipeline then
  leaves the production window out, so the file alone is validated and compared on.

The newest ``holdout_share`` of the production and user rows is the holdout: never trained
on, it is where the challenger and the champion are compared. The data set is one frame with
the model's input columns, the label, and ``_weight``, ``_split`` and ``_source`` columns; its
content hash is SHA-256 over its CSV text, and its manifest names the exact rows of each source
(reference row numbers, prediction-log ids, the user file's SHA-256) so that :func:`rebuild`
can make the same frame again and check the hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from opsloop.errors import InvalidInputError, NotFoundError

if TYPE_CHECKING:
    from opsloop.predictions import PredictionLog, PredictionRecord
    from opsloop.registry import Registry

__all__ = [
    "DATASET_ARTIFACT",
    "MANIFEST_ARTIFACT",
    "TRAINING_DATA_ARTIFACT",
    "DataSpec",
    "TrainingData",
    "assemble",
    "frame_hash",
    "read_user_data",
    "rebuild",
    "typed_features",
]

TRAINING_DATA_ARTIFACT = "data/train.parquet"
"""The rows a version was fit on (inputs and label), kept in its run: the next retraining's reference."""
DATASET_ARTIFACT = "data/dataset.parquet"
MANIFEST_ARTIFACT = "data/manifest.json"
WEIGHT, SPLIT, SOURCE = "_weight", "_split", "_source"
_PANDAS_TYPES = {
    "long": "int64",
    "integer": "int32",
    "double": "float64",
    "float": "float32",
    "boolean": "bool",
}


@dataclass(frozen=True)
class DataSpec:
    """How a retraining picks its rows."""

    window: timedelta | None = timedelta(days=7)
    """Production rows predicted within this long before now; None: all of them."""
    holdout_share: float = 0.2
    """The newest share of production and user rows kept out of training, to compare on."""
    reference_rows: int = 2000
    """At most this many of the parent's training rows."""
    reference_weight: float = 0.2
    """Sample weight of a reference row (a production row weighs 1)."""
    half_life: timedelta | None = None
    """If set, a production row's weight halves with each half-life of age (behind the newest row)."""
    max_production_rows: int = 100_000
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.holdout_share < 1:
            raise InvalidInputError("holdout share must be in (0, 1)", field="holdout_share")
        if self.reference_rows < 0 or self.reference_weight < 0:
            raise InvalidInputError("reference rows and weight must not be negative", field="reference")


@dataclass(frozen=True)
class TrainingData:
    """The assembled data set; see the module docs."""

    frame: pd.DataFrame
    features: list[str]
    label: str
    hash: str
    manifest: dict[str, Any]

    @property
    def new_rows(self) -> pd.DataFrame:
        """Production and user rows: what validation checks (the reference passed it when trained on)."""
        return self.frame[self.frame[SOURCE] != "reference"]

    @property
    def train(self) -> pd.DataFrame:
        """Rows to fit on."""
        return self.frame[self.frame[SPLIT] == "train"]

    @property
    def holdout(self) -> pd.DataFrame:
        """Rows to compare on, never fit on."""
        return self.frame[self.frame[SPLIT] == "holdout"]

    def counts(self) -> dict[str, int]:
        """Rows by source and split, for reports."""
        sources = self.frame[SOURCE].value_counts()
        return {
            "total": len(self.frame),
            "train": int((self.frame[SPLIT] == "train").sum()),
            "holdout": int((self.frame[SPLIT] == "holdout").sum()),
            **{source: int(sources.get(source, 0)) for source in ("reference", "production", "data")},
        }


def frame_hash(frame: pd.DataFrame) -> str:
    """``sha256:<hex>`` of the frame's CSV text (no index): the same rows give the same hash."""
    return "sha256:" + hashlib.sha256(frame.to_csv(index=False).encode()).hexdigest()


def read_user_data(path: Path, columns: Sequence[str]) -> tuple[pd.DataFrame, str]:
    """A user's labelled rows (CSV or Parquet) and the file's ``sha256:`` digest.

    Raises:
        NotFoundError: No such file.
        InvalidInputError: Not CSV or Parquet, unreadable, or lacking some of ``columns``.
    """
    if not path.is_file():
        raise NotFoundError(f"no data file at {str(path)!r}", field="data", path=str(path))
    digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    try:
        frame = pd.read_parquet(path) if path.suffix.lower() == ".parquet" else pd.read_csv(path)
    except Exception as exc:  # pandas raises parser-specific errors; all mean "not readable data"
        raise InvalidInputError(
            f"{str(path)!r} is not readable CSV or Parquet: {exc}", field="data", path=str(path)
        ) from exc
    missing = [name for name in columns if name not in frame.columns]
    if missing:
        raise InvalidInputError(
            f"{str(path)!r} lacks columns {missing} (the model's inputs and its label)",
            field="data",
            missing=missing,
        )
    return frame[list(columns)], digest


def assemble(
    signature: Sequence[tuple[str, str]],
    label: str,
    spec: DataSpec,
    *,
    classes: Sequence[Any] = (),
    reference: pd.DataFrame | None,
    reference_source: dict[str, Any],
    production: Sequence[PredictionRecord],
    production_source: dict[str, Any],
    user: pd.DataFrame | None = None,
    user_source: dict[str, Any] | None = None,
) -> TrainingData:
    """Build the data set from its three sources (module docs); pure.

    Args:
        signature: The model's ``(column, MLflow type)`` input pairs, in order.
        label: Name of the label column.
        spec: Row choice and weights.
        classes: The model's classes: labels that match one as text become that class (a CSV's
            ``"1"`` and JSON's ``1`` are one label); others stay as they are, for validation to
            name.
        reference: The parent's training rows (inputs and label), or None.
        reference_source: Where they came from (model, version, run), for the manifest.
        production: Labelled predictions, oldest first (``PredictionLog.labelled``).
        production_source: The window, for the manifest.
        user: A user's labelled rows, or None.
        user_source: The user file's path and digest.
    """
    features = [name for name, _ in signature]
    columns = [*features, label]
    parts: list[pd.DataFrame] = []
    manifest: dict[str, Any] = {"features": features, "label": label, "sources": {}}
    if reference is not None and len(reference) and spec.reference_rows:
        rows = np.sort(np.random.default_rng(spec.seed).permutation(len(reference))[: spec.reference_rows])
        part = reference.iloc[rows][columns].reset_index(drop=True)
        parts.append(part.assign(**{WEIGHT: spec.reference_weight, SOURCE: "reference"}))
        manifest["sources"]["reference"] = {**reference_source, "rows": rows.tolist()}
    produced = _production_frame(production, features, label, spec)
    parts.append(produced)
    manifest["sources"]["production"] = {
        **production_source,
        "prediction_ids": [record.id for record in production],
        "rows": len(produced),
    }
    if user is not None:
        parts.append(user[columns].reset_index(drop=True).assign(**{WEIGHT: 1.0, SOURCE: "data"}))
        manifest["sources"]["data"] = {**(user_source or {}), "rows": len(user)}
    frame = pd.concat([part for part in parts if len(part)], ignore_index=True) if parts else pd.DataFrame()
    if frame.empty:
        frame = pd.DataFrame(columns=[*columns, WEIGHT, SOURCE])
    if classes:
        as_class = {str(c): c for c in classes}
        frame[label] = frame[label].map(lambda value: as_class.get(str(value), value))
    new = (frame[SOURCE] != "reference").to_numpy()
    holdout = int(np.floor(new.sum() * spec.holdout_share))
    split = np.full(len(frame), "train", dtype=object)
    if holdout:
        split[np.flatnonzero(new)[-holdout:]] = "holdout"  # the newest new rows
    frame[SPLIT] = split
    frame = frame[[*columns, WEIGHT, SPLIT, SOURCE]]
    manifest["holdout"] = {"share": spec.holdout_share, "rows": holdout}
    manifest["weights"] = {
        "reference": spec.reference_weight,
        "half_life_seconds": spec.half_life.total_seconds() if spec.half_life else None,
    }
    manifest["spec"] = {"reference_rows": spec.reference_rows, "seed": spec.seed}
    manifest["classes"] = list(classes)
    digest = frame_hash(frame)
    manifest["hash"] = digest
    manifest["rows"] = len(frame)
    return TrainingData(frame, features, label, digest, manifest)


def _production_frame(
    records: Sequence[PredictionRecord], features: list[str], label: str, spec: DataSpec
) -> pd.DataFrame:
    rows: list[dict[str, Any]] = []
    times: list[float] = []
    for record in records:
        for instance, value in zip(record.inputs, record.labels or [], strict=False):
            if value is None:  # feedback that left this instance out: not a labelled row
                continue
            rows.append({**{name: instance.get(name) for name in features}, label: value})
            times.append(record.at.timestamp())
    frame = pd.DataFrame(rows, columns=[*features, label])
    weights = np.ones(len(frame))
    if spec.half_life is not None and len(frame):
        age = max(times) - np.asarray(times)
        weights = 0.5 ** (age / spec.half_life.total_seconds())
    return frame.assign(**{WEIGHT: weights, SOURCE: "production"})


def typed_features(frame: pd.DataFrame, signature: Sequence[tuple[str, str]]) -> pd.DataFrame:
    """The input columns with the signature's dtypes (complete rows only), as the model is fit on them."""
    features = frame[[name for name, _ in signature]]
    return features.astype({name: _PANDAS_TYPES.get(kind, "str") for name, kind in signature})


def rebuild(manifest: dict[str, Any], registry: Registry, predictions: PredictionLog) -> TrainingData:
    """Make a data set again from its manifest, and check that its hash is the recorded one.

    Raises:
        NotFoundError: A source is gone (the parent's run, prediction rows, the user file).
        InvalidInputError: The rebuilt rows hash differently: a source changed since.
    """
    sources = manifest["sources"]
    features, label = manifest["features"], manifest["label"]
    reference = reference_source = None
    if "reference" in sources:
        reference_source = {k: v for k, v in sources["reference"].items() if k != "rows"}
        parent = registry.run_frame(sources["reference"]["run_id"], TRAINING_DATA_ARTIFACT)
        reference = parent.iloc[sources["reference"]["rows"]].reset_index(drop=True)
    production = sources["production"]
    ids = production["prediction_ids"]
    records = predictions.by_ids(ids)
    if len(records) != len(ids):
        raise NotFoundError(
            f"{len(ids) - len(records)} of the data set's prediction rows are gone", rows=len(ids)
        )
    user = user_source = None
    if "data" in sources:
        user_source = {k: v for k, v in sources["data"].items() if k != "rows"}
        user, digest = read_user_data(Path(sources["data"]["path"]), [*features, label])
        if digest != sources["data"]["digest"]:
            raise InvalidInputError(f"the data file {sources['data']['path']!r} changed since", field="data")
    half_life = manifest["weights"]["half_life_seconds"]
    spec = DataSpec(
        window=None,
        holdout_share=manifest["holdout"]["share"],
        reference_rows=len(reference) if reference is not None else 0,
        reference_weight=manifest["weights"]["reference"],
        half_life=timedelta(seconds=half_life) if half_life else None,
        seed=manifest["spec"]["seed"],
    )
    # The reference rows were drawn already: reference_rows = all of them keeps them in order.
    signature = [(name, "") for name in features]
    rebuilt = assemble(
        signature,
        label,
        spec,
        classes=manifest.get("classes", ()),
        reference=reference,
        reference_source=reference_source or {},
        production=records,
        production_source={k: v for k, v in production.items() if k not in ("prediction_ids", "rows")},
        user=user,
        user_source=user_source,
    )
    if rebuilt.hash != manifest["hash"]:
        raise InvalidInputError(
            f"the rebuilt rows hash to {rebuilt.hash}, not the recorded {manifest['hash']}: a source changed",
            field="manifest",
        )
    return TrainingData(rebuilt.frame, features, label, rebuilt.hash, manifest)
