"""How reliably the embedded model calls tools: opsloop's llama.cpp backend against llama-cpp-python's own.

The set (``bench/tool_calling/requests.jsonl``, 46 requests over the four tools of
``tools.json``): 32 that one tool answers, with the arguments expected (a ticket's title is
free text, so only its priority is checked), 10 that no tool answers, and 4 that carry a
tool's result and should now be answered in words. Each runs at temperature 0:

* ``opsloop``: ``LlamaCppClient`` (the backend of the gateway's embedded route) with
  ``tool_choice`` auto, and again with ``required`` on the 32 tool requests;
* ``llama-cpp-python``: the same model file and threads, ``chat_format="chatml-function-calling"``,
  the handler llama-cpp-python offers for this, with the same requests under auto (it refuses
  ``required``).

Reported per runner: the right decision (a call or words), the right function, and the
arguments exact (strings compared without case) among the tool requests; words among the
others. Writes ``bench/results/tool-calling.json``. Run: ``.venv/bin/python -m bench.tool_calling``
(about 5 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.rag.run import environment
from opsloop.llm.llamacpp import LlamaCppClient, default_model_path
from opsloop.llm.protocol import ChatMessage, ChatRequest, ToolCall

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

Answer = tuple[str | None, dict[str, Any]]
"""The function called (None: words) and its arguments."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line's options."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.tool_calling",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "tool-calling.json")
    return parser.parse_args(argv)


def _messages(rows: list[dict[str, Any]]) -> list[ChatMessage]:
    messages = []
    for row in rows:
        calls = [
            ToolCall(c["id"], c["function"]["name"], c["function"]["arguments"])
            for c in row.get("tool_calls") or ()
        ]
        messages.append(
            ChatMessage(
                row["role"],
                row.get("content") or "",
                name=row.get("name"),
                tool_calls=calls,
                tool_call_id=row.get("tool_call_id"),
            )
        )
    return messages


def opsloop_runner(
    client: LlamaCppClient, tools: list[dict[str, Any]], max_tokens: int
) -> Callable[..., Answer]:
    """Ask through opsloop's backend."""

    def ask(row: dict[str, Any], choice: str) -> Answer:
        request = ChatRequest(
            _messages(row["messages"]),
            max_tokens=max_tokens,
            temperature=0.0,
            tools=tools,
            tool_choice="required" if choice == "required" else "auto",
        )
        result = asyncio.run(client.chat(request))
        if not result.tool_calls:
            return None, {}
        call = result.tool_calls[0]
        return call.name, json.loads(call.arguments)

    return ask


def peer_runner(tools: list[dict[str, Any]], threads: int, max_tokens: int) -> Callable[..., Answer]:
    """Ask through llama-cpp-python's ``chatml-function-calling`` handler."""
    from llama_cpp import Llama

    llm = Llama(
        str(default_model_path()),
        n_ctx=2048,
        n_threads=threads,
        chat_format="chatml-function-calling",
        verbose=False,
    )

    def ask(row: dict[str, Any], choice: str) -> Answer:
        response: Any = llm.create_chat_completion(
            messages=row["messages"], tools=tools, tool_choice=choice, temperature=0.0, max_tokens=max_tokens
        )
        calls = response["choices"][0]["message"].get("tool_calls") or []
        if not calls:
            return None, {}
        try:
            arguments = json.loads(calls[0]["function"]["arguments"])
        except json.JSONDecodeError:
            arguments = {}
        return calls[0]["function"]["name"], arguments

    return ask


def _same(expected: dict[str, Any], got: dict[str, Any]) -> bool:
    def norm(value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    return all(norm(got.get(key)) == norm(value) for key, value in expected.items())


def score(ask: Callable[..., Answer], rows: list[dict[str, Any]], *, required: bool) -> dict[str, Any]:
    """Ask every row under auto, and (``required``) the tool rows under required; rates and answers."""
    answers, started = [], time.perf_counter()
    tool_rows = [row for row in rows if row["expect"] is not None]
    for row in rows:
        name, arguments = ask(row, "auto")
        answers.append({"choice": "auto", "expect": row["expect"], "called": name, "arguments": arguments})
    for row in tool_rows if required else ():
        name, arguments = ask(row, "required")
        answers.append(
            {"choice": "required", "expect": row["expect"], "called": name, "arguments": arguments}
        )
    seconds = time.perf_counter() - started

    def rates(choice: str) -> dict[str, Any]:
        picked = [a for a in answers if a["choice"] == choice]
        tool = [a for a in picked if a["expect"] is not None]
        plain = [a for a in picked if a["expect"] is None]
        right_function = [a for a in tool if a["called"] == a["expect"]["name"]]
        result = {
            "tool_requests": len(tool),
            "called_a_tool": sum(a["called"] is not None for a in tool) / len(tool),
            "right_function": len(right_function) / len(tool),
            "right_arguments": sum(_same(a["expect"]["arguments"], a["arguments"]) for a in right_function)
            / len(tool),
        }
        if plain:
            result |= {
                "other_requests": len(plain),
                "answered_in_words": sum(a["called"] is None for a in plain) / len(plain),
            }
        return result

    return {
        "auto": rates("auto"),
        "required": rates("required") if required else None,
        "seconds": seconds,
        "answers": answers,
    }


def main(argv: list[str] | None = None) -> int:
    """Run both runners on the set; write ``--out``."""
    args = parse_args(argv)
    tools = json.loads((HERE / "tools.json").read_text())
    rows = [json.loads(line) for line in (HERE / "requests.jsonl").read_text().splitlines() if line.strip()]
    client = LlamaCppClient(threads=args.threads)
    client.warm_up()
    results = {"opsloop": score(opsloop_runner(client, tools, args.max_tokens), rows, required=True)}
    asyncio.run(client.aclose())
    # Its handler asserts tool_choice is auto or a named function: "required" cannot be asked.
    results["llama-cpp-python"] = score(
        peer_runner(tools, args.threads, args.max_tokens), rows, required=False
    )
    report = {
        "benchmark": "bench/tool_calling",
        "config": {
            "threads": args.threads,
            "max_tokens": args.max_tokens,
            "model": default_model_path().name,
        },
        "environment": environment(),
        "summary": {name: {"auto": r["auto"], "required": r["required"]} for name, r in results.items()},
        "runs": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    for name, result in results.items():
        for choice in ("auto", "required"):
            if result[choice] is None:
                print(f"{name:>16} {choice:>8}: not supported")
                continue
            line = ", ".join(
                f"{k} {v:.0%}" if isinstance(v, float) else f"{k} {v}" for k, v in result[choice].items()
            )
            print(f"{name:>16} {choice:>8}: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
