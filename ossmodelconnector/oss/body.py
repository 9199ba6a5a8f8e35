"""A ranged GET's body, from the socket into the caller's buffer, its CRC-64 folded as it lands.

::

    receive_into(resp, dest, crc, ...)      one step of the client's body loop (oss/client.py)
      kernel (plain HTTP with a Content-Length, ``bodyReceiver`` "kernel"):
        1. the bytes http.client read past the headers into its BufferedReader: resp.readinto
        2. the rest of the span: _fast.recv_into(resp.fileno(), ...), one GIL release for megabytes
        3. resp.length settled; at the body's end resp.read() closes the response, so the exchange
           sees it complete and the connection goes back to the pool
      python (HTTPS: the bytes on the descriptor are TLS records; chunked or unsized bodies;
              ``bodyReceiver`` "python"):
        resp.readinto(one piece), then crc64(piece): the GIL is taken back after every socket read

The status line and headers are always parsed by ``http.client``, once per request; only the body goes
through the kernel. Errors: the python path raises what the socket and ``http.client`` raise (translated
by ``Exchanger.translating``); the kernel raises ``RequestTimeoutError``/``RequestError`` whose ``range``
is ``(0, received)``, the part of ``dest`` that holds bytes of the body, so a retry resumes after them.
"""

from __future__ import annotations

import http.client

from ossmodelconnector._fast import crc64, recv_into
from ossmodelconnector.errors import RequestError

__all__ = ["can_use_kernel", "receive_into"]


def can_use_kernel(resp: http.client.HTTPResponse, cleartext: bool) -> bool:
    """Whether ``resp``'s body can go through the receive kernel: cleartext, sized, not chunked."""
    return cleartext and not resp.chunked and resp.length is not None and resp.fp is not None


def receive_into(
    resp: http.client.HTTPResponse,
    dest: memoryview,
    crc: int,
    *,
    kernel: bool,
    timeout_s: float,
    piece_bytes: int,
) -> tuple[int, int]:
    """Receive the next bytes of ``resp``'s body into ``dest`` (from its first byte).

    Args:
        resp: a response whose status and headers were read.
        dest: where the bytes go; the kernel fills it (up to the body's end), the python path one piece.
        crc: the CRC-64 of the body bytes before ``dest``.
        kernel: use the receive kernel (the caller checked :func:`can_use_kernel`).
        timeout_s: seconds of silence on the socket before a timeout (the kernel's; the socket has its own).
        piece_bytes: the most bytes one python-path step receives.

    Returns:
        ``(count, crc)``: bytes now in ``dest[:count]`` and the CRC-64 continued over them; ``count`` 0
        means the body ended.

    Raises:
        RequestTimeoutError, RequestError: from the kernel, ``range`` = ``(0, bytes kept in dest)``.
        OSError, http.client.HTTPException: from the python path.
    """
    if not kernel:
        piece = dest[:piece_bytes]
        got = resp.readinto(piece)
        return got, (crc64(piece[:got] if got < len(piece) else piece, crc) if got else crc)
    assert resp.length is not None
    span = min(len(dest), resp.length)
    if span == 0:
        return 0, crc
    buffered = 0
    # http.client read the headers through a BufferedReader, which may already hold body bytes; they are
    # no longer on the socket. peek() returns them without reading (or reads once if it holds none).
    ahead = len(resp.fp.peek())
    if ahead:
        buffered = resp.readinto(dest[: min(ahead, span)])  # also counts them off resp.length
        crc = crc64(dest[:buffered], crc)
    got = 0
    if buffered < span:
        try:
            got, crc = recv_into(resp.fileno(), dest[buffered:span], timeout_s, crc)
        except RequestError as exc:
            # The kernel's range is relative to the span it was given; ours to dest.
            exc.range = (0, buffered + (exc.range[1] if exc.range else 0))
            raise
        resp.length -= got
    if not resp.length:
        resp.read()  # reads nothing; marks the response complete (the connection is reusable)
    return buffered + got, crc
