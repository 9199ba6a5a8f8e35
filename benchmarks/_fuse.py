"""Mount a localoss bucket through its S3 dialect with ``rclone mount`` or ``s3fs``, for the FUSE contenders.

::

    missing_fuse_tool(name)  -> None, or why it cannot run here and the command that installs it
    mounted(kind, ...)       -> a context manager: the daemon in the foreground (our child), the mount
                                point polled until it is mounted, then ``fusermount -u`` and a wait

The daemons get ``AWS_CA_BUNDLE`` removed from their environment: the AWS SDK inside rclone refuses any
custom CA bundle with its own transport, and the endpoint is plain http on 127.0.0.1 anyway.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MOUNT_TIMEOUT_S = 30.0
UNMOUNT_TIMEOUT_S = 15.0

INSTALL = {
    "rclone": "apt-get install -y rclone fuse3",
    "s3fs": "apt-get install -y s3fs fuse3",
}


def missing_fuse_tool(tool: str) -> str | None:
    """Why ``tool`` (``rclone`` or ``s3fs``) cannot mount here, with the install command; None when it can."""
    if shutil.which(tool) is None:
        return f"`{tool}` is not installed; install it with `{INSTALL[tool]}`"
    if not os.path.exists("/dev/fuse"):
        return (
            "/dev/fuse is missing (FUSE is not available in this container; run it with --device /dev/fuse)"
        )
    if shutil.which("fusermount3") is None and shutil.which("fusermount") is None:
        return f"no fusermount to unmount with; install it with `{INSTALL[tool]}`"
    return None


@dataclass
class Mount:
    """A running FUSE daemon and its mount point."""

    proc: subprocess.Popen[bytes]
    mountpoint: Path
    command: list[str]

    def peak_rss(self) -> int:
        """The daemon's peak resident set (``VmHWM``) in bytes, 0 when it cannot be read."""
        with contextlib.suppress(OSError), open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return 0


def _rclone(
    endpoint: str, creds: tuple[str, str], source: str, mountpoint: Path, work: Path, mode: str
) -> list[str]:
    config = work / "rclone.conf"
    config.write_text(
        "[localoss]\ntype = s3\nprovider = Other\n"
        f"endpoint = {endpoint}\naccess_key_id = {creds[0]}\nsecret_access_key = {creds[1]}\n"
        "force_path_style = true\nregion = us-east-1\n"
    )
    config.chmod(0o600)
    return [
        "rclone",
        "--config",
        str(config),
        "mount",
        f"localoss:{source}",
        str(mountpoint),
        "--read-only",
        "--vfs-cache-mode",
        mode,
        "--cache-dir",
        str(work / "rclone-cache"),
        "--dir-cache-time",
        "1h",
    ]


def _s3fs(
    endpoint: str, creds: tuple[str, str], source: str, mountpoint: Path, work: Path, threads: int
) -> list[str]:
    passwd = work / "s3fs.passwd"
    passwd.write_text(f"{creds[0]}:{creds[1]}\n")
    passwd.chmod(0o600)
    bucket, _, prefix = source.partition("/")
    options = [
        f"passwd_file={passwd}",
        f"url={endpoint}",
        "use_path_request_style",
        "endpoint=us-east-1",
        "ro",
        f"parallel_count={threads}",
    ]
    return ["s3fs", f"{bucket}:/{prefix.rstrip('/')}", str(mountpoint), "-f", "-o", ",".join(options)]


def command_for(
    kind: str, endpoint: str, creds: tuple[str, str], source: str, mountpoint: Path, work: Path, threads: int
) -> list[str]:
    """The daemon's command line: ``kind`` is ``rclone-off``, ``rclone-full`` or ``s3fs``."""
    if kind.startswith("rclone-"):
        return _rclone(endpoint, creds, source, mountpoint, work, kind.removeprefix("rclone-"))
    if kind == "s3fs":
        return _s3fs(endpoint, creds, source, mountpoint, work, threads)
    raise ValueError(f"unknown FUSE contender {kind!r}; known: rclone-off, rclone-full, s3fs")


@contextlib.contextmanager
def mounted(
    kind: str, endpoint: str, creds: tuple[str, str], source: str, work: Path, threads: int
) -> Iterator[Mount]:
    """Mount ``source`` (``bucket/prefix/``) and yield once the mount point is live; unmount on exit.

    Raises:
        RuntimeError: the daemon exited or the mount did not appear within ``MOUNT_TIMEOUT_S``.
    """
    mountpoint = work / "mnt"
    mountpoint.mkdir(parents=True, exist_ok=True)
    command = command_for(kind, endpoint, creds, source, mountpoint, work, threads)
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    log = (work / f"{kind}.log").open("wb")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work)
    mount = Mount(proc, mountpoint, command)
    try:
        deadline = time.monotonic() + MOUNT_TIMEOUT_S
        while not os.path.ismount(mountpoint):
            if proc.poll() is not None:
                raise RuntimeError(
                    f"{command[0]} exited with {proc.returncode}; see {work / (kind + '.log')}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"{mountpoint} not mounted after {MOUNT_TIMEOUT_S:g} s by {command[0]}")
            time.sleep(0.005)
        yield mount
    finally:
        unmount = shutil.which("fusermount3") or shutil.which("fusermount") or "fusermount"
        if os.path.ismount(mountpoint):
            subprocess.run([unmount, "-u", str(mountpoint)], check=False, capture_output=True)
        try:
            proc.wait(timeout=UNMOUNT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            subprocess.run([unmount, "-uz", str(mountpoint)], check=False, capture_output=True)
        log.close()
