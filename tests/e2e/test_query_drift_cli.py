"""`opsloop drift queries` as a user runs it: two query files in, a verdict out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.integration.test_query_drift_minilm import _BILLING, _KUBERNETES

OPSLOOP = str(Path(sys.executable).with_name("opsloop"))


def _queries(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [OPSLOOP, "drift", "queries", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("queries")
    billing = list(np.random.default_rng(0).permutation(_BILLING))
    (folder / "last_week.txt").write_text("\n".join(billing[:60]) + "\n\n")
    (folder / "this_week.txt").write_text("\n".join(billing[60:120]))
    rng = np.random.default_rng(1)
    pd.DataFrame({"query": billing[:60], "score": rng.normal(0.7, 0.05, 60)}).to_json(
        folder / "before.jsonl", orient="records", lines=True
    )
    pd.DataFrame({"query": _KUBERNETES, "score": rng.normal(0.45, 0.05, 60)}).to_csv(
        folder / "after.csv", index=False
    )
    pd.DataFrame({"question": billing[:30]}).to_csv(folder / "no_query_column.csv", index=False)
    return folder


def test_same_topic_is_calm_and_a_new_topic_with_worse_retrieval_drifts(files: Path) -> None:
    calm = _queries("last_week.txt", "this_week.txt", "--format", "json", cwd=files)
    assert calm.returncode == 0, calm.stderr
    report = json.loads(calm.stdout)
    assert report["drifted"] is False and report["scores"] is None
    assert report["embedding"]["reference_count"] == 60  # the blank lines are skipped
    assert "no query drift" in calm.stderr

    moved = _queries("before.jsonl", "after.csv", "--fail-on-drift", cwd=files)
    assert moved.returncode == 3, moved.stderr
    assert "embeddings" in moved.stdout and "retrieval" in moved.stdout
    assert "query drift" in moved.stderr


def test_bad_query_files_are_named(files: Path) -> None:
    missing = _queries("nope.txt", "this_week.txt", cwd=files)
    assert missing.returncode == 1 and "no such file: nope.txt" in missing.stderr
    no_column = _queries("no_query_column.csv", "this_week.txt", cwd=files)
    assert no_column.returncode == 1 and "has no 'query' column" in no_column.stderr
    one_sided = _queries("before.jsonl", "this_week.txt", cwd=files)
    assert one_sided.returncode == 1 and "score column in both files" in one_sided.stderr
    too_few = _queries("this_week.txt", "no_query_column.csv", cwd=files)
    assert too_few.returncode == 1
