"""Retraining: refit a model on fresh labelled data, validate it, compare it with the champion, card it.

The pure parts, over plain typed data:

- :mod:`~workflows.retraining.data`: the data set from its sources (the parent's training
  rows, labelled production rows, a user's file), its content hash and its manifest;
- :mod:`~workflows.retraining.validation`: the pandera schema and the data-quality checks;
- :mod:`~workflows.retraining.evaluation`: the paired bootstrap comparison and slice metrics;
- :mod:`~workflows.retraining.card`: the model card, as JSON and Markdown.

The shell, with the I/O: ``training`` (the trainer under an optuna search), ``store`` (runs and
the per-model lease), ``pipeline`` (one run, start to end, for a caller; its request and result
types in ``results``, its steps in ``steps``) and ``triggers`` (drift, concept drift, accuracy and
schedule signals turned into runs).

Nothing is re-exported here: pandera, optuna and MLflow load in the modules that need them,
so the server does not pay for them until it retrains.
"""

__all__: list[str] = []
