"""The owner's side of the demand ring: readers in other processes ask for chunks, the owner fetches them.

::

    reader (another process) ── AttachedFile.wait ── post_demand(file, first, count) ──┐  state table's
    owner: DemandServer thread ── wait_for_demand(head) ── take_demands() <──────────┘  demand ring
                                         └── on_demand(file index, range of chunks)  (scheduler.boost)

In the owner's own process a wait on a chunk not yet in flight moves it to the front of the queue
(``ObjectHandle.wait`` -> ``PrefetchScheduler.boost``). A reader elsewhere cannot reach the scheduler,
so it posts to the ring in the shared table (``docs/cache-layout.md``, section 2), and this thread hands
each request to the same boost. Requests are hints: a lost one costs only order, never bytes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ossmodelconnector.cache.state_table import StateTable

__all__ = ["DEFAULT_DEMAND_POLL_S", "DemandServer"]

log = logging.getLogger(__name__)

DEFAULT_DEMAND_POLL_S = 0.5
"""The thread wakes at least this often (seconds) to notice that it should stop."""

OnDemand = Callable[[int, range], None]


class DemandServer:
    """A daemon thread that consumes a state table's demand ring and passes each request on.

    Args:
        table: the owner's (writable) state table.
        on_demand: called with ``(file index, chunk range)`` for each request, in the thread; its errors
            are logged and the thread goes on.
        name: for the thread's name and the log.
    """

    def __init__(self, table: StateTable, on_demand: OnDemand, *, name: str = "") -> None:
        self._table = table
        self._on_demand = on_demand
        self._stop = threading.Event()
        self.served = 0
        """Requests handed to ``on_demand`` so far."""
        self._thread = threading.Thread(
            target=self._run, name=f"ossmodelconnector-demand {name}".strip(), daemon=True
        )
        self._thread.start()

    def close(self, timeout_s: float = 2 * DEFAULT_DEMAND_POLL_S) -> None:
        """Stop the thread (it exits within ``DEFAULT_DEMAND_POLL_S``) and wait for it. Idempotent."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        table = self._table
        while not self._stop.is_set():
            try:
                head = table.demand_head()
                for request in table.take_demands():
                    first = request.first_chunk
                    try:
                        self._on_demand(request.file_index, range(first, first + request.chunk_count))
                        self.served += 1
                    except Exception as exc:  # a closed handle, a closed scheduler: nothing to boost
                        log.debug("demand %r not served: %r", request, exc)
                table.wait_for_demand(head, DEFAULT_DEMAND_POLL_S)
            except ValueError:  # the table was released under us (the cache closed): stop
                return
