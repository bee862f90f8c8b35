"""The three servers of one run: the stub backend, ``opsloop serve`` and LiteLLM's proxy.

Each is a process in the run's :class:`~bench.predict.processes.ProcessGroup` (stopped by
pid, newest first, also on errors and Ctrl-C), on a free port of 127.0.0.1, writing its
output to a log file in the run's temporary folder.

- The stub (:mod:`bench.gateway.stub`) runs under this interpreter.
- opsloop runs on a fresh home with a YAML config that routes model ``bench`` to the stub
  through the ``openai`` backend kind with API prices (so the ledger computes a cost for
  every call), a budget of tenant ``default`` (so every call is reserved and settled
  against a daily USD budget and a requests-per-minute limit), metrics on (they always
  are), no demo model, no docs ingestion and no drift checks; its key is the first admin
  key, from ``admin.key``.
- LiteLLM runs in its own environment (:mod:`bench.gateway.venvs`) with a ``model_list``
  entry ``bench`` -> ``openai/stub-model`` at the stub, prices per token, a master key, its
  Prometheus callback, and no database, with its cost map read from the package rather
  than fetched.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from bench.gateway.venvs import ensure_venv
from bench.predict import BenchError
from bench.predict.processes import OPSLOOP, REPO_ROOT, ProcessGroup, Server, clean_env, free_port

__all__ = [
    "INPUT_PER_MTOK",
    "LITELLM_REQUIREMENTS",
    "LITELLM_VERSION",
    "MASTER_KEY",
    "OUTPUT_PER_MTOK",
    "ROUTE",
    "Backend",
    "ensure_litellm",
    "start_litellm",
    "start_opsloop",
    "start_stub",
]

ROUTE = "bench"
"""The public model name both gateways serve (and the direct stub ignores)."""
INPUT_PER_MTOK = 1.0
OUTPUT_PER_MTOK = 2.0
MASTER_KEY = "sk-bench-master-key"
"""LiteLLM's master key (a loopback-only proxy that lives for one run)."""
LITELLM_VERSION = "1.108.7"
# 1.108.7 is the newest whose `[proxy]` extra resolves from the index here: from 1.108.8 on it
# needs `litellm-proxy-extras` releases (and from 1.110 a `litellm-proxy` package) that are
# not there. prometheus-client is what its `prometheus` callback imports (not in the extra);
# the version is opsloop's, from requirements.lock.
LITELLM_REQUIREMENTS = (f"litellm[proxy]=={LITELLM_VERSION}", "prometheus-client==0.26.0")
_LITELLM_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the price list from GitHub at start
    "LITELLM_DONT_SHOW_FEEDBACK_BOX": "True",
    "LITELLM_TELEMETRY": "False",
}


class Backend:
    """The stub's address as the gateways are configured with it."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.base_url = f"{server.url}/v1"


def start_stub(group: ProcessGroup, tmp: Path, python: str) -> Backend:
    """The stub backend, waited for."""
    port = free_port()
    log = tmp / "stub.log"
    args = [python, "-m", "bench.gateway.stub", "--port", str(port)]
    server = Server("stub", group.start("stub", args, env=clean_env(), log=log), port, log)
    server.wait_until("/health", timeout=60)
    return Backend(server)


def opsloop_config(backend: Backend, *, tracing: bool = True) -> dict[str, object]:
    """The settings file of ``opsloop serve``: one route to the stub, with prices."""
    return {
        "tracing": tracing,
        "bootstrap_demo": False,
        "bootstrap_docs": False,
        "drift_check_seconds": 0,
        "llm_routes": {
            ROUTE: {
                "queue_timeout_s": 5,
                "backends": [
                    {
                        "name": "stub",
                        "kind": "openai",
                        "base_url": backend.base_url,
                        "model": "stub-model",
                        "timeout_s": 10,
                        "max_retries": 0,
                        # Above the highest concurrency measured: the router never queues, as
                        # LiteLLM (no per-deployment limit by default) does not either.
                        "max_concurrency": 1024,
                        "input_per_mtok": INPUT_PER_MTOK,
                        "output_per_mtok": OUTPUT_PER_MTOK,
                    }
                ],
            }
        },
    }


def _cli(home: Path, config: Path, *args: str) -> str:
    command = [OPSLOOP, "--config", str(config), "--home", str(home), *args]
    done = subprocess.run(
        command, env=clean_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        raise BenchError(f"`opsloop {' '.join(args)}` exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def start_opsloop(
    group: ProcessGroup, tmp: Path, backend: Backend, *, name: str = "opsloop", tracing: bool = True
) -> tuple[Server, str]:
    """``opsloop serve`` on a fresh home, its budget set, waited for; and its admin key."""
    home = tmp / f"{name}-home"
    config = tmp / f"{name}.yaml"
    config.write_text(json.dumps(opsloop_config(backend, tracing=tracing), indent=2))  # JSON is YAML
    # Set before the server starts, so that the very first request is admitted by them.
    _cli(home, config, "budgets", "set", "--tenant", "default", "--daily-usd", "1000000", "--rpm", "10000000")
    port = free_port()
    log = tmp / f"{name}.log"
    args = [OPSLOOP, "--config", str(config), "--home", str(home), "serve", "--port", str(port)]
    server = Server(name, group.start(name, args, env=clean_env(), log=log), port, log)
    server.wait_until("/readyz", timeout=300)
    key_file = home / "admin.key"
    if not key_file.exists():
        raise BenchError(f"opsloop wrote no {key_file}; its log ends:\n{server.log_tail()}")
    return server, key_file.read_text().strip()


def litellm_config(backend: Backend) -> dict[str, object]:
    """LiteLLM's proxy config: the same route to the stub, the same prices, no database."""
    return {
        "model_list": [
            {
                "model_name": ROUTE,
                "litellm_params": {
                    "model": "openai/stub-model",
                    "api_base": backend.base_url,
                    "api_key": "unused",
                    "input_cost_per_token": INPUT_PER_MTOK / 1e6,
                    "output_cost_per_token": OUTPUT_PER_MTOK / 1e6,
                },
            }
        ],
        "general_settings": {"master_key": MASTER_KEY},
        "litellm_settings": {"callbacks": ["prometheus"]},
    }


def ensure_litellm(say: Callable[[str], None] | None = None) -> Path:
    """The folder of LiteLLM's environment (created on first use)."""
    return ensure_venv(f"litellm-{LITELLM_VERSION}", LITELLM_REQUIREMENTS, say=say)


def start_litellm(group: ProcessGroup, tmp: Path, backend: Backend, venv: Path) -> Server:
    """``litellm --config ... --port ...`` (one uvicorn worker, its defaults), waited for."""
    config = tmp / "litellm.yaml"
    config.write_text(json.dumps(litellm_config(backend), indent=2))
    port = free_port()
    log = tmp / "litellm.log"
    args = [
        str(venv / "bin" / "litellm"), "--config", str(config),
        "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1",
    ]  # fmt: skip
    env = {k: v for k, v in clean_env(**_LITELLM_ENV).items() if k != "DATABASE_URL"}
    server = Server("litellm", group.start("litellm", args, env=env, log=log), port, log)
    server.wait_until("/health/liveliness", timeout=300)
    return server
