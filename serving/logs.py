"""Where log lines go: opsloop's own at ``log_level``, the libraries' chatter off the terminal.

opsloop logs through the ``opsloop`` logger tree. ``opsloop serve`` hands uvicorn
:func:`serve_log_config`, so opsloop's lines (each component as it becomes ready, with counts
and times) come out at ``log_level`` in uvicorn's format, in every worker process; the other
commands call :func:`cli_logging`, which shows warnings and errors (everything at ``debug``)
beside the command's own output on stderr.

Unless ``log_level`` is ``debug``, :func:`quiet_libraries` turns off, before those libraries
are imported, what they would print on their own (each variable is read by the library itself;
one the user has set is left alone):

==========================================  =============================================
``TQDM_DISABLE``                            tqdm bars that libraries leave at their default
``HF_HUB_DISABLE_PROGRESS_BARS``            transformers' "Loading weights" bar (read when
                                            transformers is imported)
``TRANSFORMERS_VERBOSITY=error``            transformers' advice and warnings
``MLFLOW_LOGGING_LEVEL=WARNING``            MLflow's INFO lines ("Creating initial MLflow
                                            database tables...", alembic's on a new store)
``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR``    MLflow's artifact download and upload bars
``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT``  "🏃 View run ..." after each run on an MLflow server
==========================================  =============================================

MLflow also prints some messages past its logger ("Successfully registered model ...",
"Created version ..."): :func:`quiet_mlflow` stops those once MLflow is imported (the
Platform calls it when it starts the registry), and sends MLflow's warnings through opsloop's
handlers. Nothing here runs at import time.
"""

from __future__ import annotations

import copy
import logging
import os
import sys
from typing import Any, Literal, TextIO

__all__ = ["QUIET_ENVIRONMENT", "cli_logging", "quiet_libraries", "quiet_mlflow", "serve_log_config"]

LogLevel = Literal["debug", "info", "warning", "error"]

QUIET_ENVIRONMENT: dict[str, str] = {
    "TQDM_DISABLE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
"""What :func:`quiet_libraries` sets (see the module docs)."""

_QUIET_LOGGERS = ("alembic", "httpx", "sentence_transformers", "transformers", "huggingface_hub")
"""Loggers held at WARNING: their INFO lines describe library internals, not opsloop's work."""


def quiet_libraries(level: LogLevel, environ: dict[str, str] | None = None) -> None:
    """Keep the libraries' own progress bars and INFO lines off the terminal, unless ``level`` is debug.

    Call it before the libraries are imported (they read the variables then); worker processes
    inherit the variables. ``environ``: where to set them (default ``os.environ``).
    """
    if level == "debug":
        return
    target = os.environ if environ is None else environ
    for name, value in QUIET_ENVIRONMENT.items():
        target.setdefault(name, value)
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def quiet_mlflow(level: LogLevel) -> None:
    """Stop MLflow's direct prints and route its log records through opsloop's handlers (not at debug).

    Call it after MLflow is imported: at its import MLflow gives its logger a handler of its own
    that writes to the stream this switches off.
    """
    if level == "debug" or "mlflow" not in sys.modules:
        return
    # This module silences MLflow around a schema inference when it is first imported and
    # then switches MLflow's stream back on: imported now, it cannot undo the switch below.
    import mlflow.types.responses  # noqa: F401
    from mlflow.utils.logging_utils import disable_logging

    disable_logging()  # its eprint()s: "Successfully registered model ...", "Created version ..."
    mlflow_log = logging.getLogger("mlflow")
    mlflow_log.handlers = list(logging.getLogger("opsloop").handlers)
    mlflow_log.setLevel(max(logging.WARNING, _level(level)))
    mlflow_log.propagate = False


def serve_log_config(level: LogLevel) -> dict[str, Any]:
    """The logging configuration of uvicorn, plus opsloop's logger at ``level`` on uvicorn's handler.

    Given to ``uvicorn.run``, which applies it in every worker process before the app starts.
    """
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["opsloop"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return config


def cli_logging(level: LogLevel, stream: TextIO | None = None) -> None:
    """Show opsloop's warnings and errors (everything at ``debug``) on stderr, for a CLI command.

    Each line is just the message, as the commands print theirs. ``stream``: where (default:
    whatever ``sys.stderr`` is when a line is written, so a rich progress bar that redirects
    stderr while it is shown keeps its place).
    """
    logger = logging.getLogger("opsloop")
    handler: logging.Handler = _CurrentStderr() if stream is None else logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.handlers = [handler]
    logger.setLevel(logging.DEBUG if level == "debug" else max(logging.WARNING, _level(level)))
    logger.propagate = False


def _level(level: LogLevel) -> int:
    return logging.getLevelNamesMapping()[level.upper()]


class _CurrentStderr(logging.StreamHandler):
    """A handler that writes to ``sys.stderr`` as it is at each line, not as it was when made."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass  # StreamHandler.__init__ sets it; the property answers sys.stderr regardless
