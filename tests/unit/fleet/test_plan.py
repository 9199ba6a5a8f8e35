"""The fleet's plan: every chunk once, in read order, each owned by one node; one digest to agree on."""

from __future__ import annotations

import dataclasses

from hypothesis import given
from hypothesis import strategies as st

from ossmodelconnector.fleet.plan import FleetPlan
from ossmodelconnector.objects import ObjectInfo
from ossmodelconnector.ranges import chunk_count

MIB = 1 << 20


def _infos(sizes: list[int]) -> list[ObjectInfo]:
    return [
        ObjectInfo("bucket", f"m/{i}.safetensors", size, f'"etag{i}"', 0.0) for i, size in enumerate(sizes)
    ]


def _order(sizes: list[int], chunk_size: int) -> list[tuple[int, int]]:
    return [
        (file, chunk) for file, size in enumerate(sizes) for chunk in range(chunk_count(size, chunk_size))
    ]


@given(
    sizes=st.lists(st.integers(0, 40 * MIB), min_size=1, max_size=5),
    chunk_mib=st.integers(1, 8),
    nodes=st.integers(1, 9),
)
def test_every_byte_is_owned_once_and_the_shares_add_up(sizes: list[int], chunk_mib: int, nodes: int) -> None:
    chunk_size = chunk_mib * MIB
    plan = FleetPlan(_infos(sizes), _order(sizes, chunk_size), chunk_size, nodes)
    covered = [bytearray(size) for size in sizes]
    for position, chunk in enumerate(plan.chunks):
        assert plan.position(chunk.file, chunk.start) == position
        assert 0 <= plan.owner(position) < nodes
        assert not any(covered[chunk.file][chunk.start : chunk.end])
        covered[chunk.file][chunk.start : chunk.end] = b"\1" * chunk.length
    assert all(all(c) for c in covered)
    shares = [plan.share(rank) for rank in range(nodes)]
    assert sum(shares) == sum(sizes)
    # Rounds deal full chunks one per node, short ones go to the node with the fewest bytes: no node
    # pulls more than two chunks more than another.
    assert max(shares) - min(shares) <= 2 * chunk_size
    # Every chunk is moved by exactly one step; a round holds one full chunk of each node.
    moved = sorted(position for step in plan.steps for position in step)
    assert moved == list(range(len(plan)))
    for step in plan.steps:
        if plan.is_round(step):
            assert [plan.owner(p) for p in step] == list(range(nodes))
            assert all(plan.chunks[p].length == chunk_size for p in step)


def test_equal_chunks_are_dealt_round_robin_and_short_ones_balance_the_bytes() -> None:
    plan = FleetPlan(_infos([7 * MIB]), _order([7 * MIB], MIB), MIB, 3)
    assert [plan.owner(k) for k in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert plan.steps == [(0, 1, 2), (3, 4, 5), (6,)]  # two all-gather rounds, then one broadcast
    # Two files of 2.25 chunks: the short tails go to the nodes that have pulled less.
    sizes = [2 * MIB + MIB // 4, 2 * MIB + MIB // 4]
    plan = FleetPlan(_infos(sizes), _order(sizes, MIB), MIB, 2)
    assert [plan.share(rank) for rank in range(2)] == [sum(sizes) // 2, sum(sizes) // 2]


def test_a_range_that_is_not_a_chunk_of_the_plan_has_no_position() -> None:
    plan = FleetPlan(_infos([3 * MIB]), _order([3 * MIB], MIB), MIB, 2)
    assert plan.position(0, MIB) == 1
    assert plan.position(0, MIB + 1) is None
    assert plan.position(1, 0) is None


def test_the_digest_changes_with_anything_the_nodes_must_agree_on() -> None:
    sizes = [5 * MIB, 3 * MIB]
    infos, order = _infos(sizes), _order(sizes, MIB)
    digest = FleetPlan(infos, order, MIB, 4).digest
    assert FleetPlan(list(infos), list(order), MIB, 4).digest == digest
    other_version = [dataclasses.replace(infos[0], etag='"new"'), infos[1]]
    assert FleetPlan(other_version, order, MIB, 4).digest != digest
    assert FleetPlan(infos, order[::-1], MIB, 4).digest != digest
    assert FleetPlan(infos, order, MIB, 3).digest != digest
    assert FleetPlan(infos, _order(sizes, 2 * MIB), 2 * MIB, 4).digest != digest


@given(
    sizes=st.lists(st.integers(1, 20 * MIB), min_size=1, max_size=4),
    chunk_mib=st.integers(1, 4),
    nodes=st.integers(1, 6),
)
def test_a_node_fetches_step_by_step_its_own_chunk_first(
    sizes: list[int], chunk_mib: int, nodes: int
) -> None:
    chunk_size = chunk_mib * MIB
    plan = FleetPlan(_infos(sizes), _order(sizes, chunk_size), chunk_size, nodes)
    step_of = {k: s for s, step in enumerate(plan.steps) for k in step}
    for rank in range(nodes):
        queue = plan.fetch_order(rank)
        assert sorted(queue) == list(range(len(plan)))
        steps = [step_of[k] for k in queue]
        assert steps == sorted(steps)  # the steps in the exchange's order...
        for s in range(len(plan.steps)):  # ...and in each, this node's own chunk first
            owned = [plan.owner(k) == rank for k in queue if step_of[k] == s]
            assert owned == sorted(owned, reverse=True)
