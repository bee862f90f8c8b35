"""Evidently in a virtual environment of its own, and a way to run its worker there.

Evidently 0.7 does not import with pandas 3 (``infer_dtype_from_object``), which opsloop's
lock has, so it cannot share ``.venv``. Its environment is created on first use, outside
the clone, beside the wheels that ``./dev`` caches
(``${OPSLOOP_WHEEL_CACHE:-${XDG_CACHE_HOME:-~/.cache}/opsloop/wheels}``'s parent folder), so
a fresh clone on the same machine (CI's, say) reuses it; ``OPSLOOP_EVIDENTLY_VENV`` puts it
elsewhere. Creating it takes a couple of minutes and needs PyPI; a stamp file holding the
pinned requirements marks it complete, so a half-built or outdated one is rebuilt. Both
``python -m bench.drift`` and ``tests/integration/test_drift_vs_evidently.py`` use this module.

Only the standard library is imported here: the worker runs under Evidently's interpreter.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "EVIDENTLY_VERSION",
    "REQUIREMENTS",
    "EvidentlyUnavailableError",
    "ProcessResult",
    "default_venv_dir",
    "ensure_venv",
    "run_measured",
    "run_worker",
]

EVIDENTLY_VERSION = "0.7.23"
REQUIREMENTS = (
    f"evidently=={EVIDENTLY_VERSION}",
    "pandas==2.3.3",  # Evidently 0.7 fails to import with pandas 3
    # The same numpy, scipy and pyarrow as opsloop's lock, so that a difference in a statistic
    # is a difference of definitions, never of library versions.
    "numpy==2.4.6",
    "scipy==1.17.1",
    "pyarrow==25.0.1",
)
WORKER = Path(__file__).resolve().with_name("evidently_worker.py")
_STAMP = ".opsloop-requirements"


class EvidentlyUnavailableError(RuntimeError):
    """Evidently's virtual environment is missing and could not be created (e.g. no network)."""


def default_venv_dir() -> Path:
    """Where Evidently's environment lives: ``$OPSLOOP_EVIDENTLY_VENV``, else beside ./dev's wheel cache."""
    if explicit := os.environ.get("OPSLOOP_EVIDENTLY_VENV"):
        return Path(explicit)
    wheels = os.environ.get("OPSLOOP_WHEEL_CACHE")
    if wheels:
        root = Path(wheels).parent
    else:
        cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = Path(cache) / "opsloop"
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    return root / f"evidently-{EVIDENTLY_VERSION}-{python}"


def _python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _ready(venv: Path) -> bool:
    stamp = venv / _STAMP
    return _python(venv).exists() and stamp.exists() and stamp.read_text() == "\n".join(REQUIREMENTS)


def ensure_venv(venv: Path | None = None, say: Callable[[str], None] | None = None) -> Path:
    """The interpreter of Evidently's environment, created first when missing or outdated.

    Args:
        venv: Where the environment is (or goes); :func:`default_venv_dir` when None.
        say: Progress messages (creation takes minutes); none when None.

    Returns:
        The path of its ``python``.

    Raises:
        EvidentlyUnavailableError: Creating it failed (pip's last lines say why, often no network).
    """
    venv = venv or default_venv_dir()
    if _ready(venv):
        return _python(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    # Two processes (a test run and a benchmark) may want it at once: one builds, the other waits.
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _ready(venv):
            return _python(venv)
        if say:
            say(
                f"creating Evidently's virtual environment in {venv} "
                f"({', '.join(REQUIREMENTS)}); this takes a few minutes, once per machine"
            )
        started = time.perf_counter()
        shutil.rmtree(venv, ignore_errors=True)
        steps = (
            [sys.executable, "-m", "venv", str(venv)],
            [str(_python(venv)), "-m", "pip", "install", "-q", "--disable-pip-version-check", *REQUIREMENTS],
        )
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-8:])
                raise EvidentlyUnavailableError(
                    f"could not create Evidently's environment in {venv} (`{' '.join(step[:4])} ...` "
                    f"exited {done.returncode}); it needs PyPI. Last lines:\n{tail}"
                )
        (venv / _STAMP).write_text("\n".join(REQUIREMENTS))
        if say:
            say(f"Evidently's environment is ready ({time.perf_counter() - started:.0f} s)")
    return _python(venv)


@dataclass(frozen=True)
class ProcessResult:
    """What one worker process reported, and what it cost as seen from outside.

    Its peak memory is in ``result`` (``peak_rss_mib``, the worker's own ``VmHWM``): the
    ``ru_maxrss`` that ``wait4`` gives includes the parent's resident memory at the spawn.

    Attributes:
        result: The JSON document the worker wrote.
        wall_s: Seconds from starting the process to its exit (interpreter start and imports included).
        cpu_s: User plus system CPU seconds of the process.
    """

    result: dict[str, Any]
    wall_s: float
    cpu_s: float


def run_measured(
    command: list[str], result_file: Path, timeout: float = 1800.0, env: dict[str, str] | None = None
) -> ProcessResult:
    """Run ``command`` (which writes JSON to ``result_file``); measure its wall time and CPU time.

    The process is reaped with :func:`os.wait4`, which gives that one child's resource usage
    (``getrusage(RUSAGE_CHILDREN)`` would mix in every earlier child).

    Raises:
        RuntimeError: The process failed or ran past ``timeout``; its output's last lines say why.
    """
    result_file.unlink(missing_ok=True)
    log = result_file.with_suffix(".log")
    with log.open("w") as out:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                process.kill()
                os.wait4(process.pid, 0)
                process.returncode = -9
                raise RuntimeError(f"{command[:3]} ran past {timeout:.0f} s; see {log}")
            time.sleep(0.02)
        wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    if process.returncode != 0 or not result_file.exists():
        tail = "\n".join(log.read_text().strip().splitlines()[-15:])
        raise RuntimeError(f"{' '.join(command[:4])} ... exited {process.returncode}:\n{tail}")
    return ProcessResult(
        result=json.loads(result_file.read_text()),
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
    )


def run_worker(
    python: Path, workdir: Path, *args: str, timeout: float = 1800.0, env: dict[str, str] | None = None
) -> ProcessResult:
    """Run :mod:`bench.drift.evidently_worker` under Evidently's ``python`` with ``args``."""
    result_file = workdir / f"evidently-{args[0]}.json"
    command = [str(python), str(WORKER), *args, "--result", str(result_file)]
    return run_measured(command, result_file, timeout, env)
