"""Chunks fetched straight into a reader's own buffer instead of the chunk buffer.

A stream's ``readinto`` that covers whole chunks nobody has fetched yet asks for them to be delivered:
the worker that takes such a chunk writes into the reader's buffer, and the chunk stays EMPTY in the
chunk buffer (nothing held, nothing to evict). The reader pays neither the page faults of fresh memory
nor a second copy; the chunk's CRC-64 still counts towards the object's check. Shared buffers (a
prepared directory, read by other processes) never deliver.

Every method runs under the owning buffer's lock (its condition is passed in where one waits).
"""

from __future__ import annotations

import contextlib
import threading

__all__ = ["Deliveries", "Delivery"]

# How often a withdrawing reader looks again while a worker finishes writing into its buffer.
_WITHDRAW_POLL_S = 0.5


class Delivery:
    """One chunk on its way into a reader's buffer ``dest``."""

    __slots__ = ("dest", "done", "started")

    def __init__(self, dest: memoryview) -> None:
        self.dest = dest
        self.started = False
        """A worker took it: it writes into ``dest`` until it reports back."""
        self.done = False
        """The worker reported back (the bytes are in ``dest``, or the chunk failed), or it was withdrawn."""


class Deliveries:
    """The pending deliveries of one chunk buffer, by chunk index."""

    def __init__(self) -> None:
        self._pending: dict[int, Delivery] = {}

    def __contains__(self, index: int) -> bool:
        return index in self._pending

    def add(self, index: int, dest: memoryview) -> Delivery | None:
        """A new delivery of chunk ``index`` into ``dest``; None if one is already pending."""
        if index in self._pending:
            return None
        delivery = self._pending[index] = Delivery(dest)
        return delivery

    def destination(self, index: int) -> memoryview | None:
        """Where a fetch of chunk ``index`` lands instead of the mapping, if anywhere."""
        delivery = self._pending.get(index)
        return delivery.dest if delivery is not None else None

    def start(self, index: int) -> bool:
        """A worker takes chunk ``index``: True if it goes to a reader's buffer."""
        delivery = self._pending.get(index)
        if delivery is not None:
            delivery.started = True
        return delivery is not None

    def finish(self, index: int) -> bool:
        """The worker of chunk ``index`` reported back: True if it was a delivery (now done)."""
        delivery = self._pending.pop(index, None)
        if delivery is not None:
            delivery.done = True
        return delivery is not None

    def withdraw(self, mine: dict[int, Delivery], condition: threading.Condition) -> None:
        """Cancel the deliveries of ``mine`` no worker took; wait until those taken have reported back.

        A worker writes into the reader's buffer until its request returns, so the reader must not let go
        of that buffer before (the request's own timeouts bound the wait). Then the views are released.
        """
        for index, delivery in mine.items():
            if not delivery.started and self._pending.get(index) is delivery:
                del self._pending[index]
                delivery.done = True
        while not all(delivery.done for delivery in mine.values()):
            condition.wait(_WITHDRAW_POLL_S)
        for delivery in mine.values():
            with contextlib.suppress(BufferError):
                delivery.dest.release()
