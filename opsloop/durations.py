"""Durations as people type them on a command line or in a query string: ``30m``, ``24h``, ``7d``."""

from __future__ import annotations

import re
from datetime import timedelta

from opsloop.errors import InvalidInputError

__all__ = ["parse_duration"]

_DURATION = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
MAX_DURATION = timedelta(days=3650)
"""The longest window anyone asks about (ten years); longer ones overflow date arithmetic."""


def parse_duration(text: str, *, field: str = "since") -> timedelta:
    """Parse a positive whole number of seconds, minutes, hours, days or weeks.

    Args:
        text: ``90s``, ``30m``, ``24h``, ``7d`` or ``2w``.
        field: The option or parameter the text came from, for the error.

    Raises:
        InvalidInputError: ``text`` has another form, is zero, or is longer than ten years.
    """
    match = _DURATION.match(text.strip().lower())
    if match is None or int(match.group(1)) == 0:
        raise InvalidInputError(
            f"{field} must look like 30m, 24h or 7d, got {text!r}", field=field, value=text
        )
    try:
        duration = timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    except OverflowError:
        duration = timedelta.max
    if duration > MAX_DURATION:
        raise InvalidInputError(
            f"{field} must be at most {MAX_DURATION.days}d, got {text!r}", field=field, value=text
        )
    return duration
