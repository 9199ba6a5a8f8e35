"""A simulated fleet on one machine: N nodes, each with its own network and ``/dev/shm``, behind one OSS cap.

Isolated mode (root, ``ip``/``tc``/``unshare``/``nsenter`` present)::

    netns omcfleet-SFX-oss                 netns omcfleet-SFX-sw                netns omcfleet-SFX-n<r>
    localoss on 10.213.X.2                 bridge omcSFXbr (a switch,           omcSFXn<r> 10.213.X.(10+r)
    omcSFXos ──── tc: oss_cap_mibps ──>    no address)                          tc: node_link_mibps (egress)
                  (toward the nodes)  omcSFXpo ─┤├─ omcSFXp<r> ── tc: node_link_mibps ──> (toward node r)
                                                                                 mount ns: private tmpfs
                                                                                 on /dev/shm (shm_size_mb)

Every link is created inside the fleet's namespaces (``ip -n SW link add ... peer ... netns NODE``), so no
link or address ever exists in the root namespace and there is no route out: traffic flows only between
the fleet's namespaces. Each node's mount namespace is persisted on a file (``unshare --mount=FILE``
under a private bind mount of ``/run/omcfleet-SFX``) and lives as long as the fleet, so several processes
of a node share its ``/dev/shm`` and it can be inspected after they exit; its tmpfs is mounted at
``/run/omcfleet-SFX/shm-n<r>`` in the root namespace and bound onto ``/dev/shm`` inside the node, which
lets ``shm_entries`` read it directly. Node processes run as ``nsenter --net=/run/netns/NS
--mount=FILE -- argv`` in a new session (their own process group). ``close()`` (also from ``__exit__`` and
``atexit``) kills every process in the fleet's namespaces, deletes the namespaces (and with them every
link), unmounts and removes the state directory; it works the same after a setup that failed halfway.
``sweep_leftovers()`` removes what a SIGKILLed run left (fleets whose owner PID is gone); every new fleet
runs it first (tests/fleet_host.py holds the commands, owner files, removal, sweep and capability
probe). SFX is 6 random hex digits and X a random octet, per fleet.

Fallback (``isolate=False``, or ``isolate=None`` when namespaces cannot be made): localoss on 127.0.0.1
with ``--bandwidth-mibps oss_cap_mibps`` (the total cap, applied by the server), nodes as plain processes
on 127.0.0.1, each with its own cache directory ``/dev/shm/omcfleet-SFX/n<r>``; node link caps are not
applied there, and ``fallback_reason`` says so and why.

torch.distributed's gloo in the namespaces: by default gloo resolves the hostname (``vm`` -> 127.0.0.1
here) and advertises that address to its peers, who then dial their own loopback: ``init_process_group``
fails after its timeout ("connectFullMesh failed ... Connection refused, remote=[127.0.0.1]").
What works (torch 2.13, both tested in tests/integration/test_fleet_net.py):

* ``GLOO_SOCKET_IFNAME=fleet.node_interface(rank)`` in the node's environment (``"lo"`` in the
  fallback; set in ``os.environ`` before ``init_process_group`` works as well), with
  ``MASTER_ADDR=fleet.master_addr``: ``fleet.node_environment(rank, master_port)`` returns these with
  ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE`` and ``OSSMC_CACHE_DIR``; or
* in code, a group object with an explicit device: ``store = TCPStore(master_addr, port, world,
  rank == 0, timeout=t)``; ``options = ProcessGroupGloo._Options(); options._timeout = t;
  options._devices = [ProcessGroupGloo.create_device(hostname=node_address)]``; ``group =
  ProcessGroupGloo(store, rank, world, options)``; then ``group.allreduce([t]).wait(timeout)``,
  ``group.broadcast([t], opts).wait(timeout)``. Note: ``init_process_group("gloo", pg_options=...)``
  ignores the options for gloo (torch 2.13 builds ``ProcessGroupGloo(store, rank, size, timeout=)``).
The node's address has no reverse DNS: c10d warns "The hostname of the client socket cannot be
retrieved. err=-3" once per connection; harmless.

Nodes share the machine's file system: only ``/dev/shm`` is private, so give each node its own model
directory (the connector's symlinks there point into the node's ``/dev/shm``).

Caps: ``tc qdisc replace dev NIC root tbf rate R burst B latency 50ms`` with B = max(4 ms at R, 512 KiB)
(1.6 MiB at 400 MiB/s) on veths of MTU 9000. Measured by ``benchmarks/fleet_links.py`` (sections
``fleet_links`` and ``fleet_links_loopback`` of ``benchmarks/RESULTS.md``), 4 nodes, a loaded 2-core
machine: one GET through a 200 MiB/s OSS cap 0.97-0.99 of it, 4 nodes at once 0.98 together, one TCP
stream node to node through 400 MiB/s links 0.95-1.00; uncapped, the simulation itself carries 400-1100
MiB/s per stream (the cores are shared by veth, bridge, tc, server and clients). The machine, not the
links, is the limit once several streams run: 4 nodes each sending to the next at once get 0.5-0.6
of 4 x 400 MiB/s together (800-1000 MiB/s; 1000-1200 uncapped). A receiver writing into fresh pages (a page
fault per 4 KiB) got only 0.81-0.90 of the OSS cap.

Usage::

    with SimulatedFleet(4, tmp / "oss", node_link_mibps=400, oss_cap_mibps=200) as fleet:
        fleet.localoss.put_file("bucket", "model/x.safetensors", data)
        port = fleet.free_port()
        procs = [fleet.popen(r, [sys.executable, "node.py", fleet.endpoint, fleet.cache_dir(r)],
                             env=fleet.node_environment(r, port)) for r in range(4)]
        ...  # wait with timeouts; fleet.shm_entries(r) lists node r's /dev/shm
"""

from __future__ import annotations

import atexit
import contextlib
import os
import random
import secrets
import signal
import socket
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from fleet_host import (
    FALLBACK_ROOT,
    FLEET_PREFIX,
    STATE_ROOT,
    FleetUnavailableError,
    namespaces_unavailable_reason,
    record_process,
    remove_fleet,
    run_command,
    sweep_leftovers,
    tbf_command,
    tools_missing_reason,
    write_owner,
)
from localoss_harness import LocalOss, start_localoss

__all__ = [
    "FALLBACK_ROOT",
    "FLEET_PREFIX",
    "STATE_ROOT",
    "FleetUnavailableError",
    "SimulatedFleet",
    "namespaces_unavailable_reason",
    "sweep_leftovers",
]

LINK_PREFIX = "omc"
SUBNET_PREFIX = "10.213"
OSS_HOST_OCTET = 2
FIRST_NODE_OCTET = 10
MAX_NODES = 240
FIRST_FREE_PORT = 20000  # isolated mode: below the ephemeral range (32768-60999), handed out one by one
PROCESS_EXIT_TIMEOUT_S = 10.0
DEFAULT_SHM_SIZE_MB = 2048
# A jumbo-frame MTU, as data-centre NICs that carry model weights commonly run: fewer packets per byte
# through veth, bridge and tc (1500, 9000 and 65000 measured alike within this machine's noise).
LINK_MTU = 9000
# Run inside a new node mount namespace: detach (deepest first) its copies of /run/netns/* and of every
# /run/omcfleet-* mount.
_DETACH_FLEET_MOUNTS = (
    "awk '$5 ~ \"^/run/(netns/|" + FLEET_PREFIX + ")\" {print $5}' /proc/self/mountinfo | sort -r | "
    'while read -r target; do umount --lazy "$target"; done'
)


class SimulatedFleet:
    """N simulated nodes and one localoss behind an account-wide cap; see the module docstring.

    Args:
        nodes: number of nodes (1..240).
        oss_root: folder localoss serves (``ROOT/bucket/key``).
        node_link_mibps: each node's link, both ways, MiB/s (0: uncapped). Isolated mode only.
        oss_cap_mibps: all bodies from OSS to all nodes together, MiB/s (0: uncapped).
        localoss_args: more flags for localoss (faults, credentials).
        isolate: True: namespaces or raise; False: loopback; None: namespaces when they can be made.
        shm_size_mb: size of each node's private ``/dev/shm`` (isolated mode).

    Raises:
        FleetUnavailableError: ``isolate=True`` and namespaces cannot be made (the message says why).
        RuntimeError: localoss did not start; nothing of the fleet is left.

    Example:
        >>> with SimulatedFleet(3, tmp / "oss", oss_cap_mibps=200) as fleet:  # doctest: +SKIP
        ...     fleet.localoss.put_file("bucket", "key", data)
        ...     procs = [fleet.popen(r, [sys.executable, "node.py"], env=fleet.node_environment(r))
        ...              for r in range(3)]
    """

    def __init__(
        self,
        nodes: int,
        oss_root: Path,
        *,
        node_link_mibps: float = 0,
        oss_cap_mibps: float = 0,
        localoss_args: Sequence[str] = (),
        isolate: bool | None = None,
        shm_size_mb: int = DEFAULT_SHM_SIZE_MB,
    ) -> None:
        if not 1 <= nodes <= MAX_NODES:
            raise ValueError(f"nodes={nodes}: give 1 to {MAX_NODES}")
        if node_link_mibps < 0 or oss_cap_mibps < 0:
            raise ValueError("link caps are MiB/s >= 0 (0: uncapped)")
        self.nodes = nodes
        self.node_link_mibps = float(node_link_mibps)
        self.oss_cap_mibps = float(oss_cap_mibps)
        self.shm_size_mb = shm_size_mb
        self.suffix = secrets.token_hex(3)
        self.subnet = f"{SUBNET_PREFIX}.{random.randrange(256)}"
        self.isolated = False
        self.fallback_reason = ""
        self._procs: list[subprocess.Popen[bytes]] = []
        self._closed = False
        self._next_port = FIRST_FREE_PORT - 1
        self._localoss: LocalOss | None = None
        atexit.register(self.close)
        try:
            sweep_leftovers()
            reason = tools_missing_reason() if isolate is not False else "isolate=False"
            if not reason:
                self.isolated = True  # the names and paths below are those of isolated mode
                try:
                    self._build_namespaces()
                except (FleetUnavailableError, OSError) as exc:
                    remove_fleet(self.suffix)
                    self.isolated = False
                    reason = str(exc)
            if not self.isolated:
                if isolate:
                    raise FleetUnavailableError(f"cannot build an isolated fleet: {reason}")
                self.fallback_reason = (
                    f"{reason}; fallback: {nodes} processes on 127.0.0.1 with separate cache directories, "
                    f"OSS cap {self.oss_cap_mibps:g} MiB/s by localoss --bandwidth-mibps, "
                    f"node link cap {self.node_link_mibps:g} MiB/s NOT applied"
                )
                self._build_fallback()
            self._localoss = self._start_localoss(oss_root, localoss_args)
        except BaseException as exc:
            self.close()
            exc.add_note(f"SimulatedFleet {self.suffix}: set-up failed; everything it had made was removed")
            raise

    # ----------------------------------------------------------------- names and addresses
    @property
    def state_dir(self) -> Path:
        """``/run/omcfleet-SFX`` (isolated) or ``/dev/shm/omcfleet-SFX`` (fallback): all the fleet's files."""
        return (STATE_ROOT if self.isolated else FALLBACK_ROOT) / f"{FLEET_PREFIX}{self.suffix}"

    @property
    def switch_namespace(self) -> str:
        return f"{FLEET_PREFIX}{self.suffix}-sw"

    @property
    def oss_namespace(self) -> str:
        return f"{FLEET_PREFIX}{self.suffix}-oss"

    def node_namespace(self, rank: int) -> str:
        """The network namespace of node ``rank`` (isolated mode)."""
        return f"{FLEET_PREFIX}{self.suffix}-n{self._check_rank(rank)}"

    @property
    def namespaces(self) -> list[str]:
        """Every network namespace the fleet makes (isolated mode; empty in the fallback)."""
        if not self.isolated:
            return []
        return [
            self.switch_namespace,
            self.oss_namespace,
            *(self.node_namespace(r) for r in range(self.nodes)),
        ]

    @property
    def bridge(self) -> str:
        return f"{LINK_PREFIX}{self.suffix}br"

    @property
    def oss_interface(self) -> str:
        return f"{LINK_PREFIX}{self.suffix}os"

    @property
    def oss_port(self) -> str:
        """The switch-side end of the OSS link."""
        return f"{LINK_PREFIX}{self.suffix}po"

    def node_port(self, rank: int) -> str:
        """The switch-side end of node ``rank``'s link."""
        return f"{LINK_PREFIX}{self.suffix}p{self._check_rank(rank)}"

    def node_interface(self, rank: int) -> str:
        """The node's NIC in its namespace (``"lo"`` in the fallback): the value for GLOO_SOCKET_IFNAME."""
        return f"{LINK_PREFIX}{self.suffix}n{self._check_rank(rank)}" if self.isolated else "lo"

    def node_address(self, rank: int) -> str:
        """The node's IPv4 address (``127.0.0.1`` for every node in the fallback)."""
        return f"{self.subnet}.{FIRST_NODE_OCTET + self._check_rank(rank)}" if self.isolated else "127.0.0.1"

    @property
    def oss_address(self) -> str:
        return f"{self.subnet}.{OSS_HOST_OCTET}" if self.isolated else "127.0.0.1"

    @property
    def master_addr(self) -> str:
        """Rank 0's address, for ``MASTER_ADDR``."""
        return self.node_address(0)

    @property
    def endpoint(self) -> str:
        """``http://ADDR:PORT`` of localoss as every node reaches it."""
        return self.localoss.endpoint

    @property
    def localoss(self) -> LocalOss:
        if self._localoss is None:
            raise RuntimeError("the fleet's localoss is not running (setup failed or the fleet is closed)")
        return self._localoss

    def cache_dir(self, rank: int) -> str:
        """Node ``rank``'s cache: its private ``/dev/shm``, or its own directory in the fallback."""
        self._check_rank(rank)
        return "/dev/shm" if self.isolated else str(self.state_dir / f"n{rank}")

    def _node_shm(self, rank: int) -> Path:
        """Node ``rank``'s ``/dev/shm`` as seen from the root namespace."""
        return self.state_dir / f"shm-n{rank}" if self.isolated else Path(self.cache_dir(rank))

    def _mount_ns_file(self, rank: int) -> Path:
        return self.state_dir / f"mnt-n{rank}"

    def node_environment(self, rank: int, master_port: int | None = None) -> dict[str, str]:
        """A node's environment: its gloo NIC, the rendezvous variables and its cache directory.

        GLOO_SOCKET_IFNAME, MASTER_ADDR, RANK, WORLD_SIZE, OSSMC_CACHE_DIR (and MASTER_PORT if given).
        """
        env = {
            "OSSMC_CACHE_DIR": self.cache_dir(rank),
            "GLOO_SOCKET_IFNAME": self.node_interface(rank),
            "MASTER_ADDR": self.master_addr,
            "RANK": str(rank),
            "WORLD_SIZE": str(self.nodes),
        }
        if master_port is not None:
            env["MASTER_PORT"] = str(master_port)
        return env

    def free_port(self) -> int:
        """A TCP port no process of the fleet listens on yet (for MASTER_PORT, a test's listener).

        Isolated: the nodes' namespaces hold only the fleet's processes, so the fleet hands out ports
        below the kernel's ephemeral range, each once. Fallback: the kernel picks a free one on
        127.0.0.1 (another program may still take it before it is used, as with any such port).
        """
        if self.isolated:
            self._next_port += 1
            return self._next_port
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return int(probe.getsockname()[1])

    def _check_rank(self, rank: int) -> int:
        if not 0 <= rank < self.nodes:
            raise IndexError(f"rank {rank} not in 0..{self.nodes - 1}")
        return rank

    # ----------------------------------------------------------------- processes
    def launcher(self, rank: int) -> list[str]:
        """The argv prefix that runs a command on node ``rank`` (empty in the fallback)."""
        self._check_rank(rank)
        if not self.isolated:
            return []
        return [
            "nsenter",
            f"--net=/run/netns/{self.node_namespace(rank)}",
            f"--mount={self._mount_ns_file(rank)}",
            "--",
        ]

    def popen(
        self,
        rank: int,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        **kwargs: object,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` on node ``rank`` in a new session; ``close()`` kills it if still running.

        Args:
            rank: the node.
            argv: the command.
            env: variables added to (not replacing) this process's environment.
            **kwargs: passed to ``subprocess.Popen`` (stdout, stderr, cwd...); ``start_new_session`` is
                always True, so the fleet can kill the process group.

        Returns:
            The process (for ``nsenter``: the command itself, nsenter execs it).
        """
        if self._closed:
            raise RuntimeError("the fleet is closed")
        kwargs["start_new_session"] = True
        proc: subprocess.Popen[bytes] = subprocess.Popen(  # type: ignore[call-overload]
            [*self.launcher(rank), *argv], env={**os.environ, **(env or {})}, **kwargs
        )
        self._procs.append(proc)
        record_process(self.state_dir, proc.pid, group=True)
        return proc

    def run(
        self, rank: int, argv: Sequence[str], *, env: Mapping[str, str] | None = None, timeout_s: float = 60.0
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``argv`` on node ``rank`` to completion (output captured); killed after ``timeout_s``."""
        proc = self.popen(rank, argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._kill_group(proc)
            out, err = proc.communicate(timeout=PROCESS_EXIT_TIMEOUT_S)
            raise subprocess.TimeoutExpired(proc.args, timeout_s, out, err) from None
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def restart_localoss(self, *args: str) -> LocalOss:
        """Start localoss again on the same address, port and folder after it was killed or stopped.

        ``args``: other flags (default the same ones). The fleet stops the new server at ``close()``.
        """
        old = self.localoss
        if old.proc.poll() is None:
            raise RuntimeError("stop or kill the fleet's localoss first (fleet.localoss.kill())")
        if args and self.isolated:
            args = ("--host", self.oss_address, *args)
        self._localoss = old.restart(*args)
        record_process(self.state_dir, self._localoss.proc.pid, group=False)
        return self._localoss

    def set_node_link_mibps(self, rank: int, mibps: float) -> None:
        """Change node ``rank``'s link cap (both ways) while the fleet runs: a slow node; 0 removes the cap.

        Raises:
            FleetUnavailableError: in the loopback fallback, where node links have no cap to change.
        """
        self._require_isolated("a node link cap")
        if mibps < 0:
            raise ValueError("a link cap is MiB/s >= 0 (0: uncapped)")
        self._cap_node_link(self._check_rank(rank), mibps)

    def disconnect_node(self, rank: int) -> None:
        """Take node ``rank``'s switch port down: its packets are lost both ways (a network partition;
        open TCP connections stall instead of failing), until ``reconnect_node``.

        Raises:
            FleetUnavailableError: in the loopback fallback (nodes share 127.0.0.1).
        """
        self._require_isolated("a network partition")
        run_command(
            ["ip", "-n", self.switch_namespace, "link", "set", self.node_port(self._check_rank(rank)), "down"]
        )

    def reconnect_node(self, rank: int) -> None:
        """Bring node ``rank``'s switch port up again after ``disconnect_node``."""
        self._require_isolated("a network partition")
        run_command(
            ["ip", "-n", self.switch_namespace, "link", "set", self.node_port(self._check_rank(rank)), "up"]
        )

    def _require_isolated(self, what: str) -> None:
        if self._closed:
            raise RuntimeError("the fleet is closed")
        if not self.isolated:
            raise FleetUnavailableError(
                f"{what} needs the isolated fleet; this one is loopback: {self.fallback_reason}"
            )

    def _cap_node_link(self, rank: int, mibps: float) -> None:
        ends = (
            (self.node_namespace(rank), self.node_interface(rank)),
            (self.switch_namespace, self.node_port(rank)),
        )
        for namespace, device in ends:
            if mibps:
                run_command(["ip", "netns", "exec", namespace, *tbf_command(device, mibps)])
            else:
                run_command(
                    ["ip", "netns", "exec", namespace, "tc", "qdisc", "del", "dev", device, "root"],
                    check=False,
                )

    def shm_entries(self, rank: int) -> list[str]:
        """Names now in node ``rank``'s ``/dev/shm`` (fallback: its cache directory), sorted."""
        self._check_rank(rank)
        return sorted(os.listdir(self._node_shm(rank)))

    def in_namespace(self, namespace: str, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        """Run a short command (``tc qdisc show``...) in one of the fleet's network namespaces."""
        if namespace not in self.namespaces:
            raise ValueError(f"{namespace} is not a namespace of this fleet")
        return run_command(["ip", "netns", "exec", namespace, *argv], check=False)

    # ----------------------------------------------------------------- set-up
    def _build_namespaces(self) -> None:
        state = self.state_dir
        state.mkdir(mode=0o700)
        write_owner(state)
        for name in self.namespaces:
            run_command(["ip", "netns", "add", name])
            run_command(["ip", "-n", name, "link", "set", "lo", "up"])
        sw = self.switch_namespace
        run_command(["ip", "-n", sw, "link", "add", self.bridge, "type", "bridge"])
        run_command(["ip", "-n", sw, "link", "set", self.bridge, "mtu", str(LINK_MTU), "up"])
        links = [(self.oss_port, self.oss_namespace, self.oss_interface, self.oss_address)]
        links += [
            (self.node_port(r), self.node_namespace(r), self.node_interface(r), self.node_address(r))
            for r in range(self.nodes)
        ]
        for port, namespace, nic, address in links:
            # Both ends are born in the fleet's namespaces: nothing ever appears in the root namespace.
            run_command(["ip", "-n", sw, "link", "add", port, "mtu", str(LINK_MTU), "type", "veth",
                         "peer", "name", nic, "mtu", str(LINK_MTU), "netns", namespace])  # fmt: skip
            run_command(["ip", "-n", sw, "link", "set", port, "master", self.bridge, "up"])
            run_command(["ip", "-n", namespace, "addr", "add", f"{address}/24", "dev", nic])
            run_command(["ip", "-n", namespace, "link", "set", nic, "up"])
        if self.oss_cap_mibps:
            oss_cap = tbf_command(self.oss_interface, self.oss_cap_mibps)
            run_command(["ip", "netns", "exec", self.oss_namespace, *oss_cap])
        if self.node_link_mibps:
            for r in range(self.nodes):
                self._cap_node_link(r, self.node_link_mibps)
        # Mount namespaces: the files that hold them must sit on a private mount, else the kernel refuses
        # (a namespace file bound inside a mount that propagates into that namespace would be a loop).
        run_command(["mount", "--bind", str(state), str(state)])
        run_command(["mount", "--make-private", str(state)])
        for r in range(self.nodes):
            shm = self._node_shm(r)
            shm.mkdir()
            run_command(["mount", "-t", "tmpfs", "-o", f"size={self.shm_size_mb}m,mode=1777",
                         f"{FLEET_PREFIX}{self.suffix}-n{r}", str(shm)])  # fmt: skip
            ns_file = self._mount_ns_file(r)
            ns_file.touch()
            # Inside the node: its tmpfs on /dev/shm, then away with the copies of every fleet's netns and
            # state mounts (this one's included): a copy would keep another fleet's namespaces and
            # tmpfs alive after that fleet's close(), until this node's mount namespace ends.
            run_command(["unshare", f"--mount={ns_file}", "--propagation", "private", "sh", "-c",
                         f"mount --bind {shm} /dev/shm && {_DETACH_FLEET_MOUNTS}"])  # fmt: skip

    def _build_fallback(self) -> None:
        state = self.state_dir
        state.mkdir(mode=0o700)
        write_owner(state)
        for r in range(self.nodes):
            (state / f"n{r}").mkdir()

    def _start_localoss(self, oss_root: Path, localoss_args: Sequence[str]) -> LocalOss:
        if self.isolated:
            args = ["--host", self.oss_address, *localoss_args]
            launcher = ["nsenter", f"--net=/run/netns/{self.oss_namespace}", "--"]
        else:
            args = [*localoss_args]
            if self.oss_cap_mibps:
                args = ["--bandwidth-mibps", f"{self.oss_cap_mibps:g}", *args]
            launcher = []
        server = start_localoss(oss_root, *args, launcher=launcher)
        record_process(self.state_dir, server.proc.pid, group=False)
        return server

    # ----------------------------------------------------------------- teardown
    def _kill_group(self, proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=PROCESS_EXIT_TIMEOUT_S)

    def close(self) -> None:
        """Kill every process of the fleet, stop localoss, remove namespaces, links, mounts and files.

        Idempotent; also runs from ``__exit__`` and at interpreter exit.
        """
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        for proc in self._procs:
            if proc.poll() is None:
                self._kill_group(proc)
            for stream in (proc.stdout, proc.stderr, proc.stdin):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        if self._localoss is not None:
            self._localoss.stop()
            self._localoss = None
        remove_fleet(self.suffix)

    def __enter__(self) -> SimulatedFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "isolated" if self.isolated else "fallback"
        return f"SimulatedFleet({self.nodes} nodes, {mode}, suffix={self.suffix}, closed={self._closed})"
