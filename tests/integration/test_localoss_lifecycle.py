"""The localoss process: command line, exit 0 on SIGTERM/SIGINT with open connections, no secret logged."""

from __future__ import annotations

import http.client
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from localoss_harness import raw_request, start_localoss


def test_help_documents_the_flags() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "ossmodelconnector.localoss", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for flag in (
        "--root",
        "--domain",
        "--access-key-id",
        "--access-key-secret",
        "--sts-token",
        "--seed",
        "--latency-ms",
        "--bandwidth-mibps",
        "--conn-bandwidth-mibps",
        "--fault-503",
        "--fault-reset",
        "--fault-short",
        "--fault-corrupt",
        "--log-level",
    ):
        assert flag in out
    assert "localoss-access-key" in out  # the defaults the test harness relies on
    assert "localoss-secret-key" in out


def test_bad_fraction_is_refused(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ossmodelconnector.localoss", "--root", str(tmp_path), "--fault-503", "2"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "fraction" in proc.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_exits_zero_with_open_connections(tmp_path: Path, signum: int) -> None:
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        server = start_localoss(tmp_path / "root", "--log-level", "DEBUG", stderr=log)
        server.put_file("live", "obj", b"z" * 1000)
        idle = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        assert (
            raw_request(server, "GET", "live", "obj", conn=idle).body == b"z" * 1000
        )  # keep-alive, left open
        half = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        half.connect()
        half.sock.sendall(b"GET /live/obj HTTP/1.1\r\nHost: x\r\n")  # a request head never finished
        server.proc.send_signal(signum)
        assert server.proc.wait(timeout=15) == 0
        server.stop()
        idle.close()
        half.close()
    text = log_path.read_text()
    assert "Traceback" not in text
    assert "shutting down" in text


def test_secrets_never_logged(tmp_path: Path) -> None:
    secret, token = "very-secret-value-123", "sts-token-value-456"
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        server = start_localoss(
            tmp_path / "root",
            "--log-level",
            "DEBUG",
            "--access-key-secret",
            secret,
            "--sts-token",
            token,
            stderr=log,
        )
        server.make_bucket("logs")
        headers = {"x-oss-security-token": token}
        assert raw_request(server, "PUT", "logs", "k", headers=headers, body=b"1").status == 200
        assert raw_request(server, "GET", "logs", "k", params={"security-token": token}).status in (200, 403)
        server.access_key_secret = "wrong"
        assert raw_request(server, "GET", "logs", "k", headers=headers).status == 403
        assert server.stop() == 0
    text = log_path.read_text()
    assert "logs/k" in text or "/logs/k" in text  # the access log is there...
    assert secret not in text  # ...but never the secret or the token
    assert token not in text
