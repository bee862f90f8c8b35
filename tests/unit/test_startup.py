"""What a starting server reports: component states, what is pending, the ready lines, progress."""

from __future__ import annotations

import logging

import pytest

from opsloop.errors import BackendError
from rag.ingest import IngestProgress
from serving.startup import FileProgress, Readiness, Startup, Ticker, plural, reason, versions


class Clock:
    """Seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> logging.Logger:
    caplog.set_level(logging.INFO, logger="opsloop.test-startup")
    return logging.getLogger("opsloop.test-startup")


def test_pending_names_what_each_starting_component_waits_for(log: logging.Logger, clock: Clock) -> None:
    startup = Startup(log, clock)
    startup.begin("store")
    startup.ready("store", "sqlite, 1 key")
    startup.begin("models", "waiting for the registry")
    startup.begin("rag")
    now = startup.snapshot()
    assert now.components == {"store": "ready", "models": "starting", "rag": "starting"}
    assert now.pending == ["models: waiting for the registry", "rag"]
    assert not now.ready and not now.degraded
    startup.doing("rag", "docs ingestion (4/11 files)")
    assert startup.snapshot().pending == [
        "models: waiting for the registry",
        "rag: docs ingestion (4/11 files)",
    ]


def test_each_component_logs_its_ready_line_and_the_last_one_the_whole_start(
    log: logging.Logger, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    startup = Startup(log, clock)
    startup.begin("store")
    clock.now += 0.25
    startup.ready("store", "sqlite, 3 keys")
    startup.begin("models")
    startup.begin("rag")
    startup.all_begun()
    clock.now += 2.0
    assert startup.ready("models", "serving credit-risk v1") == 2.0
    clock.now += 21.0
    startup.ready("rag")
    startup.begin("extra")  # a component started later does not announce "ready" twice
    startup.ready("extra")
    assert [r.getMessage() for r in caplog.records] == [
        "store ready (sqlite, 3 keys) in 0.2 s",
        "models ready (serving credit-risk v1) in 2.0 s",
        "rag ready in 23.0 s",
        "ready in 23.2 s",
        "extra ready in 0.0 s",
    ]
    assert startup.snapshot() == Readiness({c: "ready" for c in ("store", "models", "rag", "extra")})
    assert startup.snapshot().ready


def test_ready_is_announced_when_the_last_began_component_is_already_ready(
    log: logging.Logger, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    startup = Startup(log, clock)
    startup.begin("store")
    clock.now += 1.0
    startup.ready("store")
    assert [r.getMessage() for r in caplog.records] == ["store ready in 1.0 s"]
    startup.all_begun()
    assert [r.getMessage() for r in caplog.records][-1] == "ready in 1.0 s"


def test_a_failed_component_says_why_and_a_dropped_one_is_gone(log: logging.Logger, clock: Clock) -> None:
    startup = Startup(log, clock)
    startup.begin("models", "loading 1 champion (credit-risk v1)")
    startup.begin("rag")
    startup.failed("models", "x" * 1000)
    startup.drop("rag")
    now = startup.snapshot()
    assert now.components == {"models": "failed"} and now.pending == [] and not now.ready
    assert len(now.why["models"]) == 300 and now.why["models"].endswith("...")
    startup.begin("models")  # started again: the old reason goes
    assert startup.snapshot().why == {}


def test_readiness_counts_degraded_as_started_but_says_so() -> None:
    now = Readiness({"store": "ready", "models": "degraded"}, why={"models": {"m": {"version": 2}}})
    assert now.ready and now.degraded
    assert not Readiness({}).ready


def test_the_ticker_logs_at_most_every_few_seconds(
    log: logging.Logger, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    ticker = Ticker(log, "docs", every=5.0, clock=clock)
    clock.now += 1.0
    assert not ticker.tick(1, 11, "files")
    clock.now += 4.0
    assert ticker.tick(4, 11, "files", "120 chunks")
    clock.now += 4.9
    assert not ticker.tick(7, 11, "files")
    clock.now += 0.1
    assert ticker.tick(8, 11, "files")
    assert [r.getMessage() for r in caplog.records] == [
        "docs: 4/11 files, 120 chunks, 5 s so far",
        "docs: 8/11 files, 10 s so far",
    ]
    assert ticker.seconds == 10.0


def test_file_progress_moves_pending_and_adds_up_chunks(log: logging.Logger, clock: Clock) -> None:
    startup = Startup(log, clock)
    startup.begin("rag", "docs ingestion")
    progress = FileProgress(startup, "rag", "docs ingestion", Ticker(log, "docs", clock=clock))
    progress(IngestProgress("a.md", "added", 12, 1, 3))
    progress(IngestProgress("b.md", "unchanged", 30, 2, 3))
    assert startup.snapshot().pending == ["rag: docs ingestion (2/3 files)"]
    assert progress.chunks == 42


def test_small_helpers() -> None:
    assert (plural(1, "key"), plural(0, "key"), plural(3, "file")) == ("1 key", "0 keys", "3 files")
    assert versions({"credit-risk": 1, "churn": 3}) == "churn v3, credit-risk v1"
    assert reason(BackendError("the store is gone")) == "the store is gone"
    assert reason(ValueError("bad")) == "ValueError: bad"
