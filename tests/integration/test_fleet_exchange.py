"""The fleet's exchange over real gloo groups: one process, one thread per node, each with its own segments.

The nodes here share a process (each ``FleetExchange`` forms its own ``ProcessGroupGloo`` over TCP on
127.0.0.1); each node's "OSS" is a fetch that copies from the source bytes and counts what it was asked for,
so that what came from OSS and what came from the peers can be told apart exactly. Separate processes,
namespaces and localoss are ``tests/e2e/test_fleet.py``'s.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pytest

from ossmodelconnector._fast import crc64
from ossmodelconnector.errors import ClosedError, ConnectorError
from ossmodelconnector.fleet.exchange import FleetExchange, FleetState
from ossmodelconnector.fleet.plan import FleetPlan
from ossmodelconnector.fleet.rendezvous import FleetSettings
from ossmodelconnector.objects import FetchInto, ObjectInfo
from ossmodelconnector.ranges import chunk_count

pytest.importorskip("torch.distributed")
pytestmark = pytest.mark.timeout(120)

CHUNK = 64 * 1024


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Node:
    rank: int
    exchange: FleetExchange
    segments: list[bytearray]
    asked_oss: list[tuple[int, int, int]] = field(default_factory=list)  # (file, start, end)
    errors: list[BaseException] = field(default_factory=list)


def _model(sizes: list[int], seed: int = 7) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size, dtype=np.uint8).tobytes() for size in sizes]


def _start_nodes(
    data: list[bytes],
    nodes: int,
    *,
    present: list[int] | None = None,
    timeout_s: float = 20.0,
    window: int = 2,
) -> list[Node]:
    infos = [ObjectInfo("bucket", f"m/{i}", len(d), f'"{i}"', 0.0) for i, d in enumerate(data)]
    order = [(f, c) for f, d in enumerate(data) for c in range(chunk_count(len(d), CHUNK))]
    port = _free_port()
    started: list[Node] = []
    for rank in present if present is not None else range(nodes):
        segments = [bytearray(len(d)) for d in data]
        plan = FleetPlan(infos, order, CHUNK, nodes)
        settings = FleetSettings("127.0.0.1", port, nodes, rank, timeout_s)
        views = [memoryview(s) for s in segments]
        exchange = FleetExchange(settings, plan, views, name=f"node {rank}", window=window)
        started.append(Node(rank, exchange, segments))
    return started


def _fetch_all(
    node: Node, data: list[bytes], oss: Callable[[Node, int, FetchInto], FetchInto] | None = None
) -> None:
    """What the prefetch scheduler does: every chunk of the plan, in order, by 8 workers, into the segment."""

    def from_oss(file: int) -> FetchInto:
        def fetch(start: int, end: int, dest: memoryview) -> int:
            node.asked_oss.append((file, start, end))
            dest[:] = data[file][start:end]
            return int(crc64(dest))

        return fetch

    fetches = []
    for file in range(len(data)):
        base = from_oss(file)
        fetches.append(node.exchange.fetch_into(file, oss(node, file, base) if oss else base))

    def one(file: int, start: int, end: int) -> None:
        with memoryview(node.segments[file])[start:end] as dest:
            try:
                crc = fetches[file](start, end, dest)
            except BaseException as exc:
                node.errors.append(exc)
                return
            assert crc == crc64(data[file][start:end])

    with ThreadPoolExecutor(8) as pool:
        for chunk in node.exchange.plan.chunks:
            pool.submit(one, chunk.file, chunk.start, chunk.end)


def _run(nodes: list[Node], data: list[bytes], **kwargs: object) -> None:
    for node in nodes:
        node.exchange.start()
    threads = [threading.Thread(target=_fetch_all, args=(node, data), kwargs=kwargs) for node in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(100)
        assert not thread.is_alive()


def _close(nodes: list[Node]) -> None:
    for node in nodes:
        node.exchange.close()


def test_each_chunk_comes_from_oss_once_and_every_node_ends_with_every_byte() -> None:
    data = _model([5 * CHUNK + 123, 17, 0, 9 * CHUNK])
    nodes = _start_nodes(data, 3)
    try:
        _run(nodes, data)
        asked = [tuple(a) for node in nodes for a in node.asked_oss]
        assert sorted(asked) == sorted((c.file, c.start, c.end) for c in nodes[0].exchange.plan.chunks)
        for node in nodes:
            assert not node.errors
            assert [bytes(s) for s in node.segments] == data
            stats = node.exchange.stats()
            assert stats["bytes_from_oss"] == stats["share_bytes"] == node.exchange.plan.share(node.rank)
            assert stats["bytes_from_peers"] == sum(map(len, data)) - stats["share_bytes"]
            assert (stats["fallback_chunks"], stats["crc_mismatches"]) == (0, 0)
    finally:
        _close(nodes)
    assert {node.exchange.state for node in nodes} == {FleetState.DONE}  # closing after the end keeps it


def test_a_chunk_that_fails_its_crc_on_arrival_is_fetched_from_oss() -> None:
    data = _model([6 * CHUNK])
    nodes = _start_nodes(data, 2)

    def lying_owner(node: Node, file: int, fetch: FetchInto) -> FetchInto:
        def fetch_into(start: int, end: int, dest: memoryview) -> int:
            crc = fetch(start, end, dest)
            if node.rank == 1 and start == CHUNK:  # chunk 1: node 1's first, sent with a CRC it does not have
                dest[0] ^= 0xFF
            return crc

        return fetch_into

    try:
        _run(nodes, data, oss=lying_owner)
        receiver = nodes[0]
        assert bytes(receiver.segments[0]) == data[0]
        assert receiver.exchange.stats()["crc_mismatches"] == 1
        assert (0, CHUNK, 2 * CHUNK) in receiver.asked_oss
    finally:
        _close(nodes)


def test_a_chunk_its_owner_could_not_fetch_is_fetched_by_every_other_node() -> None:
    data = _model([4 * CHUNK])
    nodes = _start_nodes(data, 3)

    def failing_owner(node: Node, file: int, fetch: FetchInto) -> FetchInto:
        def fetch_into(start: int, end: int, dest: memoryview) -> int:
            if node.rank == 2 and start == 2 * CHUNK:
                raise ConnectorError("503 SlowDown, retries exhausted")
            return fetch(start, end, dest)

        return fetch_into

    try:
        _run(nodes, data, oss=failing_owner)
        assert [type(e) for e in nodes[2].errors] == [ConnectorError]  # the owner's own reader sees it
        for node in nodes[:2]:
            assert not node.errors and bytes(node.segments[0]) == data[0]
            assert node.exchange.stats()["fallback_chunks"] == 1
    finally:
        _close(nodes)


def test_a_fleet_that_never_forms_loads_alone_after_the_timeout(caplog: pytest.LogCaptureFixture) -> None:
    data = _model([3 * CHUNK + 5])
    nodes = _start_nodes(data, 3, present=[0, 1], timeout_s=2.0)  # node 2 never comes
    try:
        _run(nodes, data)
        for node in nodes:
            assert node.exchange.state is FleetState.ALONE
            assert "did not form" in node.exchange.stats()["reason"]
            assert not node.errors and bytes(node.segments[0]) == data[0]
            assert len(node.asked_oss) == len(node.exchange.plan)
    finally:
        _close(nodes)
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "loads alone" in r.getMessage()]
    assert len(warnings) == 2  # one per node, saying why


def test_closing_ends_a_wait_for_a_peer_with_closed_error() -> None:
    data = _model([2 * CHUNK])
    nodes = _start_nodes(data, 2)
    release = threading.Event()

    def stuck_owner(node: Node, file: int, fetch: FetchInto) -> FetchInto:
        def fetch_into(start: int, end: int, dest: memoryview) -> int:
            if node.rank == 1:
                release.wait(60)
            return fetch(start, end, dest)

        return fetch_into

    for node in nodes:
        node.exchange.start()
    waiter = threading.Thread(target=_fetch_all, args=(nodes[0], data), kwargs={"oss": stuck_owner})
    waiter.start()
    try:
        threading.Timer(1.0, nodes[0].exchange.close).start()
        waiter.join(30)
        assert not waiter.is_alive()
        assert [type(e) for e in nodes[0].errors] == [ClosedError]  # chunk 1, node 1's, never came
    finally:
        release.set()
        _close(nodes)


@dataclass
class Queued:
    """What a fleet node's prefetch scheduler is given: the exchange's read-ahead, and the delivered."""

    node: Node
    read_ahead: list[tuple[int, int]] = field(default_factory=list)
    delivered: list[tuple[int, int]] = field(default_factory=list)
    own_in_flight: int = 0
    most_own_in_flight: int = 0


def _fetch_as_queued(queued: Queued, data: list[bytes], workers: int = 8) -> None:
    """The prefetch scheduler's part for a fleet node: ``workers`` threads take the chunks the exchange
    queues (its own, a window at a time, and the rest if it stops short) and those it delivers, in the
    order given, each into the segment through the exchange's ``fetch_into``; until every chunk is in."""
    node, exchange = queued.node, queued.node.exchange
    jobs: queue.Queue[tuple[int, int]] = queue.Queue()
    lock = threading.Lock()
    done: set[tuple[int, int]] = set()
    all_done = threading.Event()

    def queue_chunks(chunks: list[tuple[int, int]]) -> None:
        queued.read_ahead += chunks
        for chunk in chunks:
            jobs.put(chunk)

    def on_delivered(file: int, chunk: int) -> None:
        queued.delivered.append((file, chunk))
        jobs.put((file, chunk))

    def from_oss(file: int) -> FetchInto:
        def fetch(start: int, end: int, dest: memoryview) -> int:
            with lock:
                node.asked_oss.append((file, start, end))
                queued.own_in_flight += 1
                queued.most_own_in_flight = max(queued.most_own_in_flight, queued.own_in_flight)
            time.sleep(0.005)  # a request's time on the wire: concurrent fetches overlap
            dest[:] = data[file][start:end]
            with lock:
                queued.own_in_flight -= 1
            return int(crc64(dest))

        return fetch

    fetches = [exchange.fetch_into(file, from_oss(file)) for file in range(len(data))]
    exchange.queue_chunks, exchange.on_delivered = queue_chunks, on_delivered

    def worker() -> None:
        while not all_done.is_set():
            try:
                file, chunk = jobs.get(timeout=0.1)
            except queue.Empty:
                continue
            position = exchange.plan.position(file, chunk * CHUNK)
            assert position is not None
            planned = exchange.plan.chunks[position]
            with memoryview(node.segments[file])[planned.start : planned.end] as dest:
                try:
                    assert fetches[file](planned.start, planned.end, dest) == crc64(dest)
                except BaseException as exc:
                    node.errors.append(exc)
            with lock:
                done.add((file, chunk))
                if len(done) == len(exchange.plan):
                    all_done.set()

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for thread in threads:
        thread.start()
    exchange.start()
    assert all_done.wait(60), f"node {node.rank}: {len(done)} of {len(exchange.plan)} chunks in"
    for thread in threads:
        thread.join(10)


def _run_queued(nodes: list[Node], data: list[bytes]) -> list[Queued]:
    queues = [Queued(node) for node in nodes]
    threads = [threading.Thread(target=_fetch_as_queued, args=(q, data)) for q in queues]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(100)
        assert not thread.is_alive()
    return queues


def test_a_node_queues_its_own_chunks_a_window_at_a_time_and_the_peers_as_they_arrive() -> None:
    data = _model([13 * CHUNK + 77, 6 * CHUNK])
    nodes = _start_nodes(data, 3, window=2)
    try:
        queues = _run_queued(nodes, data)
        asked = [tuple(a) for node in nodes for a in node.asked_oss]
        assert sorted(asked) == sorted((c.file, c.start, c.end) for c in nodes[0].exchange.plan.chunks)
        for q in queues:
            plan, rank = q.node.exchange.plan, q.node.rank
            assert not q.node.errors and [bytes(s) for s in q.node.segments] == data
            own = [(c.file, c.chunk) for k, c in enumerate(plan.chunks) if plan.owner(k) == rank]
            in_order = [(plan.chunks[k].file, plan.chunks[k].chunk) for k in plan.fetch_order(rank)]
            assert q.read_ahead == [chunk for chunk in in_order if chunk in own]  # its own, step by step
            assert sorted(q.read_ahead + q.delivered) == sorted(in_order)  # every chunk queued once
            assert 1 <= q.most_own_in_flight <= 2  # never more own fetches at once than the window
    finally:
        _close(nodes)
    assert {node.exchange.state for node in nodes} == {FleetState.DONE}


def test_a_node_left_alone_queues_every_chunk_it_has_not_queued_yet() -> None:
    data = _model([9 * CHUNK + 1])
    nodes = _start_nodes(data, 2, present=[0], timeout_s=1.0, window=2)  # node 1 never comes
    try:
        (q,) = _run_queued(nodes, data)
        assert q.node.exchange.state is FleetState.ALONE
        assert not q.node.errors and bytes(q.node.segments[0]) == data[0]
        assert sorted(q.node.asked_oss) == sorted((0, c.start, c.end) for c in q.node.exchange.plan.chunks)
        assert sorted(q.read_ahead) == sorted((c.file, c.chunk) for c in q.node.exchange.plan.chunks)
        assert q.delivered == []
    finally:
        _close(nodes)
