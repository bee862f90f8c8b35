"""Virtual environments of the benchmark's peers and tools, outside the clone, made once.

LiteLLM's proxy pins its own FastAPI, pydantic, openai and httpx, which clash with
opsloop's lock, so it runs in an environment of its own, as Evidently does for
``bench/drift``; py-spy (the sampling profiler of ``--profile``) gets one too, so that
``.venv`` stays exactly what ``requirements.lock`` says. They live beside the wheels
``./dev`` caches (``${OPSLOOP_WHEEL_CACHE:-${XDG_CACHE_HOME:-~/.cache}/opsloop/wheels}``'s
parent folder), so every clone on a machine shares them; ``OPSLOOP_BENCH_VENVS`` puts them
elsewhere. An environment is made with ``uv`` when it is installed (seconds) and pip
otherwise (minutes); a stamp file holding the pinned requirements marks it complete, so a
half-built or outdated one is rebuilt, and a lock lets two runs share it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.predict import BenchError

__all__ = ["default_root", "ensure_venv"]

_STAMP = ".opsloop-requirements"


def default_root() -> Path:
    """Where the environments go: ``$OPSLOOP_BENCH_VENVS``, else beside ./dev's wheel cache."""
    if explicit := os.environ.get("OPSLOOP_BENCH_VENVS"):
        return Path(explicit)
    if wheels := os.environ.get("OPSLOOP_WHEEL_CACHE"):
        return Path(wheels).parent
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "opsloop"


def _ready(venv: Path, requirements: Sequence[str]) -> bool:
    stamp = venv / _STAMP
    return (
        (venv / "bin" / "python").exists() and stamp.exists() and stamp.read_text() == "\n".join(requirements)
    )


def _uv() -> str | None:
    beside = Path(sys.executable).with_name("uv")
    return str(beside) if beside.exists() else shutil.which("uv")


def ensure_venv(
    name: str,
    requirements: Sequence[str],
    *,
    root: Path | None = None,
    say: Callable[[str], None] | None = None,
) -> Path:
    """The folder of environment ``name`` with ``requirements`` installed, created first if needed.

    Raises:
        BenchError: Creating it failed (the installer's last lines say why; often no network).
    """
    venv = (root or default_root()) / f"{name}-py{sys.version_info.major}{sys.version_info.minor}"
    if _ready(venv, requirements):
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _ready(venv, requirements):
            return venv
        if say:
            say(f"creating the virtual environment {venv} ({', '.join(requirements)}); once per machine")
        started = time.perf_counter()
        shutil.rmtree(venv, ignore_errors=True)
        python = venv / "bin" / "python"
        uv = _uv()
        install = (
            [uv, "pip", "install", "--quiet", "--python", str(python), *requirements]
            if uv
            else [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *requirements]
        )
        for step in ([sys.executable, "-m", "venv", str(venv)], install):
            done = subprocess.run(step, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-8:])
                raise BenchError(
                    f"could not create {venv} (`{' '.join(step[:4])} ...` exited {done.returncode}); "
                    f"it needs PyPI. Last lines:\n{tail}"
                )
        (venv / _STAMP).write_text("\n".join(requirements))
        if say:
            say(f"{venv.name} is ready ({time.perf_counter() - started:.0f} s)")
    return venv
