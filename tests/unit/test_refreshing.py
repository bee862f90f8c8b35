"""RefreshAhead: kept for its time, read again off the caller's thread in the second half of it."""

from __future__ import annotations

import threading

from opsloop.refreshing import RefreshAhead


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Rows:
    """A table another process changes; records which thread read it, and can hold or fail a read."""

    def __init__(self) -> None:
        self.values: dict[str, int | None] = {"a": 1}
        self.readers: list[str] = []
        self.failing = False
        self.hold = threading.Event()
        self.hold.set()

    def load(self, key: str) -> int | None:
        self.readers.append(threading.current_thread().name)
        self.hold.wait(10)
        if self.failing:
            raise ConnectionError("database is locked")
        return self.values.get(key)


def cache(rows: Rows, clock: Clock) -> RefreshAhead[str, int]:
    return RefreshAhead(rows.load, 10.0, name="test-refresh", clock=clock)


def test_a_steady_caller_never_reads_itself_after_the_first_read() -> None:
    rows, clock = Rows(), Clock()
    values = cache(rows, clock)
    caller = threading.current_thread().name
    assert values.get("a") == 1
    clock.now += 4
    assert values.get("a") == 1 and rows.readers == [caller]  # first half: the kept value, no read
    rows.values["a"] = 2
    clock.now += 2
    assert values.get("a") == 1  # still within its time: served while the read runs elsewhere
    values.settle()
    assert rows.readers[1].startswith("test-refresh")
    clock.now += 9  # 15 s after the first read, 9 after the second: still kept
    assert values.get("a") == 2 and len(rows.readers) == 2


def test_an_expired_value_is_read_on_the_callers_thread() -> None:
    rows, clock = Rows(), Clock()
    values = cache(rows, clock)
    values.get("a")
    rows.values["a"] = 3
    clock.now += 10
    assert values.get("a") == 3
    assert rows.readers == [threading.current_thread().name] * 2


def test_a_missing_key_is_not_kept() -> None:
    rows, clock = Rows(), Clock()
    values = cache(rows, clock)
    assert values.get("b") is None
    rows.values["b"] = 5
    assert values.get("b") == 5


def test_a_read_ahead_of_a_forgotten_key_brings_nothing_back() -> None:
    rows, clock = Rows(), Clock()
    values = cache(rows, clock)
    values.get("a")
    clock.now += 6
    rows.hold.clear()  # the read ahead starts before the change and ends after it
    assert values.get("a") == 1
    rows.values["a"] = None  # revoked, say, by this process
    values.forget("a")
    rows.hold.set()
    values.settle()
    assert values.last("a") is None
    assert values.get("a") is None


def test_a_failed_read_ahead_keeps_the_value_until_it_expires() -> None:
    rows, clock = Rows(), Clock()
    values = cache(rows, clock)
    values.get("a")
    rows.failing = True
    clock.now += 6
    assert values.get("a") == 1
    values.settle()
    clock.now += 1
    assert values.get("a") == 1 and len(rows.readers) == 2  # no second read ahead
    rows.failing = False
    rows.values["a"] = 4
    clock.now += 3
    assert values.get("a") == 4 and len(rows.readers) == 3
