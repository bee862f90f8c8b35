"""Tools on the embedded model: the turns it reads, the grammar it writes under, the calls read back."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from llama_cpp.llama_grammar import LlamaGrammar, json_schema_to_gbnf

from opsloop.errors import InvalidInputError
from opsloop.llm.local_tools import chat_turns, read_answer, tool_grammar
from opsloop.llm.protocol import ChatMessage, ChatRequest, ToolCall

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
ASKED = ChatRequest([ChatMessage("user", "Weather in Oslo?")], tools=[WEATHER])


def _gbnf(schema: object) -> str:
    return json_schema_to_gbnf(json.dumps(schema))


def test_the_tools_are_described_in_the_system_message_the_conversation_kept() -> None:
    asked = replace(ASKED, messages=[ChatMessage("system", "Be brief."), *ASKED.messages])
    system, user = chat_turns(asked)
    assert system["role"] == "system" and system["content"].startswith("Be brief.\n\nYou can call")
    assert (
        "get_weather: Current weather of a city." in system["content"]
        and "answer: <words>" in system["content"]
    )
    assert user == {"role": "user", "content": "Weather in Oslo?"}
    forced = chat_turns(replace(ASKED, tool_choice="required"))[0]["content"]
    assert "answer: <words>" not in forced and "Call one" in forced


def test_an_earlier_call_and_its_result_are_written_out_for_the_model() -> None:
    call = ToolCall("call_1", "get_weather", '{"city": "Oslo"}')
    history = [
        *ASKED.messages,
        ChatMessage("assistant", "", tool_calls=[call]),
        ChatMessage("tool", '{"celsius": 4}', name="get_weather", tool_call_id="call_1"),
    ]
    turns = chat_turns(replace(ASKED, messages=history))[2:]
    assert turns[0] == {
        "role": "assistant",
        "content": 'call: {"name": "get_weather", "arguments": {"city": "Oslo"}}',
    }
    assert turns[1] == {
        "role": "user",
        "content": 'The function get_weather returned (call call_1): {"celsius": 4}',
    }
    without_tools = chat_turns(replace(ASKED, messages=history, tools=()))
    assert without_tools[1]["content"].startswith('{"name"')  # no tools: no kind of answer to announce


def test_the_grammars_compile_for_auto_required_and_a_named_tool() -> None:
    for asked in (ASKED, replace(ASKED, tool_choice="required"), replace(ASKED, tool_name="get_weather")):
        assert LlamaGrammar.from_string(tool_grammar(asked, _gbnf), verbose=False)
    assert tool_grammar(ASKED, _gbnf).startswith('root ::= "call: " call | answer')


def test_a_named_tool_that_is_not_offered_is_bad_input() -> None:
    with pytest.raises(InvalidInputError, match="names 'launch', which is no tool"):
        tool_grammar(replace(ASKED, tool_name="launch"), _gbnf)


def test_answers_are_read_as_a_call_or_as_words() -> None:
    words, calls = read_answer('call: {"name": "get_weather", "arguments": {"city": "Oslo"}}', ASKED)
    assert (
        words == "" and calls[0].name == "get_weather" and json.loads(calls[0].arguments) == {"city": "Oslo"}
    )
    assert read_answer("answer: It is cold.", ASKED) == ("It is cold.", ())
    assert read_answer('call: {"name": "get_weat', ASKED) == ('call: {"name": "get_weat', ())  # cut short
    assert read_answer('{"city": "Oslo"}', replace(ASKED, tools=())) == ('{"city": "Oslo"}', ())
