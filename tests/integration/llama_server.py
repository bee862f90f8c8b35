"""A real OpenAI-compatible server on loopback: llama-cpp-python's, running SmolLM2.

It needs llama-cpp-python's ``server`` extra (sse-starlette, starlette-context); without it
the tests that use it skip locally and fail in CI. The ``llama_server_url`` fixture in
``conftest.py`` starts one per test session.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from opsloop.llm.llamacpp import default_model_path

__all__ = ["MODEL", "free_port", "llama_server"]

MODEL = "smollm2"
"""The model name the server answers to."""


def free_port() -> int:
    """A loopback port nobody listens on (right now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def llama_server(startup_s: float = 60.0, chat_format: str | None = None) -> Iterator[str]:
    """Run the server on a free loopback port and yield its API root (``.../v1``).

    ``chat_format="chatml-function-calling"`` makes it answer with tool calls (grammar-constrained).
    """
    probe = subprocess.run(
        [sys.executable, "-c", "import llama_cpp.server.app"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        reason = (
            "llama.cpp's server needs llama-cpp-python[server] "
            f"(sse-starlette, starlette-context): {probe.stderr.strip().splitlines()[-1]}"
        )
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(default_model_path())]
    command += ["--model_alias", MODEL, "--host", "127.0.0.1", "--port", str(port)]
    command += ["--n_ctx", "4096" if chat_format else "2048", "--n_threads", "1", "--n_threads_batch", "1"]
    command += ["--verbose", "False"] + (["--chat_format", chat_format] if chat_format else [])
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if process.poll() is not None:
                pytest.fail(f"llama.cpp server exited: {process.stderr.read() if process.stderr else ''}")
            try:
                if httpx.get(f"{url}/models", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama.cpp server did not answer /v1/models within {startup_s:.0f} s")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
