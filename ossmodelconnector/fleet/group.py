"""The fleet's ``torch.distributed`` group: gloo over TCP, formed without touching the default group.

The program's own ``torch.distributed`` (vLLM's tensor-parallel group, say) may start in the same process
while the model streams in, so the fleet never calls ``init_process_group``: it builds its own
``TCPStore`` (rank 0 hosts it on the fleet's port) and a ``ProcessGroupGloo`` on it. Gloo binds to the
address this node uses to reach rank 0 (found by the routing table, no packet sent), unless
``GLOO_SOCKET_IFNAME`` names an interface. Every operation is bounded by the fleet timeout; after a
failure the group is aborted, which closes its sockets, so the peers fail at once instead of timing out
one after the other.

This is the only module of the package that imports torch (the ``ossmodelconnector[fleet]`` extra).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed

from ossmodelconnector.fleet.rendezvous import FleetSettings

log = logging.getLogger(__name__)

# torch's stubs leave out the process-group classes used here (ProcessGroupGloo's options, TCPStore...).
dist: Any = torch.distributed

__all__ = ["FleetGroup", "GroupError"]

_STORE_PREFIX = "ossmodelconnector-fleet"


class GroupError(Exception):
    """The group could not be formed, or an operation on it failed (a node died, stalled or left)."""


class FleetGroup:
    """A formed gloo group of the fleet's nodes.

    Use :meth:`form`; every method raises :class:`GroupError` once a node fails or the timeout passes.
    """

    def __init__(self, store: Any, group: Any, settings: FleetSettings) -> None:
        self._store = store
        self._group = group
        self.settings = settings
        self._header = torch.zeros(2, dtype=torch.int64)  # a chunk's status and CRC-64

    @classmethod
    def form(cls, settings: FleetSettings, plan_digest: bytes) -> FleetGroup:
        """Meet the other nodes at the rendezvous and check that every node computed the same plan.

        Raises:
            GroupError: the group did not form within the timeout (a node missing, the port taken, no
                route), or the nodes' plans differ.
        """
        began = time.monotonic()
        log.debug("%s: forming the group", settings)
        timeout = datetime.timedelta(seconds=settings.timeout_s)
        try:
            store = dist.TCPStore(
                settings.master_addr,
                settings.port,
                settings.nodes,
                settings.rank == 0,
                timeout,
                wait_for_workers=False,
            )
            store = dist.PrefixStore(_STORE_PREFIX, store)
            options = dist.ProcessGroupGloo._Options()
            options._timeout = timeout
            options._devices = [_device(settings.master_addr)]
            group = dist.ProcessGroupGloo(store, settings.rank, settings.nodes, options)
        except (RuntimeError, OSError, ValueError) as exc:
            raise GroupError(f"the group of {settings.nodes} nodes did not form: {_short(exc)}") from exc
        formed = cls(store, group, settings)
        formed._check_same_plan(plan_digest)
        log.debug("%s: the group formed in %.3f s", settings, time.monotonic() - began)
        return formed

    def _check_same_plan(self, digest: bytes) -> None:
        mine = torch.frombuffer(bytearray(digest), dtype=torch.uint8)
        everyone = [torch.empty_like(mine) for _ in range(self.settings.nodes)]
        self._call(self._group.allgather, [everyone], [mine])
        differ = [rank for rank, theirs in enumerate(everyone) if bytes(theirs.numpy()) != digest]
        if differ:
            self.abort()
            raise GroupError(
                f"nodes {differ} planned differently (other objects or versions under the prefix, another "
                "chunkSizeMB, or another number of nodes): give every node the same oss_dir, settings and "
                "fleet size"
            )

    def broadcast_header(self, source: int, status: int, crc: int) -> tuple[int, int]:
        """Send (from ``source``) or take a chunk's status and CRC-64; returns them on every node."""
        if self.settings.rank == source:
            self._header[0] = status
            self._header[1] = _signed(crc)
        self._call(self._group.broadcast, [self._header], _root(source))
        status_out, signed = (int(value) for value in self._header)
        return status_out, signed & _MASK64

    def allgather_headers(self, status: int, crc: int) -> list[tuple[int, int]]:
        """Every node's status and CRC-64 for its chunk of a round, by rank."""
        mine = torch.tensor([status, _signed(crc)], dtype=torch.int64)
        everyone = [torch.empty_like(mine) for _ in range(self.settings.nodes)]
        self._call(self._group.allgather, [everyone], [mine])
        return [(int(header[0]), int(header[1]) & _MASK64) for header in everyone]

    def allgather(self, views: list[memoryview]) -> None:
        """A round: ``views[r]`` (equal sizes) ends on every node with node ``r``'s bytes, in place."""
        tensors = [torch.frombuffer(view, dtype=torch.uint8) for view in views]
        try:
            self._call(self._group.allgather, [tensors], [tensors[self.settings.rank]])
        finally:
            del tensors  # the caller releases ``views``: no export of them may outlive this call

    def broadcast(self, source: int, view: memoryview) -> None:
        """Send ``view`` (on ``source``) or receive into it (elsewhere), in place: no copy of the bytes."""
        tensor = torch.frombuffer(view, dtype=torch.uint8)
        try:
            self._call(self._group.broadcast, [tensor], _root(source))
        finally:
            del tensor  # the caller releases ``view``: no export of it may outlive this call

    def barrier(self) -> None:
        self._call(self._group.barrier)

    def abort(self) -> None:
        """Close the group's connections now (the peers' operations fail at once). Idempotent."""
        with contextlib.suppress(RuntimeError):
            self._group.abort()

    def _call(self, operation: Callable[..., Any], *args: object) -> None:
        try:
            operation(*args).wait()
        except RuntimeError as exc:
            self.abort()
            raise GroupError(_short(exc)) from exc


_MASK64 = (1 << 64) - 1


def _signed(crc: int) -> int:
    """A CRC-64 as the int64 a tensor holds (the same 64 bits)."""
    return crc - (1 << 64) if crc >= 1 << 63 else crc


def _root(source: int) -> Any:
    options = dist.BroadcastOptions()
    options.rootRank = source
    options.rootTensor = 0
    return options


def _device(master_addr: str) -> object:
    interface = os.environ.get("GLOO_SOCKET_IFNAME", "")
    if interface:
        return dist.ProcessGroupGloo.create_device(interface=interface.split(",")[0])
    return dist.ProcessGroupGloo.create_device(hostname=_local_address(master_addr))


def _local_address(master_addr: str) -> str:
    """The address of this host on the route to ``master_addr`` (a UDP connect sends nothing)."""
    family, _, _, _, address = socket.getaddrinfo(master_addr, 9, type=socket.SOCK_DGRAM)[0]
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.connect(address)
        return str(probe.getsockname()[0])


def _short(exc: BaseException) -> str:
    """A torch error's first line, without the C++ source path it starts with."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if text.startswith("[") and "] " in text:
        text = text.split("] ", 1)[1]
    return text.split(". This is typically", 1)[0][:300]
