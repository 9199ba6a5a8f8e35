"""The HTTP side of ``localoss``: sockets, one thread per keep-alive connection, addressing and auth.

::

    accept loop (main thread) ──> connection thread: read head ─> fault plan ─> resolve bucket/key
        ─> auth.verify ─> operations.dispatch ─> head (+ sendfile body straight from the object file)

Every response carries ``x-oss-request-id``, ``Date``, ``Server: localoss`` and ``Content-Length``.
``shutdown()`` may be called from a signal handler: it wakes the accept loop, which then closes the
listening socket and every open connection and waits for the connection threads.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import logging
import os
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, cast
from urllib.parse import parse_qsl, unquote_to_bytes

from ossmodelconnector.localoss.auth import AuthError, IncomingRequest, ServerCredentials, verify
from ossmodelconnector.localoss.faults import (
    ConnectionAborted,
    FaultConfig,
    FaultInjector,
    FaultPlan,
    TokenBucket,
    send_file_body,
    xml_bomb,
)
from ossmodelconnector.localoss.operations import Call, Operations, Response
from ossmodelconnector.localoss.protocol import (
    BodyReader,
    HttpRequest,
    ProtocolError,
    format_head,
    http_date,
    new_request_id,
    read_request,
)
from ossmodelconnector.localoss.store import Store
from ossmodelconnector.localoss.xmlbody import ServiceError, error_xml

__all__ = [
    "DEFAULT_ACCESS_KEY_ID",
    "DEFAULT_ACCESS_KEY_SECRET",
    "DEFAULT_DOMAIN",
    "DEFAULT_HOST",
    "LocalOssServer",
    "ServerConfig",
]

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_DOMAIN = "localoss.test"
DEFAULT_ACCESS_KEY_ID = "localoss-access-key"
DEFAULT_ACCESS_KEY_SECRET = "localoss-secret-key"
DEFAULT_BACKLOG = 1024
DEFAULT_READ_BUFFER = 64 << 10
DEFAULT_DRAIN_LIMIT = 64 << 20
DEFAULT_JOIN_TIMEOUT_S = 5.0
_NO_FAULT = FaultPlan()
_S3_QUERY = ("X-Amz-Algorithm=", "X-Amz-Credential=")
_SENSITIVE_QUERY = ("signature", "security-token", "x-amz-signature", "x-amz-security-token")


@dataclass(frozen=True)
class ServerConfig:
    """How to run a ``localoss`` server.

    Attributes:
        root: the folder served (``ROOT/<bucket>/<key>``).
        host: address to listen on (default 127.0.0.1).
        port: TCP port, 0 for any free one.
        domain: the server's domain; ``Host: <bucket>.<domain>`` is virtual-hosted addressing.
        access_key_id: the one access key accepted.
        access_key_secret: its secret (never logged or shown in a repr).
        sts_token: when set, every request must carry this security token.
        sts_token_file: when set, a JSON object ``{"<token>": <expiry epoch seconds or null>}`` of the
            tokens accepted, re-read whenever it changes (tests rotate and expire STS tokens with it).
        faults: fault injection and throttling (off by default).
        backlog: listen backlog.
    """

    root: Path
    host: str = DEFAULT_HOST
    port: int = 0
    domain: str = DEFAULT_DOMAIN
    access_key_id: str = DEFAULT_ACCESS_KEY_ID
    access_key_secret: str = field(default=DEFAULT_ACCESS_KEY_SECRET, repr=False)
    sts_token: str | None = field(default=None, repr=False)
    sts_token_file: Path | None = None
    faults: FaultConfig = field(default_factory=FaultConfig)
    backlog: int = DEFAULT_BACKLOG


def _is_s3(request: HttpRequest) -> bool:
    auth = request.headers.get("authorization", "")
    if auth.startswith(("AWS4-", "AWS ")):
        return True
    return "x-amz-date" in request.headers or any(part in request.raw_query for part in _S3_QUERY)


def _loggable_query(raw_query: str) -> str:
    if not raw_query:
        return ""
    names = [part.split("=", 1)[0] for part in raw_query.split("&")]
    return "?" + "&".join(n if n.lower() not in _SENSITIVE_QUERY else f"{n}=<redacted>" for n in names)


class LocalOssServer:
    """A running OSS-compatible server on ``config.host:config.port`` (bound at construction).

    Args:
        config: the server settings.

    Example:
        >>> server = LocalOssServer(ServerConfig(root=Path("/tmp/root")))  # doctest: +SKIP
        >>> threading.Thread(target=server.serve_forever).start()  # doctest: +SKIP
        >>> server.endpoint  # doctest: +SKIP
        'http://127.0.0.1:40123'
    """

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.store = Store(config.root)
        self.operations = Operations(self.store)
        self.faults = FaultInjector(config.faults)
        self._creds = ServerCredentials(config.access_key_id, config.access_key_secret, config.sts_token)
        self._token_stamp: tuple[int, int, int] | None = None
        self._domain = config.domain.lower().strip(".")
        self._listener = socket.create_server(
            (config.host, config.port), backlog=config.backlog, reuse_port=False
        )
        self._listener.setblocking(False)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_w.setblocking(False)
        self._stopping = False
        self._lock = threading.Lock()
        self._connections: dict[socket.socket, threading.Thread] = {}

    @property
    def endpoint(self) -> str:
        """``http://HOST:PORT`` of the listening socket."""
        host, port = self._listener.getsockname()[:2]
        return f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"

    def shutdown(self) -> None:
        """Ask :meth:`serve_forever` to stop; safe from a signal handler and from any thread."""
        self._stopping = True
        with contextlib.suppress(OSError):  # already woken, or closed
            self._wake_w.send(b"x")

    def serve_forever(self) -> None:
        """Accept connections until :meth:`shutdown`, then close everything and return."""
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping:
                for key, _ in selector.select():
                    if key.fileobj is self._listener:
                        self._accept()
        self._close()

    def _accept(self) -> None:
        try:
            sock, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        sock.setblocking(True)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        thread = threading.Thread(target=self._serve_connection, args=(sock,), daemon=True)
        with self._lock:
            self._connections[sock] = thread
        thread.start()

    def _close(self) -> None:
        self._listener.close()
        with self._lock:
            connections = list(self._connections.items())
        for sock, _ in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv or sendfile
        deadline = time.monotonic() + DEFAULT_JOIN_TIMEOUT_S
        for _, thread in connections:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.store.close()
        self._wake_r.close()
        self._wake_w.close()
        log.info("localoss stopped (%d connections were open)", len(connections))

    # -- one connection ---------------------------------------------------------------------------------

    def _serve_connection(self, sock: socket.socket) -> None:
        rfile = cast(BinaryIO, sock.makefile("rb", buffering=DEFAULT_READ_BUFFER))
        bucket = self.faults.connection_bucket()
        buckets = [b for b in (bucket, self.faults.shared_bucket) if b is not None]
        try:
            while not self._stopping:
                try:
                    request = read_request(rfile)
                except ProtocolError as exc:
                    self._send_bare(sock, exc.status, exc.message)
                    break
                if request is None or not self._exchange(sock, rfile, request, buckets):
                    break
        except (ConnectionAborted, OSError, ValueError):
            pass  # the client went away, a fault cut the connection, or shutdown() closed it
        except Exception:
            log.exception("localoss: unexpected error on a connection")
        finally:
            with self._lock:
                self._connections.pop(sock, None)
            rfile.close()
            sock.close()

    def _send_bare(self, sock: socket.socket, status: int, message: str) -> None:
        body = f"{message}\n".encode()
        headers = [("Content-Length", str(len(body))), ("Connection", "close"), ("Server", "localoss")]
        headers += [("Date", http_date()), ("x-oss-request-id", new_request_id())]
        sock.sendall(format_head(status, headers) + body)

    def _resolve(self, request: HttpRequest, body: BodyReader) -> Call:
        if not request.raw_path.startswith("/"):
            raise ServiceError(
                400, "InvalidURI", f"request path {request.raw_path[:100]!r} does not start with '/'"
            )
        host = request.headers.get("host", "").lower()
        hostname = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        path = request.raw_path[1:]
        if self._domain and hostname.endswith("." + self._domain):
            bucket: str | None = hostname[: -len(self._domain) - 1]
            raw_key = path
        else:
            raw_bucket, _, raw_key = path.partition("/")
            bucket = raw_bucket or None
        try:
            if bucket is not None:
                bucket = unquote_to_bytes(bucket.encode("latin-1")).decode("utf-8")
            # The key is percent-decoded exactly once: '%2B' is '+', a raw '+' stays '+'.
            key = unquote_to_bytes(raw_key.encode("latin-1")).decode("utf-8") if raw_key else None
            query = dict(parse_qsl(request.raw_query, keep_blank_values=True, errors="strict"))
        except UnicodeError as exc:
            raise ServiceError(
                400,
                "InvalidURI",
                f"request path or query is not percent-encoded UTF-8: {request.raw_path[:100]!r}",
            ) from exc
        return Call(request, bucket, key, query, _is_s3(request), body)

    def _authenticate(self, call: Call) -> None:
        request = call.request
        incoming = IncomingRequest(
            method=request.method,
            raw_path=request.raw_path,
            raw_query=request.raw_query,
            headers=request.headers,
            bucket=call.bucket,
            key=call.key,
        )
        try:
            verify(incoming, self._current_credentials())
        except AuthError as exc:
            raise ServiceError(exc.status, exc.code, exc.message) from exc

    def _current_credentials(self) -> ServerCredentials:
        path = self.config.sts_token_file
        if path is None:
            return self._creds
        try:
            st = os.stat(path)
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
            if stamp != self._token_stamp:
                tokens = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(tokens, dict):
                    raise ValueError("not a JSON object")
                accepted = {str(token): None if at is None else float(at) for token, at in tokens.items()}
                with self._lock:
                    self._creds = dataclasses.replace(self._creds, sts_tokens=accepted)
                    self._token_stamp = stamp
        except (OSError, ValueError, TypeError) as exc:  # mid-rewrite: keep the tokens read last time
            log.warning("localoss: --sts-token-file %s unusable (%s); keeping the previous tokens", path, exc)
        return self._creds

    def _error_response(self, error: ServiceError, request: HttpRequest, request_id: str) -> Response:
        document = error_xml(error, request_id, self._domain or "localoss")
        if self.faults.config.xml_bomb:
            document = xml_bomb(document)
        headers = [("Content-Type", "application/xml"), *error.headers]
        if request.method == "HEAD":
            # HEAD answers have no body: OSS puts the error document in a header, which oss2 decodes.
            headers.append(("x-oss-err", base64.b64encode(document).decode("ascii")))
            headers.append(("x-oss-ec", f"0000-{error.status:08d}"))
            return Response(error.status, headers, send_body=False, close=error.close)
        return Response(error.status, headers, document, close=error.close)

    def _exchange(
        self, sock: socket.socket, rfile: BinaryIO, request: HttpRequest, buckets: list[TokenBucket]
    ) -> bool:
        started = time.perf_counter()
        request_id = new_request_id()
        plan = self.faults.plan()
        s3 = False
        try:
            body = BodyReader(rfile, request.headers)
        except ProtocolError as exc:
            self._send_bare(sock, exc.status, exc.message)
            return False
        expect_continue = "100-continue" in request.headers.get("expect", "").lower()
        if expect_continue:
            body.on_first_read = lambda: sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            if plan.slowdown:
                raise ServiceError(
                    503, "SlowDown", "injected fault (--fault-503): please reduce your request rate"
                )
            if self.faults.config.ignore_if_match:
                request.headers.pop("if-match", None)
            call = self._resolve(request, body)
            s3 = call.s3
            self._authenticate(call)
            response = self.operations.dispatch(call)
        except ServiceError as exc:
            response = self._error_response(exc, request, request_id)
        except ProtocolError as exc:  # the request body broke off
            log.debug("%s: %s", request_id, exc.message)
            return False
        except Exception:  # a bug here must still answer, and must not kill the connection thread silently
            log.exception("localoss: request %s %s failed", request.method, request.raw_path)
            error = ServiceError(
                500, "InternalError", "localoss failed on this request; see its log", close=True
            )
            response = self._error_response(error, request, request_id)
        if not body.done:
            # An unread body is still on the wire: read it (if small) or end the connection after this answer.
            try:
                drained = not (expect_continue and not body.started) and body.drain(DEFAULT_DRAIN_LIMIT)
            except ProtocolError:
                return False
            response.close = response.close or not drained
        if self.faults.config.xml_bomb and response.status == 200 and response.body.startswith(b"<?xml"):
            response.body = xml_bomb(response.body)
        keep = request.keep_alive and not response.close and not self._stopping
        headers = response.headers
        headers += [
            ("Content-Length", str(response.content_length)),
            ("Date", http_date()),
            ("Server", "localoss"),
            ("x-oss-request-id", request_id),
        ]
        if s3:
            headers.append(("x-amz-request-id", request_id))
        if not keep:
            headers.append(("Connection", "close"))
        elif request.version == "HTTP/1.0":
            headers.append(("Connection", "keep-alive"))
        head = format_head(response.status, headers)
        self.faults.delay(plan)
        try:
            if response.fd is not None and response.send_body and request.method != "HEAD":
                sock.sendall(head, socket.MSG_MORE)
                send_file_body(
                    sock,
                    response.fd,
                    response.offset,
                    response.length,
                    plan=plan if response.object_body else _NO_FAULT,
                    buckets=buckets if response.object_body else [],
                )
            elif request.method == "HEAD" or not response.send_body:
                sock.sendall(head)
            else:
                sock.sendall(head + response.body)
        finally:
            if response.fd is not None:
                os.close(response.fd)
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "%s %s %s%s -> %d %d bytes %.2f ms",
                    request_id,
                    request.method,
                    request.raw_path,
                    _loggable_query(request.raw_query),
                    response.status,
                    response.content_length,
                    (time.perf_counter() - started) * 1000,
                )
        return keep
