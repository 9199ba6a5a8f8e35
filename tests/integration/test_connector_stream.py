"""``OssModelConnector.open`` over a real ``localoss``: every operation sequence matches ``io.BytesIO``.

Objects of awkward sizes (0, 1, chunk boundaries, several chunks) are read with random sequences of
read/readinto/readline/seek/tell, on a clean server and on one injecting 503s, resets and short bodies.
"""

from __future__ import annotations

import io
import os
import random
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from localoss_harness import LocalOss, start_localoss

from ossmodelconnector import InvalidURIError, ObjectNotFoundError, OssModelConnector
from ossmodelconnector.oss.credentials import Credentials

MIB = 1 << 20
SIZES = [0, 1, 4097, MIB - 1, MIB, MIB + 1, 3 * MIB + 12345]
BUCKET = "stream-bucket"


def _payload(size: int) -> bytes:
    return random.Random(size).randbytes(size)


def _connector(server: LocalOss, **overrides: object) -> OssModelConnector:
    creds = Credentials(server.access_key_id, server.access_key_secret)
    return OssModelConnector(
        server.endpoint,
        cred_provider=creds,
        chunk_size_mb=1,
        prefetch_vcpus=2,
        prefetch_workers=2,
        **overrides,
    )


@pytest.fixture(scope="module", params=["clean", "faulty"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OssModelConnector]:
    flags: tuple[str, ...] = ()
    if request.param == "faulty":
        flags = ("--seed", "7", "--fault-503", "0.15", "--fault-reset", "0.15", "--fault-short", "0.15")
    server = start_localoss(tmp_path_factory.mktemp("stream-root"), *flags)
    for size in SIZES:
        server.put_file(BUCKET, f"objects/{size}.bin", _payload(size))
    server.put_file(BUCKET, "text/lines.txt", "".join(f"línea {i} ✓\n" for i in range(20000)).encode())
    # Retries are immediate enough for tests, and plentiful enough that 15% faults never exhaust them.
    connector = _connector(server, max_attempts=30, retry_base_delay_s=0.001, retry_max_delay_s=0.01)
    yield connector
    if request.param == "faulty":  # the faults really happened and were all survived
        assert connector.stats()["retries"] > 0
    connector.close()
    assert server.stop() == 0


Op = tuple[str, int, int]
ops = st.lists(
    st.one_of(
        st.tuples(st.just("read"), st.integers(-1, 2 * MIB), st.just(0)),
        st.tuples(st.just("readinto"), st.integers(0, 2 * MIB), st.just(0)),
        st.tuples(st.just("readline"), st.integers(-1, 5000), st.just(0)),
        st.tuples(st.just("seek"), st.integers(-4 * MIB, 4 * MIB), st.sampled_from([0, 1, 2])),
        st.tuples(st.just("tell"), st.just(0), st.just(0)),
    ),
    max_size=12,
)


def _apply(stream: io.BufferedIOBase | io.BytesIO, op: Op) -> object:
    name, n, whence = op
    try:
        if name == "read":
            return stream.read(n)
        if name == "readinto":
            buf = bytearray(n)
            count = stream.readinto(buf)
            return count, bytes(buf[:count])
        if name == "readline":
            return stream.readline(n)
        if name == "seek":
            return stream.seek(n, whence)
        return stream.tell()
    except ValueError as exc:  # bad seeks must fail the same way
        return type(exc)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.sampled_from(SIZES), sequence=ops)
def test_stream_matches_bytesio(served: OssModelConnector, size: int, sequence: list[Op]) -> None:
    expected = io.BytesIO(_payload(size))
    with served.open(f"oss://{BUCKET}/objects/{size}.bin") as stream:
        assert stream.size == size
        assert stream.name == f"oss://{BUCKET}/objects/{size}.bin"
        assert stream.readable() and stream.seekable() and not stream.writable()
        for op in sequence:
            assert _apply(stream, op) == _apply(expected, op), op


@pytest.mark.parametrize("size", SIZES)
def test_whole_object_read_and_mmap(served: OssModelConnector, size: int) -> None:
    data = _payload(size)
    with served.open(f"oss://{BUCKET}/objects/{size}.bin") as stream:
        assert stream.read() == data
        assert stream.read() == b""
        view = stream.mmap()
        assert view.readonly and bytes(view) == data
        view.release()


def test_text_mode_iterates_lines_like_a_file(served: OssModelConnector) -> None:
    expected = [f"línea {i} ✓\n" for i in range(20000)]
    with served.open(f"oss://{BUCKET}/text/lines.txt", binary=False) as text:
        assert list(text) == expected


def test_closed_stream_and_bad_uris(served: OssModelConnector) -> None:
    stream = served.open(f"oss://{BUCKET}/objects/1.bin")
    stream.close()
    stream.close()  # idempotent
    with pytest.raises(ValueError):
        stream.read()
    with pytest.raises(ObjectNotFoundError) as info:
        served.open(f"oss://{BUCKET}/objects/missing.bin")
    assert info.value.key == "objects/missing.bin" and info.value.request_id
    with pytest.raises(InvalidURIError):
        served.open(f"oss://{BUCKET}/objects/")
    with pytest.raises(InvalidURIError):
        served.open("s3://bucket/key")


def test_list_and_fast_list_agree(served: OssModelConnector) -> None:
    slow = served.list(BUCKET, "objects/")
    fast = served.list(BUCKET, "", fast=True)
    assert sorted(o.key for o in slow) == sorted(f"objects/{size}.bin" for size in SIZES)
    assert {o.key for o in fast} == {o.key for o in slow} | {"text/lines.txt"}
    sizes = {o.key: o.size for o in fast}
    assert all(sizes[f"objects/{size}.bin"] == size for size in SIZES)


def test_close_releases_everything_and_refuses_more(localoss: LocalOss, bucket: str) -> None:
    localoss.put_file(bucket, "big.bin", _payload(3 * MIB))
    connector = _connector(localoss)
    stream = connector.open(f"oss://{bucket}/big.bin")
    assert stream.read(10) == _payload(3 * MIB)[:10]
    connector.close()
    connector.close()
    assert stream.closed
    assert connector.stats()["held_bytes"] == 0
    with pytest.raises(ValueError, match="closed"):
        connector.open(f"oss://{bucket}/big.bin")


def test_memory_limit_bounds_what_is_held(localoss: LocalOss, bucket: str) -> None:
    data = _payload(6 * MIB)
    localoss.put_file(bucket, "six.bin", data)
    with (
        _connector(localoss, memory_limit_mb=2) as connector,
        connector.open(f"oss://{bucket}/six.bin") as stream,
    ):
        seen = 0
        chunks = []
        while piece := stream.read(256 * 1024):
            chunks.append(piece)
            seen = max(seen, connector.stats()["held_bytes"])
        assert b"".join(chunks) == data
        # The budget plus the one chunk a blocked reader may always fetch.
        assert seen <= 3 * MIB


def test_a_secret_never_reaches_logs_or_messages(
    localoss: LocalOss, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG", logger="ossmodelconnector")
    secret = "s3cr3t-" + os.urandom(8).hex()
    connector = OssModelConnector(
        localoss.endpoint, cred_provider=Credentials(localoss.access_key_id, secret)
    )
    with pytest.raises(PermissionError) as info:
        connector.open(f"oss://{bucket}/anything.bin")
    connector.close()
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert secret not in text and secret not in str(info.value) and secret not in repr(connector)
