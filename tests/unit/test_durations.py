"""Durations from query strings and options: valid forms, and every bad one a 422, never a crash."""

from __future__ import annotations

from datetime import timedelta

import pytest

from opsloop.durations import parse_duration
from opsloop.errors import InvalidInputError


@pytest.mark.parametrize(
    ("text", "expected"),
    [("90s", timedelta(seconds=90)), ("30m", timedelta(minutes=30)), ("24h", timedelta(hours=24)),
     ("7d", timedelta(days=7)), ("2W", timedelta(weeks=2)), ("3650d", timedelta(days=3650))],
)  # fmt: skip
def test_valid_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "0h", "h", "1y", "-1d", "1.5h", "3651d", "999999999d", "9" * 400 + "w"])
def test_bad_or_overlong_durations_name_the_field(text: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        parse_duration(text, field="window")
    assert caught.value.details["field"] == "window"
