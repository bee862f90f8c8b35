"""Structured outputs: a request's JSON Schema checked before it is sent, and the answer after.

Backends constrain decoding to the schema where they can (llama.cpp compiles it to a grammar,
vLLM guides decoding, OpenAI and Anthropic have structured outputs), but none of them promises
an answer that parses: a completion cut at ``max_tokens`` ends mid-object, and a backend may
support only part of JSON Schema. So the gateway's caller gets JSON that validates against the
schema, or an error saying why not; never an unparsed string it takes for an answer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import jsonschema
from jsonschema.exceptions import SchemaError

from opsloop.errors import BackendError, InvalidInputError
from opsloop.llm.protocol import FinishReason

__all__ = ["check_answer", "check_schema"]


def check_schema(schema: Mapping[str, Any], *, field: str) -> None:
    """Refuse a ``schema`` that is not a JSON Schema of an object.

    Raises:
        InvalidInputError: It is not valid JSON Schema, or describes something other than an
            object (OpenAI and Anthropic accept only objects at the root).
    """
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        raise InvalidInputError(f"{field} is not a valid JSON Schema: {exc.message}", field=field) from exc
    if schema.get("type", "object") != "object":
        raise InvalidInputError(f"{field} must describe an object, not {schema['type']!r}", field=field)


def check_answer(text: str, schema: Mapping[str, Any], finish_reason: FinishReason, backend: str) -> None:
    """Raise unless ``text`` is JSON that validates against ``schema``.

    Raises:
        BackendError: The answer was cut at ``max_tokens``, is no JSON, or does not match the
            schema (the first mismatch and where it is); not retryable, since the same request
            would most likely be answered the same way.
    """
    try:
        answer = json.loads(text)
    except json.JSONDecodeError as exc:
        if finish_reason == "length":  # a whole answer that just reached the limit still counts
            raise BackendError(
                f"{backend} stopped at max_tokens before the JSON answer ended ({len(text)} characters); "
                "raise max_tokens",
                backend=backend,
                retryable=False,
            ) from exc
        raise BackendError(
            f"{backend} answered with no JSON ({exc.msg} at character {exc.pos}): {text[:120]!r}",
            backend=backend,
            retryable=False,
        ) from exc
    error = jsonschema.exceptions.best_match(
        jsonschema.validators.validator_for(schema)(schema).iter_errors(answer)
    )
    if error is not None:
        where = "".join(f"[{part!r}]" for part in error.absolute_path) or "the root"
        raise BackendError(
            f"{backend}'s JSON answer does not match the schema at {where}: {error.message}",
            backend=backend,
            retryable=False,
        )
