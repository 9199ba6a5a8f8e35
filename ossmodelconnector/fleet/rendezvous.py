"""Where a node's fleet meets: rank 0's address and port, the number of nodes, this node's rank.

The ``fleet.*`` settings win; the variables a scheduler already sets fill what they leave out, in this
order (the first that is set)::

    address   fleet.masterAddr   MASTER_ADDR   LWS_LEADER_ADDRESS
    port      fleet.port         MASTER_PORT + 1   (the framework's own group keeps MASTER_PORT)
    nodes     fleet.nodes        NNODES   WORLD_SIZE   LWS_GROUP_SIZE
    rank      fleet.rank         NODE_RANK   RANK   LWS_WORKER_INDEX

``WORLD_SIZE``/``RANK`` count nodes only where a scheduler starts one pod per node (a PyTorchJob, an
indexed Job); under ``torchrun`` with several processes per node they count processes, so set
``NNODES``/``NODE_RANK`` or ``fleet.nodes``/``fleet.rank`` there. One process per node takes part: the
owner of the node's cache.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from ossmodelconnector.config import Config
from ossmodelconnector.errors import ConfigError

__all__ = ["FleetSettings", "fleet_settings"]

_ADDRESS_VARIABLES = ("MASTER_ADDR", "LWS_LEADER_ADDRESS")
_PORT_VARIABLE = "MASTER_PORT"
_NODES_VARIABLES = ("NNODES", "WORLD_SIZE", "LWS_GROUP_SIZE")
_RANK_VARIABLES = ("NODE_RANK", "RANK", "LWS_WORKER_INDEX")


@dataclass(frozen=True)
class FleetSettings:
    """One node's place in its fleet.

    Args:
        master_addr: rank 0's host name or address (rank 0 listens there for the rendezvous).
        port: the rendezvous port on ``master_addr``.
        nodes: how many nodes take part (>= 2).
        rank: this node, ``0 .. nodes - 1``.
        timeout_s: how long a node is waited for (to form the group, to send or take a chunk).
    """

    master_addr: str
    port: int
    nodes: int
    rank: int
    timeout_s: float

    def __str__(self) -> str:
        return f"node {self.rank} of {self.nodes} (rendezvous {self.master_addr}:{self.port})"


def fleet_settings(config: Config, environ: Mapping[str, str] | None = None) -> FleetSettings | None:
    """This node's fleet, or None when fleet mode is off or the fleet is this node alone.

    Args:
        config: the ``fleet.*`` settings.
        environ: the scheduler's variables (default ``os.environ``).

    Raises:
        ConfigError: fleet mode is on but a setting is missing or wrong; the message names the variable
            or key to set.
    """
    if not config.fleet_enabled:
        return None
    env = os.environ if environ is None else environ
    nodes = config.fleet_nodes or _integer(env, _NODES_VARIABLES, "fleet.nodes", lo=1)
    rank = config.fleet_rank if config.fleet_rank >= 0 else _integer(env, _RANK_VARIABLES, "fleet.rank", lo=0)
    if rank >= nodes:
        raise ConfigError(
            f"fleet mode: this node's rank {rank} is not below the number of nodes {nodes}; ranks run from 0 "
            "to nodes - 1: check fleet.rank/NODE_RANK/RANK and fleet.nodes/NNODES/WORLD_SIZE"
        )
    if nodes == 1:
        return None
    address = config.fleet_master_addr or _first(env, _ADDRESS_VARIABLES)
    if not address:
        raise ConfigError(
            "fleet mode is on (fleet.enabled) but rank 0's address is unknown: set fleet.masterAddr, "
            "OSSMC_FLEET_MASTER_ADDR or MASTER_ADDR"
        )
    port = config.fleet_port
    if not port:
        base = _integer(env, (_PORT_VARIABLE,), "fleet.port", lo=1)
        port = base + 1
        if port > 65535:
            raise ConfigError(f"fleet mode: MASTER_PORT + 1 = {port} is not a TCP port; set fleet.port")
    return FleetSettings(address, port, nodes, rank, config.fleet_timeout_s)


def _first(env: Mapping[str, str], names: tuple[str, ...]) -> str:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return value
    return ""


def _integer(env: Mapping[str, str], names: tuple[str, ...], key: str, *, lo: int) -> int:
    for name in names:
        text = env.get(name, "").strip()
        if not text:
            continue
        try:
            value = int(text, 10)
        except ValueError:
            raise ConfigError(f"fleet mode: {name}={text!r} is not an integer; set {key} instead") from None
        if value < lo:
            raise ConfigError(f"fleet mode: {name}={value} is below {lo}; set {key} instead")
        return value
    wanted = " or ".join(names)
    env_name = "OSSMC_" + key.upper().replace(".", "_")
    raise ConfigError(
        f"fleet mode is on (fleet.enabled) but {key} is unknown: set {key}, {env_name} or {wanted}"
    )
