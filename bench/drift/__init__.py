"""``python -m bench.drift``: opsloop's drift report against Evidently's ``DataDriftPreset``, one run.

Modules: :mod:`bench.drift.data` makes the reference and current frames (mixed numeric
shapes and scales, categorical columns, drift in some of them) and writes them to Parquet;
:mod:`bench.drift.opsloop_worker` and :mod:`bench.drift.evidently_worker` are the two sides,
each run in a process of its own; :mod:`bench.drift.evidently_side` creates Evidently's
separate virtual environment and runs its worker; :mod:`bench.drift.agreement` puts both
sides' per-feature values next to each other; :mod:`bench.drift.run` ties them together and
reports. Kept free of imports so that the workers load nothing from here that they do not need.
"""

from __future__ import annotations

__all__ = ["BenchError"]


class BenchError(Exception):
    """The benchmark could not run or its run is invalid (a message says what to do)."""
