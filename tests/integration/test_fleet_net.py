"""The simulated fleet (tests/fleet_net.py): 3 nodes reach localoss and each other, form a gloo group, keep
their ``/dev/shm`` to themselves, carry the configured ``tc`` caps, and leave nothing behind.

Each test runs in both modes: ``isolated`` (network and mount namespaces; skipped, with the reason, where
they cannot be made) and ``loopback`` (the fallback CI always has). No test asserts a duration.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fleet_net import (
    FALLBACK_ROOT,
    FLEET_PREFIX,
    STATE_ROOT,
    FleetUnavailableError,
    SimulatedFleet,
    namespaces_unavailable_reason,
    sweep_leftovers,
)
from fleet_node_programs import payload

from ossmodelconnector.cache.segments import state_table_name

pytestmark = pytest.mark.timeout(300)  # a hang guard only

NODES = 3
NODE_LINK_MIBPS = 400
OSS_CAP_MIBPS = 200
NODE_PROGRAM = str(Path(__file__).resolve().parent.parent / "fleet_node_programs.py")
WAIT_S = 120.0
MIB = 1 << 20
BROADCAST_MIB = 64


def _start_fleet(mode: str, oss_root: Path, nodes: int = NODES) -> SimulatedFleet:
    fleet = SimulatedFleet(
        nodes,
        oss_root,
        node_link_mibps=NODE_LINK_MIBPS,
        oss_cap_mibps=OSS_CAP_MIBPS,
        isolate=None if mode == "isolated" else False,
    )
    if mode == "isolated" and not fleet.isolated:
        reason = fleet.fallback_reason
        fleet.close()
        pytest.skip(f"network namespaces cannot be made here: {reason}")
    print(f"fleet {fleet!r}: {fleet.fallback_reason or 'isolated'}")
    return fleet


@pytest.fixture(scope="module", params=["isolated", "loopback"])
def fleet(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SimulatedFleet]:
    """One fleet of 3 nodes per mode for the tests that only use it (they clean up what they start)."""
    with _start_fleet(request.param, tmp_path_factory.mktemp("fleet-oss")) as simulated:
        yield simulated


def _outputs(procs: list[subprocess.Popen[bytes]]) -> list[dict[str, object]]:
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, f"{proc.args!r} exited {proc.returncode}: {err.decode()[-3000:]}"
        results.append(json.loads(out.decode().strip().splitlines()[-1]))
    return results


def _on_every_node(
    fleet: SimulatedFleet,
    argv_for: Callable[[int], list[str]],
    env_for: Callable[[int], dict[str, str]] | None = None,
) -> list[dict[str, object]]:
    """Run fleet_node_programs.py on every node at once; their JSON results, by rank."""
    procs = [
        fleet.popen(
            rank,
            [sys.executable, NODE_PROGRAM, *argv_for(rank)],
            env=env_for(rank) if env_for else None,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for rank in range(fleet.nodes)
    ]
    return _outputs(procs)


def test_every_node_gets_an_object_from_localoss(fleet: SimulatedFleet) -> None:
    data = os.urandom(3 * MIB + 17)
    fleet.localoss.put_file("fleet-bucket", "weights/object.bin", data)
    env = {
        "OSS_ACCESS_KEY_ID": fleet.localoss.access_key_id,
        "OSS_ACCESS_KEY_SECRET": fleet.localoss.access_key_secret,
    }
    results = _on_every_node(
        fleet, lambda rank: ["get", fleet.endpoint, "fleet-bucket", "weights/object.bin"], lambda rank: env
    )
    assert [r["status"] for r in results] == [200] * NODES
    assert [r["bytes"] for r in results] == [len(data)] * NODES
    assert {r["sha256"] for r in results} == {hashlib.sha256(data).hexdigest()}
    if fleet.isolated:
        assert fleet.endpoint.startswith(f"http://{fleet.oss_address}:")
        assert not fleet.oss_address.startswith("127.")


def test_every_node_reaches_every_other_node_over_tcp(fleet: SimulatedFleet) -> None:
    ports = [fleet.free_port() for _ in range(NODES)]  # one per node: in the fallback all share 127.0.0.1
    assert len(set(ports)) == NODES
    peers = {rank: f"{fleet.node_address(rank)}:{ports[rank]}" for rank in range(NODES)}

    def argv(rank: int) -> list[str]:
        others = [peer for other, peer in peers.items() if other != rank]
        return ["mesh", fleet.node_address(rank), str(ports[rank]), *others]

    results = _on_every_node(fleet, argv)
    for rank, result in enumerate(results):
        expected = {peer: fleet.node_address(other) for other, peer in peers.items() if other != rank}
        assert result["answers"] == expected
        assert result["served_all"] is True
    assert len({fleet.node_address(r) for r in range(NODES)}) == (NODES if fleet.isolated else 1)


def _expected_broadcast_digest() -> str:
    import numpy as np

    data = np.random.default_rng(1234).integers(0, 256, BROADCAST_MIB * MIB, dtype=np.uint8)
    return hashlib.sha256(data.tobytes()).hexdigest()


@pytest.mark.parametrize("how", ["GLOO_SOCKET_IFNAME", "create_device"])
def test_gloo_group_forms_over_master_addr(fleet: SimulatedFleet, how: str) -> None:
    """The two ways documented in fleet_net's docstring: the env variable, or an explicit gloo device."""
    pytest.importorskip("torch")
    master_port = fleet.free_port()

    def env(rank: int) -> dict[str, str]:
        variables = fleet.node_environment(rank, master_port)
        variables["NODE_ADDRESS"] = fleet.node_address(rank)
        if how == "create_device":
            variables.pop("GLOO_SOCKET_IFNAME")
        return variables

    mode = "env" if how == "GLOO_SOCKET_IFNAME" else "device"
    results = _on_every_node(fleet, lambda rank: ["gloo", mode, str(BROADCAST_MIB)], env)
    assert [r["sum"] for r in results] == [sum(range(1, NODES + 1))] * NODES
    assert {r["sha256"] for r in results} == {_expected_broadcast_digest()}
    rates = [f"{BROADCAST_MIB / float(r['seconds']):.0f}" for r in results]  # type: ignore[arg-type]
    print(f"{how}: {BROADCAST_MIB} MiB broadcast, MiB/s per rank: {rates}")


def test_a_file_in_one_nodes_shm_is_seen_by_no_other_node(fleet: SimulatedFleet) -> None:
    name = f"fleet-private-{os.getpid()}"
    written = fleet.run(0, ["sh", "-c", f'printf hello > "$0/{name}" && ls "$0"', fleet.cache_dir(0)])
    assert written.returncode == 0, written.stderr
    assert name in written.stdout.decode().split()
    assert name in fleet.shm_entries(0)
    for rank in range(1, NODES):
        listed = fleet.run(rank, ["ls", "-a", fleet.cache_dir(rank)])
        assert listed.returncode == 0, listed.stderr
        assert name not in listed.stdout.decode().split()
        assert name not in fleet.shm_entries(rank)
    assert name not in os.listdir("/dev/shm")
    if fleet.isolated:
        assert fleet.cache_dir(0) == fleet.cache_dir(1) == "/dev/shm"  # the same path, different tmpfs
    else:
        assert len({fleet.cache_dir(r) for r in range(NODES)}) == NODES
    assert fleet.run(0, ["rm", f"{fleet.cache_dir(0)}/{name}"]).returncode == 0
    assert name not in fleet.shm_entries(0)


def _tbf_rate_bits(qdiscs: str, device: str) -> int:
    match = re.search(rf"qdisc tbf \S+ dev {re.escape(device)} root .*?rate (\d+)(\w?)bit", qdiscs)
    assert match, f"no tbf on {device} in:\n{qdiscs}"
    return int(match.group(1)) * {"": 1, "K": 10**3, "M": 10**6, "G": 10**9}[match.group(2)]


def test_links_carry_the_configured_caps(fleet: SimulatedFleet) -> None:
    if not fleet.isolated:
        # Loopback: only the account cap exists, enforced by localoss; the reason says the rest is not.
        assert fleet.localoss.args[:2] == ("--bandwidth-mibps", f"{OSS_CAP_MIBPS:g}")
        assert "NOT applied" in fleet.fallback_reason
        return
    node_bits, oss_bits = NODE_LINK_MIBPS * MIB * 8, OSS_CAP_MIBPS * MIB * 8
    switch = fleet.in_namespace(fleet.switch_namespace, ["tc", "qdisc", "show"]).stdout
    for rank in range(NODES):
        node = fleet.run(rank, ["tc", "qdisc", "show"]).stdout.decode()
        assert _tbf_rate_bits(node, fleet.node_interface(rank)) == pytest.approx(node_bits, rel=0.01)
        assert _tbf_rate_bits(switch, fleet.node_port(rank)) == pytest.approx(node_bits, rel=0.01)
    oss = fleet.in_namespace(fleet.oss_namespace, ["tc", "qdisc", "show"]).stdout
    assert _tbf_rate_bits(oss, fleet.oss_interface) == pytest.approx(oss_bits, rel=0.01)
    assert (
        "tbf"
        not in fleet.in_namespace(
            fleet.switch_namespace, ["tc", "qdisc", "show", "dev", fleet.oss_port]
        ).stdout
    )


def test_no_route_leaves_the_fleet(fleet: SimulatedFleet) -> None:
    if not fleet.isolated:
        pytest.skip("loopback fallback: the nodes are ordinary processes of this machine")
    for rank in range(NODES):
        routes = fleet.run(rank, ["ip", "-4", "route", "show"]).stdout.decode()
        assert "default" not in routes
        assert routes.split() == [
            f"{fleet.subnet}.0/24", "dev", fleet.node_interface(rank), "proto", "kernel", "scope", "link",
            "src", fleet.node_address(rank),
        ]  # fmt: skip
    root_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, timeout=30).stdout
    root_addresses = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, timeout=30).stdout
    assert fleet.suffix not in root_links
    assert f"{fleet.subnet}." not in root_addresses


# ---------------------------------------------------------------------------------------------- teardown


def _traces(suffix: str) -> list[str]:
    """Everything of fleet ``suffix`` still visible from here: namespaces, links, mounts, files."""
    found = (
        [f"netns {name}" for name in os.listdir("/run/netns") if suffix in name]
        if Path("/run/netns").exists()
        else []
    )
    if namespaces_unavailable_reason() == "":
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, timeout=30).stdout
        found += [f"link {line}" for line in links.splitlines() if suffix in line]
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        found += [f"mount {line.strip()}" for line in mountinfo if suffix in line]
    found += [
        f"dir {root}/{FLEET_PREFIX}{suffix}"
        for root in (STATE_ROOT, FALLBACK_ROOT)
        if (root / f"{FLEET_PREFIX}{suffix}").exists()
    ]
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# A node process that also leaves a grandchild in a session of its own (escaping the process group).
ESCAPING_NODE = r"""
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
open(sys.argv[1] + "/leftover", "w").write("x")
print(child.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("mode", ["isolated", "loopback"])
def test_close_leaves_no_namespace_link_mount_file_or_process(mode: str, tmp_path: Path) -> None:
    fleet = _start_fleet(mode, tmp_path / "oss")
    procs = [
        fleet.popen(r, [sys.executable, "-c", ESCAPING_NODE, fleet.cache_dir(r)], stdout=subprocess.PIPE)
        for r in range(NODES)
    ]
    pids = [proc.pid for proc in procs] + [fleet.localoss.proc.pid]
    for proc in procs:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip().isdigit(), line
        if fleet.isolated:  # the escaped grandchild is still in the node's network namespace
            pids.append(int(line))
        else:  # loopback: an escaped grandchild is the program's business; end it here
            os.kill(int(line), signal.SIGKILL)
    assert all(_alive(pid) for pid in pids)
    assert _traces(fleet.suffix)
    fleet.close()
    fleet.close()  # idempotent
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [pid for pid in pids if _alive(pid)] == []
    assert _traces(fleet.suffix) == []
    with pytest.raises(RuntimeError, match="closed"):
        fleet.popen(0, ["true"])


@pytest.mark.parametrize("mode", ["isolated", "loopback"])
def test_setup_failing_halfway_leaves_nothing(mode: str, tmp_path: Path) -> None:
    """localoss refuses its arguments after the namespaces, links, qdiscs and mounts exist."""
    if mode == "isolated" and namespaces_unavailable_reason():
        pytest.skip(f"network namespaces cannot be made here: {namespaces_unavailable_reason()}")
    with pytest.raises(RuntimeError, match="localoss exited") as raised:
        SimulatedFleet(
            NODES,
            tmp_path / "oss",
            node_link_mibps=NODE_LINK_MIBPS,
            oss_cap_mibps=OSS_CAP_MIBPS,
            localoss_args=["--no-such-flag"],
            isolate=mode == "isolated",
        )
    note = re.fullmatch(r"SimulatedFleet (\w+): set-up failed; .*", raised.value.__notes__[-1])
    assert note, raised.value.__notes__
    assert _traces(note.group(1)) == []


def test_a_node_holds_no_copy_of_any_fleets_mounts(fleet: SimulatedFleet, tmp_path: Path) -> None:
    """A node's mount namespace is a copy of the root's: without care it would pin every fleet's namespace
    files and tmpfs that existed when it was made, keeping them alive after their fleet's close()."""
    if not fleet.isolated:
        pytest.skip("loopback fallback: no mount namespaces")
    with _start_fleet("isolated", tmp_path / "oss", nodes=2) as later:
        for node_fleet, rank in ((fleet, 0), (later, 1)):
            mounts = node_fleet.run(rank, ["cat", "/proc/self/mountinfo"]).stdout.decode().splitlines()
            targets = [line.split()[4] for line in mounts]
            assert [t for t in targets if t.startswith("/run/netns/") or FLEET_PREFIX in t] == []
            assert "/dev/shm" in targets


SIGKILLED_OWNER = r"""
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from fleet_net import SimulatedFleet
fleet = SimulatedFleet(2, Path(sys.argv[2]), isolate=sys.argv[3] == "isolated")
fleet.popen(1, [sys.executable, "-c", "import time; time.sleep(600)"])
print(fleet.suffix, fleet.localoss.proc.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("mode", ["isolated", "loopback"])
def test_sweep_removes_what_a_sigkilled_owner_left(mode: str, tmp_path: Path) -> None:
    if mode == "isolated" and namespaces_unavailable_reason():
        pytest.skip(f"network namespaces cannot be made here: {namespaces_unavailable_reason()}")
    owner = subprocess.Popen(
        [sys.executable, "-c", SIGKILLED_OWNER, str(Path(NODE_PROGRAM).parent), str(tmp_path / "oss"), mode],
        stdout=subprocess.PIPE,
    )
    try:
        assert owner.stdout is not None
        suffix, server_pid = owner.stdout.readline().decode().split()
    finally:
        owner.kill()  # SIGKILL: no close(), no atexit
        owner.wait(timeout=30)
        assert owner.stdout is not None
        owner.stdout.close()
    assert _traces(suffix)
    assert _alive(int(server_pid))
    removed = sweep_leftovers()
    assert any(suffix in item for item in removed)
    deadline = time.monotonic() + 10
    while _alive(int(server_pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(int(server_pid))
    assert _traces(suffix) == []


EXITING_OWNER = r"""
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from fleet_net import SimulatedFleet
fleet = SimulatedFleet(2, Path(sys.argv[2]), isolate=sys.argv[3] == "isolated")
node = fleet.popen(0, [sys.executable, "-c", "import time; time.sleep(600)"])
print(fleet.suffix, node.pid, fleet.localoss.proc.pid, flush=True)
"""  # and exits without close(): atexit closes the fleet


@pytest.mark.parametrize("mode", ["isolated", "loopback"])
def test_an_owner_exiting_without_close_leaves_nothing(mode: str, tmp_path: Path) -> None:
    if mode == "isolated" and namespaces_unavailable_reason():
        pytest.skip(f"network namespaces cannot be made here: {namespaces_unavailable_reason()}")
    argv = [sys.executable, "-c", EXITING_OWNER, str(Path(NODE_PROGRAM).parent), str(tmp_path / "oss"), mode]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=WAIT_S)
    assert proc.returncode == 0, proc.stderr
    suffix, *pids = proc.stdout.split()
    assert _traces(suffix) == []
    assert [pid for pid in pids if _alive(int(pid))] == []


def test_a_live_fleet_survives_a_sweep(fleet: SimulatedFleet) -> None:
    sweep_leftovers()
    assert fleet.run(0, ["true"]).returncode == 0
    assert fleet.localoss.proc.poll() is None
    assert _traces(fleet.suffix)


@pytest.mark.parametrize(
    ("user", "reason"),
    [
        (["--user"], "not root (euid 65534)"),  # an ordinary user
        (["--user", "--map-root-user"], "`ip netns add "),  # root in a container without the powers
    ],
    ids=["unprivileged", "root-without-capabilities"],
)
def test_isolate_true_says_why_namespaces_cannot_be_made(
    user: list[str], reason: str, tmp_path: Path
) -> None:
    """In a user namespace of its own (no capability over the machine's network and mounts), isolate=True
    raises with the reason and isolate=None falls back to loopback, saying why; both leave nothing."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare to make an unprivileged user namespace")
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path\n"
        "from fleet_net import SimulatedFleet, FleetUnavailableError\n"
        "try:\n    SimulatedFleet(2, Path(sys.argv[2]), isolate=True)\n"
        "except FleetUnavailableError as exc:\n    print('raised:', exc)\n"
        "with SimulatedFleet(2, Path(sys.argv[2])) as fleet:\n"
        "    print('isolated:', fleet.isolated); print('reason:', fleet.fallback_reason)\n"
    )
    argv = [
        "unshare",
        *user,
        sys.executable,
        "-c",
        code,
        str(Path(NODE_PROGRAM).parent),
        str(tmp_path / "oss"),
    ]
    before = _all_fleet_traces()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=WAIT_S)
    if proc.returncode != 0 and "unshare failed" in proc.stderr:
        pytest.skip(f"user namespaces are not allowed here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"raised: cannot build an isolated fleet: {reason}")
    assert lines[1] == "isolated: False"
    assert lines[2].startswith(f"reason: {reason}") and "NOT applied" in lines[2]
    assert _all_fleet_traces() <= before


def _all_fleet_traces() -> set[str]:
    """Every fleet's namespaces, mounts and directories on the machine (a parallel run's included)."""
    found = {f"netns {name}" for name in _netns_list() if name.startswith(FLEET_PREFIX)}
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        found |= {f"mount {line.split()[4]}" for line in mountinfo if FLEET_PREFIX in line}
    for root in (STATE_ROOT, FALLBACK_ROOT):
        found |= {f"dir {root / name}" for name in os.listdir(root) if name.startswith(FLEET_PREFIX)}
    return found


def _netns_list() -> list[str]:
    return os.listdir("/run/netns") if Path("/run/netns").exists() else []


def test_localoss_killed_and_restarted_serves_every_node_again(fleet: SimulatedFleet) -> None:
    data = os.urandom(MIB)
    fleet.localoss.put_file("fleet-bucket", "restart.bin", data)
    endpoint = fleet.endpoint
    fleet.localoss.kill()
    server = fleet.restart_localoss()
    assert fleet.localoss is server and fleet.endpoint == endpoint
    env = {"OSS_ACCESS_KEY_ID": server.access_key_id, "OSS_ACCESS_KEY_SECRET": server.access_key_secret}
    results = _on_every_node(
        fleet, lambda rank: ["get", endpoint, "fleet-bucket", "restart.bin"], lambda rank: env
    )
    assert {(r["status"], r["sha256"]) for r in results} == {(200, hashlib.sha256(data).hexdigest())}


PREPARING_NODE = r"""
import os, sys
from ossmodelconnector import OssModelConnector
from ossmodelconnector.oss.credentials import Credentials

endpoint, key_id, secret, uri, model_dir = sys.argv[1:]
connector = OssModelConnector(endpoint, cred_provider=Credentials(key_id, secret), small_file_mb=1)
directory = connector.prepare_directory(uri, model_dir, wait=True)
with open(os.path.join(model_dir, "model.safetensors"), "rb") as weights:
    print(__import__("hashlib").sha256(weights.read()).hexdigest(), flush=True)
sys.stdin.read()  # hold the cache until the test closes stdin
connector.close()
"""


def test_each_node_prepares_a_model_into_its_own_shm(fleet: SimulatedFleet, tmp_path: Path) -> None:
    """The connector on every node at once, each with its own copy in its own cache; nothing left after."""
    weights = os.urandom(3 * MIB)
    fleet.localoss.put_file("fleet-bucket", "model/model.safetensors", weights)
    fleet.localoss.put_file("fleet-bucket", "model/config.json", b"{}")
    server = fleet.localoss
    # Nodes share the machine's file system (only /dev/shm is private): one model directory per node.
    model_dirs = [tmp_path / f"node{rank}" / "model" for rank in range(NODES)]
    procs = [
        fleet.popen(
            rank,
            [
                sys.executable,
                "-c",
                PREPARING_NODE,
                fleet.endpoint,
                server.access_key_id,
                server.access_key_secret,
                "oss://fleet-bucket/model/",
                str(model_dirs[rank]),
            ],
            env=fleet.node_environment(rank),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for rank in range(NODES)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stderr is not None
            line = proc.stdout.readline().decode().strip()
            assert line == hashlib.sha256(weights).hexdigest(), proc.stderr.read().decode()[-3000:]
        held = [fleet.shm_entries(rank) for rank in range(NODES)]
        # The same object gives the same segment name on every node: one copy in each node's cache.
        data_segments = [{name for name in names if name.startswith("ossmc-d-")} for names in held]
        assert len(data_segments[0]) == 1 and data_segments == [data_segments[0]] * NODES
        if fleet.isolated:
            tables = [state_table_name(model_dir) for model_dir in model_dirs]
            for rank in range(NODES):
                assert [tables[r] in held[rank] for r in range(NODES)] == [r == rank for r in range(NODES)]
            assert set(os.listdir("/dev/shm")).isdisjoint([*tables, *data_segments[0]])
    finally:
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.close()
        for proc in procs:
            proc.wait(timeout=WAIT_S)
    errors = [proc.stderr.read().decode()[-2000:] for proc in procs if proc.stderr is not None]
    assert [proc.returncode for proc in procs] == [0] * NODES, errors
    assert [fleet.shm_entries(rank) for rank in range(NODES)] == [[]] * NODES


def test_a_node_link_cap_changes_while_the_fleet_runs(fleet: SimulatedFleet) -> None:
    if not fleet.isolated:
        with pytest.raises(FleetUnavailableError, match="needs the isolated fleet"):
            fleet.set_node_link_mibps(1, 50)
        return
    try:
        fleet.set_node_link_mibps(1, 50)  # a slow node
        node = fleet.run(1, ["tc", "qdisc", "show"]).stdout.decode()
        switch = fleet.in_namespace(fleet.switch_namespace, ["tc", "qdisc", "show"]).stdout
        assert _tbf_rate_bits(node, fleet.node_interface(1)) == pytest.approx(50 * MIB * 8, rel=0.01)
        assert _tbf_rate_bits(switch, fleet.node_port(1)) == pytest.approx(50 * MIB * 8, rel=0.01)
        assert _tbf_rate_bits(switch, fleet.node_port(0)) == pytest.approx(
            NODE_LINK_MIBPS * MIB * 8, rel=0.01
        )
        fleet.set_node_link_mibps(1, 0)
        assert "tbf" not in fleet.run(1, ["tc", "qdisc", "show"]).stdout.decode()
    finally:
        fleet.set_node_link_mibps(1, NODE_LINK_MIBPS)


def test_a_disconnected_node_is_unreachable_until_reconnected(fleet: SimulatedFleet) -> None:
    if not fleet.isolated:
        with pytest.raises(FleetUnavailableError, match="needs the isolated fleet"):
            fleet.disconnect_node(1)
        return
    address, port = fleet.node_address(1), str(fleet.free_port())
    receiver = fleet.popen(
        1,
        [sys.executable, NODE_PROGRAM, "receive", address, port],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert receiver.stdout is not None
    assert json.loads(receiver.stdout.readline()) == {"listening": True}
    send = [sys.executable, NODE_PROGRAM, "send", address, port, "1"]
    try:
        fleet.disconnect_node(1)
        cut = fleet.run(0, send, env={"FLEET_NODE_TIMEOUT_S": "2"})
        # Lost packets: the connect times out (or finds no route once the ARP entry expired), never refused.
        assert cut.returncode != 0 and re.search(rb"TimeoutError|timed out|No route to host", cut.stderr)
    finally:
        fleet.reconnect_node(1)
    sent = fleet.run(0, send)
    assert sent.returncode == 0, sent.stderr
    (received,) = _outputs([receiver])
    assert received["bytes"] == MIB
    assert received["sha256"] == hashlib.sha256(payload(1)).hexdigest()
