"""``response_format``: how a request's schema is read and refused, and how an answer is checked."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from opsloop.errors import BackendError
from opsloop.llm.structured import check_answer
from serving.openai_schemas import ChatCompletionRequest

CITY = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "population": {"type": "integer", "minimum": 0}},
    "required": ["city"],
}


def _request(response_format: dict[str, Any]) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "response_format": response_format}
    )


def test_json_schema_reaches_the_protocol_with_its_name_and_strict() -> None:
    asked = _request({"type": "json_schema", "json_schema": {"name": "city", "schema": CITY, "strict": True}})
    request = asked.to_request()
    assert request.json_schema == CITY
    assert (request.json_schema_name, request.json_schema_strict) == ("city", True)


def test_json_object_is_the_schema_of_any_object_and_text_is_none() -> None:
    assert _request({"type": "json_object"}).to_request().json_schema == {"type": "object"}
    assert _request({"type": "text"}).to_request().json_schema is None


@pytest.mark.parametrize(
    ("response_format", "message"),
    [
        ({"type": "json_schema"}, "json_schema is required"),
        ({"type": "json_object", "json_schema": {"name": "x"}}, "only with it"),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}},
            "not a valid",
        ),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array"}}}, "an object"),
        ({"type": "json_schema", "json_schema": {"name": "has space", "schema": CITY}}, "pattern"),
        ({"type": "xml"}, "json_schema"),
    ],
)
def test_a_bad_response_format_is_refused_naming_why(response_format: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _request(response_format)


def test_an_answer_of_the_schema_passes_even_when_it_just_reached_max_tokens() -> None:
    check_answer('{"city": "Paris", "population": 2100000}', CITY, "stop", "local")
    check_answer('{"city": "Paris"}', CITY, "length", "local")


@pytest.mark.parametrize(
    ("text", "finish", "message"),
    [
        ('{"city": "Par', "length", "stopped at max_tokens"),
        ("Paris is the capital.", "stop", "no JSON"),
        ('{"population": 3}', "stop", "at the root: 'city' is a required property"),
        ('{"city": "Paris", "population": -1}', "stop", r"at \['population'\]: -1 is less than"),
    ],
)
def test_a_wrong_answer_is_a_backend_error_saying_what_is_wrong(text: str, finish: Any, message: str) -> None:
    with pytest.raises(BackendError, match=message) as raised:
        check_answer(text, CITY, finish, "local")
    assert raised.value.details["retryable"] is False
