"""Where a node's fleet meets: the ``fleet.*`` settings over the scheduler's variables."""

from __future__ import annotations

import pytest

from ossmodelconnector.config import Config
from ossmodelconnector.errors import ConfigError
from ossmodelconnector.fleet.rendezvous import FleetSettings, fleet_settings

POD = {"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29500", "WORLD_SIZE": "4", "RANK": "2"}


def test_off_unless_enabled_whatever_the_scheduler_sets() -> None:
    assert fleet_settings(Config(), POD) is None
    assert fleet_settings(Config(fleet_nodes=4, fleet_rank=1, fleet_master_addr="x"), POD) is None


def test_the_scheduler_variables_fill_what_the_keys_leave_out() -> None:
    settings = fleet_settings(Config(fleet_enabled=True, fleet_timeout_s=7), POD)
    # The fleet keeps MASTER_PORT for the program's own torch.distributed group and takes the next one.
    assert settings == FleetSettings("10.0.0.1", 29501, 4, 2, 7.0)


def test_keys_win_over_the_scheduler() -> None:
    config = Config(
        fleet_enabled=True, fleet_master_addr="head", fleet_port=4000, fleet_nodes=8, fleet_rank=0
    )
    assert fleet_settings(config, POD) == FleetSettings("head", 4000, 8, 0, 30.0)


def test_node_rank_and_nnodes_win_over_rank_and_world_size() -> None:
    # torchrun with 8 processes on each of 2 nodes: WORLD_SIZE counts processes, NNODES counts nodes.
    env = POD | {"WORLD_SIZE": "16", "RANK": "9", "NNODES": "2", "NODE_RANK": "1"}
    settings = fleet_settings(Config(fleet_enabled=True), env)
    assert settings is not None and (settings.nodes, settings.rank) == (2, 1)


def test_leader_worker_set_variables() -> None:
    env = {"LWS_LEADER_ADDRESS": "model-0.model", "LWS_GROUP_SIZE": "3", "LWS_WORKER_INDEX": "2"}
    settings = fleet_settings(Config(fleet_enabled=True, fleet_port=5000), env)
    assert settings == FleetSettings("model-0.model", 5000, 3, 2, 30.0)


def test_a_fleet_of_one_node_is_no_fleet() -> None:
    assert fleet_settings(Config(fleet_enabled=True), POD | {"WORLD_SIZE": "1", "RANK": "0"}) is None


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"MASTER_PORT": "1", "WORLD_SIZE": "2", "RANK": "0"}, "fleet.masterAddr"),
        ({"MASTER_ADDR": "a", "WORLD_SIZE": "2", "RANK": "0"}, "MASTER_PORT"),
        ({"MASTER_ADDR": "a", "MASTER_PORT": "1", "RANK": "0"}, "fleet.nodes"),
        ({"MASTER_ADDR": "a", "MASTER_PORT": "1", "WORLD_SIZE": "2"}, "NODE_RANK"),
        (POD | {"RANK": "4"}, "not below the number of nodes"),
        (POD | {"RANK": "two"}, "RANK='two' is not an integer"),
        (POD | {"WORLD_SIZE": "0"}, "WORLD_SIZE=0 is below 1"),
        (POD | {"MASTER_PORT": "65535"}, "set fleet.port"),
    ],
)
def test_a_missing_or_wrong_setting_is_an_error_naming_what_to_set(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match="fleet") as caught:
        fleet_settings(Config(fleet_enabled=True), env)
    assert named in str(caught.value)


def test_keys_are_validated_where_they_enter() -> None:
    with pytest.raises(ConfigError, match=r"fleet\.rank"):
        Config(fleet_rank=-2)
    with pytest.raises(ConfigError, match=r"fleet\.masterAddr"):
        Config(fleet_master_addr="10.0.0.1 ")
    with pytest.raises(ConfigError, match=r"fleet\.timeoutSeconds"):
        Config(fleet_timeout_s=0)
