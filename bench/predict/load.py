"""One load run against one server: wrk, a fixed number of connections, a fixed duration.

wrk (a C load generator, closed loop: each connection sends its next request when the
previous answer arrives) runs as its own process with ``wrk.lua``, which cycles through
prebuilt request bodies and prints a JSON summary: completed requests, socket errors,
non-2xx/3xx answers, and latency percentiles from wrk's microsecond histogram.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.predict import BenchError
from bench.predict.processes import ProcessGroup, clean_env

__all__ = ["LoadResult", "find_wrk", "run_wrk", "wrk_version"]

WRK_HINT = (
    "wrk, the load generator, is not installed; install it with 'apt-get install -y wrk' "
    "(Debian/Ubuntu), 'brew install wrk' (macOS), or build it from https://github.com/wg/wrk"
)
_SCRIPT = Path(__file__).with_name("wrk.lua")
_MARKER = "BENCH_RESULT "


@dataclass(frozen=True)
class LoadResult:
    """What one wrk run measured; latencies in milliseconds."""

    requests: int
    duration_s: float
    errors: dict[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    mean_ms: float
    max_ms: float

    @property
    def error_count(self) -> int:
        """Socket errors, timeouts and answers with a status of 400 or more."""
        return sum(self.errors.values())

    @property
    def rps(self) -> float:
        """Completed requests per second."""
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, with the derived throughput and error count."""
        return asdict(self) | {"rps": self.rps, "error_count": self.error_count}

    @classmethod
    def parse(cls, output: str) -> LoadResult:
        """Read the summary line that ``wrk.lua``'s ``done()`` printed.

        Raises:
            BenchError: No summary line (wrk or the script failed).
        """
        line = next((x for x in output.splitlines() if x.startswith(_MARKER)), None)
        if line is None:
            raise BenchError(f"wrk printed no result line:\n{output}")
        raw = json.loads(line[len(_MARKER) :])
        latency = {k: v / 1000.0 for k, v in raw["latency_us"].items()}
        return cls(
            requests=int(raw["requests"]),
            duration_s=raw["duration_us"] / 1e6,
            errors={k: int(v) for k, v in raw["errors"].items()},
            p50_ms=latency["p50"],
            p90_ms=latency["p90"],
            p99_ms=latency["p99"],
            p999_ms=latency["p999"],
            mean_ms=latency["mean"],
            max_ms=latency["max"],
        )


def find_wrk() -> str:
    """The path of the wrk executable.

    Raises:
        BenchError: wrk is not installed (with an install hint).
    """
    found = shutil.which("wrk")
    if found is None:
        raise BenchError(WRK_HINT)
    return found


def wrk_version(wrk: str) -> str:
    """The first line wrk prints for ``--version`` (its version, before its usage text)."""
    done = subprocess.run([wrk, "--version"], capture_output=True, text=True, timeout=10)
    lines = (done.stdout or done.stderr).splitlines()
    return lines[0].strip() if lines else "unknown"


def run_wrk(
    group: ProcessGroup,
    wrk: str,
    url: str,
    *,
    bodies: Path,
    key: str,
    seconds: float,
    connections: int,
    threads: int,
) -> LoadResult:
    """POST the bodies in ``bodies`` (one per line) to ``url`` for ``seconds``.

    Raises:
        BenchError: wrk failed or printed no result.
    """
    args = [
        wrk, "--threads", str(threads), "--connections", str(connections),
        "--duration", f"{max(1, round(seconds))}s", "--timeout", "10s", "--script", str(_SCRIPT), url,
    ]  # fmt: skip
    env = clean_env(BENCH_BODIES=str(bodies), BENCH_KEY=key)
    # Same session as the benchmark: a Ctrl-C stops wrk at once, as it should.
    proc = group.start("wrk", args, env=env, session=False, stdout_pipe=True)
    try:
        stdout, _ = proc.communicate(timeout=seconds + 30)
    finally:
        group.stop(proc, grace=5)
    output = stdout.decode(errors="replace")
    if proc.returncode != 0:
        raise BenchError(f"wrk exited with status {proc.returncode}:\n{output}")
    return LoadResult.parse(output)
