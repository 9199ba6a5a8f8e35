"""The OSS client: signed, pooled keep-alive requests, ranged GETs straight into the caller's buffer.

::

    get_into(bucket, key, start, end, dest)
      └─ attempt loop (retry.Attempts: backoff with full jitter, one credential refresh)
           └─ Exchanger.exchange (exchange.py): sign, pooled connection, request, status check
                └─ body (body.py): the receive kernel takes the socket's bytes straight into dest,
                   CRC-64 folded per piece, GIL released (HTTPS, chunked: HTTPResponse.readinto)
         a failed attempt resumes at the first missing byte; the CRC chain simply continues

What to ask and how often to try is decided here; carrying one request (and translating its foreign
errors, the one place that happens) is ``exchange.py``'s. Every HTTP request produces exactly one
request-log line and one ``requests`` count in :meth:`OssClient.stats`.
"""

from __future__ import annotations

import errno
import http.client
import logging
import os
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ossmodelconnector._fast import crc64
from ossmodelconnector.atomic_files import atomic_output
from ossmodelconnector.errors import (
    ClosedError,
    ConnectorError,
    IntegrityError,
    ObjectChangedError,
    RequestError,
    RequestTimeoutError,
)
from ossmodelconnector.objects import FetchInto, ObjectInfo
from ossmodelconnector.oss.body import can_use_kernel, receive_into
from ossmodelconnector.oss.exchange import Counters, Exchange, Exchanger, http_range
from ossmodelconnector.oss.request_log import NullAudit
from ossmodelconnector.oss.responses import (
    CODE_INCOMPLETE,
    ListPage,
    check_body_range,
    object_info_from_headers,
    parse_list_v2,
    where,
)
from ossmodelconnector.oss.retry import Attempts, RetryPolicy
from ossmodelconnector.oss.signing import Signer
from ossmodelconnector.oss.transport import Transport

if TYPE_CHECKING:
    from ossmodelconnector.config import Config
    from ossmodelconnector.oss.credentials import CredentialProvider
    from ossmodelconnector.oss.request_log import Audit
    from ossmodelconnector.oss.uri import Endpoint

__all__ = [
    "DEFAULT_LIST_MAX_KEYS",
    "DEFAULT_READ_PIECE_BYTES",
    "ListPage",
    "OssClient",
]

log = logging.getLogger(__name__)

DEFAULT_READ_PIECE_BYTES = 8 * 1024 * 1024
"""Bytes received per ``readinto`` before they are hashed, on the python body path (HTTPS, chunked,
``bodyReceiver`` "python"; the receive kernel folds 256 KiB pieces without the GIL).

Smaller pieces would hash bytes while they are still in the CPU cache, but each piece costs GIL
hand-offs between the reading threads, and those cost more: measured with 16 threads on 2 cores
(benchmarks/read_object.py), client CPU per GB was 0.61 s with 256 KiB pieces, 0.46 s with 2 MiB and
0.43 s with 8 MiB, against 0.32-0.37 s for a bare ``readinto`` loop without any CRC.
"""
DEFAULT_LIST_MAX_KEYS = 1000
"""Keys per ListObjectsV2 page (the most OSS returns)."""

_T = TypeVar("_T")


@dataclass(frozen=True)
class _RangeResult:
    crc: int
    object_crc: int | None


class OssClient:
    """A thread-safe OSS client on pooled keep-alive ``http.client`` connections.

    Args:
        endpoint: where to send requests (:func:`ossmodelconnector.oss.uri.parse_endpoint`).
        credentials: asked before every request (``get()``); ``invalidate()`` is called once when the
            server refuses the credentials, and the request is retried with fresh ones.
        config: timeouts, retry budget, connection count and signature version.
        audit: where to record one line per HTTP request; nothing is recorded when None. The caller
            keeps ownership (the client does not close it).
        retry: the retry policy; by default the one ``config`` describes.

    Example:
        >>> with OssClient(parse_endpoint("http://127.0.0.1:9000"), provider, load_config()) as client:
        ...     info = client.head_object("bucket", "model.safetensors")
        ...     buf = bytearray(info.size)
        ...     crc = client.get_into("bucket", info.key, 0, info.size, memoryview(buf), etag=info.etag)
    """

    def __init__(
        self,
        endpoint: Endpoint,
        credentials: CredentialProvider,
        config: Config,
        audit: Audit | None = None,
        *,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._endpoint = endpoint
        self._credentials = credentials
        self._config = config
        self._audit: Audit = audit if audit is not None else NullAudit()
        self._retry = retry if retry is not None else RetryPolicy.from_config(config)
        region = config.region or endpoint.region or ""
        self._signer = Signer(config.resolve_signature_version(region), region)
        self._piece = DEFAULT_READ_PIECE_BYTES
        self._kernel = config.body_receiver == "kernel"
        self._transport = Transport(
            endpoint.scheme,
            endpoint.port,
            connect_timeout_s=config.connect_timeout_s,
            read_timeout_s=config.read_timeout_s,
            max_idle=max(config.prefetch_connections, config.fast_list_requests) + 8,
        )
        self._lock = threading.Lock()
        self._counters = Counters()
        self._exchanger = Exchanger(
            endpoint, credentials, self._signer, self._transport, config, self._audit, self._counters
        )
        self._closed = False
        _LIVE_CLIENTS.add(self)

    # -- lifecycle -------------------------------------------------------------------------------------

    def __enter__(self) -> OssClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every pooled connection; later calls raise :class:`ClosedError`. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._transport.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"the OSS client for {self._endpoint} is closed: create a new OssClient")

    def __repr__(self) -> str:
        state = ", closed" if self._closed else ""
        return f"OssClient({self._endpoint}, signature {self._signer.version}{state})"

    @property
    def signature_version(self) -> str:
        """``"v1"`` or ``"v4"``: the signature this client sends."""
        return self._signer.version

    def stats(self) -> dict[str, int]:
        """Counters since the client was created (per process after a fork).

        Returns:
            ``requests`` (HTTP requests sent), ``retries`` (backoff retries), ``bytes`` (body bytes
            received into buffers), ``errors`` (requests that failed), ``credential_refreshes``,
            ``integrity_retries`` (whole small downloads repeated after a CRC mismatch),
            ``connections`` (TCP connections opened) and ``idle_connections`` (pooled now).
        """
        counters = self._counters.snapshot()
        counters["connections"] = self._transport.connections_created()
        counters["idle_connections"] = self._transport.idle_connections()
        return counters

    def _after_fork_in_child(self) -> None:
        # A lock held by another thread at fork time would never be released in the child; the
        # counters restart so that stats() describes this process (the pools restart in transport.py).
        self._lock = threading.Lock()
        self._counters.reset()

    def _attempts(self, method: str, bucket: str, key: str, rng: tuple[int, int] | None) -> Attempts:
        return Attempts(
            self._retry,
            method,
            where(bucket, key, rng),
            {"bucket": bucket, "key": key, "range": rng},
            check_open=self._check_open,
            refresh=self._credentials.invalidate,
            on_event=self._counters.add,
        )

    def _request(
        self,
        method: str,
        bucket: str,
        key: str,
        params: Mapping[str, str],
        handle: Callable[[http.client.HTTPResponse], _T],
    ) -> _T:
        tries = self._attempts(method, bucket, key, None)
        while True:
            tries.begin()
            try:
                with self._exchanger.exchange(method, bucket, key, params, {}, None) as exchange:
                    assert exchange.response is not None
                    return handle(exchange.response)
            except ConnectorError as err:
                tries.failed(err)

    # -- objects ---------------------------------------------------------------------------------------

    def head_object(self, bucket: str, key: str) -> ObjectInfo:
        """Size, ETag, modification time and CRC-64 of an object.

        Args:
            bucket: the bucket.
            key: the object key, literally.

        Returns:
            The object's :class:`ObjectInfo` (``crc64`` from ``x-oss-hash-crc64ecma`` when sent).

        Raises:
            ObjectNotFoundError: no such bucket or key.
            AccessDeniedError: the credentials may not read it.
            CredentialsError: the credentials were refused, even after re-reading them.
            RetriesExhaustedError: transient failures outlasted the retry budget.
            RequestTimeoutError: the server did not answer in time, on every attempt.
            ClosedError: the client is closed.
        """
        return self._request(
            "HEAD", bucket, key, {}, lambda resp: object_info_from_headers(bucket, key, resp.headers)
        )

    def get_into(
        self, bucket: str, key: str, start: int, end: int, dest: memoryview, *, etag: str | None = None
    ) -> int:
        """Read the bytes ``[start, end)`` of an object into ``dest``; return their CRC-64.

        The body goes from the socket into ``dest`` with no intermediate copy, and its CRC-64 is
        computed piece by piece as it arrives. A failed attempt (5xx, SlowDown, reset, timeout, short
        body) is retried from the first byte not yet received, with ``If-Match`` on the ETag of the
        first answer, so the bytes never mix two versions of the object.

        Args:
            bucket: the bucket.
            key: the object key, literally.
            start: first byte, ``>= 0``.
            end: one past the last byte, ``>= start`` (``end == start`` reads nothing).
            dest: a writable contiguous buffer of exactly ``end - start`` bytes.
            etag: the ETag to pin (``If-Match``): a different version fails instead of mixing in.

        Returns:
            The CRC-64 (``x-oss-hash-crc64ecma`` flavour) of the bytes now in ``dest``.

        Raises:
            ValueError: a negative or reversed range, or ``dest`` of the wrong size or read-only.
            ObjectChangedError: the object's ETag is not ``etag`` (HTTP 412); never retried.
            ObjectNotFoundError: no such bucket or key.
            RequestError: HTTP 416 (code ``InvalidRange``: the range is outside the object), or an
                answer whose Content-Range/Content-Length do not match the request.
            AccessDeniedError: the credentials may not read it.
            CredentialsError: the credentials were refused, even after re-reading them.
            RetriesExhaustedError: transient failures outlasted the retry budget (``__cause__`` is the
                last one).
            RequestTimeoutError: the last attempt timed out too.
            ClosedError: the client is closed.
        """
        return self._read_range(bucket, key, start, end, dest, etag).crc

    def make_fetch_into(self, info: ObjectInfo) -> FetchInto:
        """The ``fetch_into(start, end, dest) -> crc64`` callable for one object version.

        Args:
            info: the object; its ETag is pinned, so a rewrite surfaces as :class:`ObjectChangedError`.

        Returns:
            A callable bound to ``info.bucket``, ``info.key`` and ``info.etag`` (see :meth:`get_into`).
        """
        bucket, key, etag = info.bucket, info.key, info.etag or None

        def fetch_into(start: int, end: int, dest: memoryview) -> int:
            return self._read_range(bucket, key, start, end, dest, etag).crc

        return fetch_into

    def _read_range(
        self, bucket: str, key: str, start: int, end: int, dest: memoryview, etag: str | None
    ) -> _RangeResult:
        self._check_open()
        view = _byte_view(dest, start, end, bucket, key)
        size = end - start
        if size == 0:
            return _RangeResult(0, None)
        pos = 0
        crc = 0
        pinned = etag
        object_crc: int | None = None
        tries = self._attempts("GET", bucket, key, (start, end))
        piece_bytes = self._piece
        while True:
            tries.begin()
            first = start + pos
            headers = {"Range": http_range(first, end), "x-oss-range-behavior": "standard"}
            if pinned:
                headers["If-Match"] = pinned
            try:
                with self._exchanger.exchange("GET", bucket, key, {}, headers, (first, end)) as exchange:
                    resp = exchange.response
                    assert resp is not None
                    check_body_range(resp.status, resp.headers, first, end)
                    answered = resp.getheader("ETag")
                    if pinned is None:
                        pinned = answered
                    header_crc = resp.getheader("x-oss-hash-crc64ecma")
                    # Every answer must be of the pinned version: a server or proxy that ignores If-Match
                    # would otherwise hand over bytes of another version (the object's CRC-64 header
                    # tells the same for an ETag the server did not send).
                    if not same_version(pinned, answered, object_crc, header_crc):
                        raise _changed(bucket, key, (first, end), pinned, answered, exchange)
                    if header_crc:
                        object_crc = int(header_crc)
                    kernel = self._kernel and can_use_kernel(resp, exchange.cleartext)
                    while pos < size:
                        try:
                            got, crc = receive_into(
                                resp,
                                view[pos:],
                                crc,
                                kernel=kernel,
                                timeout_s=self._config.read_timeout_s,
                                piece_bytes=piece_bytes,
                            )
                        except RequestError as exc:
                            # The receive kernel failed; the bytes it kept are good: resume after them.
                            kept = exc.range[1] if exc.range else 0
                            crc = crc64(view[pos : pos + kept], crc)
                            pos += kept
                            exchange.nbytes += kept
                            raise _interrupted(bucket, key, first, end, start + pos, exchange, exc) from exc
                        if not got:
                            raise _short_body(bucket, key, first, end, start + pos, exchange)
                        pos += got
                        exchange.nbytes += got
                return _RangeResult(crc, object_crc)
            except ConnectorError as err:
                tries.failed(err)

    # -- small files -----------------------------------------------------------------------------------

    def _download_verified(self, info: ObjectInfo) -> bytearray:
        """The whole object in a new buffer, CRC-checked; a mismatch downloads it again (bounded)."""
        buf = bytearray(info.size)
        if info.size == 0:
            return buf
        attempt = 0
        while True:
            attempt += 1
            result = self._read_range(info.bucket, info.key, 0, info.size, memoryview(buf), info.etag or None)
            expected = info.crc64 if info.crc64 is not None else result.object_crc
            if expected is None or expected == result.crc:
                return buf
            error = IntegrityError(
                f"{info.uri}: the CRC-64 of the {info.size} bytes received is {result.crc}, the server's is "
                f"{expected}: the bytes were corrupted on the way; download again, and check the network "
                "or proxy if it repeats",
                bucket=info.bucket,
                key=info.key,
                range=(0, info.size),
                code="CrcMismatch",
            )
            if not self._retry.can_retry(attempt):
                raise error
            self._counters.add("integrity_retries")
            log.debug("%s: %s; downloading again", info.uri, error.code)

    def get_object_bytes(self, bucket: str, key: str) -> bytes:
        """A whole (small) object in memory, CRC-checked.

        Two requests: a HEAD for size, ETag and CRC, then one ranged GET pinned to that ETag.

        Args:
            bucket: the bucket.
            key: the object key, literally.

        Returns:
            The object's bytes.

        Raises:
            IntegrityError: the CRC-64 differed from the server's on every attempt.
            ObjectChangedError: the object was rewritten between the HEAD and the GET.
            RequestError: as :meth:`head_object` and :meth:`get_into`.
        """
        return bytes(self._download_verified(self.head_object(bucket, key)))

    def download_to_file(
        self, bucket: str, key: str, path: str | os.PathLike[str], info: ObjectInfo, *, fsync: bool = False
    ) -> None:
        """Download a (small) object to ``path`` atomically: all of it, CRC-checked, or nothing.

        The bytes go to a hidden temporary file (mode 0600, created ``O_EXCL``) in the same directory,
        which is renamed over ``path`` only when complete, its modification time already the object's
        ``Last-Modified``; on any error the temporary file is removed and ``path`` is untouched.

        Args:
            bucket: the bucket.
            key: the object key, literally.
            path: the destination file (its directory must exist).
            info: the object as listed or HEADed; its size, ETag (pinned) and CRC-64 (checked) are used.
            fsync: flush the file to the disk before the rename (slower; for crash safety).

        Raises:
            ValueError: ``info`` describes another object.
            IntegrityError: the CRC-64 differed from the server's on every attempt.
            ObjectChangedError: the object no longer has ``info.etag``.
            RequestError: as :meth:`get_into`.
            OSError: the file could not be written (disk full, permissions).
        """
        if (info.bucket, info.key) != (bucket, key):
            raise ValueError(
                f"info describes {info.uri}, not oss://{bucket}/{key}: pass the matching ObjectInfo"
            )
        data = self._download_verified(info)
        final = os.fspath(path)
        try:
            # 0600 like the cache segments: a model directory that existed with wider permissions
            # must not expose the configs and tokenizer to other users.
            # Last-Modified as its time before the rename: a cache keyed on mtime never sees another.
            with atomic_output(final, fsync=fsync, mtime_ns=info.mtime_ns) as out:
                out.write(data)
        except OSError as exc:
            # A bare "[Errno 28] No space left on device" names neither the file nor the fix.
            raise OSError(
                exc.errno,
                f"oss://{bucket}/{key}: writing its {info.size} bytes failed ({exc.strerror}); nothing was "
                f"left under the final name: {_write_fix(exc.errno)}",
                final,
            ) from exc

    # -- listing ---------------------------------------------------------------------------------------

    def list_page(
        self,
        bucket: str,
        prefix: str,
        *,
        delimiter: str = "",
        start_after: str = "",
        continuation_token: str = "",
        max_keys: int = DEFAULT_LIST_MAX_KEYS,
    ) -> ListPage:
        """One page of ListObjectsV2 (``encoding-type=url``; keys come back decoded).

        Args:
            bucket: the bucket.
            prefix: only keys starting with it ("" for all).
            delimiter: group keys by the next occurrence of it after the prefix ("" for none).
            start_after: only keys after it (lexicographically, by UTF-8 bytes).
            continuation_token: the previous page's ``next_token`` ("" for the first page).
            max_keys: keys (plus common prefixes) per page, 1..1000.

        Returns:
            The page; ``next_token`` is None on the last one.

        Raises:
            ValueError: ``max_keys`` outside 1..1000.
            ObjectNotFoundError: the bucket does not exist.
            RequestError: as :meth:`head_object`.
        """
        if not 1 <= max_keys <= DEFAULT_LIST_MAX_KEYS:
            raise ValueError(f"max_keys={max_keys} is outside 1..{DEFAULT_LIST_MAX_KEYS}")
        params = {"list-type": "2", "encoding-type": "url", "max-keys": str(max_keys)}
        for name, value in (
            ("prefix", prefix),
            ("delimiter", delimiter),
            ("start-after", start_after),
            ("continuation-token", continuation_token),
        ):
            if value:
                params[name] = value
        return self._request("GET", bucket, "", params, lambda resp: parse_list_v2(bucket, resp.read()))


def _byte_view(dest: Any, start: int, end: int, bucket: str, key: str) -> memoryview:
    if not 0 <= start <= end:
        raise ValueError(f"oss://{bucket}/{key}: byte range [{start}, {end}) is negative or reversed")
    view = memoryview(dest)
    if view.readonly:
        raise ValueError(f"oss://{bucket}/{key}: the destination buffer is read-only; pass a writable one")
    if not view.c_contiguous:
        raise ValueError(f"oss://{bucket}/{key}: the destination buffer is not contiguous")
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    if view.nbytes != end - start:
        raise ValueError(
            f"oss://{bucket}/{key}: the destination holds {view.nbytes} bytes but [{start}, {end}) is "
            f"{end - start}: pass a buffer of exactly end - start bytes"
        )
    return view


_WRITE_FIXES = {
    errno.ENOSPC: "free space there, or choose another directory",
    errno.EDQUOT: "free space within your disk quota there, or choose another directory",
    errno.EACCES: "fix the permissions of the directory, or choose another one",
    errno.EPERM: "fix the permissions of the directory, or choose another one",
    errno.EROFS: "the file system is read-only: choose a writable directory",
    errno.EMFILE: "this process has too many files open: raise its limit (ulimit -n) or close some",
    errno.ENFILE: "the system has too many files open: raise fs.file-max or close some",
}


def _write_fix(number: int | None) -> str:
    return _WRITE_FIXES.get(number or 0, "check the directory (space, permissions), or choose another one")


def same_version(pinned: str | None, answered: str | None, crc: int | None, answered_crc: str | None) -> bool:
    """Whether an answer is of the pinned object version, by its ETag and its ``x-oss-hash-crc64ecma``.

    ETags are compared without the weak prefix and quotes (a proxy may rewrite either); a missing ETag or
    CRC on either side proves nothing and is not held against the answer.
    """
    if pinned and answered and _bare_etag(pinned) != _bare_etag(answered):
        return False
    return crc is None or not answered_crc or not answered_crc.isdigit() or int(answered_crc) == crc


def _bare_etag(etag: str) -> str:
    etag = etag.strip()
    return (etag[2:] if etag.startswith("W/") else etag).strip('"')


def _changed(
    bucket: str, key: str, rng: tuple[int, int], pinned: str | None, answered: str | None, exchange: Exchange
) -> ObjectChangedError:
    return ObjectChangedError(
        f"{where(bucket, key, rng)} changed while it was being read: this answer is of ETag {answered}, the "
        f"read began on {pinned} (the server or a proxy ignored If-Match); none of its bytes were kept: "
        "open the object again to read the new version",
        bucket=bucket,
        key=key,
        range=rng,
        status=exchange.status,
        code="ETagMismatch",
        request_id=exchange.request_id,
    )


def _short_body(
    bucket: str, key: str, first: int, end: int, reached: int, exchange: Exchange
) -> RequestError:
    return RequestError(
        f"{where(bucket, key, (first, end))}: the body ended after {reached - first} of {end - first} bytes; "
        "retried from the first missing byte",
        bucket=bucket,
        key=key,
        range=(first, end),
        status=exchange.status,
        code=CODE_INCOMPLETE,
        request_id=exchange.request_id,
    )


def _interrupted(
    bucket: str, key: str, first: int, end: int, reached: int, exchange: Exchange, cause: RequestError
) -> RequestError:
    # The receive kernel's error (``_fast``) knows the socket, not the object: name it here.
    kind = RequestTimeoutError if isinstance(cause, RequestTimeoutError) else RequestError
    return kind(
        f"{where(bucket, key, (first, end))}: {cause.message}, {reached - first} of {end - first} bytes in; "
        "retried from the first missing byte",
        bucket=bucket,
        key=key,
        range=(first, end),
        status=exchange.status,
        code=cause.code,
        request_id=exchange.request_id,
    )


_LIVE_CLIENTS: weakref.WeakSet[OssClient] = weakref.WeakSet()


def _reset_in_child() -> None:
    for client in list(_LIVE_CLIENTS):
        client._after_fork_in_child()


os.register_at_fork(after_in_child=_reset_in_child)
