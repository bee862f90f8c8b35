"""Starting and stopping the benchmark's processes: ``opsloop serve``, the peer, the CLI.

Every long-lived process goes into a :class:`ProcessGroup`, which stops each one by its
pid (SIGTERM, then SIGKILL after a grace period) when the group closes, newest first,
also when the benchmark fails or is interrupted. Servers run in their own session so that
a Ctrl-C in the terminal reaches only the benchmark, which then stops them in order.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx

from bench.predict import BenchError

__all__ = [
    "ProcessGroup",
    "Server",
    "create_key",
    "create_user_key",
    "free_port",
    "start_baseline",
    "start_opsloop",
]

OPSLOOP = str(Path(sys.executable).with_name("opsloop"))
REPO_ROOT = Path(__file__).resolve().parents[2]
_STOP_SECONDS = 30.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without ``OPSLOOP_*`` and ``MLFLOW_*`` variables, plus ``extra``.

    The servers must run on defaults, whatever the shell that starts the benchmark sets.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPSLOOP_", "MLFLOW_"))}
    return env | extra


class ProcessGroup:
    """The subprocesses of one benchmark run; closing the group stops every one of them."""

    def __init__(self) -> None:
        self._procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._logs: list[IO[bytes]] = []

    def start(
        self,
        name: str,
        args: list[str],
        *,
        env: dict[str, str],
        log: Path | None = None,
        session: bool = True,
        stdout_pipe: bool = False,
    ) -> subprocess.Popen[bytes]:
        """Start ``args``; its stdout and stderr go to ``log``, one pipe, or nowhere."""
        stdout: int | IO[bytes] = subprocess.DEVNULL
        stderr: int | IO[bytes] = subprocess.DEVNULL
        if log is not None:
            handle = log.open("ab")
            self._logs.append(handle)
            stdout = stderr = handle
        if stdout_pipe:
            stdout, stderr = subprocess.PIPE, subprocess.STDOUT
        proc = subprocess.Popen(
            args, env=env, cwd=REPO_ROOT, stdout=stdout, stderr=stderr, start_new_session=session
        )
        self._procs.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = _STOP_SECONDS) -> int | None:
        """Stop one process by its pid: SIGTERM, then SIGKILL if it outlives ``grace`` seconds."""
        self._procs = [(n, p) for n, p in self._procs if p is not proc]
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGTERM)
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
            except ProcessLookupError:  # exited between poll() and kill()
                pass
        if proc.stdout is not None:
            proc.stdout.close()
        return proc.returncode

    def close(self) -> None:
        """Stop every process still registered, newest first, and close the log files."""
        while self._procs:
            _, proc = self._procs[-1]
            self.stop(proc)
        for handle in self._logs:
            handle.close()
        self._logs.clear()

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Server:
    """A server process on ``127.0.0.1:port`` and the log file its output goes to."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.name = name
        self.proc = proc
        self.port = port
        self.log = log
        self.url = f"http://127.0.0.1:{port}"

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines the server wrote, for error messages."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_until(self, path: str, *, status: int = 200, timeout: float = 300.0) -> httpx.Response:
        """Poll ``GET path`` until it answers ``status``.

        Raises:
            BenchError: The process exited, or ``timeout`` seconds passed.
        """
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=5.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise BenchError(
                        f"{self.name} exited with status {self.proc.returncode} before {path} "
                        f"answered {status}; its log ends:\n{self.log_tail()}"
                    )
                try:
                    response = client.get(path)
                    if response.status_code == status:
                        return response
                except httpx.TransportError:
                    pass
                time.sleep(0.25)
        raise BenchError(
            f"{self.name}: {path} did not answer {status} in {timeout:.0f} s:\n{self.log_tail()}"
        )


def start_opsloop(group: ProcessGroup, home: Path, settings: dict[str, str] | None = None) -> Server:
    """``opsloop --home HOME serve --port PORT`` on its defaults (one worker, everything on).

    ``settings``: ``OPSLOOP_*`` variables to set anyway (a benchmark that varies one setting).
    """
    port = free_port()
    log = home.parent / "opsloop.log"
    args = [OPSLOOP, "--home", str(home), "serve", "--port", str(port)]
    env = clean_env(**(settings or {}))
    return Server("opsloop", group.start("opsloop", args, env=env, log=log), port, log)


def start_baseline(group: ProcessGroup, home: Path, model_uri: str, log_level: str = "info") -> Server:
    """The peer app under uvicorn, one worker, reading the model from opsloop's MLflow store.

    ``log_level`` should match opsloop's (``info`` by default), so that both servers write an
    access-log line per request.
    """
    port = free_port()
    log = home.parent / "baseline.log"
    tracking = f"sqlite:///{home / 'mlflow.db'}"
    env = clean_env(BENCH_MODEL_URI=model_uri, MLFLOW_TRACKING_URI=tracking, MLFLOW_REGISTRY_URI=tracking)
    args = [
        sys.executable, "-m", "uvicorn", "bench.predict.baseline:create_app", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--log-level", log_level,
    ]  # fmt: skip
    return Server("baseline", group.start("baseline", args, env=env, log=log), port, log)


def create_user_key(home: Path, tenant: str = "bench") -> str:
    """Create a ``user``-role key with the CLI and return it.

    Raises:
        BenchError: The CLI failed.
    """
    return create_key(home, tenant=tenant, role="user")


def create_key(home: Path, *, tenant: str = "bench", role: str = "user") -> str:
    """Create a key of ``role`` with the CLI and return it.

    Raises:
        BenchError: The CLI failed.
    """
    args = [OPSLOOP, "--home", str(home), "keys", "create", "--tenant", tenant, "--role", role]
    done = subprocess.run(args, env=clean_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    key = done.stdout.strip()
    if done.returncode != 0 or not key:
        raise BenchError(f"'opsloop keys create' failed ({done.returncode}): {done.stderr.strip()}")
    return key
