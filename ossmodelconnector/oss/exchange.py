"""One HTTP request to OSS: signed, sent on a pooled connection, its errors translated, counted, recorded.

::

    Exchanger.exchange(method, bucket, key, params, headers, rng) -> Exchange (a context manager)
        credentials.get() -> Signer.sign -> pool.acquire() -> request -> response
        status not 200/206 -> the OSS error (responses.error_for_status), raised inside the block
        block ends with the body read -> the connection goes back to the pool; otherwise it is closed
        always: one ``requests`` count and one request-log line

This is the one place where foreign errors (sockets, ``http.client``, TLS, XML) become the package's
errors: :meth:`Exchanger.translating` is that boundary, always ``raise ... from exc``. The client
(``oss/client.py``) decides what to ask and retries; this module only carries one exchange.
"""

from __future__ import annotations

import http.client
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote
from xml.etree.ElementTree import ParseError

from ossmodelconnector._version import __version__
from ossmodelconnector.errors import (
    ConnectorError,
    CredentialsError,
    RequestError,
    RequestTimeoutError,
)
from ossmodelconnector.oss.responses import (
    CODE_CONNECTION,
    CODE_INCOMPLETE,
    CODE_INVALID_RESPONSE,
    CODE_TIMEOUT,
    CODE_TLS,
    CODE_UNKNOWN_HOST,
    ErrorDetails,
    error_for_status,
    parse_error,
    where,
)

if TYPE_CHECKING:
    from ossmodelconnector.config import Config
    from ossmodelconnector.oss.credentials import CredentialProvider
    from ossmodelconnector.oss.request_log import Audit
    from ossmodelconnector.oss.signing import Signer
    from ossmodelconnector.oss.transport import Transport
    from ossmodelconnector.oss.uri import Endpoint

__all__ = ["USER_AGENT", "Counters", "Exchange", "Exchanger", "http_range"]

log = logging.getLogger(__name__)

DEFAULT_ERROR_BODY_LIMIT = 64 * 1024
"""An OSS error document is a few hundred bytes; read at most this much of one."""

USER_AGENT = f"ossmodelconnector/{__version__}"

COUNTERS = ("requests", "retries", "bytes", "errors", "credential_refreshes", "integrity_retries")
"""What :class:`Counters` counts (``OssClient.stats``)."""


def http_range(start: int, end: int) -> str:
    """The HTTP ``Range`` header for the half-open byte range ``[start, end)`` (HTTP's is inclusive).

    Args:
        start: first byte.
        end: one past the last byte; ``end > start``.

    Returns:
        ``"bytes=start-(end - 1)"``.

    Raises:
        ValueError: an empty or negative range (HTTP cannot express an empty one).

    Example:
        >>> http_range(0, 8)
        'bytes=0-7'
    """
    if not 0 <= start < end:
        raise ValueError(f"byte range [{start}, {end}) is empty or negative; HTTP cannot request it")
    return f"bytes={start}-{end - 1}"


def _query(params: Mapping[str, str]) -> str:
    return "&".join(f"{quote(name, safe='')}={quote(value, safe='')}" for name, value in params.items())


class Counters:
    """Thread-safe request counters of one client (see ``OssClient.stats``); reset in a forked child."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(COUNTERS, 0)

    def add(self, name: str, amount: int = 1) -> None:
        """Add ``amount`` to the counter ``name``."""
        with self._lock:
            self._values[name] += amount

    def record_request(self, nbytes: int, ok: bool) -> None:
        """Count one finished request and the body bytes it received."""
        with self._lock:
            self._values["requests"] += 1
            self._values["bytes"] += nbytes
            if not ok:
                self._values["errors"] += 1

    def snapshot(self) -> dict[str, int]:
        """A copy of every counter."""
        with self._lock:
            return dict(self._values)

    def reset(self) -> None:
        """Start again from zero with a new lock (after ``fork``: a lock held by another thread at fork
        time would never be released in the child, and the counters should describe this process)."""
        self._lock = threading.Lock()
        self._values = dict.fromkeys(COUNTERS, 0)


@dataclass
class Exchange:
    """What one HTTP request produced, for the caller's body handling, the stats and the request log."""

    response: http.client.HTTPResponse | None = None
    status: int | None = None
    request_id: str | None = None
    nbytes: int = 0
    ok: bool = False
    cleartext: bool = False
    """Whether the body's bytes are on the socket as sent (plain HTTP; not TLS): the receive kernel's
    condition (``oss/body.py``)."""


class Exchanger:
    """Carries single requests for one client: signing, pooled connections, translation, accounting.

    Args:
        endpoint: where requests go (path-style or virtual-hosted).
        credentials: asked before every request.
        signer: signs each request (V1 or V4).
        transport: the per-host connection pools.
        config: its timeouts appear in timeout messages.
        audit: the request log (one line per request).
        counters: where each request is counted.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        credentials: CredentialProvider,
        signer: Signer,
        transport: Transport,
        config: Config,
        audit: Audit,
        counters: Counters,
    ) -> None:
        self._endpoint = endpoint
        self._credentials = credentials
        self._signer = signer
        self._transport = transport
        self._config = config
        self._audit = audit
        self._counters = counters

    @contextmanager
    def translating(self, bucket: str, key: str, rng: tuple[int, int] | None) -> Iterator[None]:
        """Turn socket, ``http.client``, TLS and XML errors into the package's errors."""
        place = where(bucket, key, rng)
        context: dict[str, Any] = {"bucket": bucket, "key": key, "range": rng}
        try:
            yield
        except ConnectorError:
            raise
        except TimeoutError as exc:
            raise RequestTimeoutError(
                f"{place}: no answer within {self._config.read_timeout_s}s (connect "
                f"{self._config.connect_timeout_s}s); retried while the budget lasts",
                code=CODE_TIMEOUT,
                **context,
            ) from exc
        except http.client.IncompleteRead as exc:
            raise RequestError(
                f"{place}: the body ended early ({exc.partial and len(exc.partial)} bytes, more expected); "
                "retried from the first missing byte",
                code=CODE_INCOMPLETE,
                **context,
            ) from exc
        except ssl.SSLCertVerificationError as exc:
            raise RequestError(
                f"{place}: the server's TLS certificate was refused ({exc.verify_message}): use the "
                "endpoint's real host name, or an http:// endpoint inside a trusted network",
                code=CODE_TLS,
                **context,
            ) from exc
        except socket.gaierror as exc:
            if exc.errno != socket.EAI_NONAME:  # EAI_AGAIN and friends: a DNS hiccup, retried
                raise RequestError(
                    f"{place}: the endpoint {self._endpoint} could not be resolved ({exc}); retried",
                    code=CODE_CONNECTION,
                    **context,
                ) from exc
            raise RequestError(
                f"{place}: the endpoint's host name does not exist ({self._endpoint}: {exc.strerror}); "
                "check it for a typo (e.g. oss-cn-beijing-internal.aliyuncs.com)",
                code=CODE_UNKNOWN_HOST,
                **context,
            ) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise RequestError(
                f"{place}: the connection to {self._endpoint} failed ({type(exc).__name__}: {exc}); "
                "retried on a new connection; if it persists check that the endpoint is reachable",
                code=CODE_CONNECTION,
                **context,
            ) from exc
        except (ValueError, ParseError) as exc:
            raise RequestError(
                f"{place}: the server's answer is malformed ({exc}); a server or proxy bug: check that "
                "the endpoint is an OSS endpoint",
                code=CODE_INVALID_RESPONSE,
                **context,
            ) from exc

    @contextmanager
    def exchange(
        self,
        method: str,
        bucket: str,
        key: str,
        params: Mapping[str, str],
        headers: Mapping[str, str],
        rng: tuple[int, int] | None,
    ) -> Iterator[Exchange]:
        """Send one signed request on a pooled connection; yield it once the status says success.

        The connection goes back to the pool only if the caller read the whole body; on any error it
        is closed. One request-log line and one ``requests`` count per call.
        """
        endpoint = self._endpoint
        pool = self._transport.pool_for(endpoint.host if endpoint.path_style else f"{bucket}.{endpoint.host}")
        exchange = Exchange()
        conn: http.client.HTTPConnection | None = None
        started = time.monotonic()
        try:
            with self.translating(bucket, key, rng):
                signed = self._signer.sign(method, bucket, key, params, headers, self._credentials.get())
                path = endpoint.path_for(bucket, key)
                if params:
                    path = f"{path}?{_query(params)}"
                conn = pool.acquire()
                conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
                conn.putheader("Host", endpoint.host_for(bucket))
                conn.putheader("User-Agent", USER_AGENT)
                for name, value in signed.items():
                    conn.putheader(name, value)
                conn.endheaders()
                resp = conn.getresponse()
                exchange.response = resp
                exchange.cleartext = not isinstance(conn, http.client.HTTPSConnection)
                exchange.status = resp.status
                exchange.request_id = resp.getheader("x-oss-request-id")
                if resp.status not in (200, 206):
                    raise _response_error(resp, method, bucket, key, rng)
                yield exchange
                if method == "HEAD":
                    resp.read()
                exchange.ok = resp.isclosed()
        finally:
            # Failures before a connection was taken (credentials, a bad key) sent no request.
            if conn is not None:
                if exchange.ok:
                    pool.release(conn)
                else:
                    pool.discard(conn)
                self._finish(method, bucket, key, rng, exchange, started)

    def _finish(
        self,
        method: str,
        bucket: str,
        key: str,
        rng: tuple[int, int] | None,
        exchange: Exchange,
        started: float,
    ) -> None:
        elapsed_ms = (time.monotonic() - started) * 1000.0
        self._counters.record_request(exchange.nbytes, exchange.ok)
        try:
            self._audit.record(
                method, bucket, key, rng, exchange.status, exchange.nbytes, elapsed_ms, exchange.request_id
            )
        except ConnectorError as exc:  # a closed request log must not hide the request's own outcome
            log.debug("request log line dropped: %s", exc)


def _response_error(
    resp: http.client.HTTPResponse, method: str, bucket: str, key: str, rng: tuple[int, int] | None
) -> RequestError | CredentialsError:
    body = resp.read(DEFAULT_ERROR_BODY_LIMIT) if method != "HEAD" else b""
    try:
        details = parse_error(body, resp.headers)
    except (ValueError, ParseError):
        details = ErrorDetails(request_id=resp.getheader("x-oss-request-id") or "")
    return error_for_status(resp.status, details, method, bucket, key, rng)
