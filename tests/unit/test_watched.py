"""Watched: read once on first use, then re-read by its own thread; failures keep the last value."""

from __future__ import annotations

import threading
import time

import pytest

from opsloop.watched import Watched


class Source:
    """A value another process moves; counts the reads and can be made to fail."""

    def __init__(self) -> None:
        self.value = 1
        self.reads = 0
        self.failing = False
        self.read = threading.Event()

    def load(self) -> int:
        self.reads += 1
        self.read.set()
        if self.failing:
            raise ConnectionError("registry down")
        return self.value

    def next_read(self) -> None:
        self.read.clear()
        assert self.read.wait(10), "the watcher stopped reading"


def test_reads_once_until_the_watcher_reads_again() -> None:
    source = Source()
    watched = Watched(source.load, 0.05, name="test-watcher")
    try:
        assert source.reads == 0  # nothing is read before it is asked for
        assert [watched.get() for _ in range(100)] == [1] * 100
        source.value = 2
        source.next_read()
        source.next_read()  # the read after the move has certainly been stored
        assert watched.get() == 2
    finally:
        watched.close()


def test_a_failing_source_keeps_the_last_value_and_recovers() -> None:
    source = Source()
    watched = Watched(source.load, 0.05, name="test-watcher")
    try:
        assert watched.get() == 1
        source.failing = True
        source.next_read()
        assert watched.get() == 1
        source.value, source.failing = 3, False
        source.next_read()
        source.next_read()
        assert watched.get() == 3
    finally:
        watched.close()


def test_the_first_read_raises_what_the_source_raises_and_is_retried() -> None:
    source = Source()
    source.failing = True
    watched = Watched(source.load, 0.05, name="test-watcher")
    with pytest.raises(ConnectionError, match="registry down"):
        watched.get()
    source.failing = False
    assert watched.get() == 1
    watched.close()


def test_close_stops_the_thread() -> None:
    source = Source()
    watched = Watched(source.load, 0.05, name="test-watcher")
    watched.get()
    watched.close()
    reads = source.reads
    time.sleep(0.2)
    assert source.reads == reads and watched.get() == 1
    assert not [t for t in threading.enumerate() if t.name == "test-watcher"]
