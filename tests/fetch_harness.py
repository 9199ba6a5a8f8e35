"""In-memory objects for the fetch-layer tests: no sockets, every call recorded, faults on chosen calls.

::

    MemoryObject(data, hook=...)    an object version in memory; fetch_into(start, end, dest) copies its
                                    bytes, records (start, end), and lets ``hook`` fail, block or lie
    Gate(blocked)                   a hook that blocks the chosen calls until ``opened`` is set
    eventually(predicate)           poll until true, failing (never hanging) past LIVENESS_LIMIT_S
    payload(size, seed)             deterministic random bytes

Used by the scheduler, chunk buffer and stream tests (``unit/fetch/``).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

from ossmodelconnector._fast import crc64
from ossmodelconnector.objects import ObjectInfo

LIVENESS_LIMIT_S = 30.0  # a bound for polling loops, so a bug fails the test instead of hanging it

# hook(call_number, start, end) runs inside fetch_into before the bytes land: it may raise, block, or
# return a CRC to report instead of the true one.
Hook = Callable[[int, int, int], "int | None"]


class MemoryObject:
    """One object version held in memory, with a ``fetch_into`` over it that records every call."""

    def __init__(
        self, data: bytes, *, key: str = "model.bin", hook: Hook | None = None, crc: int | bool | None = True
    ) -> None:
        self.data = data
        expected = crc64(data) if crc is True else (None if crc is False else crc)
        self.info = ObjectInfo("bucket", key, len(data), '"etag"', 0.0, expected)
        self.hook = hook
        self.calls: list[tuple[int, int]] = []
        self._lock = threading.Lock()

    def fetch_into(self, start: int, end: int, dest: memoryview) -> int:
        assert len(dest) == end - start and not dest.readonly
        with self._lock:
            number = len(self.calls)
            self.calls.append((start, end))
        reported = self.hook(number, start, end) if self.hook is not None else None
        dest[:] = self.data[start:end]
        actual = crc64(dest)
        return actual if reported is None else reported


class Gate:
    """A fetch hook that blocks chosen calls until opened; ``entered`` tells which calls are blocked."""

    def __init__(self, blocked: Callable[[int, int, int], bool]) -> None:
        self.blocked = blocked
        self.opened = threading.Event()
        self.entered = threading.Semaphore(0)

    def __call__(self, number: int, start: int, end: int) -> None:
        if self.blocked(number, start, end):
            self.entered.release()
            assert self.opened.wait(LIVENESS_LIMIT_S), "gate never opened"

    def wait_entered(self) -> None:
        assert self.entered.acquire(timeout=LIVENESS_LIMIT_S), "no fetch reached the gate"


def eventually(predicate: Callable[[], bool]) -> None:
    """Poll until ``predicate()`` holds; fails (rather than hangs) past a generous bound."""
    deadline = time.monotonic() + LIVENESS_LIMIT_S
    while not predicate():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.005)


def payload(size: int, seed: int = 0) -> bytes:
    """``size`` random bytes, the same for the same seed."""
    return random.Random(seed).randbytes(size)
