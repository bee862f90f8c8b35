"""opsloop's side of the drift benchmark: one process, run under opsloop's interpreter.

``python -m bench.drift.opsloop_worker --reference R --current C --categorical a,b --result F``
reads both Parquet files, runs :func:`workflows.drift.compare_frames` (every method: PSI, KS,
Wasserstein, Jensen-Shannon, chi-square) and turns the report into its JSON dict, then writes
the phases' timings and the per-feature results to ``F``. The same phases as
:mod:`bench.drift.evidently_worker`, so the two are timed alike.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

STARTED = time.perf_counter()  # imports of opsloop and pandas count, as Evidently's do in its worker


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


def main(argv: list[str] | None = None) -> None:
    """Run the report and write its JSON result."""
    parser = argparse.ArgumentParser(prog="python -m bench.drift.opsloop_worker", description=__doc__)
    parser.add_argument("--reference", required=True)
    parser.add_argument("--current", required=True)
    parser.add_argument("--categorical", default="", help="Comma-separated categorical columns.")
    parser.add_argument("--result", required=True, help="Where to write the JSON result.")
    args = parser.parse_args(argv)

    import pandas as pd

    from workflows.drift import compare_frames

    imported = time.perf_counter()
    rss_after_import = _rss_mib()
    reference = pd.read_parquet(args.reference)
    current = pd.read_parquet(args.current)
    read = time.perf_counter()
    report = compare_frames(reference, current, [c for c in args.categorical.split(",") if c]).to_dict()
    computed = time.perf_counter()

    out = {
        "pandas_version": pd.__version__,
        "rows": [len(reference), len(current)],
        "import_s": imported - STARTED,
        "read_s": read - imported,
        "compute_s": computed - read,
        "rss_after_import_mib": rss_after_import,
        "peak_rss_mib": _rss_mib(),
        "report": report,
    }
    with open(args.result, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
