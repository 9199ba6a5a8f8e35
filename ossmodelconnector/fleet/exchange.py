"""One prepared directory's share of a fleet: its OSS chunks go out to the other nodes, theirs come in.

::

    node r, worker threads (the prefetch scheduler, read order)          node r, exchange thread
      chunk k, owner(k) == r: ranged GET from OSS into the segment  --->  k-th broadcast, from r
      chunk k, another owner: wait for the exchange to deliver it   <---  k-th broadcast, into the segment
                              (then check its CRC-64 here)

Every node runs the same sequence of broadcasts, one per chunk of the plan, in the plan's order: for
chunk ``k`` a header (status, CRC-64) then the bytes, from ``owner(k)``'s shared segment straight into
every other node's (``torch.frombuffer`` views of the mappings). The owner fetches its chunks with its
usual workers; the broadcast of chunk ``k`` starts once the owner has stored it, so the exchange runs a
step behind the fetches and both links stay busy.

Faults cost time, never bytes, and every wait is bounded by ``fleet.timeoutSeconds`` (T):

- a chunk whose CRC-64 does not match on arrival is fetched from OSS here;
- a slow owner: while its chunk is on the way it repeats the header every T/4 ("keep waiting"); a chunk
  not stored within T (or whose fetch failed there) is announced as not fetched, and every node fetches
  it from OSS itself;
- a node that dies or freezes sends nothing: a broadcast fails within T, the group is aborted (which
  closes its connections, so the others fail at once instead of one timeout after another), and every
  node fetches what it lacks from OSS itself;
- a group that never forms (within T) means loading alone, with one WARNING.
"""

from __future__ import annotations

import contextlib
import enum
import importlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ossmodelconnector._fast import crc64
from ossmodelconnector.cache.peer_source import address
from ossmodelconnector.errors import ClosedError
from ossmodelconnector.fleet.plan import FleetPlan, Step
from ossmodelconnector.fleet.rendezvous import FleetSettings
from ossmodelconnector.objects import FetchInto

__all__ = ["FleetExchange", "FleetState", "import_group_early"]

log = logging.getLogger(__name__)

_SENT = 1  # header status: the bytes follow
_NOT_FETCHED = 0  # header status: the owner has no good copy; every node fetches it itself
_KEEP_WAITING = 2  # header status: the owner is alive and still fetching it; the header comes again


class FleetState(enum.Enum):
    FORMING = "forming"
    EXCHANGING = "exchanging"
    DONE = "done"
    ALONE = "alone"  # the group never formed: everything from OSS
    FAILED = "failed"  # the group broke mid-way (or was closed): what was not delivered comes from OSS


class _Group(Protocol):
    def broadcast_header(self, source: int, status: int, crc: int) -> tuple[int, int]: ...
    def broadcast(self, source: int, view: memoryview) -> None: ...
    def allgather_headers(self, status: int, crc: int) -> list[tuple[int, int]]: ...
    def allgather(self, views: list[memoryview]) -> None: ...
    def barrier(self) -> None: ...
    def abort(self) -> None: ...


class _Chunk(enum.Enum):
    PENDING = 0
    FETCHED = 1  # in this node's segment (own chunk stored, or a peer's delivered)
    FETCH_HERE = 2  # not coming from the exchange: fetch it from OSS
    FAILED = 3  # own chunk: the OSS fetch failed here


class FleetExchange:
    """The exchange of one prepared directory on one node.

    Args:
        settings: this node's place in the fleet.
        plan: the chunks and their owners (the same on every node).
        views: writable views of the large files' data segments, in the plan's file order; released by
            :meth:`close`.
        name: what the log calls it (the model directory).
        window: how many of its own chunks the node fetches from OSS at once (see :meth:`_queue_own`).
        form_group: forms the group (``FleetGroup.form``); injected so that torch is imported only here.
    """

    def __init__(
        self,
        settings: FleetSettings,
        plan: FleetPlan,
        views: Sequence[memoryview],
        *,
        name: str,
        window: int,
        form_group: Callable[[FleetSettings, bytes], _Group] | None = None,
    ) -> None:
        self.settings = settings
        self.plan = plan
        self.name = name
        self._views = list(views)
        self._form_group = form_group or _form_gloo_group
        self.on_delivered: Callable[[int, int], None] | None = None
        """Called with (file, chunk index) once a peer's chunk is in this node's segment (from the exchange
        thread): the prefetch scheduler queues it first, so that a worker marks it READY at once."""
        self.queue_chunks: Callable[[list[tuple[int, int]]], None] | None = None
        """Called with ``(file, chunk index)`` pairs to fetch, best first (the prefetch scheduler's
        read-ahead): this node's own chunks, ``window`` at a time in its fetch order, each settled one
        replaced by the next; once the exchange stops short, every chunk not queued yet (fetched from
        OSS). Peers' chunks are not queued while they may still come: ``on_delivered`` queues them."""
        self._window = max(1, window)
        self._order = plan.fetch_order(settings.rank)
        self._own = [k for k in self._order if plan.owner(k) == settings.rank]
        self._own_next = 0  # the next of _own to queue
        self._own_out = 0  # own chunks queued and not settled
        self._queued = [False] * len(plan)
        self._cond = threading.Condition()
        self._chunks = [_Chunk.PENDING] * len(plan)
        self._crcs = [0] * len(plan)
        self._state = FleetState.FORMING
        self._closed = False
        self._reason = ""
        self._group: _Group | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"ossmodelconnector-fleet-{settings.rank}", daemon=True
        )
        self._stats_lock = threading.Lock()
        self._counts = {
            "bytes_from_oss": 0,
            "bytes_from_peers": 0,
            "bytes_sent": 0,
            "chunks_from_oss": 0,
            "chunks_from_peers": 0,
            "fallback_chunks": 0,
            "fallback_bytes": 0,
            "crc_mismatches": 0,
            "chunks_given_up": 0,
        }
        self._exchange_s = 0.0
        self._started = time.monotonic()
        self._formed_s: float | None = None
        self._finished_s: float | None = None

    # --- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        """Queue the first own chunks, then form the group and run the exchange in the background
        (prepare_directory returns at once)."""
        self._queue_own()
        self._thread.start()

    @property
    def state(self) -> FleetState:
        return self._state

    def close(self) -> None:
        """Abort the group (a broadcast in progress fails at once), wait for the thread, drop the views.

        Waiting workers fetch from OSS, or find the cache closed. Idempotent.
        """
        with self._cond:
            if self._state is FleetState.EXCHANGING and _Chunk.PENDING not in self._chunks:
                # Every chunk is here: the others may still be taking this node's last ones. Let the
                # exchange end (its barrier), bounded by the timeout, rather than cut it.
                self._cond.wait_for(lambda: self._state is not FleetState.EXCHANGING, self.settings.timeout_s)
            if self._closed:
                return
            self._closed = True
            if self._state in (FleetState.FORMING, FleetState.EXCHANGING):
                self._state, self._reason = FleetState.FAILED, "closed before the exchange ended"
            group = self._group
            self._cond.notify_all()
        if group is not None:
            group.abort()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            # Forming waits at most fleet.timeoutSeconds, and an aborted group's operations end at once.
            self._thread.join(self.settings.timeout_s + 5.0)
        with self._cond:
            views, self._views = self._views, []
        for view in views:
            view.release()

    # --- the workers' side ---------------------------------------------------------------------------

    def fetch_into(self, file: int, fallback: FetchInto) -> FetchInto:
        """The ``fetch_into`` for large file ``file``: its own chunks from OSS, the others from the peers.

        Args:
            file: the file's index in the plan.
            fallback: the fetch from OSS into this node's segment (returns the CRC-64).

        A ``dest`` that is this node's mapping of the chunk already holds delivered bytes; another gets a
        copy.
        """

        def fetch_into(start: int, end: int, dest: memoryview) -> int:
            position = self.plan.position(file, start)
            if position is None or self.plan.chunks[position].end != end:  # not a chunk of the plan
                return self._from_oss(fallback, start, end, dest)
            if self.plan.owner(position) == self.settings.rank:
                return self._fetch_own(position, fallback, start, end, dest)
            crc = self._wait_delivered(position)
            if crc is not None:
                got = self._hand_over(file, start, end, dest)
                if got == crc:
                    self._count(bytes_from_peers=end - start, chunks_from_peers=1)
                    return got
                log.warning(
                    "%s: a chunk from node %d failed its CRC-64 check (bytes [%d, %d) of file %d); "
                    "fetching it from OSS",
                    self.name,
                    self.plan.owner(position),
                    start,
                    end,
                    file,
                )
                self._count(crc_mismatches=1)
            self._count(fallback_chunks=1, fallback_bytes=end - start)
            return self._from_oss(fallback, start, end, dest)

        return fetch_into

    def _hand_over(self, file: int, start: int, end: int, dest: memoryview) -> int:
        """The CRC-64 of delivered bytes ``[start, end)`` of ``file``, copied into ``dest`` unless it is
        the segment itself."""
        with self._cond:
            if not self._views:
                raise ClosedError(f"{self.name}: closed while its fleet exchange ran")
            segment = self._views[file]
        with segment[start:end] as delivered:
            if address(dest) != address(segment) + start:
                dest[: end - start] = delivered
            return int(crc64(delivered))

    def _fetch_own(self, position: int, fallback: FetchInto, start: int, end: int, dest: memoryview) -> int:
        try:
            crc = self._from_oss(fallback, start, end, dest)
        except BaseException:
            self._settle(position, _Chunk.FAILED, 0)
            self._queue_own()
            raise
        self._settle(position, _Chunk.FETCHED, crc)
        self._queue_own()
        return crc

    def _from_oss(self, fallback: FetchInto, start: int, end: int, dest: memoryview) -> int:
        crc = fallback(start, end, dest)
        self._count(bytes_from_oss=end - start, chunks_from_oss=1)
        return crc

    def _settle(self, position: int, chunk: _Chunk, crc: int) -> None:
        with self._cond:
            if self._chunks[position] is _Chunk.PENDING:
                self._chunks[position] = chunk
                self._crcs[position] = crc
                if self._queued[position] and self.plan.owner(position) == self.settings.rank:
                    self._own_out -= 1
                self._cond.notify_all()

    # --- what the workers fetch ----------------------------------------------------------------------

    def _queue_own(self) -> None:
        """Queue own chunks in the fetch order until ``window`` of them are out (queued, not settled).

        All at once, a node's own fetches would share its OSS bandwidth and all finish near the end, and
        the whole exchange would wait for the last byte (``benchmarks/fleet_load.py``, 4 nodes behind
        50 MiB/s: 15.9 s, against 12.7 s a few at a time); a few at a time, they finish one step after
        another, as the exchange sends them.
        """
        with self._cond:
            batch: list[int] = []
            while self._own_out < self._window and self._own_next < len(self._own):
                position = self._own[self._own_next]
                self._own_next += 1
                if self._chunks[position] is _Chunk.PENDING and not self._queued[position]:
                    self._queued[position] = True
                    self._own_out += 1
                    batch.append(position)
        self._queue(batch)

    def _queue_rest(self) -> None:
        """The exchange stopped short: queue every chunk not queued yet (its fetch goes to OSS)."""
        with self._cond:
            batch = [k for k in self._order if not self._queued[k] and self._chunks[k] is _Chunk.PENDING]
            for position in batch:
                self._queued[position] = True
                self._own_out += self.plan.owner(position) == self.settings.rank
        self._queue(batch)

    def _queue(self, positions: list[int]) -> None:
        if positions and self.queue_chunks is not None:
            chunks = [self.plan.chunks[k] for k in positions]
            self.queue_chunks([(chunk.file, chunk.chunk) for chunk in chunks])

    def _wait_delivered(self, position: int) -> int | None:
        """The CRC-64 the owner sent once chunk ``position`` is in the segment; None: fetch it here.

        Bounded: the exchange thread settles every chunk, or ends (and then nothing more is delivered)
        within ``fleet.timeoutSeconds`` of a node failing.
        """
        with self._cond:
            while self._chunks[position] is _Chunk.PENDING and self._state in (
                FleetState.FORMING,
                FleetState.EXCHANGING,
            ):
                self._cond.wait()
            if self._chunks[position] is _Chunk.FETCHED:
                return self._crcs[position]
            if self._closed:
                raise ClosedError(f"{self.name}: closed while waiting for a chunk from the fleet")
            return None

    # --- the exchange thread -------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            group = self._form_group(self.settings, self.plan.digest)
        except ImportError as exc:
            self._end(
                FleetState.ALONE,
                f"torch.distributed cannot be imported ({exc}): install the fleet extra, "
                "pip install 'ossmodelconnector[fleet]'",
            )
            log.warning("%s: fleet mode: %s; this node loads alone from OSS", self.name, self._reason)
            return
        except Exception as exc:
            self._end(FleetState.ALONE, f"{exc}")
            log.warning(
                "%s: fleet mode: %s could not join its fleet (%s); this node loads alone from OSS",
                self.name,
                self.settings,
                self._reason,
            )
            return
        with self._cond:
            if self._closed:
                group.abort()
                return
            self._group = group
            self._state = FleetState.EXCHANGING
            self._formed_s = time.monotonic() - self._started
        log.info(
            "%s: fleet mode: %s joined; fetching %d of %d chunks from OSS",
            self.name,
            self.settings,
            sum(1 for k in range(len(self.plan)) if self.plan.owner(k) == self.settings.rank),
            len(self.plan),
        )
        try:
            for step in self.plan.steps:
                if self.plan.is_round(step):
                    self._exchange_round(group, step)
                else:
                    self._exchange_single(group, step[0])
            group.barrier()
        except Exception as exc:
            group.abort()
            if self._end(FleetState.FAILED, f"{exc}"):
                log.warning(
                    "%s: fleet mode: the exchange stopped (%s); this node fetches what it lacks from OSS",
                    self.name,
                    self._reason,
                )
            return
        group.abort()  # every node is past the barrier: nothing more goes over the group's connections
        self._end(FleetState.DONE, "")

    def _exchange_round(self, group: _Group, positions: Step) -> None:
        """N chunks, the ``r``-th from node ``r``, to every node by one all-gather (after their headers)."""
        rank = self.settings.rank
        deadline = time.monotonic() + self.settings.timeout_s
        began = time.monotonic()
        mine = (_KEEP_WAITING, 0)
        headers = [mine]
        while any(status == _KEEP_WAITING for status, _ in headers):
            if mine[0] == _KEEP_WAITING:  # a node's answer, once given, stands for the whole round
                mine = self._wait_own(positions[rank], deadline)
            headers = group.allgather_headers(*mine)
        if any(status == _SENT for status, _ in headers):
            with self._cond:
                if self._closed:
                    raise ClosedError("closed")
                views = [self._chunk_view(position) for position in positions]
            try:
                group.allgather(views)
            finally:
                for view in views:
                    view.release()
            if mine[0] == _SENT:
                self._count(bytes_sent=self.plan.chunks[positions[rank]].length)
        self._exchange_s += time.monotonic() - began
        for source, (position, (status, crc)) in enumerate(zip(positions, headers, strict=True)):
            if source != rank:
                self._delivered(position, status, crc)

    def _exchange_single(self, group: _Group, position: int) -> None:
        """One chunk from its owner to every node by one broadcast (after its header)."""
        source = self.plan.owner(position)
        mine = source == self.settings.rank
        deadline = time.monotonic() + self.settings.timeout_s
        began = time.monotonic()
        status, crc = _KEEP_WAITING, 0
        while status == _KEEP_WAITING:
            if mine:
                status, crc = self._wait_own(position, deadline)
            status, crc = group.broadcast_header(source, status, crc)
        if status == _SENT:
            with self._cond:
                if self._closed:
                    raise ClosedError("closed")
                view = self._chunk_view(position)
            try:
                group.broadcast(source, view)
            finally:
                view.release()
            if mine:
                self._count(bytes_sent=self.plan.chunks[position].length)
        self._exchange_s += time.monotonic() - began
        if not mine:
            self._delivered(position, status, crc)

    def _chunk_view(self, position: int) -> memoryview:
        chunk = self.plan.chunks[position]
        return self._views[chunk.file][chunk.start : chunk.end]

    def _delivered(self, position: int, status: int, crc: int) -> None:
        """A peer's chunk is in the segment (sent), or will not come (fetch it here): either way, now."""
        self._settle(position, _Chunk.FETCHED if status == _SENT else _Chunk.FETCH_HERE, crc)
        if self.on_delivered is not None:
            chunk = self.plan.chunks[position]
            self.on_delivered(chunk.file, chunk.chunk)

    def _wait_own(self, position: int, deadline: float) -> tuple[int, int]:
        """This node's chunk ``position`` once stored (sent, with its CRC-64); not fetched when it failed
        here or did not come by ``deadline`` (the others then fetch it from OSS instead of waiting
        longer); keep waiting after a quarter of the timeout, so that the others' receive, bounded by the
        timeout, tells a live node from a dead or frozen one."""
        with self._cond:
            beat = min(deadline, time.monotonic() + self.settings.timeout_s / 4)
            while self._chunks[position] is _Chunk.PENDING and self._state is FleetState.EXCHANGING:
                remaining = beat - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            if self._closed:
                raise ClosedError("closed")
            if self._chunks[position] is _Chunk.FETCHED:
                return _SENT, self._crcs[position]
            if self._chunks[position] is _Chunk.PENDING and time.monotonic() < deadline:
                return _KEEP_WAITING, 0
            if self._chunks[position] is _Chunk.PENDING:
                self._count(chunks_given_up=1)
            return _NOT_FETCHED, 0

    def _end(self, state: FleetState, reason: str) -> bool:
        """Settle the exchange's end: waiting workers, and chunks not queued yet, fetch from OSS. False
        when already closed."""
        with self._cond:
            self._finished_s = time.monotonic() - self._started
            if self._closed:
                return False
            self._state = state
            self._reason = reason
            self._group = None
            self._cond.notify_all()
        self._queue_rest()
        return True

    # --- figures -------------------------------------------------------------------------------------

    def _count(self, **amounts: int) -> None:
        with self._stats_lock:
            for key, amount in amounts.items():
                self._counts[key] += amount

    def sources(self) -> tuple[int, int]:
        """Bytes of the large files from OSS and from the peers so far (for the progress bar)."""
        with self._stats_lock:
            return self._counts["bytes_from_oss"], self._counts["bytes_from_peers"]

    def stats(self) -> dict[str, Any]:
        """This node's figures: rank, nodes, state (and why it is alone or failed), bytes from OSS and
        from peers, bytes sent, the chunks that fell back to OSS, CRC mismatches, the chunks this node gave
        up sending (not stored within the timeout), and the seconds its exchange thread spent in
        broadcasts (waits for a chunk's owner included)."""
        with self._stats_lock:
            counts = dict(self._counts)
        return {
            "rank": self.settings.rank,
            "nodes": self.settings.nodes,
            "state": self._state.value,
            "reason": self._reason,
            "share_bytes": self.plan.share(self.settings.rank),
            **counts,
            "exchange_s": self._exchange_s,
            "formed_after_s": self._formed_s,
            "finished_after_s": self._finished_s,
        }


_GROUP_MODULE = "ossmodelconnector.fleet.group"


def import_group_early() -> None:
    """Start importing the group module (torch.distributed: seconds on a busy node) in the background,
    so that the group can form as soon as the plan is known. An import error shows when the group forms."""

    def run() -> None:
        with contextlib.suppress(Exception):
            importlib.import_module(_GROUP_MODULE)

    threading.Thread(target=run, name="ossmodelconnector-fleet-import", daemon=True).start()


def _form_gloo_group(settings: FleetSettings, digest: bytes) -> _Group:
    # torch is an optional dependency (the ``fleet`` extra): imported only once fleet mode runs.
    group: Any = importlib.import_module(_GROUP_MODULE)
    formed: _Group = group.FleetGroup.form(settings, digest)
    return formed
