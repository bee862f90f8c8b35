"""Evidently's side of the drift benchmark: one process, run under Evidently's own interpreter.

Run as a script (``python evidently_worker.py MODE ...``) by :mod:`bench.drift.evidently_side`;
it imports nothing from opsloop or bench, only Evidently, pandas and the standard library.

Modes:

- ``report``: read both Parquet files, run ``Report([DataDriftPreset()])`` as a user would
  (``--variant preset``: Evidently picks each column's method) or a ``ValueDrift`` metric per
  column and method (``--variant all-methods``: PSI, KS, Wasserstein, Jensen-Shannon for
  numeric columns; PSI, Jensen-Shannon, chi-square for categorical ones, the work opsloop's
  report does), and turn the snapshot into a dict; write the phases' timings and results.
- ``values``: the same ``all-methods`` report plus the preset, for the comparison of values.

Verdicts are Evidently's own: ``include_tests=True`` attaches a pass/fail test to every
``ValueDrift`` (fail = drift) and one to the share of drifted columns.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

STARTED = time.perf_counter()

NUMERIC_METHODS = ("psi", "ks", "wasserstein", "jensenshannon")
CATEGORICAL_METHODS = ("psi", "jensenshannon", "chisquare")


def _rss_mib() -> float:
    """Peak resident memory of this process image so far (MiB).

    ``VmHWM`` of /proc, not ``ru_maxrss``: Linux carries ``ru_maxrss`` over ``exec`` from the
    image it replaces, which after Python's ``subprocess`` (vfork) is the parent's, so a small
    worker started by a big parent would report the parent's peak.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("report", "values"))
    parser.add_argument("--reference", required=True)
    parser.add_argument("--current", required=True)
    parser.add_argument("--categorical", default="", help="Comma-separated categorical columns.")
    parser.add_argument("--variant", choices=("preset", "all-methods"), default="preset")
    parser.add_argument("--result", required=True, help="Where to write the JSON result.")
    return parser.parse_args(argv)


def _summarise(snapshot: dict) -> dict:
    """Per column: the preset's method, score and verdict, and each explicit method's score and verdict."""
    failed = {t["metric_config"]["metric_id"]: t["status"] == "FAIL" for t in snapshot["tests"]}
    columns: dict[str, dict] = {}
    dataset: dict = {}
    for metric in snapshot["metrics"]:
        config = metric["config"]
        kind = config["type"].rsplit(":", 1)[-1]
        if kind == "DriftedColumnsCount":
            dataset = {
                "drifted_columns": metric["value"]["count"],
                "share_drifted": metric["value"]["share"],
                "dataset_drift": failed.get(metric["id"]),
            }
            continue
        if kind != "ValueDrift":
            continue
        entry = {
            "value": metric["value"],
            "threshold": config["threshold"],
            "drifted": failed.get(metric["id"]),
        }
        method = config["method"]
        per_column = columns.setdefault(config["column"], {})
        if method in NUMERIC_METHODS or method in CATEGORICAL_METHODS:
            per_column[method] = entry
        else:  # chosen by the preset; the config holds its display name
            per_column["preset"] = {"method": method, **entry}
    return {"dataset": dataset, "columns": columns}


def main(argv: list[str] | None = None) -> None:
    """Run one mode and write its JSON result."""
    args = _parse(argv)
    import evidently
    import pandas as pd
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    imported = time.perf_counter()
    rss_after_import = _rss_mib()
    reference = pd.read_parquet(args.reference)
    current = pd.read_parquet(args.current)
    read = time.perf_counter()

    categorical = [c for c in args.categorical.split(",") if c]
    numeric = [c for c in reference.columns if c not in categorical]
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    explicit = args.mode == "values" or args.variant == "all-methods"
    metrics: list = [DataDriftPreset()] if args.mode == "values" or args.variant == "preset" else []
    if explicit:
        metrics += [ValueDrift(column=c, method=m) for c in numeric for m in NUMERIC_METHODS]
        metrics += [ValueDrift(column=c, method=m) for c in categorical for m in CATEGORICAL_METHODS]
    snapshot = Report(metrics, include_tests=True).run(
        current_data=Dataset.from_pandas(current, data_definition=definition),
        reference_data=Dataset.from_pandas(reference, data_definition=definition),
    )
    results = snapshot.dict()
    computed = time.perf_counter()

    out = {
        "evidently_version": evidently.__version__,
        "pandas_version": pd.__version__,
        "mode": args.mode,
        "variant": "values" if args.mode == "values" else args.variant,
        "rows": [len(reference), len(current)],
        "import_s": imported - STARTED,
        "read_s": read - imported,
        "compute_s": computed - read,
        "rss_after_import_mib": rss_after_import,
        "peak_rss_mib": _rss_mib(),
        **_summarise(results),
    }
    with open(args.result, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
