"""Fixtures shared by integration tests: real servers on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.llama_server import llama_server


@pytest.fixture(scope="session")
def llama_server_url() -> Iterator[str]:
    """API root of a llama.cpp OpenAI-compatible server with SmolLM2, one per session."""
    with llama_server() as url:
        yield url
