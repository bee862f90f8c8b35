"""Labelled accuracy per variant: an experiment's predictions joined with their ``/feedback`` labels."""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy import select

from opsloop.db import Database
from opsloop.tables import Prediction

__all__ = ["LabelSource"]


def _predicted(output: Any) -> str:
    """The predicted class: a classifier's most probable one, else the prediction itself."""
    if isinstance(output, dict):
        return str(max(output, key=output.__getitem__))
    return str(output)


class LabelSource:
    """Which of an experiment's labelled instances each variant got right.

    Args:
        db: The started relational store holding the prediction log.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def correct(self, experiment: str) -> dict[str, np.ndarray]:
        """Per variant, one flag per labelled instance: did the prediction equal the label?"""
        query = select(Prediction.variant, Prediction.outputs, Prediction.labels).where(
            Prediction.experiment == experiment, Prediction.feedback_at.is_not(None)
        )
        flags: dict[str, list[bool]] = {}
        with self._db.read() as session:
            for variant, outputs, labels in session.execute(query):
                flags.setdefault(variant, []).extend(
                    _predicted(out) == str(label) for out, label in zip(outputs, labels, strict=False)
                )
        return {variant: np.array(found, dtype=bool) for variant, found in flags.items()}
