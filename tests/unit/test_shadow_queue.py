"""A full shadow queue drops copies and counts them instead of making the caller wait."""

from __future__ import annotations

from opsloop.models.shadow import ShadowCopy, ShadowQueue


def test_a_full_queue_drops_and_counts_without_blocking() -> None:
    dropped: list[str] = []
    shadows = ShadowQueue(None, print, max_pending=2, on_dropped=dropped.append)  # type: ignore[arg-type]
    copy = ShadowCopy("e1", "m", 2, "r1", [{"x": 1}], [0])
    # Not started: nothing drains the queue, as when the shadow is slower than the traffic.
    assert [shadows.offer(copy) for _ in range(5)] == [True, True, False, False, False]
    assert dropped == ["e1", "e1", "e1"]
