"""The model watcher outlives failures: a swap that cannot happen now must happen later."""

from __future__ import annotations

import time
from typing import Any, cast

from opsloop.models.runtime import ModelRuntime
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
