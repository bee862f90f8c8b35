"""Where log lines go: the libraries' knobs, opsloop's logger for the CLI and for uvicorn."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from serving.logs import QUIET_ENVIRONMENT, cli_logging, quiet_libraries, serve_log_config


@pytest.fixture
def opsloop_logger() -> Iterator[logging.Logger]:
    """The ``opsloop`` logger, put back as it was after the test."""
    logger = logging.getLogger("opsloop")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield logger
    logger.handlers, logger.level, logger.propagate = saved[0], saved[1], saved[2]


def test_quiet_libraries_sets_each_knob_unless_the_user_did_or_debug_is_asked() -> None:
    environ = {"TQDM_DISABLE": "0"}
    quiet_libraries("info", environ)
    assert environ == {**QUIET_ENVIRONMENT, "TQDM_DISABLE": "0"}
    assert environ["MLFLOW_LOGGING_LEVEL"] == "WARNING"
    assert environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
    untouched: dict[str, str] = {}
    quiet_libraries("debug", untouched)
    assert untouched == {}


def test_the_cli_shows_warnings_and_more_only_at_debug(opsloop_logger: logging.Logger) -> None:
    stream = io.StringIO()
    cli_logging("info", stream)
    child = logging.getLogger("opsloop.models.runtime")
    child.info("serving credit-risk version 1")
    child.warning("could not load credit-risk version 2")
    assert stream.getvalue() == "could not load credit-risk version 2\n"
    cli_logging("error", stream)
    child.warning("not shown")
    cli_logging("debug", stream)
    child.debug("details")
    assert stream.getvalue().endswith("could not load credit-risk version 2\ndetails\n")


def test_serve_hands_uvicorn_opsloops_logger_at_the_level() -> None:
    config = serve_log_config("debug")
    assert config["loggers"]["opsloop"] == {"handlers": ["default"], "level": "DEBUG", "propagate": False}
    assert config["loggers"]["uvicorn"]["handlers"] == ["default"]  # uvicorn's own are kept
    assert "opsloop" not in serve_log_config("info")["handlers"]  # a copy: uvicorn's dict is untouched
    from uvicorn.config import LOGGING_CONFIG

    assert "opsloop" not in LOGGING_CONFIG["loggers"]
