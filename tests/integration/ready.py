"""Waiting for an in-process app to be ready, as the integration tests' fixtures do."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient


def wait_ready(client: TestClient, seconds: float = 180) -> None:
    """Until the app's ``/readyz`` answers 200 (store, models and docs started); fails with its body."""
    deadline = time.monotonic() + seconds
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").json()
        time.sleep(0.2)
