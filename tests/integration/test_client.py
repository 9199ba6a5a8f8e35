"""OssClient against a real ``localoss`` subprocess: bytes, CRCs, errors, faults, credentials, pools, fork."""

from __future__ import annotations

import errno
import json
import logging
import multiprocessing
import os
import random
import resource
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import oss2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from localoss_harness import LocalOss, start_localoss
from tls_harness import tls_proxy

from ossmodelconnector.config import Config, load_config
from ossmodelconnector.errors import (
    AccessDeniedError,
    ClosedError,
    CredentialsError,
    IntegrityError,
    ObjectChangedError,
    ObjectNotFoundError,
    RequestError,
    RequestTimeoutError,
    RetriesExhaustedError,
)
from ossmodelconnector.objects import ObjectInfo
from ossmodelconnector.oss.client import OssClient
from ossmodelconnector.oss.credentials import (
    Credentials,
    FileCredentialProvider,
    StaticCredentialProvider,
)
from ossmodelconnector.oss.request_log import AuditLog, parse_audit_line
from ossmodelconnector.oss.uri import parse_endpoint

FAST_RETRIES = {"retry_base_delay_s": 0.001, "retry_max_delay_s": 0.01}


def oss2_crc(data: bytes) -> int:
    crc = oss2.utils.Crc64(0)
    crc.update(data)
    return int(crc.crc)


def make_client(
    server: LocalOss,
    *,
    provider: Any = None,
    config: Config | None = None,
    audit: Any = None,
    **overrides: Any,
) -> OssClient:
    if provider is None:
        provider = StaticCredentialProvider(Credentials(server.access_key_id, server.access_key_secret))
    if config is None:
        config = load_config(None, **{**FAST_RETRIES, **overrides})
    return OssClient(parse_endpoint(server.endpoint), provider, config, audit)


@pytest.fixture
def client(localoss: LocalOss) -> Iterator[OssClient]:
    with make_client(localoss) as c:
        yield c


@pytest.fixture(scope="module")
def blob() -> bytes:
    return random.Random(1234).randbytes(3 * 1024 * 1024 + 12345)


def test_head_object_fields(localoss: LocalOss, bucket: str, client: OssClient, blob: bytes) -> None:
    path = localoss.put_file(bucket, "dir/model.bin", blob)
    info = client.head_object(bucket, "dir/model.bin")
    theirs = oss2.Bucket(
        oss2.Auth(localoss.access_key_id, localoss.access_key_secret), localoss.endpoint, bucket
    ).head_object("dir/model.bin")
    assert info.bucket == bucket and info.key == "dir/model.bin"
    assert info.size == len(blob)
    assert info.crc64 == oss2_crc(blob)
    assert info.etag.strip('"') == theirs.etag
    assert info.etag.startswith('"')
    assert info.last_modified == int(path.stat().st_mtime)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_get_into_random_ranges(
    localoss: LocalOss, client: OssClient, blob: bytes, data: st.DataObject
) -> None:
    bucket = "ranges-bucket"
    if not (localoss.root / bucket / "blob.bin").exists():
        localoss.put_file(bucket, "blob.bin", blob)
    start = data.draw(st.integers(0, len(blob)), label="start")
    end = data.draw(st.integers(start, len(blob)), label="end")
    buf = bytearray(end - start)
    crc = client.get_into(bucket, "blob.bin", start, end, memoryview(buf))
    assert bytes(buf) == blob[start:end]
    assert crc == oss2_crc(blob[start:end])


def test_get_into_accepts_any_writable_buffer(
    localoss: LocalOss, bucket: str, client: OssClient, blob: bytes
) -> None:
    import numpy as np

    localoss.put_file(bucket, "k", blob)
    array = np.zeros(1024, dtype=np.float32)  # 4096 bytes, format "f"
    client.get_into(bucket, "k", 100, 4196, memoryview(array))
    assert array.tobytes() == blob[100:4196]
    with pytest.raises(ValueError, match="exactly end - start"):
        client.get_into(bucket, "k", 0, 10, memoryview(bytearray(11)))
    with pytest.raises(ValueError, match="read-only"):
        client.get_into(bucket, "k", 0, 10, memoryview(b"0123456789"))
    assert client.get_into(bucket, "k", 5, 5, memoryview(bytearray())) == 0


@pytest.mark.parametrize("key", ["a b/c d.bin", "100%/x%20y.bin", "模型/权重.bin", "plus+and&eq=?#.bin"])
def test_special_keys(localoss: LocalOss, bucket: str, client: OssClient, key: str) -> None:
    localoss.put_file(bucket, key, b"payload of " + key.encode())
    assert client.get_object_bytes(bucket, key) == b"payload of " + key.encode()
    assert client.head_object(bucket, key).key == key


def test_signature_v4(localoss: LocalOss, bucket: str, blob: bytes) -> None:
    localoss.put_file(bucket, "v4.bin", blob)
    with make_client(localoss, region="cn-hangzhou") as c:
        assert c.signature_version == "v4"
        buf = bytearray(1000)
        c.get_into(bucket, "v4.bin", 10, 1010, memoryview(buf))
        assert bytes(buf) == blob[10:1010]
        assert [o.key for o in c.list_page(bucket, "").objects] == ["v4.bin"]


def test_not_found_errors(localoss: LocalOss, bucket: str, client: OssClient) -> None:
    with pytest.raises(ObjectNotFoundError) as caught:
        client.get_into(bucket, "missing.bin", 0, 10, memoryview(bytearray(10)))
    err = caught.value
    assert isinstance(err, FileNotFoundError)
    assert (err.status, err.code, err.bucket, err.key, err.range) == (
        404,
        "NoSuchKey",
        bucket,
        "missing.bin",
        (0, 10),
    )
    assert err.request_id
    assert f"oss://{bucket}/missing.bin" in str(err)

    with pytest.raises(ObjectNotFoundError) as caught:
        client.head_object(bucket, "missing.bin")
    assert (caught.value.status, caught.value.code) == (404, "NoSuchKey")
    assert caught.value.request_id

    with pytest.raises(ObjectNotFoundError) as caught:
        client.list_page("no-such-bucket-here", "")
    assert caught.value.code == "NoSuchBucket"
    assert caught.value.request_id
    with pytest.raises(ObjectNotFoundError) as caught:
        client.head_object("no-such-bucket-here", "k")
    assert caught.value.status == 404
    assert client.stats()["retries"] == 0


def test_range_outside_object_is_invalid_range(localoss: LocalOss, bucket: str, client: OssClient) -> None:
    localoss.put_file(bucket, "small", b"0123456789")
    with pytest.raises(RequestError) as caught:
        client.get_into(bucket, "small", 20, 30, memoryview(bytearray(10)))
    assert (caught.value.status, caught.value.code) == (416, "InvalidRange")
    assert caught.value.request_id
    assert client.stats()["retries"] == 0


def test_wrong_secret_and_unknown_key_id(
    localoss: LocalOss, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    localoss.put_file(bucket, "k", b"x")
    secret = "definitely-the-wrong-secret-value"
    provider = StaticCredentialProvider(Credentials(localoss.access_key_id, secret))
    with make_client(localoss, provider=provider) as c, pytest.raises(AccessDeniedError) as caught:
        c.get_into(bucket, "k", 0, 1, memoryview(bytearray(1)))
    err = caught.value
    assert (err.status, err.code) == (403, "SignatureDoesNotMatch")
    assert err.request_id
    assert isinstance(err, PermissionError)
    assert c.stats()["credential_refreshes"] == 1  # re-read once, then given up
    provider = StaticCredentialProvider(Credentials("unknown-key-id", localoss.access_key_secret))
    with make_client(localoss, provider=provider) as c, pytest.raises(CredentialsError) as caught_creds:
        c.head_object(bucket, "k")
    assert (caught_creds.value.status, caught_creds.value.code) == (403, "InvalidAccessKeyId")
    for text in (caplog.text, str(err), repr(err), str(caught_creds.value)):
        assert secret not in text
        assert localoss.access_key_secret not in text


def test_faults_all_reads_exact(localoss_factory: Callable[..., LocalOss], blob: bytes) -> None:
    server = localoss_factory(
        "--fault-503", "0.3", "--fault-reset", "0.3", "--fault-short", "0.3", "--seed", "11"
    )
    server.put_file("fault-bucket", "blob.bin", blob)
    rng = random.Random(5)
    with make_client(server, max_attempts=60) as c:
        for _ in range(60):
            start = rng.randrange(0, len(blob))
            end = rng.randrange(start + 1, len(blob) + 1)
            buf = bytearray(end - start)
            assert c.get_into("fault-bucket", "blob.bin", start, end, memoryview(buf)) == oss2_crc(
                blob[start:end]
            )
            assert bytes(buf) == blob[start:end]
        stats = c.stats()
    assert stats["retries"] > 0
    assert stats["requests"] == 60 + stats["retries"]
    assert stats["errors"] == stats["retries"]


def test_faults_concurrent_reads_of_one_buffer(
    localoss_factory: Callable[..., LocalOss], blob: bytes
) -> None:
    server = localoss_factory(
        "--fault-503", "0.2", "--fault-reset", "0.2", "--fault-short", "0.2", "--seed", "3"
    )
    server.put_file("fault-bucket", "blob.bin", blob)
    buf = bytearray(len(blob))
    view = memoryview(buf)
    chunk = 256 * 1024
    crcs: dict[int, int] = {}
    with make_client(server, max_attempts=60) as c:
        info = c.head_object("fault-bucket", "blob.bin")
        fetch = c.make_fetch_into(info)

        def worker(offsets: list[int]) -> None:
            for lo in offsets:
                hi = min(lo + chunk, len(blob))
                crcs[lo] = fetch(lo, hi, view[lo:hi])

        offsets = list(range(0, len(blob), chunk))
        threads = [threading.Thread(target=worker, args=(offsets[i::4],)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert c.stats()["connections"] >= 1
    assert bytes(buf) == blob
    assert all(crcs[lo] == oss2_crc(blob[lo : lo + chunk]) for lo in offsets)


def test_permanent_503_exhausts_retries(localoss_factory: Callable[..., LocalOss]) -> None:
    server = localoss_factory("--fault-503", "1")
    server.put_file("fault-bucket", "k", b"0123456789")
    with make_client(server, max_attempts=3) as c:
        with pytest.raises(RetriesExhaustedError) as caught:
            c.get_into("fault-bucket", "k", 0, 10, memoryview(bytearray(10)))
        stats = c.stats()
    err = caught.value
    assert (err.status, err.code, err.range) == (503, "SlowDown", (0, 10))
    assert err.request_id
    assert isinstance(err.__cause__, RequestError) and err.__cause__.status == 503
    assert "3 attempts" in str(err)
    assert (stats["requests"], stats["retries"]) == (3, 2)


def test_latency_beyond_read_timeout(localoss_factory: Callable[..., LocalOss]) -> None:
    server = localoss_factory("--latency-ms", "1500")
    server.put_file("slow-bucket", "k", b"0123456789")
    with make_client(server, max_attempts=2, read_timeout_s=0.3) as c:
        with pytest.raises(RequestTimeoutError) as caught:
            c.get_into("slow-bucket", "k", 0, 10, memoryview(bytearray(10)))
        assert c.stats()["retries"] == 1
    assert isinstance(caught.value, TimeoutError)
    assert isinstance(caught.value.__cause__, RequestTimeoutError)
    assert isinstance(caught.value.__cause__.__cause__, TimeoutError)


def test_object_rewritten_between_reads(localoss: LocalOss, bucket: str, client: OssClient) -> None:
    localoss.put_file(bucket, "k", b"A" * 1000)
    info = client.head_object(bucket, "k")
    fetch = client.make_fetch_into(info)
    buf = bytearray(100)
    fetch(0, 100, memoryview(buf))
    assert buf == b"A" * 100
    path = localoss.put_file(bucket, "k", b"B" * 1000)
    os.utime(path, (info.last_modified + 10, info.last_modified + 10))
    with pytest.raises(ObjectChangedError) as caught:
        fetch(100, 200, memoryview(buf))
    assert (caught.value.status, caught.value.code) == (412, "PreconditionFailed")
    assert caught.value.request_id
    with pytest.raises(ObjectChangedError):
        client.download_to_file(bucket, "k", localoss.root / "unused", info)
    assert client.stats()["retries"] == 0


def test_an_answer_of_another_version_is_refused_when_the_server_ignores_if_match(
    localoss_factory: Callable[..., LocalOss],
) -> None:
    server = localoss_factory("--ignore-if-match")
    server.put_file("etag-bucket", "k", b"A" * 1000)
    with make_client(server) as client:
        info = client.head_object("etag-bucket", "k")
        fetch = client.make_fetch_into(info)
        buf = bytearray(100)
        fetch(0, 100, memoryview(buf))
        path = server.put_file("etag-bucket", "k", b"B" * 1000)
        os.utime(path, (info.last_modified + 10, info.last_modified + 10))
        with pytest.raises(ObjectChangedError) as caught:
            fetch(100, 200, memoryview(buf))
        assert caught.value.code == "ETagMismatch" and caught.value.status == 206
        assert info.etag in str(caught.value)
        assert buf == b"A" * 100  # nothing of the other version landed
        assert client.stats()["retries"] == 0  # a changed object is never retried into a mix
        with pytest.raises(ObjectChangedError):
            client.download_to_file("etag-bucket", "k", server.root / "unused", info)
        assert not (server.root / "unused").exists()


class FlakyTokenProvider:
    """Returns a wrong STS token until invalidated once."""

    def __init__(self, access_key_id: str, secret: str, token: str) -> None:
        self._good = Credentials(access_key_id, secret, token)
        self._bad = Credentials(access_key_id, secret, "stale-" + token)
        self.invalidations = 0

    def get(self) -> Credentials:
        return self._good if self.invalidations else self._bad

    def invalidate(self) -> None:
        self.invalidations += 1


def test_sts_token_refreshed_once(
    localoss_factory: Callable[..., LocalOss], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = "sts-token-abcdef-0123456789"
    server = localoss_factory("--sts-token", token)
    server.put_file("sts-bucket", "k", b"0123456789")
    provider = FlakyTokenProvider(server.access_key_id, server.access_key_secret, token)
    with make_client(server, provider=provider) as c:
        buf = bytearray(10)
        c.get_into("sts-bucket", "k", 0, 10, memoryview(buf))
        assert buf == b"0123456789"
        assert provider.invalidations == 1
        assert c.stats()["credential_refreshes"] == 1
        assert c.head_object("sts-bucket", "k").size == 10
        assert provider.invalidations == 1
    always_bad = StaticCredentialProvider(Credentials(server.access_key_id, server.access_key_secret, "nope"))
    with make_client(server, provider=always_bad) as c, pytest.raises(CredentialsError) as caught:
        c.get_into("sts-bucket", "k", 0, 10, memoryview(bytearray(10)))
    assert (caught.value.status, caught.value.code) == (403, "InvalidSecurityToken")
    for text in (caplog.text, str(caught.value)):
        assert token not in text
        assert server.access_key_secret not in text


def _write_creds(path: Path, key_id: str, secret: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"AccessKeyId": key_id, "AccessKeySecret": secret}))
    os.replace(tmp, path)


def test_credentials_file_rotation_during_a_long_read(tmp_path: Path, blob: bytes) -> None:
    root = tmp_path / "root"
    server = start_localoss(root, "--access-key-id", "key-one", "--access-key-secret", "secret-one")
    cred_file = tmp_path / "creds.json"
    _write_creds(cred_file, "key-one", "secret-one")
    server.put_file("rotate-bucket", "blob.bin", blob)
    servers = [server]
    try:
        buf = bytearray(len(blob))
        chunk = len(blob) // 4 + 1
        with make_client(server, provider=FileCredentialProvider(cred_file), max_attempts=20) as c:
            info = c.head_object("rotate-bucket", "blob.bin")
            fetch = c.make_fetch_into(info)
            for i, lo in enumerate(range(0, len(blob), chunk)):
                if i == 2:  # half-way: the keys rotate, on the server and in the file
                    assert server.stop() == 0
                    server = start_localoss(
                        root,
                        "--access-key-id",
                        "key-two",
                        "--access-key-secret",
                        "secret-two",
                        port=server.port,
                    )
                    servers.append(server)
                    _write_creds(cred_file, "key-two", "secret-two")
                hi = min(lo + chunk, len(blob))
                fetch(lo, hi, memoryview(buf)[lo:hi])
        assert bytes(buf) == blob
    finally:
        for s in servers:
            s.stop()


def test_pool_reuses_connections(localoss: LocalOss, bucket: str, client: OssClient, blob: bytes) -> None:
    localoss.put_file(bucket, "k", blob)
    buf = bytearray(4096)
    for i in range(50):
        client.get_into(bucket, "k", i * 100, i * 100 + 4096, memoryview(buf))
    assert client.stats()["connections"] == 1
    assert client.stats()["idle_connections"] == 1

    def worker() -> None:
        local = bytearray(65536)
        for i in range(25):
            client.get_into(bucket, "k", i * 1000, i * 1000 + 65536, memoryview(local))
            assert bytes(local) == blob[i * 1000 : i * 1000 + 65536]

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = client.stats()
    assert stats["requests"] == 150
    assert stats["connections"] <= 4


def _child_read(client: OssClient, bucket: str, out: Any) -> None:
    buf = bytearray(1000)
    crc = client.get_into(bucket, "k", 0, 1000, memoryview(buf))
    out.put((bytes(buf), crc, client.stats()["connections"], client.stats()["requests"]))


def test_forked_child_uses_its_own_pool(
    localoss: LocalOss, bucket: str, client: OssClient, blob: bytes
) -> None:
    localoss.put_file(bucket, "k", blob)
    buf = bytearray(1000)
    client.get_into(bucket, "k", 0, 1000, memoryview(buf))
    assert client.stats()["idle_connections"] == 1
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_read, args=(client, bucket, queue))
    child.start()
    data, crc, connections, requests = queue.get(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0
    assert data == blob[:1000] and crc == oss2_crc(blob[:1000])
    assert connections == 1  # the child opened its own; it never touched the parent's socket
    assert requests == 1  # and counts its own requests
    client.get_into(bucket, "k", 1000, 2000, memoryview(buf))  # the parent's pooled connection still works
    assert bytes(buf) == blob[1000:2000]
    assert client.stats()["connections"] == 1


def test_close_is_idempotent_and_final(localoss: LocalOss, bucket: str) -> None:
    localoss.put_file(bucket, "k", b"x")
    with make_client(localoss) as c:
        c.head_object(bucket, "k")
    c.close()
    assert c.closed
    with pytest.raises(ClosedError):
        c.head_object(bucket, "k")
    with pytest.raises(ClosedError):
        c.get_into(bucket, "k", 0, 1, memoryview(bytearray(1)))


def test_get_object_bytes_and_download_to_file(
    localoss: LocalOss, bucket: str, client: OssClient, tmp_path: Path
) -> None:
    localoss.put_file(bucket, "cfg/config.json", b'{"a": 1}')
    localoss.put_file(bucket, "empty", b"")
    assert client.get_object_bytes(bucket, "cfg/config.json") == b'{"a": 1}'
    assert client.get_object_bytes(bucket, "empty") == b""
    info = client.head_object(bucket, "cfg/config.json")
    target = tmp_path / "config.json"
    client.download_to_file(bucket, "cfg/config.json", target, info)
    assert target.read_bytes() == b'{"a": 1}'
    client.download_to_file(bucket, "empty", tmp_path / "empty", client.head_object(bucket, "empty"))
    assert (tmp_path / "empty").read_bytes() == b""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "empty"]


def test_download_to_file_leaves_nothing_on_error(
    localoss: LocalOss, bucket: str, client: OssClient, tmp_path: Path
) -> None:
    localoss.put_file(bucket, "k", b"0123456789")
    info = client.head_object(bucket, "k")
    assert info.crc64 is not None
    wrong_crc = ObjectInfo(bucket, "k", 10, info.etag, info.last_modified, crc64=info.crc64 ^ 1)
    with pytest.raises(IntegrityError) as caught:
        client.download_to_file(bucket, "k", tmp_path / "k", wrong_crc)
    assert caught.value.code == "CrcMismatch"
    missing = ObjectInfo(bucket, "gone", 10, info.etag, info.last_modified)
    with pytest.raises(ObjectNotFoundError):
        client.download_to_file(bucket, "gone", tmp_path / "gone", missing)
    with pytest.raises(ValueError, match="matching ObjectInfo"):
        client.download_to_file(bucket, "other", tmp_path / "other", info)
    assert list(tmp_path.iterdir()) == []
    assert client.stats()["integrity_retries"] == load_config().max_attempts - 1


def test_download_to_file_names_the_cause_and_its_fix(
    localoss: LocalOss, bucket: str, client: OssClient, tmp_path: Path
) -> None:
    """Too many open files is not blamed on space or permissions (the message names the real fix)."""
    localoss.put_file(bucket, "k", b"0123456789")
    info = client.head_object(bucket, "k")  # the pooled connection the download reuses: no new socket
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest_free = os.dup(0)
    os.close(lowest_free)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))  # no new descriptor from here on
    try:
        with pytest.raises(OSError) as caught:
            client.download_to_file(bucket, "k", tmp_path / "k", info)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert caught.value.errno == errno.EMFILE
    assert "ulimit -n" in str(caught.value) and "free space" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_one_audit_line_per_request(localoss_factory: Callable[..., LocalOss], tmp_path: Path) -> None:
    server = localoss_factory("--fault-503", "0.5", "--seed", "2")
    server.put_file("audit-bucket", "k", b"0123456789")
    audit = AuditLog(tmp_path / "audit.log")
    try:
        with make_client(server, audit=audit, max_attempts=40) as c:
            for _ in range(10):
                c.get_into("audit-bucket", "k", 2, 8, memoryview(bytearray(6)))
            stats = c.stats()
    finally:
        audit.close()
    lines = (tmp_path / "audit.log").read_text().splitlines()
    assert len(lines) == stats["requests"] == 10 + stats["retries"]
    records = [parse_audit_line(line) for line in lines]
    assert {r.status for r in records} <= {206, 503}
    assert sum(r.status == 206 for r in records) == 10
    assert all(r.range == (2, 8) for r in records)
    assert server.access_key_secret not in "".join(lines)


def test_https_endpoint_against_a_plain_http_server_fails_cleanly(localoss: LocalOss, bucket: str) -> None:
    provider = StaticCredentialProvider(Credentials(localoss.access_key_id, localoss.access_key_secret))
    endpoint = parse_endpoint(localoss.endpoint.replace("http://", "https://"))
    config = load_config(None, max_attempts=2, **FAST_RETRIES)
    with OssClient(endpoint, provider, config) as c, pytest.raises(RetriesExhaustedError) as caught:
        c.head_object(bucket, "k")
    assert caught.value.code == "ConnectionError"
    assert isinstance(caught.value.__cause__, RequestError)
    assert isinstance(caught.value.__cause__.__cause__, OSError)  # the TLS handshake's ssl.SSLError


# -- the body receivers (oss/body.py): the receive kernel and the http.client path ---------------------


@pytest.mark.parametrize("receiver", ["kernel", "python"])
def test_body_receivers_read_exact_bytes_under_faults(
    localoss_factory: Callable[..., LocalOss], blob: bytes, receiver: str
) -> None:
    server = localoss_factory(
        "--fault-503", "0.2", "--fault-reset", "0.3", "--fault-short", "0.3", "--seed", "16"
    )
    server.put_file("fault-bucket", "blob.bin", blob)
    rng = random.Random(16)
    wanted = 0
    with make_client(server, max_attempts=60, body_receiver=receiver) as c:
        for _ in range(40):
            start = rng.randrange(0, len(blob))
            end = rng.randrange(start + 1, len(blob) + 1)
            buf = bytearray(end - start)
            assert c.get_into("fault-bucket", "blob.bin", start, end, memoryview(buf)) == oss2_crc(
                blob[start:end]
            )
            assert bytes(buf) == blob[start:end]
            wanted += end - start
        stats = c.stats()
    assert stats["retries"] > 0 and stats["errors"] == stats["retries"]
    # A failed attempt keeps what it received and the retry asks only for the rest: every byte is
    # received (and counted) once.
    assert stats["bytes"] == wanted


def test_kernel_resumes_after_the_bytes_a_reset_left(localoss_factory: Callable[..., LocalOss]) -> None:
    # Most bodies are cut by a reset after some bytes: progress comes from keeping them (a retry that
    # asked for the whole range again would fail as often).
    server = localoss_factory("--fault-reset", "0.7", "--seed", "5")
    data = os.urandom(4 << 20)
    server.put_file("fault-bucket", "big.bin", data)
    buf = bytearray(len(data))
    step = 1 << 19
    with make_client(server, max_attempts=100, body_receiver="kernel") as c:
        for lo in range(0, len(data), step):
            try:
                crc = c.get_into("fault-bucket", "big.bin", lo, lo + step, memoryview(buf)[lo : lo + step])
            except RetriesExhaustedError as exc:  # each reset must have kept some bytes
                pytest.fail(f"no progress through resets: {exc}")
            assert crc == oss2_crc(data[lo : lo + step])
        stats = c.stats()
    assert bytes(buf) == data
    assert stats["bytes"] == len(data) and stats["retries"] > 0


@pytest.mark.parametrize("receiver", ["kernel", "python"])
def test_a_connection_is_reused_after_a_kernel_read_body(
    localoss: LocalOss, bucket: str, receiver: str
) -> None:
    data = os.urandom(3 << 20)
    localoss.put_file(bucket, "k", data)
    with make_client(localoss, body_receiver=receiver) as c:
        for start in range(0, len(data), 1 << 19):
            buf = bytearray(1 << 19)
            assert c.get_into(bucket, "k", start, start + len(buf), memoryview(buf)) == oss2_crc(
                data[start : start + len(buf)]
            )
            assert bytes(buf) == data[start : start + len(buf)]
        stats = c.stats()
    assert stats["requests"] == 6 and stats["connections"] == 1 and stats["idle_connections"] == 1


def test_https_bodies_take_the_http_client_path_and_arrive_exact(
    localoss: LocalOss, bucket: str, blob: bytes, tmp_path: Path
) -> None:
    # On TLS the descriptor carries encrypted records: the kernel must not read them (bytes would be
    # garbage and the CRC would say so). Through a TLS proxy in front of localoss, the default
    # bodyReceiver ("kernel") still reads every byte exactly, on a reused connection.
    localoss.put_file(bucket, "tls.bin", blob)
    with tls_proxy(localoss.port, tmp_path) as (port, cert):
        os.environ["SSL_CERT_FILE"] = str(cert)  # the default context trusts it (restored after the test)
        provider = StaticCredentialProvider(Credentials(localoss.access_key_id, localoss.access_key_secret))
        with OssClient(parse_endpoint(f"https://127.0.0.1:{port}"), provider, load_config(None)) as c:
            assert c.get_object_bytes(bucket, "tls.bin") == blob
            for start in (0, 1 << 20, len(blob) - 1000):
                buf = bytearray(1000)
                assert c.get_into(bucket, "tls.bin", start, start + 1000, memoryview(buf)) == oss2_crc(
                    blob[start : start + 1000]
                )
                assert bytes(buf) == blob[start : start + 1000]
            stats = c.stats()
    assert stats["connections"] == 1 and stats["retries"] == 0
