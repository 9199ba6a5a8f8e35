"""The plan every node of a fleet computes alike: which chunks, in which order, and who fetches each.

The exchange moves chunks in *steps*, in the read order:

- a **round**: N full-size chunks that come next in the order, the ``r``-th fetched from OSS by node ``r``,
  passed to every node at once by one all-gather (every node's link busy at the same time;
  ``benchmarks/fleet_exchange.py``: 0.39x the time of a broadcast per chunk, 4 nodes);
- a **single**: a file's short last chunk (an all-gather needs equal sizes), fetched by the node with the
  fewest bytes so far, and passed on by one broadcast; so are the full chunks left over at the end.

Each node pulls a 1/N share spread over the whole order, so the nodes' OSS fetches and the exchange move
through the model together, in the order frameworks read it. The digest covers everything that must
agree (object versions, chunk size, order, nodes); nodes whose digests differ do not exchange.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from ossmodelconnector.objects import ObjectInfo

__all__ = ["FleetPlan", "PlannedChunk", "Step"]

Step = tuple[int, ...]
"""Positions in the order moved together: N (a round: the ``r``-th owned by node ``r``) or one (a single)."""


@dataclass(frozen=True)
class PlannedChunk:
    """One chunk of the plan: bytes ``[start, end)`` of large file ``file`` (its chunk ``chunk``)."""

    file: int
    chunk: int
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start


class FleetPlan:
    """The chunks of a directory's large files in read order, each assigned to one node.

    Args:
        infos: the large files' object versions, in the cache's file order.
        order: ``(file, chunk)`` pairs, every chunk once (``read_order.chunk_order``).
        chunk_size: bytes per chunk.
        nodes: how many nodes share the work.
    """

    def __init__(
        self, infos: Sequence[ObjectInfo], order: Sequence[tuple[int, int]], chunk_size: int, nodes: int
    ) -> None:
        if nodes < 1:
            raise ValueError(f"FleetPlan: nodes must be >= 1, not {nodes}")
        self.nodes = nodes
        self.chunk_size = chunk_size
        self.chunks = [
            PlannedChunk(file, chunk, chunk * chunk_size, min((chunk + 1) * chunk_size, infos[file].size))
            for file, chunk in order
        ]
        self._position = {(chunk.file, chunk.chunk): k for k, chunk in enumerate(self.chunks)}
        self._owners, self.steps = _deal(self.chunks, chunk_size, nodes)
        self._shares = [0] * nodes
        for chunk, owner in zip(self.chunks, self._owners, strict=True):
            self._shares[owner] += chunk.length
        if len(self._position) != len(self.chunks):
            raise ValueError("FleetPlan: the order names a chunk twice")
        described = {
            "version": 1,
            "nodes": nodes,
            "chunk_size": chunk_size,
            "objects": [[info.bucket, info.key, info.etag, info.size] for info in infos],
            "order": list(map(list, order)),
        }
        self.digest = hashlib.sha256(json.dumps(described, separators=(",", ":")).encode()).digest()

    def __len__(self) -> int:
        return len(self.chunks)

    def owner(self, position: int) -> int:
        """The node that fetches the chunk at ``position`` of the order from OSS."""
        return self._owners[position]

    def position(self, file: int, start: int) -> int | None:
        """The position in the order of the chunk of ``file`` starting at byte ``start``, or None when
        ``start`` is not a chunk boundary of the plan (a range the plan does not know)."""
        if start % self.chunk_size:
            return None
        return self._position.get((file, start // self.chunk_size))

    def fetch_order(self, rank: int) -> list[int]:
        """Positions in the order node ``rank`` fetches them: the steps in order, and in each step its own
        chunk before the peers' (which it fetches only once the exchange stopped short). Its own chunks
        thus come one step after another, as the exchange sends them."""
        queue: list[int] = []
        for step in self.steps:
            queue += [k for k in step if self._owners[k] == rank]
            queue += [k for k in step if self._owners[k] != rank]
        return queue

    def is_round(self, step: Step) -> bool:
        return len(step) > 1

    def share(self, rank: int) -> int:
        """Bytes node ``rank`` fetches from OSS."""
        return self._shares[rank]


def _deal(chunks: Sequence[PlannedChunk], chunk_size: int, nodes: int) -> tuple[list[int], list[Step]]:
    """Each chunk's owner, and the steps that move them (see the module's docstring)."""
    owners = [0] * len(chunks)
    loads = [0] * nodes
    steps: list[Step] = []
    forming: list[int] = []  # the next round's positions, slot r owned by node r

    def single(position: int, owner: int) -> None:
        owners[position] = owner
        loads[owner] += chunks[position].length
        steps.append((position,))

    for position, chunk in enumerate(chunks):
        if nodes > 1 and chunk.length == chunk_size:
            owners[position] = len(forming)
            loads[len(forming)] += chunk.length
            forming.append(position)
            if len(forming) == nodes:
                steps.append(tuple(forming))
                forming = []
        else:
            single(position, min(range(nodes), key=lambda rank: (loads[rank], rank)))
    steps.extend((position,) for position in forming)  # owners already dealt: slots 0..m-1
    return owners, steps
