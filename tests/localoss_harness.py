"""Start ``localoss`` in a real subprocess on 127.0.0.1 and talk to its folder.

Used by the pytest fixtures in ``tests/conftest.py`` and by the benchmarks; no network mocks anywhere.
"""

from __future__ import annotations

import http.client
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import quote

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
    launcher: tuple[str, ...] = field(default_factory=tuple)

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

    def kill(self) -> None:
        """SIGKILL the server, as a crash would: open connections are cut, nothing is flushed."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def restart(self, *args: str) -> LocalOss:
        """Start a new server on the same port and folder (``args``: other flags, default the same ones).

        The caller stops the returned server; this one must have exited first (``kill`` or ``stop``).
        """
        assert self.proc.poll() is not None, "stop or kill the running server first"
        return start_localoss(self.root, *(args or self.args), port=self.port, launcher=self.launcher)

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


def start_localoss(
    root: Path,
    *args: str,
    port: int = 0,
    stderr: int | IO[bytes] | None = None,
    launcher: Sequence[str] = (),
) -> LocalOss:
    """Start ``python -m ossmodelconnector.localoss --root ROOT --port PORT ARGS...``; wait until it serves.

    ``stderr`` (a file or ``subprocess.DEVNULL``) receives the server's log; by default it is inherited.
    ``launcher`` prefixes the command, e.g. ``("nsenter", "--net=/run/netns/NS")`` to serve inside a
    network namespace (then ``args`` give ``--host ADDR``; the server listens before it prints its
    endpoint, so the printed line is the readiness signal there).
    """
    root.mkdir(parents=True, exist_ok=True)
    cmd = [
        *launcher,
        sys.executable,
        "-m",
        "ossmodelconnector.localoss",
        "--root",
        str(root),
        "--port",
        str(port),
        *args,
    ]
    # The server always runs on the fastest CRC backend, even when a test run forces the Python twins.
    env = {
        k: v for k, v in os.environ.items() if k not in ("OSSMC_PUREPYTHON", "OSSMODELCONNECTOR_PUREPYTHON")
    }
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, env={**env, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([proc.stdout], [], [], max(remaining, 0))
        if not ready:  # an exited server makes stdout readable (EOF): reported below with its code
            _discard(proc)
            raise RuntimeError(f"localoss did not print its endpoint within {STARTUP_TIMEOUT_S}s: {cmd}")
        chunk = os.read(proc.stdout.fileno(), 1)
        if not chunk:
            raise RuntimeError(f"localoss exited with {_discard(proc)} before printing its endpoint: {cmd}")
        line += chunk
    endpoint = line.decode().strip()
    if not endpoint.startswith("http://127.0.0.1:" if not launcher else "http://"):
        _discard(proc)
        raise RuntimeError(f"localoss printed {endpoint!r}, not an endpoint")
    server = LocalOss(endpoint=endpoint, root=root, proc=proc, args=tuple(args), launcher=tuple(launcher))
    for flag, attr in (("--access-key-id", "access_key_id"), ("--access-key-secret", "access_key_secret")):
        if flag in args:
            setattr(server, attr, args[args.index(flag) + 1])
    if not launcher:  # from here only 127.0.0.1 is reachable
        _wait_until_accepting(server.port, deadline)
    return server


def _discard(proc: subprocess.Popen[bytes]) -> int:
    """Kill a server that failed to start, reap it, close its pipe; returns its exit code."""
    if proc.poll() is None:
        proc.kill()
    code = proc.wait(timeout=STARTUP_TIMEOUT_S)
    if proc.stdout is not None:
        proc.stdout.close()
    return code


def _wait_until_accepting(port: int, deadline: float) -> None:
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@dataclass
class RawResponse:
    """What a raw HTTP exchange returned: status, headers (names lower-cased) and the whole body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def signed_headers(
    server: LocalOss,
    method: str,
    bucket: str | None,
    key: str | None = None,
    *,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> dict[str, str]:
    """Headers signed with OSS V1 by oss2's own signer (``oss2.Auth``), ready for ``http.client``."""
    import oss2  # test dependency; imported here so the harness stays importable without it

    req = oss2.http.Request(method, "http://unused/", params=params or {}, headers=dict(headers or {}))
    auth = oss2.Auth(server.access_key_id, server.access_key_secret)
    auth._sign_request(req, bucket or "", key or "")
    return {name: value for name, value in req.headers.items() if name.lower() != "accept-encoding"}


def encode_query(params: dict[str, str] | None) -> str:
    """``name=value&flag`` with values percent-encoded the way oss2 does (sub-resources without '=')."""
    if not params:
        return ""
    parts = [quote(n, safe="") + (f"={quote(v, safe='')}" if v != "" else "") for n, v in params.items()]
    return "?" + "&".join(parts)


def raw_request(
    server: LocalOss,
    method: str,
    bucket: str | None,
    key: str | None = None,
    *,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    body: bytes = b"",
    path: str | None = None,
    conn: http.client.HTTPConnection | None = None,
    sign: bool = True,
) -> RawResponse:
    """Send one request with ``http.client`` (signed with OSS V1 unless ``sign=False``) and read it whole.

    ``path`` overrides the request-line path (still signed for ``bucket``/``key``), e.g. to send
    ``/bucket/%2e%2e/x``; ``conn`` reuses a keep-alive connection.
    """
    sent = dict(headers or {})
    if sign:
        sent = signed_headers(server, method, bucket, key, headers=sent, params=params)
    if path is None:
        path = "/" if bucket is None else f"/{bucket}/" + (quote(key, safe="/") if key else "")
    own = conn is None
    connection = conn or http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        connection.request(method, path + encode_query(params), body=body or None, headers=sent)
        resp = connection.getresponse()
        data = resp.read()
        return RawResponse(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        if own:
            connection.close()
