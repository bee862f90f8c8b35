"""The prediction log on the real store: batching, loss accounting, crashes, feedback."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

from opsloop.db import Database
from opsloop.errors import NotFoundError
from opsloop.predictions import PredictionLog, PredictionRecord


def _record(request_id: str, tenant: str = "acme", rows: int = 1) -> PredictionRecord:
    return PredictionRecord(
        request_id=request_id,
        tenant=tenant,
        model="risk",
        version=3,
        variant="champion",
        inputs=[{"x": i} for i in range(rows)],
        outputs=[0.5] * rows,
        latency_ms=1.0,
    )


def test_records_are_written_in_batches_and_read_back(database: Database) -> None:
    log = PredictionLog(database, batch_size=50).start()
    for i in range(120):
        log.record(_record(f"r{i}"))
    log.flush()
    assert log.pending == 0
    recent = log.recent("risk", limit=500)
    assert [r.request_id for r in recent] == [f"r{i}" for i in reversed(range(120))]
    assert recent[0].inputs == [{"x": 0}] and recent[0].version == 3 and recent[0].at.tzinfo
    log.close()


def test_a_full_queue_drops_and_counts(database: Database) -> None:
    dropped: list[int] = []
    log = PredictionLog(database, max_pending=3, on_dropped=dropped.append)  # writer not started
    for i in range(5):
        log.record(_record(f"r{i}"))
    assert sum(dropped) == 2 and log.pending == 3
    log.start().close()
    assert len(log.recent("risk")) == 3


def test_a_failing_store_drops_and_counts(database: Database) -> None:
    dropped: list[int] = []
    log = PredictionLog(database, on_dropped=dropped.append).start()
    with database.engine.begin() as conn:
        conn.execute(text("DROP TABLE predictions"))
    log.record(_record("a"))
    log.record(_record("b"))
    log.flush()
    assert sum(dropped) == 2
    log.close()


def test_feedback_matches_by_request_id_within_the_tenant(database: Database) -> None:
    log = PredictionLog(database).start()
    log.record(_record("mine", rows=2))
    log.record(_record("theirs", tenant="other"))
    result = log.feedback("acme", "risk", {"mine": [1, 0], "theirs": [1], "nope": [0]})
    assert result.attached == ["mine"] and sorted(result.unknown) == ["nope", "theirs"]
    assert log.feedback("acme", "risk", {"mine": [1]}).rejected == {
        "mine": "expected 2 labels (one per instance), got 1"
    }
    labelled = {r.request_id: r.labels for r in log.recent("risk")}
    assert labelled == {"mine": [1, 0], "theirs": None}
    log.close()


def test_a_crash_loses_at_most_what_was_not_yet_written(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    Database(url).start().upgrade()
    script = textwrap.dedent(
        f"""
        import os
        from opsloop.db import Database
        from tests.integration.test_prediction_log import _record
        from opsloop.predictions import PredictionLog
        log = PredictionLog(Database({url!r}).start(), flush_seconds=60).start()
        for i in range(500):
            log.record(_record(f"flushed{{i}}"))
        log.flush()
        for i in range(20):
            log.record(_record(f"queued{{i}}"))
        os._exit(9)  # killed: no close(), no flush
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    done = subprocess.run([sys.executable, "-c", script], env=env, timeout=120, capture_output=True)
    assert done.returncode == 9, done.stderr.decode()
    ids = {r.request_id for r in PredictionLog(Database(url).start()).recent("risk", limit=1000)}
    assert {f"flushed{i}" for i in range(500)} <= ids
    assert len(ids) <= 520


def test_concept_drift_reads_labelled_predictions_of_one_version(database: Database) -> None:
    from workflows.concept_drift import concept_report

    log = PredictionLog(database).start()
    rng = np.random.default_rng(0)
    wrong = [rng.random() < (0.05 if i < 1500 else 0.5) for i in range(3000)]
    for i in range(len(wrong)):
        log.record(replace(_record(f"r{i}"), outputs=[1], version=3))
    log.record(replace(_record("other"), outputs=[1], version=4))
    log.record(replace(_record("unlabelled"), outputs=[1], version=3))
    labels = {f"r{i}": [0 if is_wrong else 1] for i, is_wrong in enumerate(wrong)}
    assert len(log.feedback("acme", "risk", {**labels, "other": [0]}).attached) == 3001

    report = concept_report(log, "risk", 3)
    assert report.instances == 3000  # not version 4's, not the unlabelled one
    assert report.drifted and 1400 <= report.change_points[0].index <= 1650
    assert report.current_error_rate == pytest.approx(0.5, abs=0.06)
    assert [r.request_id for r in log.labelled("risk", 3, limit=2)] == ["r2998", "r2999"]
    with pytest.raises(NotFoundError, match="version 9"):
        concept_report(log, "risk", 9)
    log.close()
