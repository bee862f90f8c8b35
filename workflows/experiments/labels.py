"""What each variant was told of its answers: labelled accuracy for a model, answer scores for a prompt.

A model experiment's predictions are joined with their ``/feedback/{model}`` labels; a prompt
experiment's queries carry the scores ``/feedback/query`` gave their answers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy import select

from opsloop.db import Database
from opsloop.tables import Prediction, RagQuery
from opsloop.traffic import TargetKind

__all__ = ["LabelSource"]


def _predicted(output: Any) -> str:
    """The predicted class: a classifier's most probable one, else the prediction itself."""
    if isinstance(output, dict):
        return str(max(output, key=output.__getitem__))
    return str(output)


class LabelSource:
    """Per variant, the experiment's feedback: correct flags (models) or answer scores (prompts).

    Args:
        db: The started relational store holding the prediction log.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def values(self, target_kind: TargetKind, experiment: str) -> dict[str, np.ndarray]:
        """Per variant, the experiment's feedback: :meth:`correct`, :meth:`scores`, or none (a route)."""
        match target_kind:
            case "model":
                return self.correct(experiment)
            case "prompt":
                return self.scores(experiment)
        return {}

    def scores(self, experiment: str) -> dict[str, np.ndarray]:
        """Per variant, the scores in [0, 1] that ``/feedback/query`` gave its answers."""
        query = select(RagQuery.variant, RagQuery.feedback_score).where(
            RagQuery.experiment == experiment, RagQuery.feedback_score.is_not(None)
        )
        found: dict[str, list[float]] = {}
        with self._db.read() as session:
            for variant, score in session.execute(query):
                if variant is not None and score is not None:  # both are, by the query
                    found.setdefault(variant, []).append(score)
        return {variant: np.array(values, dtype=float) for variant, values in found.items()}

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
