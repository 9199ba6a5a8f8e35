"""The ``gc.idleSeconds`` timer: it calls until stopped, never keeps its target alive, and its interval."""

from __future__ import annotations

import gc
import threading

import pytest

from ossmodelconnector.directory.lazy.idle_gc import (
    DEFAULT_MAX_INTERVAL_S,
    DEFAULT_MIN_INTERVAL_S,
    IdleCollector,
    interval_for,
)


class _Target:
    def __init__(self) -> None:
        self.calls = threading.Semaphore(0)

    def collect(self) -> None:
        self.calls.release()


def test_the_idle_timer_calls_until_stopped_and_never_keeps_its_target_alive() -> None:
    target = _Target()
    collector = IdleCollector(target.collect, 0.01, name="test")
    assert collector._thread.daemon
    assert target.calls.acquire(timeout=10) and target.calls.acquire(timeout=10)
    collector.stop()
    assert not collector.alive
    target = _Target()
    collector = IdleCollector(target.collect, 0.01, name="test")
    del target
    gc.collect()
    collector._thread.join(10)  # its target is gone: the thread ends on its own
    assert not collector.alive


def test_timer_interval_bounds() -> None:
    assert interval_for(0.001) == DEFAULT_MIN_INTERVAL_S
    assert interval_for(2) == 0.5
    assert interval_for(10**6) == DEFAULT_MAX_INTERVAL_S
    with pytest.raises(ValueError, match="idle_s"):
        IdleCollector(_Target().collect, 0, name="test")
