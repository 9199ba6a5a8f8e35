"""The bare baseline client: ``http.client`` + ``readinto`` on keep-alive connections, nothing else.

No retries, no CRC, a hand-rolled OSS V1 signature: the fastest a Python client can move an object's bytes
over the loopback here (FACTS.md), so every loader is compared with it. ``read_object.py`` measures one
object with it, ``load_model.py`` a whole model (its transfer floor).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import queue
import threading
from collections.abc import Callable
from email.utils import formatdate
from urllib.parse import quote

DEFAULT_CHUNK = 8 << 20

Job = tuple[str, int, int, memoryview]
"""One ranged GET: ``(key, start, end, destination)``, the destination exactly ``end - start`` bytes."""


def run_threads(target: Callable[[], None], count: int) -> None:
    """Run ``target`` on ``count`` threads and re-raise the first error any of them hit."""
    errors: list[BaseException] = []

    def guarded() -> None:
        try:
            target()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def sign_v1(access_key_id: str, secret: str, bucket: str, key: str) -> dict[str, str]:
    """``Date`` and ``Authorization`` headers of an OSS V1 GET (``Range`` is not signed)."""
    date = formatdate(usegmt=True)
    to_sign = f"GET\n\n\n{date}\n/{bucket}/{key}"
    digest = hmac.new(secret.encode(), to_sign.encode(), hashlib.sha1).digest()
    return {"Date": date, "Authorization": f"OSS {access_key_id}:{base64.b64encode(digest).decode()}"}


def split(key: str, size: int, view: memoryview, chunk: int = DEFAULT_CHUNK) -> list[Job]:
    """The jobs that fetch object ``key`` of ``size`` bytes into ``view`` in ``chunk``-byte ranges."""
    bounds = [(lo, min(lo + chunk, size)) for lo in range(0, size, chunk)]
    return [(key, lo, hi, view[lo:hi]) for lo, hi in bounds]


def fetch(port: int, creds: tuple[str, str], bucket: str, jobs: list[Job], threads: int) -> None:
    """Run every job on ``threads`` keep-alive connections to ``127.0.0.1:port``, in the given order.

    Raises:
        AssertionError: a response was not 206 or its body was short.
    """
    work: queue.SimpleQueue[Job] = queue.SimpleQueue()
    for job in jobs:
        work.put(job)

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port)
        try:
            while True:
                try:
                    key, lo, hi, dest = work.get_nowait()
                except queue.Empty:
                    return
                headers = sign_v1(*creds, bucket, key)
                headers["Range"] = f"bytes={lo}-{hi - 1}"
                conn.request("GET", f"/{bucket}/{quote(key, safe='')}", headers=headers)
                resp = conn.getresponse()
                assert resp.status == 206, f"{key} [{lo}, {hi}): HTTP {resp.status}"
                got = 0
                while got < hi - lo:
                    n = resp.readinto(dest[got:])
                    assert n, f"{key} [{lo}, {hi}): short body after {got} bytes"
                    got += n
        finally:
            conn.close()

    run_threads(worker, threads)
