"""Start ``localoss`` in a real subprocess on 127.0.0.1 and talk to its folder.

Used by the pytest fixtures in ``tests/conftest.py`` and by the benchmarks; no network mocks anywhere.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_ACCESS_KEY_ID = "localoss-access-key"
DEFAULT_ACCESS_KEY_SECRET = "localoss-secret-key"
STARTUP_TIMEOUT_S = 30.0


@dataclass
class LocalOss:
    """A running ``localoss`` process and the folder it serves."""

    endpoint: str
    root: Path
    proc: subprocess.Popen[bytes]
    access_key_id: str = DEFAULT_ACCESS_KEY_ID
    access_key_secret: str = DEFAULT_ACCESS_KEY_SECRET
    args: tuple[str, ...] = field(default_factory=tuple)

    @property
    def port(self) -> int:
        return int(self.endpoint.rsplit(":", 1)[1])

    def put_file(self, bucket: str, key: str, data: bytes) -> Path:
        """Place an object straight into the served folder (the server indexes it on first access)."""
        path = self.root / bucket / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def make_bucket(self, bucket: str) -> Path:
        path = self.root / bucket
        path.mkdir(parents=True, exist_ok=True)
        return path

    def stop(self) -> int:
        """SIGTERM the server and return its exit code (0 when it shut down cleanly)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


def start_localoss(root: Path, *args: str, port: int = 0) -> LocalOss:
    """Start ``python -m ossmodelconnector.localoss --root ROOT --port PORT ARGS...`` and wait until it serves."""
    root.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "ossmodelconnector.localoss", "--root", str(root), "--port", str(port), *args]
    # The server always runs on the fastest CRC backend, even when a test run forces the Python twins.
    env = {k: v for k, v in os.environ.items() if k != "OSSMODELCONNECTOR_PUREPYTHON"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env={**env, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([proc.stdout], [], [], max(remaining, 0))
        if not ready or proc.poll() is not None and not line:
            proc.kill()
            raise RuntimeError(f"localoss did not print its endpoint within {STARTUP_TIMEOUT_S}s: {cmd}")
        chunk = os.read(proc.stdout.fileno(), 1)
        if not chunk:
            raise RuntimeError(f"localoss exited with {proc.wait()} before printing its endpoint: {cmd}")
        line += chunk
    endpoint = line.decode().strip()
    if not endpoint.startswith("http://127.0.0.1:"):
        proc.kill()
        raise RuntimeError(f"localoss printed {endpoint!r}, not an endpoint")
    server = LocalOss(endpoint=endpoint, root=root, proc=proc, args=tuple(args))
    for flag, attr in (("--access-key-id", "access_key_id"), ("--access-key-secret", "access_key_secret")):
        if flag in args:
            setattr(server, attr, args[args.index(flag) + 1])
    _wait_until_accepting(server.port, deadline)
    return server


def _wait_until_accepting(port: int, deadline: float) -> None:
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
