"""Function calling on the embedded llama.cpp model, which has no tool format of its own.

SmolLM2's chat template knows no tools, and llama-cpp-python's ``chatml-function-calling``
handler drops ``tool`` messages (a result never reaches the model), refuses ``tool_choice:
"required"`` and, under ``auto``, constrains a plain answer to the functions' names. So:

* the tools are listed in the system message with the shape of a call,
  ``{"name": <function>, "arguments": {...}}``; an earlier call is replayed in that shape and
  a tool's result as a user turn that names the function;
* a grammar admits only such a call, with arguments of the named function's schema. Under
  ``auto`` the answer starts by saying which kind it is, ``call: {...}`` or ``answer: <words>``:
  with that first word the model called a tool for 62% of the requests that needed one
  (``bench/tool_calling``), with a bare ``{`` against words for none of them;
* an answer in that shape becomes a ``tool_calls`` entry with a new id.

One call per answer. How often a 135M model picks the right tool is measured in
``bench/results/tool-calling.json`` and stated in ``docs/gateway.md``: it is a format that
works offline, not a reliable agent.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from opsloop.errors import InvalidInputError
from opsloop.llm.protocol import ChatMessage, ChatRequest, ToolCall

__all__ = ["chat_turns", "read_answer", "tool_grammar"]

_CALL = "call: "
_WORDS = "answer: "
_ANSWER_IN_WORDS = rf'answer ::= "{_WORDS}" [^\x00]*'


def chat_turns(request: ChatRequest) -> list[dict[str, str]]:
    """The conversation as plain chat turns, calls and results written out, tools described."""
    prefix = _call_prefix(request)
    turns = [{"role": _role(message), "content": _content(message, prefix)} for message in request.messages]
    if not request.tools:
        return turns
    guide = _guide(request)
    if turns and turns[0]["role"] == "system":
        turns[0]["content"] = f"{turns[0]['content']}\n\n{guide}"
    else:
        turns.insert(0, {"role": "system", "content": guide})
    return turns


def _guide(request: ChatRequest) -> str:
    listed = "\n".join(
        f"- {function['name']}: {function.get('description') or ''} "
        f"Arguments: {json.dumps(function.get('parameters') or {'type': 'object'})}"
        for function in _functions(request.tools)
    )
    shape = '{"name": "<function>", "arguments": {...}}'
    if not _may_answer_in_words(request):
        return f"You can call these functions:\n{listed}\nCall one: answer with only {shape}."
    return (
        f"You can call these functions:\n{listed}\nTo call a function, reply: {_CALL}{shape}\n"
        f"To answer in words (no function fits, or a function returned the answer), reply: {_WORDS}<words>"
    )


def _may_answer_in_words(request: ChatRequest) -> bool:
    return request.tool_name is None and request.tool_choice == "auto"


def _call_prefix(request: ChatRequest) -> str:
    """What starts a call: under auto the model first says which kind of answer it gives."""
    return _CALL if request.tools and _may_answer_in_words(request) else ""


def _role(message: ChatMessage) -> str:
    return "user" if message.role == "tool" else message.role


def _content(message: ChatMessage, prefix: str) -> str:
    if message.role == "tool":
        called = f"The function {message.name} returned" if message.name else "The function returned"
        return f"{called} (call {message.tool_call_id}): {message.content}"
    parts = [message.content] if message.content else []
    return "\n".join(parts + [prefix + _call_text(call) for call in message.tool_calls])


def _call_text(call: ToolCall) -> str:
    try:
        arguments = json.loads(call.arguments or "{}")
    except json.JSONDecodeError:
        arguments = {}
    return json.dumps({"name": call.name, "arguments": arguments})


def tool_grammar(request: ChatRequest, json_gbnf: Callable[[Mapping[str, Any]], str]) -> str:
    """GBNF of an answer to ``request``: a call of one of its tools or, under ``auto``, words.

    ``json_gbnf`` turns a JSON Schema into GBNF (the backend's converter).

    Raises:
        InvalidInputError: ``tool_name`` names no tool of the request.
    """
    functions = _functions(request.tools)
    if request.tool_name is not None:
        functions = [f for f in functions if f["name"] == request.tool_name]
        if not functions:
            raise InvalidInputError(
                f"tool_choice names {request.tool_name!r}, which is no tool", field="tool_choice"
            )
    calls = {
        "anyOf": [
            {
                "type": "object",
                "properties": {
                    "name": {"const": function["name"]},
                    "arguments": function.get("parameters") or {"type": "object"},
                },
                "required": ["name", "arguments"],
            }
            for function in functions
        ]
    }
    gbnf = json_gbnf(calls)
    if not _may_answer_in_words(request):
        return gbnf
    return f'root ::= "{_CALL}" call | answer\n{_ANSWER_IN_WORDS}\n' + gbnf.replace("root ::=", "call ::=", 1)


def read_answer(text: str, request: ChatRequest) -> tuple[str, tuple[ToolCall, ...]]:
    """The answer's words, or the call it makes (then no words): what the grammar admitted."""
    if not request.tools:
        return text, ()
    if text.startswith(_WORDS):
        return text[len(_WORDS) :], ()
    stripped = text.removeprefix(_CALL).strip()
    if not stripped.startswith("{"):
        return text, ()
    try:
        call = json.loads(stripped)
    except json.JSONDecodeError:  # cut at max_tokens: no call can be made of it
        return text, ()
    names = {function["name"] for function in _functions(request.tools)}
    if not isinstance(call, dict) or call.get("name") not in names:
        return text, ()
    arguments = json.dumps(call.get("arguments") or {}, ensure_ascii=False)
    return "", (ToolCall(f"call_{uuid.uuid4().hex[:24]}", call["name"], arguments),)


def _functions(tools: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [tool["function"] for tool in tools if tool.get("type") == "function" and "function" in tool]
