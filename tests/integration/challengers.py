"""Challenger models for experiment tests: MLflow pyfunc models that wrap a registered version.

A wrapper answers exactly as the version it wraps, only slower (``delay_s``), failing for
some inputs (``fail_when``: a feature and the value that makes it raise), as a user's broken
or slow challenger would, or wrong for a share of the inputs (``flip_share``: a weak model of
a binary label; which inputs is fixed by their values, so the same applicant always gets the
same answer). It is saved to a folder, to register with ``opsloop models register
NAME --from FOLDER`` or :func:`workflows.registration.register`. The wrapper class is pickled
by value, so an ``opsloop serve`` process loads it without importing the tests.
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path
from typing import Any

import cloudpickle
import mlflow.pyfunc
import mlflow.sklearn
import numpy as np

cloudpickle.register_pickle_by_value(sys.modules[__name__])


class Wrapper(mlflow.pyfunc.PythonModel):  # type: ignore[misc]
    """The wrapped version's predictions, ``delay_s`` later, or an error for the failing inputs."""

    def __init__(
        self, delay_s: float = 0.0, fail_when: tuple[str, Any] | None = None, flip_share: float = 0.0
    ) -> None:
        self.delay_s = delay_s
        self.fail_when = fail_when
        self.flip_share = flip_share

    def load_context(self, context: Any) -> None:
        # The scikit-learn flavour: its predict gives class labels (the pyfunc's gives probabilities).
        self.base = mlflow.sklearn.load_model(context.artifacts["base"])

    # No type hints: MLflow would try to derive a signature from them; the wrapped model's is used.
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        if self.fail_when is not None:
            column, value = self.fail_when
            if (model_input[column] == value).any():
                raise RuntimeError(f"challenger cannot score {column}={value!r}")
        if self.delay_s:
            time.sleep(self.delay_s)
        answers = np.asarray(self.base.predict(model_input))
        if self.flip_share:
            rows = model_input.astype(str).agg("|".join, axis=1)
            flip = [
                int(hashlib.sha256(r.encode()).hexdigest(), 16) % 1000 < self.flip_share * 1000 for r in rows
            ]
            answers = np.where(flip, 1 - answers, answers)
        return answers


def save_wrapper(
    base_uri: str,
    folder: Path,
    *,
    delay_s: float = 0.0,
    fail_when: tuple[str, Any] | None = None,
    flip_share: float = 0.0,
) -> Path:
    """Save a wrapper of the model at ``base_uri`` (e.g. ``models:/credit-risk/1``) to ``folder``."""
    from mlflow.artifacts import download_artifacts
    from mlflow.models import Model

    base = download_artifacts(base_uri, dst_path=str(folder.with_name(folder.name + "-base")))
    signature = Model.load(base).signature
    mlflow.pyfunc.save_model(
        str(folder),
        python_model=Wrapper(delay_s, fail_when, flip_share),
        artifacts={"base": base},
        signature=signature,
    )
    return folder
