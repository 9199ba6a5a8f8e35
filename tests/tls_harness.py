"""A TLS-terminating proxy on 127.0.0.1 in front of a plain server, with a throwaway self-signed certificate.

``localoss`` speaks plain HTTP only; HTTPS endpoints are tested through this proxy: the client connects
with TLS (trusting the certificate through ``SSL_CERT_FILE``, as the default context reads it), the proxy
forwards the decrypted bytes to the backend port and back. The certificate is made by the ``openssl``
command for the IP address 127.0.0.1.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

LIVENESS_S = 30.0


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate and key for ``127.0.0.1`` (valid one day): ``(cert, key)``."""
    if shutil.which("openssl") is None:
        raise RuntimeError(
            "the openssl command is needed to make a test certificate: apt-get install openssl"
        )
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=LIVENESS_S,
    )  # fmt: skip
    return cert, key


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(1 << 16):
            sink.sendall(data)
    except OSError:
        pass  # either side went away: the other is closed below
    finally:
        for sock in (source, sink):
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@contextmanager
def tls_proxy(backend_port: int, folder: Path) -> Iterator[tuple[int, Path]]:
    """Serve TLS on a free port, forwarding to ``127.0.0.1:backend_port``; yields ``(port, cert path)``."""
    cert, key = make_certificate(folder)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()
    threads: list[threading.Thread] = []
    sockets: list[socket.socket] = []

    def serve_one(raw: socket.socket) -> None:
        try:
            raw.settimeout(LIVENESS_S)
            client = context.wrap_socket(raw, server_side=True)
            backend = socket.create_connection(("127.0.0.1", backend_port), timeout=LIVENESS_S)
        except OSError:
            raw.close()
            return
        sockets.extend((client, backend))
        back = threading.Thread(target=_pump, args=(backend, client), daemon=True)
        back.start()
        threads.append(back)
        _pump(client, backend)
        back.join(LIVENESS_S)

    def accept() -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=serve_one, args=(raw,), daemon=True)
            thread.start()
            threads.append(thread)

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield listener.getsockname()[1], cert
    finally:
        stop.set()
        acceptor.join(LIVENESS_S)
        listener.close()
        for sock in sockets:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(LIVENESS_S)
        for sock in sockets:
            sock.close()
