"""`opsloop drift compare` as a user runs it: files in, a report out, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from opsloop.errors import InvalidInputError, NotFoundError
from serving.cli.drift import read_frame

OPSLOOP = str(Path(sys.executable).with_name("opsloop"))


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [OPSLOOP, "drift", "compare", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("drift")
    rng = np.random.default_rng(0)
    n = 800
    pd.DataFrame(
        {"amount": rng.normal(100, 15, n), "region": rng.choice(["eu", "us", "apac"], n, p=[0.5, 0.3, 0.2])}
    ).to_csv(folder / "a.csv", index=False)
    pd.DataFrame(
        {"amount": rng.normal(110, 15, n), "region": rng.choice(["eu", "us", "apac"], n, p=[0.2, 0.3, 0.5])}
    ).to_csv(folder / "b.csv", index=False)
    return folder


def test_json_report_of_two_csv_files(data: Path) -> None:
    done = _run("a.csv", "b.csv", "--format", "json", cwd=data)
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["dataset_drift"] is True and body["share_drifted"] == 1.0
    assert body["features"]["amount"]["kind"] == "numeric" and body["features"]["amount"]["drifted"]
    assert body["features"]["region"]["kind"] == "categorical" and "chi2_pvalue" in body["features"]["region"]
    assert "dataset drift (2 of 2 features drifted" in done.stderr


def test_html_report_to_a_file_and_fail_on_drift(data: Path) -> None:
    done = _run("a.csv", "b.csv", "--format", "html", "--output", "x.html", "--fail-on-drift", cwd=data)
    assert done.returncode == 3, done.stderr
    page = (data / "x.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "amount" in page and "https://" not in page


def test_bad_paths_fail_with_a_clear_message(data: Path) -> None:
    missing = _run("a.csv", "nope.csv", cwd=data)
    assert missing.returncode == 1 and "no such file: nope.csv" in missing.stderr


def test_reader_picks_the_format_by_extension(data: Path) -> None:
    # In-process: each CLI start costs seconds of imports, and this is the reader's logic only.
    (data / "a.txt").write_text("x\n1\n")
    with pytest.raises(InvalidInputError, match=r"unsupported file type '\.txt'"):
        read_frame(data / "a.txt")
    with pytest.raises(NotFoundError, match="no such file"):
        read_frame(data / "nope.parquet")
    frame = read_frame(data / "a.csv")
    frame.to_parquet(data / "a.parquet")
    pd.testing.assert_frame_equal(read_frame(data / "a.parquet"), frame)
