"""Experiments: A/B tests, canaries and shadow runs of models, prompts and routes.

The pure core, over plain typed data (heavily tested, no I/O):

- :mod:`~workflows.experiments.assignment`: the sticky variant of a unit, a pure function of
  (experiment salt, unit id), so every ``serve`` process agrees without shared state;
- :mod:`~workflows.experiments.summaries`: moments, per-variant summaries, comparisons;
- :mod:`~workflows.experiments.stats`: fixed-horizon tests (two proportions, Welch's t,
  Mann-Whitney), effect sizes with intervals, sample sizes;
- :mod:`~workflows.experiments.sequential`: the always-valid mSPRT, for reading results after
  every batch;
- :mod:`~workflows.experiments.guardrails`: non-inferiority margins (``p99_ms:+20%``) and their
  checks;
- :mod:`~workflows.experiments.canary`: the Kayenta-like latency judge;
- :mod:`~workflows.experiments.policy`: the decisions (promote, roll back, continue, advance).

The shell around it, with the I/O: ``store`` (the relational store), ``traffic`` (routing in
each ``serve`` process), ``service`` (the operations, for a caller), ``decider`` (the periodic
job that applies the policy) and ``labels``.

Nothing is re-exported here: the request path imports only ``assignment`` (hashlib), while
``stats`` and ``canary`` load SciPy and statsmodels (about a second); import each module
where it is used.
"""

__all__: list[str] = []
