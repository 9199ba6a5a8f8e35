"""Fleet mode end to end: node processes, each in its own network and ``/dev/shm``, behind one OSS cap.

Each node runs ``tests/fleet_node.py`` (or the no-code wrapper) in a simulated fleet (``tests/fleet_net.py``:
network and mount namespaces with ``tc``-limited links; N processes on loopback with separate cache
directories where namespaces cannot be made, which the test output says). Every node loads the model
through the connector and reports the sha256 of every tensor: they must equal the source's on every node,
the OSS bytes of all nodes together must be one model (not N), and nothing may be left in any node's
``/dev/shm``. A node killed or frozen mid-load costs the others a timeout and the bytes they then fetch
from OSS themselves, never a wrong byte or a hang.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fleet_net import SimulatedFleet
from fleet_node import fleet_keys, make_model, node_argv, node_env

from ossmodelconnector.oss.request_log import parse_audit_line

pytest.importorskip("torch.distributed")
pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]
BUCKET = "fleet-models"
PREFIX = "tiny/"
FLEET_PORT = 29611
TIMEOUT_S = 4.0  # fleet.timeoutSeconds in these tests


@pytest.fixture(scope="module")
def oss_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], int]:
    root = tmp_path_factory.mktemp("fleet-oss")
    digests = make_model(root / BUCKET / PREFIX.rstrip("/"), shards=4, shard_mib=24, seed=11)
    size = sum(path.stat().st_size for path in (root / BUCKET).rglob("*") if path.is_file())
    return root, digests, size


def _fleet(oss_root: tuple[Path, dict[str, str], int], isolate: bool | None) -> SimulatedFleet:
    # 24 MiB/s for all of OSS against 200 MiB/s per node link: OSS is the bottleneck, as in a real fleet.
    return SimulatedFleet(3, oss_root[0], node_link_mibps=200, oss_cap_mibps=24, isolate=isolate)


@pytest.fixture
def fleet3(oss_root: tuple[Path, dict[str, str], int]) -> Iterator[SimulatedFleet]:
    with _fleet(oss_root, None) as fleet:
        if not fleet.isolated:
            print(f"simulated fleet on loopback: {fleet.fallback_reason}")
        yield fleet


def _start_node(fleet: SimulatedFleet, rank: int, tmp: Path) -> subprocess.Popen[bytes]:
    env = node_env(fleet, rank, tmp, timeout_s=TIMEOUT_S) | fleet_keys(fleet, rank, nodes=3, port=FLEET_PORT)
    return fleet.popen(rank, node_argv(fleet, rank, tmp, f"oss://{BUCKET}/{PREFIX}"), env=env)


def _finish(proc: subprocess.Popen[bytes], timeout_s: float = 200) -> None:
    try:
        assert proc.wait(timeout_s) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _report(tmp: Path, rank: int) -> dict[str, Any]:
    report: dict[str, Any] = json.loads((tmp / f"report{rank}.json").read_text())
    fleet = report["fleet"]
    print(
        f"node {rank}: loaded after {report['loaded_s']:.2f} s, {report['oss_bytes']} bytes from OSS, "
        f"{fleet['bytes_from_peers']} from peers, state {fleet['state']} {fleet['reason']!r}, "
        f"{fleet['fallback_chunks']} chunks fell back"
    )
    return report


def _wait_for_log(path: Path, text: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} never said {text!r}")


def _gc(fleet: SimulatedFleet, rank: int) -> None:
    """What a user runs after a node was killed: ``ossmodelconnector gc`` in that node."""
    env = {**os.environ, "OSSMC_CACHE_DIR": fleet.cache_dir(rank)}
    gc = fleet.popen(rank, [sys.executable, "-m", "ossmodelconnector.cli", "gc"], env=env)
    assert gc.wait(60) == 0


def test_three_nodes_pull_each_byte_once_and_load_bit_identical(
    fleet3: SimulatedFleet, oss_root: tuple[Path, dict[str, str], int], tmp_path: Path
) -> None:
    _three_nodes_load_once(fleet3, oss_root, tmp_path)


def test_the_loopback_fallback_runs_the_same_protocol(
    oss_root: tuple[Path, dict[str, str], int], tmp_path: Path
) -> None:
    # What CI runs where namespaces cannot be made: N processes on 127.0.0.1, one cache directory each.
    with _fleet(oss_root, False) as fleet:
        _three_nodes_load_once(fleet, oss_root, tmp_path)


def _three_nodes_load_once(
    fleet3: SimulatedFleet, oss_root: tuple[Path, dict[str, str], int], tmp_path: Path
) -> None:
    _, digests, model_bytes = oss_root
    nodes = [_start_node(fleet3, rank, tmp_path) for rank in range(3)]
    for proc in nodes:
        _finish(proc)
    reports = [_report(tmp_path, rank) for rank in range(3)]
    for rank, report in enumerate(reports):
        assert report["digests"] == digests
        assert report["fleet"]["state"] == "done", report["fleet"]
        assert report["fleet"]["bytes_from_peers"] > 0
        assert report["left_in_cache_dir"] == [] and fleet3.shm_entries(rank) == []
    pulled = sum(report["oss_bytes"] for report in reports)
    print(f"pulled from OSS: {pulled} bytes for a {model_bytes}-byte model ({pulled / model_bytes:.3f}x)")
    assert pulled <= 1.05 * model_bytes


@pytest.mark.parametrize("fault", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "frozen"])
def test_a_node_killed_or_frozen_mid_load_costs_the_others_time_not_bytes(
    fleet3: SimulatedFleet,
    oss_root: tuple[Path, dict[str, str], int],
    tmp_path: Path,
    fault: signal.Signals,
) -> None:
    _, digests, _ = oss_root
    nodes = [_start_node(fleet3, rank, tmp_path) for rank in range(3)]
    victim = nodes[1]
    try:
        _wait_for_log(tmp_path / "node1.log", "joined")  # the exchange runs: chunks are passing
        time.sleep(0.5)
        victim.send_signal(fault)
        faulted = time.monotonic()
        for proc in (nodes[0], nodes[2]):
            _finish(proc)
        after = time.monotonic() - faulted
        print(f"the survivors finished {after:.1f} s after the fault (fleet.timeoutSeconds {TIMEOUT_S})")
    finally:
        victim.kill()
        victim.wait()
    for rank in (0, 2):
        report = _report(tmp_path, rank)
        assert report["digests"] == digests
        assert report["fleet"]["state"] == "failed", report["fleet"]
        assert report["fleet"]["fallback_chunks"] > 0  # what the victim never sent came from OSS
        assert report["left_in_cache_dir"] == [] and fleet3.shm_entries(rank) == []
    _gc(fleet3, 1)
    assert fleet3.shm_entries(1) == []


def test_the_no_code_wrapper_forms_the_fleet_from_environment_variables_only(
    fleet3: SimulatedFleet, oss_root: tuple[Path, dict[str, str], int], tmp_path: Path
) -> None:
    _, digests, model_bytes = oss_root
    reader = (
        "import json, sys; sys.path.insert(0, sys.argv[3]); from fleet_node import load_digests; "
        "json.dump(load_digests(sys.argv[1]), open(sys.argv[2], 'w'))"
    )
    nodes = []
    for rank in range(3):
        model_dir = tmp_path / f"model{rank}"
        # What a scheduler sets, plus the one switch: no fleet.* keys, no config file.
        env = node_env(fleet3, rank, tmp_path, timeout_s=TIMEOUT_S) | {
            "OSS_ENDPOINT": fleet3.endpoint,
            "MASTER_ADDR": fleet3.master_addr,
            "MASTER_PORT": str(FLEET_PORT - 1),
            "WORLD_SIZE": "3",
            "RANK": str(rank),
        }
        argv = [
            sys.executable,
            "-m",
            "ossmodelconnector.cli",
            "run",
            f"oss://{BUCKET}/{PREFIX}",
            str(model_dir),
        ]
        argv += ["--", sys.executable, "-c", reader, str(model_dir), str(tmp_path / f"digests{rank}.json")]
        nodes.append(fleet3.popen(rank, [*argv, str(REPO / "tests")], env=env))
    for proc in nodes:
        _finish(proc)
    pulled = 0
    for rank in range(3):
        assert json.loads((tmp_path / f"digests{rank}.json").read_text()) == digests
        assert "joined" in (tmp_path / f"node{rank}.log").read_text()
        audit = (tmp_path / f"node{rank}.audit").read_text().splitlines()
        pulled += sum(parse_audit_line(line).nbytes for line in audit)
        assert fleet3.shm_entries(rank) == []
    print(f"pulled from OSS: {pulled} bytes for a {model_bytes}-byte model ({pulled / model_bytes:.3f}x)")
    assert pulled <= 1.05 * model_bytes
