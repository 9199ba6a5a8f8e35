"""The fault matrix for the stream API (``connector.open``): the exact bytes or a clear error, always.

Each case starts its own ``localoss`` subprocess with seeded faults. The object spans several 1 MiB chunks
so that the prefetcher's concurrent ranged GETs each meet faults of their own.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from localoss_harness import LocalOss
from reliability_harness import MIB, RotatingProvider, make_connector, replace_json

from ossmodelconnector import (
    ConnectorError,
    IntegrityError,
    ObjectChangedError,
    RetriesExhaustedError,
)
from ossmodelconnector.oss.responses import CODE_CONNECTION

# A hang guard tighter than the suite's 300 s: each case resolves in seconds or fails clearly.
pytestmark = pytest.mark.timeout(120)

BUCKET = "faults"
KEY = "weights/blob.bin"


def _blob(size: int = 3 * MIB + 4321, seed: int = 8) -> bytes:
    return random.Random(seed).randbytes(size)


def _read_all(connector_server: LocalOss, **overrides: object) -> tuple[bytes, dict[str, object]]:
    with make_connector(connector_server, **overrides) as connector:
        with connector.open(f"oss://{BUCKET}/{KEY}") as stream:
            data = stream.read()
        return data, connector.stats()


@pytest.mark.parametrize(
    ("flags", "overrides"),
    [
        pytest.param(("--fault-503", "0.5", "--seed", "23"), {}, id="503-slowdown-burst"),
        pytest.param(("--fault-reset", "0.4", "--seed", "23"), {}, id="reset-mid-body"),
        pytest.param(("--fault-short", "0.4", "--seed", "23"), {}, id="short-body"),
        pytest.param(
            ("--fault-stall", "0.3", "--stall-ms", "2500", "--seed", "25"),
            {"read_timeout_s": 0.4},
            id="first-byte-stall",
        ),
    ],
)
def test_transient_faults_end_in_the_exact_bytes(
    localoss_factory: Callable[..., LocalOss], flags: tuple[str, ...], overrides: dict[str, object]
) -> None:
    server = localoss_factory(*flags)
    blob = _blob()
    server.put_file(BUCKET, KEY, blob)
    data, stats = _read_all(server, **overrides)
    assert data == blob
    assert stats["retries"] > 0  # the faults really happened and were retried


def test_server_killed_mid_download_and_restarted(crashable_localoss: Callable[..., LocalOss]) -> None:
    """The load finishes once the server is back, within the retry budget; not one byte differs."""
    server = crashable_localoss("--conn-bandwidth-mibps", "2")
    blob = _blob(8 * MIB + 17)
    server.put_file(BUCKET, KEY, blob)
    budget = {"max_attempts": 40, "retry_base_delay_s": 0.05, "retry_max_delay_s": 0.5}
    with make_connector(server, **budget) as connector, connector.open(f"oss://{BUCKET}/{KEY}") as stream:
        head = stream.read(MIB)
        server.kill()  # mid-download: the other chunks are in flight on throttled connections
        time.sleep(0.3)
        crashable_localoss.restart(server)  # type: ignore[attr-defined]
        rest = stream.read()
        stats = connector.stats()
    assert head + rest == blob
    assert stats["retries"] > 0


def test_server_never_coming_back_is_a_clear_error(crashable_localoss: Callable[..., LocalOss]) -> None:
    """After the retry budget: ``RetriesExhaustedError`` naming the object, the cause and the fix."""
    server = crashable_localoss("--conn-bandwidth-mibps", "2")
    blob = _blob(6 * MIB)
    server.put_file(BUCKET, KEY, blob)
    with make_connector(server, max_attempts=4) as connector:
        with connector.open(f"oss://{BUCKET}/{KEY}") as stream:
            assert stream.read(100) == blob[:100]
            server.kill()
            with pytest.raises(RetriesExhaustedError) as caught:
                stream.read()
        err = caught.value
        assert (err.bucket, err.key, err.code) == (BUCKET, KEY, CODE_CONNECTION)
        message = str(err)
        assert f"oss://{BUCKET}/{KEY}" in message and "4 attempts" in message
        assert "retry.maxAttempts" in message  # the fix
        # A new open() while it is down fails the same way, at the HEAD.
        with pytest.raises(RetriesExhaustedError):
            connector.open(f"oss://{BUCKET}/{KEY}")


def test_object_overwritten_mid_download_never_mixes_versions(
    localoss_factory: Callable[..., LocalOss],
) -> None:
    """The ETag is pinned (If-Match): a rewrite is an ``ObjectChangedError``, never two versions mixed."""
    server = localoss_factory("--conn-bandwidth-mibps", "2")
    old, new = _blob(12 * MIB, seed=1), _blob(12 * MIB, seed=2)
    path = server.put_file(BUCKET, KEY, old)
    with make_connector(server) as connector, connector.open(f"oss://{BUCKET}/{KEY}") as stream:
        head = stream.read(MIB)
        assert head == old[:MIB]
        # Atomically, like OSS: the server's in-flight bodies keep sending the old version's bytes.
        scratch = path.with_name(".rewrite")
        scratch.write_bytes(new)
        os.replace(scratch, path)
        with pytest.raises(ObjectChangedError) as caught:
            stream.read()
    err = caught.value
    assert (err.status, err.code, err.key) == (412, "PreconditionFailed", KEY)
    assert "open it again" in str(err)


def test_corrupted_byte_is_caught_by_the_crc(localoss_factory: Callable[..., LocalOss]) -> None:
    """``--fault-corrupt`` flips one byte of some bodies: the CRC-64 catches it; wrong bytes never pass."""
    server = localoss_factory("--fault-corrupt", "0.5", "--seed", "4")
    blob = _blob()
    server.put_file(BUCKET, KEY, blob)
    with make_connector(server) as connector, connector.open(f"oss://{BUCKET}/{KEY}") as stream:
        try:
            data = stream.read()
        except IntegrityError as exc:
            assert (exc.bucket, exc.key) == (BUCKET, KEY)
            assert "CRC-64" in str(exc) and "open the object again" in str(exc)
        else:
            assert data == blob
        with pytest.raises(IntegrityError):
            stream.mmap()


def test_sts_token_expiring_mid_load_is_refreshed_from_the_provider(
    localoss_factory: Callable[..., LocalOss], tmp_path: Path
) -> None:
    tokens = tmp_path / "server-tokens.json"
    old, fresh = "sts-old-token-" + "a" * 24, "sts-new-token-" + "b" * 24
    replace_json(tokens, {old: None, fresh: None})
    server = localoss_factory("--sts-token-file", str(tokens), "--conn-bandwidth-mibps", "2")
    # 16 chunks on 4 connections at 2 MiB/s each take ~2 s: the old token expires in the middle.
    replace_json(tokens, {old: time.time() + 0.8, fresh: None})
    blob = _blob(16 * MIB)
    server.put_file(BUCKET, KEY, blob)
    provider = RotatingProvider(server.access_key_id, server.access_key_secret, [old, fresh])
    data, stats = _read_all(server, cred_provider=provider)
    assert data == blob
    assert provider.refreshes >= 1 and stats["credential_refreshes"] >= 1


def test_sts_credentials_file_rotated_before_expiry_mid_load(
    localoss_factory: Callable[..., LocalOss], tmp_path: Path
) -> None:
    tokens = tmp_path / "server-tokens.json"
    old, fresh = "sts-old-token-" + "c" * 24, "sts-new-token-" + "d" * 24
    replace_json(tokens, {old: None, fresh: None})
    server = localoss_factory("--sts-token-file", str(tokens), "--conn-bandwidth-mibps", "2")
    expires = time.time() + 1.5  # 16 MiB at 4 x 2 MiB/s: the rotation at 0.8 s falls mid-load
    replace_json(tokens, {old: expires, fresh: None})
    blob = _blob(16 * MIB)
    server.put_file(BUCKET, KEY, blob)
    creds = tmp_path / "creds.json"

    def write(token: str, until: float) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(until))
        doc = {
            "AccessKeyId": server.access_key_id,
            "AccessKeySecret": server.access_key_secret,
            "SecurityToken": token,
            "Expiration": stamp,
        }
        replace_json(creds, doc)

    write(old, expires + 1)
    rotate = threading.Timer(0.8, write, args=(fresh, time.time() + 3600))
    rotate.start()
    try:
        data, _ = _read_all(server, cred_path=str(creds))
    finally:
        rotate.cancel()
    assert data == blob


def test_errors_carry_context_and_pickle(localoss_factory: Callable[..., LocalOss]) -> None:
    """A fault's final error crosses process boundaries intact (attributes and message)."""
    import pickle

    server = localoss_factory("--fault-503", "1")
    server.put_file(BUCKET, KEY, b"x" * 10)
    with make_connector(server, max_attempts=2) as connector, pytest.raises(ConnectorError) as caught:
        connector.open(f"oss://{BUCKET}/{KEY}")
    copy = pickle.loads(pickle.dumps(caught.value))
    assert type(copy) is type(caught.value) is RetriesExhaustedError
    assert (copy.status, copy.code, copy.key, str(copy)) == (503, "SlowDown", KEY, str(caught.value))
