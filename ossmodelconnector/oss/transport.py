"""Keep-alive HTTP(S) connections to OSS, pooled per host and per process.

::

    OssClient ──pool_for(host)──> ConnectionPool ──acquire()──> idle connection, or a new one (lazily)
                                                 <─release()── back to the idle list after a clean answer
                                                 <─discard()── closed: it saw an error

Connections are ``http.client`` connections with ``TCP_NODELAY`` and two timeouts: ``connect_timeout_s``
to open the socket (and the TLS handshake), ``read_timeout_s`` for every later socket operation.

A forked child must never use its parent's sockets (the two would read each other's answers), so an
``os.register_at_fork`` handler empties every pool in the child; the child then opens its own
connections on first use. The pid is also checked on each acquire, for forks that bypass the handler.
"""

from __future__ import annotations

import http.client
import logging
import os
import select
import socket
import ssl
import threading
import weakref
from collections.abc import Callable

from ossmodelconnector.errors import ClosedError

__all__ = ["DEFAULT_MAX_IDLE", "ConnectionPool", "Transport"]

log = logging.getLogger(__name__)

DEFAULT_MAX_IDLE = 64
"""Idle connections kept per host; more than the prefetcher's concurrency only wastes sockets."""


class _Connection(http.client.HTTPConnection):
    """An HTTP connection: connect timeout for the handshake, read timeout afterwards, no Nagle."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        on_connect: Callable[[], None],
    ) -> None:
        super().__init__(host, port, timeout=connect_timeout_s)
        self._read_timeout_s = read_timeout_s
        self._on_connect = on_connect

    def connect(self) -> None:
        self._on_connect()
        super().connect()
        _tune(self.sock, self._read_timeout_s)


class _TLSConnection(http.client.HTTPSConnection):
    """The HTTPS twin of :class:`_Connection` (certificate and host name verified)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        on_connect: Callable[[], None],
        context: ssl.SSLContext,
    ) -> None:
        super().__init__(host, port, timeout=connect_timeout_s, context=context)
        self._read_timeout_s = read_timeout_s
        self._on_connect = on_connect

    def connect(self) -> None:
        self._on_connect()
        super().connect()
        _tune(self.sock, self._read_timeout_s)


def _tune(sock: socket.socket, read_timeout_s: float) -> None:
    # Requests are small writes followed by a wait for the answer: Nagle would delay them.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(read_timeout_s)


def _is_dropped(conn: http.client.HTTPConnection) -> bool:
    """Whether an idle connection was closed by the server (readable while idle = EOF or garbage)."""
    sock = conn.sock
    if sock is None:
        return False  # never connected, or closed after ``Connection: close``: it reconnects by itself
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


class ConnectionPool:
    """Idle keep-alive connections to one ``scheme://host:port``, for the current process.

    Args:
        scheme: ``"http"`` or ``"https"``.
        host: the host to connect to (also the TLS server name).
        port: the TCP port.
        connect_timeout_s: seconds to open a connection.
        read_timeout_s: seconds any later socket operation may block.
        max_idle: idle connections kept; extra ones are closed on release.
        ssl_context: the TLS context for ``https`` (a default, verifying one when None).
    """

    def __init__(
        self,
        scheme: str,
        host: str,
        port: int,
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        max_idle: int = DEFAULT_MAX_IDLE,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if scheme not in ("http", "https"):
            raise ValueError(f"scheme {scheme!r} is not http or https")
        self.scheme = scheme
        self.host = host
        self.port = port
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._max_idle = max_idle
        self._ssl_context = ssl_context
        self._lock = threading.Lock()
        self._idle: list[http.client.HTTPConnection] = []
        self._pid = os.getpid()
        self._closed = False
        self.created = 0
        _LIVE_POOLS.add(self)

    def _count_connect(self) -> None:
        with self._lock:
            self.created += 1

    def _new(self) -> http.client.HTTPConnection:
        if self.scheme == "https":
            context = self._ssl_context or ssl.create_default_context()
            return _TLSConnection(
                self.host,
                self.port,
                connect_timeout_s=self._connect_timeout_s,
                read_timeout_s=self._read_timeout_s,
                on_connect=self._count_connect,
                context=context,
            )
        return _Connection(
            self.host,
            self.port,
            connect_timeout_s=self._connect_timeout_s,
            read_timeout_s=self._read_timeout_s,
            on_connect=self._count_connect,
        )

    def acquire(self) -> http.client.HTTPConnection:
        """An idle connection of this process, or a new (not yet connected) one.

        Raises:
            ClosedError: the pool was closed.
        """
        while True:
            with self._lock:
                if self._closed:
                    raise ClosedError(
                        f"the connection pool for {self.scheme}://{self.host}:{self.port} is closed: "
                        "its client was closed; create a new client"
                    )
                if self._pid != os.getpid():
                    self._forget_locked()
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return self._new()
            if not _is_dropped(conn):
                return conn
            conn.close()

    def release(self, conn: http.client.HTTPConnection) -> None:
        """Return a connection whose last answer was read completely; it is kept for reuse."""
        with self._lock:
            if not self._closed and self._pid == os.getpid() and len(self._idle) < self._max_idle:
                self._idle.append(conn)
                return
        conn.close()

    def discard(self, conn: http.client.HTTPConnection) -> None:
        """Close a connection that saw an error: it is never reused."""
        conn.close()

    @property
    def idle(self) -> int:
        """Number of idle connections held."""
        with self._lock:
            return len(self._idle)

    def close(self) -> None:
        """Close every idle connection; later ``acquire()`` calls raise. Idempotent."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _forget_locked(self) -> None:
        # The sockets are shared with the parent: drop them without shutting them down (close() only
        # releases this process's descriptor, but never touching them is the simplest guarantee).
        self._idle = []
        self._pid = os.getpid()

    def _after_fork_in_child(self) -> None:
        # Another thread may have held the lock at fork time; in the child it would never be released.
        self._lock = threading.Lock()
        self._forget_locked()
        self.created = 0


class Transport:
    """The connection pools of one client, one per ``(host, port)``, created on first use.

    Args:
        scheme: ``"http"`` or ``"https"``.
        port: the TCP port of the endpoint.
        connect_timeout_s: seconds to open a connection.
        read_timeout_s: seconds any later socket operation may block.
        max_idle: idle connections kept per host.
    """

    def __init__(
        self, scheme: str, port: int, *, connect_timeout_s: float, read_timeout_s: float, max_idle: int
    ) -> None:
        self._scheme = scheme
        self._port = port
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._max_idle = max_idle
        self._lock = threading.Lock()
        self._pools: dict[str, ConnectionPool] = {}
        self._closed = False
        _LIVE_TRANSPORTS.add(self)

    def pool_for(self, host: str) -> ConnectionPool:
        """The pool of connections to ``host`` (created on first use).

        Raises:
            ClosedError: the transport was closed.
        """
        pool = self._pools.get(host)
        if pool is not None:
            return pool
        with self._lock:
            if self._closed:
                raise ClosedError("the OSS client is closed: create a new OssClient to send requests")
            pool = self._pools.get(host)
            if pool is None:
                pool = ConnectionPool(
                    self._scheme,
                    host,
                    self._port,
                    connect_timeout_s=self._connect_timeout_s,
                    read_timeout_s=self._read_timeout_s,
                    max_idle=self._max_idle,
                )
                self._pools[host] = pool
            return pool

    def connections_created(self) -> int:
        """TCP connections opened by this process since the transport was created (or the fork)."""
        with self._lock:
            pools = list(self._pools.values())
        return sum(pool.created for pool in pools)

    def idle_connections(self) -> int:
        """Idle connections currently held."""
        with self._lock:
            pools = list(self._pools.values())
        return sum(pool.idle for pool in pools)

    def close(self) -> None:
        """Close every pool. Idempotent."""
        with self._lock:
            self._closed = True
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        for pool in self._pools.values():
            pool._after_fork_in_child()


_LIVE_POOLS: weakref.WeakSet[ConnectionPool] = weakref.WeakSet()
_LIVE_TRANSPORTS: weakref.WeakSet[Transport] = weakref.WeakSet()


def _reset_in_child() -> None:
    for transport in list(_LIVE_TRANSPORTS):
        transport._after_fork_in_child()
    for pool in list(_LIVE_POOLS):
        pool._after_fork_in_child()


os.register_at_fork(after_in_child=_reset_in_child)
