"""The model watcher outlives failures: a swap that cannot happen now must happen later.

A version that cannot load is reported once, retried with backoff, and forgotten when its
alias goes.
"""

from __future__ import annotations

import logging
import time
from typing import Any, cast

import pytest

from opsloop.models.runtime import LoadFailure, ModelRuntime
from opsloop.registry import Registry


class _FlakyRegistry:
    """Answers alias_versions with an unexpected error a few times, then with no models."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    def alias_versions(self, alias: str) -> dict[str, int]:
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError("disk I/O error")  # not an OpsloopError
        return {}

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"unexpected registry call {name}")


def test_watcher_keeps_polling_after_unexpected_errors() -> None:
    registry = _FlakyRegistry(failures=3)
    runtime = ModelRuntime(cast(Registry, registry), poll_seconds=0.01)
    registry.failures = 0  # start() loads synchronously and must succeed
    runtime.start()
    registry.failures = registry.calls + 3
    deadline = time.monotonic() + 10
    while registry.calls < registry.failures + 2:
        assert time.monotonic() < deadline, f"the watcher stopped after {registry.calls} polls"
        time.sleep(0.01)
    runtime.close()


class _BrokenRegistry:
    """One model whose champion versions never load; its alias can move or go."""

    def __init__(self) -> None:
        self.champions: dict[str, int] = {"broken": 2}
        self.loads = 0

    def alias_versions(self, alias: str) -> dict[str, int]:
        return dict(self.champions)

    def input_columns(self, name: str, version: int) -> list[tuple[str, str]]:
        self.loads += 1
        raise ValueError(f"corrupt artifact of version {version}")

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"unexpected registry call {name}")


def test_a_version_that_does_not_load_is_reported_once_and_retried_ever_more_slowly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = _BrokenRegistry()
    reported: list[LoadFailure] = []
    dropped: list[str] = []
    runtime = ModelRuntime(
        cast(Registry, registry), poll_seconds=0.01, on_load_failed=reported.append, on_drop=dropped.append
    )
    with caplog.at_level(logging.INFO, logger="opsloop.models.runtime"):
        for _ in range(50):
            runtime.refresh_all()
    failure = runtime.failures()["broken"]
    assert (failure.version, failure.reason) == (2, "ValueError: corrupt artifact of version 2")
    assert len(reported) == 1 and reported[0].attempts == 1
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and not any(r.exc_info for r in warnings)
    assert (
        "broken version 2" in warnings[0].getMessage() and "not serving the model" in warnings[0].getMessage()
    )
    assert registry.loads < 10  # backed off, not one load per poll

    registry.champions["broken"] = 3  # a new version that fails is reported again
    runtime.refresh_all()
    assert len(reported) == 2 and runtime.failures()["broken"].version == 3

    del registry.champions["broken"]  # the alias was unset: nothing left to report
    runtime.refresh_all()
    assert runtime.failures() == {} and dropped == ["broken"]
