"""The host side of tests/fleet_net.py's simulated fleet: commands, owner files, removal, sweep, probe.

A fleet is known on the machine by its suffix SFX only: network namespaces ``omcfleet-SFX-*`` (their
links live and die with them), the state directory ``/run/omcfleet-SFX`` (isolated: owner file, started
processes, mount-namespace files, the nodes' tmpfs) or ``/dev/shm/omcfleet-SFX`` (fallback: owner file,
processes, the nodes' cache directories). ``remove_fleet(SFX)`` removes all of that whatever state a
set-up reached; ``sweep_leftovers()`` does it for every fleet whose owner process is gone.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

FLEET_PREFIX = "omcfleet-"
STATE_ROOT = Path("/run")
FALLBACK_ROOT = Path("/dev/shm")
COMMAND_TIMEOUT_S = 30.0
# tbf's bucket: at least this long at the configured rate (the kernel's timer granularity and a burst of
# GSO packets must fit; 4 and 16 ms measured alike here) ...
TBF_BURST_S = 0.004
# ... and never less than a few 64 KiB GSO packets.
TBF_MIN_BURST_BYTES = 512 * 1024
# Packets queue at most this long in tbf before being dropped (TCP then backs off to the rate).
TBF_LATENCY_MS = 50
_SETUP_GRACE_S = 300.0  # a state directory without an owner file younger than this is a fleet being set up


class FleetUnavailableError(RuntimeError):
    """Namespaces cannot be made here (not root, a tool missing, the kernel refused); the message says why."""


def run_command(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        if not check:
            return subprocess.CompletedProcess(list(argv), -1, "", str(exc))
        raise FleetUnavailableError(f"`{' '.join(argv)}` failed: {exc}") from exc
    if check and proc.returncode != 0:
        raise FleetUnavailableError(
            f"`{' '.join(argv)}` exited with {proc.returncode}: {(proc.stderr or proc.stdout).strip()}"
        )
    return proc


def process_start_ticks(pid: int) -> str | None:
    """The start time of ``pid`` (clock ticks since boot), to tell a live owner from a reused PID."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _owner_alive(state_dir: Path) -> bool:
    try:
        pid_text, ticks = (state_dir / "owner").read_text().split()
    except (OSError, ValueError):
        # No owner file yet: a fleet being set up right now, unless the directory is old.
        try:
            return time.time() - state_dir.stat().st_mtime < _SETUP_GRACE_S
        except OSError:
            return False
    return process_start_ticks(int(pid_text)) == ticks


def write_owner(state_dir: Path) -> None:
    (state_dir / "owner").write_text(f"{os.getpid()} {process_start_ticks(os.getpid())}\n")


def _mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` in this mount namespace, deepest (last mounted) first."""
    found = []
    prefix = str(path)
    with open("/proc/self/mountinfo", encoding="utf-8") as mountinfo:
        for line in mountinfo:
            target = line.split()[4].replace("\\040", " ")
            if target == prefix or target.startswith(prefix + "/"):
                found.append(target)
    return found[::-1]


def _netns_names() -> list[str]:
    try:
        return sorted(os.listdir("/run/netns"))
    except OSError:
        return []


def _kill_pids(pids: Sequence[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _netns_pids(name: str) -> list[int]:
    proc = run_command(["ip", "netns", "pids", name], check=False)
    return [int(word) for word in proc.stdout.split() if word.isdigit()]


def record_process(state_dir: Path, pid: int, *, group: bool) -> None:
    """Note a started process in ``state_dir/pids``, so a sweep after a SIGKILLed owner can kill it too."""
    with open(state_dir / "pids", "a", encoding="ascii") as pids:
        pids.write(f"{pid} {process_start_ticks(pid)} {int(group)}\n")


def _kill_recorded(state_dir: Path) -> None:
    try:
        lines = (state_dir / "pids").read_text().splitlines()
    except OSError:
        return
    for line in lines:
        pid_text, ticks, group = line.split()
        if process_start_ticks(int(pid_text)) != ticks:
            continue  # exited (and maybe the PID was reused): not ours any more
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group == "1":
                os.killpg(int(pid_text), signal.SIGKILL)
            else:
                os.kill(int(pid_text), signal.SIGKILL)


def remove_fleet(suffix: str) -> list[str]:
    """Remove everything of fleet ``suffix``: processes, namespaces, mounts, files. Returns what it removed.

    Safe to run on a fleet that was only half set up, or already removed.
    """
    removed: list[str] = []
    for root in (STATE_ROOT, FALLBACK_ROOT):
        _kill_recorded(root / f"{FLEET_PREFIX}{suffix}")
    ns_prefix = f"{FLEET_PREFIX}{suffix}-"
    namespaces = [name for name in _netns_names() if name.startswith(ns_prefix)]
    # Kill first, in every namespace, so no process of one node keeps talking while another is deleted.
    for _ in range(3):
        pids = [pid for name in namespaces for pid in _netns_pids(name)]
        if not pids:
            break
        _kill_pids(pids)
        time.sleep(0.1)
    for name in namespaces:
        # Deleting a namespace destroys its links and their veth peers in the other namespaces.
        run_command(["ip", "netns", "delete", name], check=False)
        removed.append(f"netns {name}")
    state_dir = STATE_ROOT / f"{FLEET_PREFIX}{suffix}"
    if state_dir.exists():
        for target in _mounts_under(state_dir):
            if run_command(["umount", target], check=False).returncode != 0:
                run_command(["umount", "--lazy", target], check=False)  # busy: detach now, freed when unused
            removed.append(f"mount {target}")
        shutil.rmtree(state_dir, ignore_errors=True)
        removed.append(f"dir {state_dir}")
    fallback_dir = FALLBACK_ROOT / f"{FLEET_PREFIX}{suffix}"
    if fallback_dir.exists():
        shutil.rmtree(fallback_dir, ignore_errors=True)
        removed.append(f"dir {fallback_dir}")
    return removed


def _fleet_suffix(name: str) -> str | None:
    if not name.startswith(FLEET_PREFIX):
        return None
    return name[len(FLEET_PREFIX) :].split("-", 1)[0] or None


def sweep_leftovers() -> list[str]:
    """Remove the fleets that runs killed with SIGKILL left behind; fleets of live processes are kept.

    A fleet belongs to the process named in ``/run/omcfleet-SFX/owner`` (fallback:
    ``/dev/shm/omcfleet-SFX/owner``); a namespace ``omcfleet-SFX-*`` without a state directory is a
    leftover too (the directory is made before the first namespace and removed after the last).

    Returns:
        What was removed, one ``"netns NAME"``, ``"mount PATH"`` or ``"dir PATH"`` per item.
    """
    suffixes: set[str] = set()
    for root in (STATE_ROOT, FALLBACK_ROOT):
        with contextlib.suppress(OSError):
            for entry in os.listdir(root):
                suffix = _fleet_suffix(entry)
                if suffix and not _owner_alive(root / entry):
                    suffixes.add(suffix)
    for name in _netns_names():
        suffix = _fleet_suffix(name)
        if suffix and not (STATE_ROOT / f"{FLEET_PREFIX}{suffix}").exists():
            suffixes.add(suffix)
    removed: list[str] = []
    for suffix in sorted(suffixes):
        removed += remove_fleet(suffix)
    return removed


def tools_missing_reason() -> str:
    if os.geteuid() != 0:
        return f"not root (euid {os.geteuid()}): network and mount namespaces need CAP_SYS_ADMIN"
    missing = [
        tool for tool in ("ip", "tc", "unshare", "nsenter", "mount", "umount") if not shutil.which(tool)
    ]
    if missing:
        return f"missing tools: {', '.join(missing)} (iproute2, util-linux)"
    if not os.access(STATE_ROOT, os.W_OK):
        return f"{STATE_ROOT} is not writable"
    return ""


@functools.cache
def namespaces_unavailable_reason() -> str:
    """Why this process cannot build an isolated fleet, "" when it can (checked once, then remembered).

    Root with the tools is not enough in every container (no CAP_NET_ADMIN, no veth or tbf in the
    kernel): a probe makes a namespace with a veth pair under a tbf qdisc and a persisted mount
    namespace, then removes them.
    """
    reason = tools_missing_reason()
    if reason:
        return reason
    suffix = secrets.token_hex(3)
    state = STATE_ROOT / f"{FLEET_PREFIX}{suffix}"
    namespace = f"{FLEET_PREFIX}{suffix}-probe"
    try:
        state.mkdir(mode=0o700)
        write_owner(state)
        run_command(["ip", "netns", "add", namespace])
        run_command(
            ["ip", "-n", namespace, "link", "add", "probe0", "type", "veth", "peer", "name", "probe1"]
        )
        run_command(["ip", "netns", "exec", namespace, *tbf_command("probe0", 100)])
        run_command(["mount", "--bind", str(state), str(state)])
        run_command(["mount", "--make-private", str(state)])
        (state / "mnt").touch()
        run_command(["unshare", f"--mount={state / 'mnt'}", "--propagation", "private", "true"])
    except (FleetUnavailableError, OSError) as exc:
        return f"namespaces cannot be made here: {exc}"
    finally:
        remove_fleet(suffix)
    return ""


def tbf_command(dev: str, mibps: float) -> list[str]:
    rate_bytes = int(mibps * (1 << 20))
    burst = max(int(rate_bytes * TBF_BURST_S), TBF_MIN_BURST_BYTES)
    return [
        "tc", "qdisc", "replace", "dev", dev, "root", "tbf",
        "rate", f"{rate_bytes * 8}bit", "burst", str(burst), "latency", f"{TBF_LATENCY_MS}ms",
    ]  # fmt: skip
