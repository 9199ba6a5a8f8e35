"""The fleet's exchange over real gloo groups: one process, one thread per node, each with its own segments.

The nodes here share a process (each ``FleetExchange`` forms its own ``ProcessGroupGloo`` over TCP on
127.0.0.1); each node's "OSS" is a fetch that copies from the source bytes and counts what it was asked for,
so that what came from OSS and what came from the peers can be told apart exactly. Separate processes,
namespaces and localoss are ``tests/e2e/test_fleet.py``'s.
"""

from __future__ import annotations

import socket
import threading
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
) -> list[Node]:
    infos = [ObjectInfo("bucket", f"m/{i}", len(d), f'"{i}"', 0.0) for i, d in enumerate(data)]
    order = [(f, c) for f, d in enumerate(data) for c in range(chunk_count(len(d), CHUNK))]
    port = _free_port()
    started: list[Node] = []
    for rank in present if present is not None else range(nodes):
        segments = [bytearray(len(d)) for d in data]
        plan = FleetPlan(infos, order, CHUNK, nodes)
        settings = FleetSettings("127.0.0.1", port, nodes, rank, timeout_s)
        exchange = FleetExchange(settings, plan, [memoryview(s) for s in segments], name=f"node {rank}")
        started.append(Node(rank, exchange, segments))
    for node in started:
        node.exchange.start()
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
