"""Programs a simulated node runs (``python tests/fleet_node_programs.py COMMAND ...``), one JSON line out.

Used by tests/integration/test_fleet_net.py and benchmarks/fleet_links.py through ``SimulatedFleet.popen``:

* ``get ENDPOINT BUCKET KEY``: one OSS V1-signed GET of the whole object (credentials from
  ``OSS_ACCESS_KEY_ID``/``OSS_ACCESS_KEY_SECRET``), read into a preallocated buffer -> status, bytes,
  sha256, seconds.
* ``mesh ADDR PORT PEER...``: listen on ADDR:PORT, then connect to every ``PEER`` (``addr:port``), send
  our address, read theirs back -> the addresses each peer answered with; serves until every peer came.
* ``receive ADDR PORT`` / ``send ADDR PORT MIB``: one TCP stream of MIB MiB -> bytes, sha256, seconds.
* ``gloo MODE BROADCAST_MIB``: a gloo group from RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT; MODE ``env``
  relies on GLOO_SOCKET_IFNAME, ``device`` passes ``create_device(hostname=NODE_ADDRESS)``; all_reduce of
  rank+1 and a broadcast from rank 0 of seeded random bytes -> sum, sha256 of what arrived.

Every wait is bounded (``FLEET_NODE_TIMEOUT_S``, default 60 s).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import json
import os
import socket
import sys
import threading
import time
from email.utils import formatdate
from urllib.parse import urlsplit

TIMEOUT_S = float(os.environ.get("FLEET_NODE_TIMEOUT_S", "60"))
MIB = 1 << 20


def _emit(result: dict[str, object]) -> None:
    print(json.dumps(result), flush=True)


def get(endpoint: str, bucket: str, key: str) -> None:
    key_id = os.environ["OSS_ACCESS_KEY_ID"]
    secret = os.environ["OSS_ACCESS_KEY_SECRET"]
    date = formatdate(usegmt=True)
    to_sign = f"GET\n\n\n{date}\n/{bucket}/{key}"
    signature = base64.b64encode(hmac.new(secret.encode(), to_sign.encode(), hashlib.sha1).digest()).decode()
    url = urlsplit(endpoint)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=TIMEOUT_S)
    start_wall = time.time()  # one clock for every node of the machine: to measure nodes pulling together
    start = time.perf_counter()
    conn.request(
        "GET", f"/{bucket}/{key}", headers={"Date": date, "Authorization": f"OSS {key_id}:{signature}"}
    )
    resp = conn.getresponse()
    first_byte = time.perf_counter() - start
    length = int(resp.getheader("Content-Length") or 0)
    # One reused buffer: a fresh 256 MiB destination costs a page fault per 4 KiB on the receiving node,
    # which on 2 shared cores held a GET through a 200 MiB/s cap to 0.8-0.9 of it (0.99 with this buffer).
    buffer = memoryview(bytearray(4 * MIB))
    digest = hashlib.sha256()
    got = 0
    while got < length:
        n = resp.readinto(buffer)
        if not n:
            break
        digest.update(buffer[:n])
        got += n
    seconds = time.perf_counter() - start
    if resp.status != 200:
        digest = hashlib.sha256(resp.read())
    conn.close()
    _emit(
        {
            "status": resp.status,
            "bytes": got,
            "sha256": digest.hexdigest(),
            "seconds": seconds,
            "first_byte_seconds": first_byte,
            "start_wall": start_wall,
            "end_wall": start_wall + seconds,
        }
    )


def _connect(host: str, port: int, deadline: float) -> socket.socket:
    while True:
        try:
            return socket.create_connection((host, port), timeout=max(deadline - time.monotonic(), 0.1))
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"peer closed after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


def mesh(address: str, port: int, peers: list[str]) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    listener = socket.create_server((address, port))
    listener.settimeout(TIMEOUT_S)

    def serve() -> None:  # every peer connects to us once, while we connect to them
        for _ in peers:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(TIMEOUT_S)
                _recv_exactly(conn, 64)
                conn.sendall(address.encode().ljust(64))

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    answers: dict[str, str] = {}
    for peer in peers:
        host, peer_port = peer.rsplit(":", 1)
        with _connect(host, int(peer_port), deadline) as sock:
            sock.sendall(address.encode().ljust(64))
            answers[peer] = _recv_exactly(sock, 64).decode().strip()
    server.join(max(deadline - time.monotonic(), 0))
    listener.close()
    _emit({"answers": answers, "served_all": not server.is_alive()})


def receive(address: str, port: int) -> None:
    listener = socket.create_server((address, port))
    listener.settimeout(TIMEOUT_S)
    _emit({"listening": True})
    conn, _ = listener.accept()
    conn.settimeout(TIMEOUT_S)
    digest = hashlib.sha256()
    buffer = bytearray(4 * MIB)
    total = 0
    start = None
    while True:
        n = conn.recv_into(buffer)
        if start is None:
            start = time.perf_counter()
        if not n:
            break
        digest.update(memoryview(buffer)[:n])
        total += n
    seconds = time.perf_counter() - (start or time.perf_counter())
    conn.close()
    listener.close()
    _emit({"bytes": total, "sha256": digest.hexdigest(), "seconds": seconds})


def payload(mib: int) -> bytes:
    """The bytes ``send`` sends: deterministic, so the receiver's sha256 can be checked."""
    return (hashlib.sha256(b"fleet").digest() * (MIB // 32)) * mib


def send(host: str, port: int, mib: int) -> None:
    data = payload(mib)
    deadline = time.monotonic() + TIMEOUT_S
    with _connect(host, port, deadline) as sock:
        sock.settimeout(TIMEOUT_S)
        start_wall = time.time()  # one clock for every node of the machine: to measure streams together
        start = time.perf_counter()
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        sock.recv(1)  # the receiver closes after reading everything
        seconds = time.perf_counter() - start
    _emit(
        {"bytes": len(data), "seconds": seconds, "start_wall": start_wall, "end_wall": start_wall + seconds}
    )


def gloo(mode: str, broadcast_mib: int) -> None:
    import datetime

    import numpy as np
    import torch
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    timeout = datetime.timedelta(seconds=TIMEOUT_S)
    if rank == 0:
        data = torch.from_numpy(
            np.random.default_rng(1234).integers(0, 256, broadcast_mib * MIB, dtype=np.uint8)
        )
    else:
        data = torch.zeros(broadcast_mib * MIB, dtype=torch.uint8)
    total = torch.tensor([rank + 1], dtype=torch.int64)
    if mode == "env":  # init_process_group; gloo picks the NIC named by GLOO_SOCKET_IFNAME
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timeout)
        dist.all_reduce(total)
        start = time.perf_counter()
        dist.broadcast(data, src=0)
        seconds = time.perf_counter() - start
        dist.destroy_process_group()
    else:  # a group object with an explicit device (init_process_group ignores pg_options for gloo)
        store = dist.TCPStore(
            os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, rank == 0, timeout=timeout
        )
        options = dist.ProcessGroupGloo._Options()
        options._timeout = timeout
        options._devices = [dist.ProcessGroupGloo.create_device(hostname=os.environ["NODE_ADDRESS"])]
        group = dist.ProcessGroupGloo(store, rank, world, options)
        group.allreduce([total]).wait(timeout)
        start = time.perf_counter()
        broadcast = dist.BroadcastOptions()
        broadcast.rootRank = 0
        group.broadcast([data], broadcast).wait(timeout)
        seconds = time.perf_counter() - start
    _emit(
        {
            "sum": int(total.item()),
            "sha256": hashlib.sha256(data.numpy().tobytes()).hexdigest(),
            "seconds": seconds,
        }
    )


def main(argv: list[str]) -> None:
    command, *args = argv
    if command == "get":
        get(*args)
    elif command == "mesh":
        mesh(args[0], int(args[1]), args[2:])
    elif command == "receive":
        receive(args[0], int(args[1]))
    elif command == "send":
        send(args[0], int(args[1]), int(args[2]))
    elif command == "gloo":
        gloo(args[0], int(args[1]))
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
