"""Where opsloop's time goes under load: py-spy samples of the server, grouped by request stage.

``--profile`` runs one more closed-loop load run against opsloop while
`py-spy <https://github.com/benfred/py-spy>`_ (in an environment of its own, see
:mod:`bench.gateway.venvs`) samples the server process from outside, without changing it,
and writes collapsed stacks. Only samples of threads that were running Python count (py-spy
drops idle ones), so at saturation, with one core doing all the work, a stage's share of the
samples times the CPU time per request (1 / requests per second of that run) is roughly
what the stage costs per request.

A sample goes to the innermost frame that matches a stage in :data:`STAGES` (so a
Prometheus counter incremented inside the ledger code counts as metrics); the server's
other threads (the ledger's SQLite writer, the thread pool) are reported apart.
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.gateway.venvs import ensure_venv
from bench.predict import BenchError

__all__ = ["PY_SPY_REQUIREMENTS", "STAGES", "Profile", "categorize", "ensure_py_spy", "record"]

PY_SPY_REQUIREMENTS = ("py-spy==0.4.3",)

STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("access log (uvicorn, log level info)", ("logging/__init__.py",)),
    ("metrics (prometheus_client)", ("prometheus_client/",)),
    ("ledger record (queue hand-off)", ("opsloop/llm/ledger.py", "opsloop/batch_writer.py")),
    ("budgets: reserve + settle", ("opsloop/budgets/",)),
    (
        "backend HTTP (aiohttp, httpx, socket)",
        (
            "aiohttp/",
            "yarl/",
            "multidict/",
            "httpx2/",
            "httpcore2/",
            "httpx/",
            "httpcore/",
            "h11/",
            "anyio/streams",
        ),
    ),
    ("openai SDK: build request, parse response", ("openai/",)),
    # Before the router's stage: its needle, opsloop/llm/, holds the gateway's file too.
    ("gateway service + route handler", ("opsloop/llm/gateway.py", "serving/routers/gateway.py")),
    ("router + openai client wrapper", ("opsloop/llm/",)),
    ("thread-pool hop (platform.gateway per request)", ("run_in_threadpool", "anyio/to_thread.py")),
    ("auth: API key check", ("opsloop/auth.py", "serving/deps.py", "fastapi/security/")),
    (
        "request parsing + validation (pydantic)",
        ("serving/openai_schemas.py", "pydantic", "fastapi/dependencies/"),
    ),
    ("response encoding (FastAPI serialize, JSON)", ("serialize_response", "jsonable_encoder", "render (")),
    ("opsloop middleware (request id, body limit, HTTP metrics)", ("serving/middleware.py",)),
    ("uvicorn HTTP + socket writes", ("uvicorn/",)),
    ("Starlette/FastAPI routing + middleware", ("starlette/", "fastapi/")),
    ("asyncio event loop", ("asyncio/", "uvloop")),
)
_MAIN = "MainThread"
_C_STAGE = "uvloop C code: sockets, HTTP parsing (or idle)"
_IDLE = ("Condition.wait (threading.py)", "Event.wait (threading.py)")
_LOOP_C = "Runner.run (asyncio/runners.py)"  # innermost Python frame while uvloop's C code runs
_THREADS = {
    "llm-ledger": "llm-ledger (the ledger's SQLite writer)",
    "AnyIO worker thread": "AnyIO worker threads (run_in_threadpool)",
}
_LINE = re.compile(r":\d+\)")


@dataclass(frozen=True)
class Profile:
    """Busy samples per stage of the server's event-loop thread, and of its other threads.

    Each sample stands for ``1 / rate`` seconds of one thread, so a stage's samples over the
    requests served while sampling (``rps * seconds``) estimate its time per request.
    """

    busy: int
    idle: int
    main: dict[str, int]
    other_threads: dict[str, int]
    rps: float
    rate: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: counts, shares of the busy samples and estimated microseconds per request."""
        requests = self.rps * self.seconds
        per_sample_us = 1e6 / self.rate

        def rows(counts: dict[str, int]) -> list[dict[str, Any]]:
            return [
                {
                    "stage": stage,
                    "samples": n,
                    "share": n / self.busy if self.busy else 0.0,
                    "us_per_request": n * per_sample_us / requests if requests else float("nan"),
                }
                for stage, n in sorted(counts.items(), key=lambda item: -item[1])
            ]

        return {
            "busy_samples": self.busy,
            "idle_samples_dropped": self.idle,
            "sampling_rate_hz": self.rate,
            "seconds": self.seconds,
            "rps_while_sampled": self.rps,
            "wall_us_per_request": 1e6 / self.rps if self.rps else float("nan"),
            "busy_us_per_request": self.busy * per_sample_us / requests if requests else float("nan"),
            "event_loop_thread": rows(self.main),
            "other_threads": rows(self.other_threads),
        }


def ensure_py_spy(say: Callable[[str], None] | None = None) -> Path:
    """The py-spy executable (its environment is created on first use)."""
    return ensure_venv("py-spy-0.4.3", PY_SPY_REQUIREMENTS, say=say) / "bin" / "py-spy"


def record(py_spy: Path, pid: int, seconds: float, out: Path, rate: int) -> subprocess.Popen[bytes]:
    """Start sampling ``pid`` for ``seconds`` into ``out`` (collapsed stacks, thread names)."""
    args = [
        str(py_spy), "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
        "--rate", str(rate), "--format", "raw", "--threads", "--nonblocking", "--output", str(out),
    ]  # fmt: skip
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _stage(frames: list[str]) -> str:
    for frame in reversed(frames):
        for stage, needles in STAGES:
            if any(needle in frame for needle in needles):
                return stage
    return "other"


def categorize(collapsed: str, rps: float, rate: int, seconds: float) -> Profile:
    """Group py-spy's collapsed stacks (``--threads`` on) by stage, dropping idle samples.

    py-spy's idle detection misses some waits, so samples of a thread blocked on a queue or
    an event are dropped as idle. Samples of the event loop inside uvloop's C code (socket
    reads and writes, httptools parsing, ``epoll_wait``) are a stage of their own: under a
    closed-loop load the loop is seldom idle, but some of them may be.

    Raises:
        BenchError: The file holds no samples.
    """
    main: Counter[str] = Counter()
    other: Counter[str] = Counter()
    busy = idle = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_LINE.sub(")", frame) for frame in stack.split(";")]
        if frames[-1].startswith(_IDLE) or len(frames) == 1:
            idle += n
            continue
        busy += n
        thread = frames[0].partition(": ")[2] or frames[0]  # "thread (1234): MainThread"
        if thread == _MAIN:
            main[_C_STAGE if frames[-1] == _LOOP_C else _stage(frames[1:])] += n
        else:
            other[_THREADS.get(thread, thread)] += n
    if busy + idle == 0:
        raise BenchError("py-spy recorded no samples (is ptrace allowed here?)")
    return Profile(busy, idle, dict(main), dict(other), rps, rate, seconds)
