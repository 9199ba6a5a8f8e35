"""How fast does localoss serve an object, compared with bare sendfile over loopback on the same machine?

Question: is the local OSS server ever what limits a client? Measured in one run, against a 1 GiB object
of random bytes in a temporary root, with the server in a subprocess (sharing the cores, as later):

(a) one connection: GET of the whole object, ``http.client`` ``readinto`` into a preallocated buffer;
(b) 16 keep-alive connections taking 8 MiB ranged GETs from a shared queue, into one buffer;
(c) the bare baseline: a subprocess doing ``os.sendfile`` of the same file over 127.0.0.1 to a client doing
    ``recv_into`` into the same buffer, 1 stream (whole file) and 16 streams (same 8 MiB queue);
(d) localoss with ``--conn-bandwidth-mibps 100``, 16 connections: achieved rate / (16 x 100 MiB/s);
(e) listing 20,000 keys (dropped into the folder) in pages of 1000 with ListObjectsV2, first time (the
    server computes every ETag and CRC) and warm, against walking and stat-ing the same folder.

Every figure is the median of ``--reps`` repetitions after one warm-up round (interleaved, so noise hits
all alike) and every result is checked byte for byte.
Run: ``.venv/bin/python benchmarks/server_throughput.py``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import http.client
import os
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from email.utils import formatdate
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import markdown_table, median, write_section
from localoss_harness import LocalOss, start_localoss

MIB = 1 << 20
BUCKET = "bench"
KEY = "weights/model-00001.bin"


def sign_v1(server: LocalOss, method: str, bucket: str, key: str, subresource: str = "") -> dict[str, str]:
    """OSS V1 headers for a request without body (the string to sign of oss2.Auth).

    ``subresource`` is the signed part of the query, e.g. ``continuation-token=...`` (decoded).
    """
    date = formatdate(usegmt=True)
    to_sign = f"{method}\n\n\n{date}\n/{bucket}/{key}" + (f"?{subresource}" if subresource else "")
    digest = hmac.new(server.access_key_secret.encode(), to_sign.encode(), hashlib.sha1).digest()
    return {"Date": date, "Authorization": f"OSS {server.access_key_id}:{base64.b64encode(digest).decode()}"}


def ranges(size: int, step: int) -> list[tuple[int, int]]:
    return [(start, min(start + step, size)) for start in range(0, size, step)]


# -- localoss clients ------------------------------------------------------------------------------------


def get_whole(server: LocalOss, buf: memoryview) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port)
    conn.request("GET", f"/{BUCKET}/{KEY}", headers=sign_v1(server, "GET", BUCKET, KEY))
    resp = conn.getresponse()
    assert resp.status == 200, resp.status
    got = 0
    while got < len(buf):
        n = resp.readinto(buf[got:])
        assert n, "short body"
        got += n
    conn.close()


def get_ranges(server: LocalOss, buf: memoryview, streams: int, step: int) -> None:
    work: queue.SimpleQueue[tuple[int, int]] = queue.SimpleQueue()
    for item in ranges(len(buf), step):
        work.put(item)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", server.port)
            while True:
                try:
                    start, end = work.get_nowait()
                except queue.Empty:
                    break
                headers = sign_v1(server, "GET", BUCKET, KEY)
                headers["Range"] = f"bytes={start}-{end - 1}"
                conn.request("GET", f"/{BUCKET}/{KEY}", headers=headers)
                resp = conn.getresponse()
                assert resp.status == 206, resp.status
                got = start
                while got < end:
                    n = resp.readinto(buf[got:end])
                    assert n, "short body"
                    got += n
            conn.close()
        except BaseException as exc:
            errors.append(exc)

    run_threads(worker, streams)
    if errors:
        raise errors[0]


def run_threads(target: Callable[[], None], count: int) -> None:
    threads = [threading.Thread(target=target) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


# -- bare loopback baseline ------------------------------------------------------------------------------


def bare_server(path: str) -> None:
    """Serve ``offset length\\n`` requests with os.sendfile of ``path``; prints the port first."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    print(listener.getsockname()[1], flush=True)
    fd = os.open(path, os.O_RDONLY)

    def serve(sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rfile = sock.makefile("rb")
        with sock, rfile:
            for line in rfile:
                offset, count = map(int, line.split())
                while count:
                    sent = os.sendfile(sock.fileno(), fd, offset, count)
                    offset += sent
                    count -= sent

    while True:
        sock, _ = listener.accept()
        threading.Thread(target=serve, args=(sock,), daemon=True).start()


def bare_fetch(port: int, buf: memoryview, streams: int, step: int) -> None:
    work: queue.SimpleQueue[tuple[int, int]] = queue.SimpleQueue()
    for item in ranges(len(buf), step):
        work.put(item)

    def worker() -> None:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while True:
                try:
                    start, end = work.get_nowait()
                except queue.Empty:
                    return
                sock.sendall(f"{start} {end - start}\n".encode())
                got = start
                while got < end:
                    n = sock.recv_into(buf[got:end])
                    assert n, "bare server closed early"
                    got += n

    run_threads(worker, streams)


# -- driver ----------------------------------------------------------------------------------------------


def list_all(server: LocalOss, bucket: str) -> list[str]:
    """Every key of ``bucket`` through ListObjectsV2 pages of 1000, over one keep-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port)
    keys: list[str] = []
    token = ""
    while True:
        query = "list-type=2&max-keys=1000" + (f"&continuation-token={token}" if token else "")
        signed = f"continuation-token={token}" if token else ""
        conn.request("GET", f"/{bucket}/?{query}", headers=sign_v1(server, "GET", bucket, "", signed))
        root = ET.fromstring(conn.getresponse().read())
        keys += [node.text or "" for node in root.iter("Key")]
        if root.findtext("IsTruncated") != "true":
            conn.close()
            return keys
        token = root.findtext("NextContinuationToken") or ""


def walk_and_stat(folder: Path) -> list[str]:
    """The bare baseline of a listing: every file under ``folder`` with its stat, sorted."""
    found = []
    for top, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(top, name)
            os.stat(path)
            found.append(os.path.relpath(path, folder))
    return sorted(found)


def timed(fn: Callable[[], None], size: int) -> float:
    started = time.perf_counter()
    fn()
    return size / (time.perf_counter() - started) / 1e9


def measure_listing(server: LocalOss, root: Path, count: int, reps: int) -> str:
    keys = sorted(f"shard{i % 20:02d}/part-{i:06d}.bin" for i in range(count))
    folder = root / "listing"
    for key in keys:
        path = folder / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(key.encode())
    time.sleep(0.1)  # let the folder age past the server's racy-timestamp window
    started = time.perf_counter()
    assert list_all(server, "listing") == keys
    first_s = time.perf_counter() - started
    warm, bare = [], []
    for _ in range(reps):
        started = time.perf_counter()
        assert list_all(server, "listing") == keys
        warm.append(time.perf_counter() - started)
        started = time.perf_counter()
        assert walk_and_stat(folder) == keys
        bare.append(time.perf_counter() - started)
    pages = -(-count // 1000)
    return markdown_table(
        ["listing", "first (hashes every file) s", "warm s", "warm ms/page", "walk+stat s", "warm / walk"],
        [
            [
                f"{count} keys, ListObjectsV2 pages of 1000",
                f"{first_s:.2f}",
                f"{median(warm):.2f}",
                f"{median(warm) / pages * 1000:.1f}",
                f"{median(bare):.3f}",
                f"{median(warm) / median(bare):.1f}",
            ]
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--range-mib", type=int, default=8)
    parser.add_argument("--conn-bandwidth-mibps", type=float, default=100.0)
    parser.add_argument("--list-keys", type=int, default=20000)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    parser.add_argument("--bare-server", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_server:
        bare_server(args.bare_server)
        return

    load_start = os.getloadavg()[0]
    size = args.size_mib * MIB
    step = args.range_mib * MIB
    tmp = Path(tempfile.mkdtemp(prefix="localoss-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    servers: list[LocalOss] = []
    try:
        root = tmp / "root"
        data = np.random.default_rng(1234).integers(0, 256, size=size, dtype=np.uint8)
        obj = root / BUCKET / KEY
        obj.parent.mkdir(parents=True)
        data.tofile(obj)
        expected = hashlib.md5(data).hexdigest().upper()
        buf = np.zeros(size, dtype=np.uint8)  # touched now, so page faults stay out of the timings
        view = memoryview(buf)

        server = start_localoss(root)
        servers.append(server)
        throttled = start_localoss(root, "--conn-bandwidth-mibps", str(args.conn_bandwidth_mibps))
        servers.append(throttled)
        for srv in servers:
            # The first access computes the ETag and CRC-64 (once); keep it out of the timings.
            conn = http.client.HTTPConnection("127.0.0.1", srv.port)
            conn.request("HEAD", f"/{BUCKET}/{KEY}", headers=sign_v1(srv, "HEAD", BUCKET, KEY))
            etag = conn.getresponse().getheader("ETag")
            assert etag == f'"{expected}"', (etag, expected)
            conn.close()

        bare = subprocess.Popen([sys.executable, __file__, "--bare-server", str(obj)], stdout=subprocess.PIPE)
        procs.append(bare)
        assert bare.stdout is not None
        bare_port = int(bare.stdout.readline())

        def check() -> None:
            assert np.array_equal(buf, data), "bytes differ"
            buf[:] = 0

        cases: dict[str, Callable[[], None]] = {
            "bare1": lambda: bare_fetch(bare_port, view, 1, size),
            "oss1": lambda: get_whole(server, view),
            "bareN": lambda: bare_fetch(bare_port, view, args.streams, step),
            "ossN": lambda: get_ranges(server, view, args.streams, step),
            "throttled": lambda: get_ranges(throttled, view, args.streams, step),
        }
        results: dict[str, list[float]] = {name: [] for name in cases}
        for rep in range(args.reps + 1):
            for name, case in cases.items():
                rate = timed(case, size)
                check()
                if rep:  # round 0 warms caches, connections and threads: not counted
                    results[name].append(rate)
            if rep:
                print(f"rep {rep}/{args.reps}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in results.items()))

        med = {name: median(values) for name, values in results.items()}
        cap = args.streams * args.conn_bandwidth_mibps * MIB / 1e9
        rows = [
            [
                "1 connection, whole object",
                f"{med['bare1']:.2f}",
                f"{med['oss1']:.2f}",
                f"{med['oss1'] / med['bare1']:.2f}",
            ],
            [
                f"{args.streams} connections, {args.range_mib} MiB ranges",
                f"{med['bareN']:.2f}",
                f"{med['ossN']:.2f}",
                f"{med['ossN'] / med['bareN']:.2f}",
            ],
        ]
        table = markdown_table(["case", "bare sendfile GB/s", "localoss GB/s", "localoss / bare"], rows)
        listing_table = measure_listing(server, root, args.list_keys, args.reps)
        throttle_table = markdown_table(
            [
                "case",
                "cap GB/s",
                "achieved GB/s",
                "achieved / cap",
                "unthrottled GB/s",
                "achieved / min(cap, unthrottled)",
            ],
            [
                [
                    f"--conn-bandwidth-mibps {args.conn_bandwidth_mibps:g}, {args.streams} connections",
                    f"{cap:.3f}",
                    f"{med['throttled']:.3f}",
                    f"{med['throttled'] / cap:.2f}",
                    f"{med['ossN']:.3f}",
                    f"{med['throttled'] / min(cap, med['ossN']):.2f}",
                ]
            ],
        )
        body = (
            f"A {args.size_mib} MiB object of random bytes; localoss and the bare sendfile server run as "
            f"subprocesses on the same cores as the client; median of {args.reps} interleaved repetitions, "
            "bytes checked after every run. Bare = `os.sendfile` over a 127.0.0.1 socket to `recv_into`, "
            "the same 8 MiB range queue for the multi-stream case. "
            f"Load average (1 min) at start / end: {load_start:.1f} / {os.getloadavg()[0]:.1f} "
            "(other work shares this machine; compare ratios, not absolute figures).\n\n"
            f"{table}\n\n{throttle_table}\n\n{listing_table}\n"
        )
        for text in (table, throttle_table, listing_table):
            print()
            print(text)
        if not args.no_write:
            write_section("server_throughput", body)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        for srv in servers:
            code = srv.stop()
            if code != 0:
                print(f"warning: localoss exited with {code}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
