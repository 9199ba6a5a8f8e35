"""The real oss2 SDK against localoss: V1, V4 and STS signatures, objects, ranges, CRC, listings, errors."""

from __future__ import annotations

import gc
import hashlib
import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import oss2
import pytest
from localoss_harness import LocalOss, start_localoss

REGION = "cn-hangzhou"
N_KEYS = 2500
_many_numbers = itertools.count()


def v1(server: LocalOss) -> oss2.Auth:
    return oss2.Auth(server.access_key_id, server.access_key_secret)


def v4(server: LocalOss) -> oss2.AuthV4:
    return oss2.AuthV4(server.access_key_id, server.access_key_secret)


def provider_v4(server: LocalOss) -> oss2.ProviderAuthV4:
    provider = oss2.credentials.StaticCredentialsProvider(server.access_key_id, server.access_key_secret)
    return oss2.ProviderAuthV4(provider)


AUTHS: dict[str, Callable[[LocalOss], object]] = {"v1": v1, "v4": v4, "provider-v4": provider_v4}


# oss2 never reads the (empty) body of a PUT or DELETE answer, so requests cannot put that connection back
# in its pool and the socket is only closed by the garbage collector: a ResourceWarning from the SDK,
# not from localoss. Ignored in this module only, and collected before each test ends (see below).
pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")
_sessions: list[oss2.Session] = []


@pytest.fixture(autouse=True)
def _close_sessions() -> Iterator[None]:
    yield
    while _sessions:
        _sessions.pop().session.close()
    gc.collect()  # the leaked sockets go now, while this module's filter applies


def session() -> oss2.Session:
    _sessions.append(oss2.Session())
    return _sessions[-1]


def make_bucket(server: LocalOss, name: str, auth: object) -> oss2.Bucket:
    return oss2.Bucket(auth, server.endpoint, name, region=REGION, session=session(), enable_crc=True)


@pytest.fixture(params=sorted(AUTHS))
def oss_bucket(request: pytest.FixtureRequest, localoss: LocalOss, bucket: str) -> oss2.Bucket:
    return make_bucket(localoss, bucket, AUTHS[request.param](localoss))


def test_put_get_head_meta_delete(oss_bucket: oss2.Bucket) -> None:
    data = os.urandom(300_000)
    put = oss_bucket.put_object("dir/obj.bin", data, headers={"x-oss-meta-origin": "test"})
    assert put.etag == hashlib.md5(data).hexdigest().upper()
    assert put.crc is not None  # oss2 checked it against its own CRC-64 (enable_crc=True)

    got = oss_bucket.get_object("dir/obj.bin")
    assert got.read() == data  # oss2 verifies x-oss-hash-crc64ecma as it reads the whole body
    assert got.server_crc == got.client_crc

    ranged = oss_bucket.get_object("dir/obj.bin", byte_range=(1000, 1999))
    assert ranged.read() == data[1000:2000]
    assert ranged.status == 206

    head = oss_bucket.head_object("dir/obj.bin")
    assert head.content_length == len(data)
    assert head.etag == put.etag
    assert head.headers["x-oss-meta-origin"] == "test"

    meta = oss_bucket.get_object_meta("dir/obj.bin")
    assert (meta.content_length, meta.etag) == (len(data), put.etag)
    assert meta.last_modified > 0

    assert oss_bucket.object_exists("dir/obj.bin")
    oss_bucket.delete_object("dir/obj.bin")
    assert not oss_bucket.object_exists("dir/obj.bin")


@pytest.mark.parametrize(
    "key", ["with space.bin", "percent%20literal", "plus+and&amp", "ünïcødé/文件 名.bin", "a/b/c/d"]
)
def test_awkward_keys(oss_bucket: oss2.Bucket, key: str) -> None:
    oss_bucket.put_object(key, key.encode())
    assert oss_bucket.get_object(key).read() == key.encode()
    assert [o.key for o in oss2.ObjectIterator(oss_bucket)] == [key]
    assert [o.key for o in oss2.ObjectIteratorV2(oss_bucket)] == [key]
    oss_bucket.delete_object(key)


def test_missing_key_and_bucket(oss_bucket: oss2.Bucket, localoss: LocalOss) -> None:
    with pytest.raises(oss2.exceptions.NoSuchKey) as info:
        oss_bucket.get_object("missing")
    assert info.value.request_id
    with pytest.raises(oss2.exceptions.NoSuchKey) as head_info:
        oss_bucket.head_object("missing")
    assert head_info.value.request_id
    ghost = make_bucket(localoss, "no-such-bucket-at-all", v1(localoss))
    with pytest.raises(oss2.exceptions.NoSuchBucket):
        ghost.get_object("k")


@pytest.mark.parametrize("auth", sorted(AUTHS))
def test_resumable_download_splits(tmp_path: Path, auth: str) -> None:
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        server = start_localoss(tmp_path / "root", "--log-level", "DEBUG", stderr=log)
        try:
            server.make_bucket("resumable")
            oss_bucket = make_bucket(server, "resumable", AUTHS[auth](server))
            data = os.urandom(3 * 1024 * 1024 + 12345)
            oss_bucket.put_object("big/file.bin", data)
            target = tmp_path / "out.bin"
            oss2.resumable_download(
                oss_bucket,
                "big/file.bin",
                str(target),
                multiget_threshold=256 * 1024,
                part_size=256 * 1024,
                num_threads=4,
                store=oss2.ResumableDownloadStore(root=str(tmp_path)),
            )
            assert target.read_bytes() == data
        finally:
            assert server.stop() == 0
    ranged = [
        line
        for line in log_path.read_text().splitlines()
        if "GET /resumable/big" in line and "-> 206" in line
    ]
    assert len(ranged) == 13  # ceil(3 MiB + 12345 B / 256 KiB) parts, each its own ranged GET


@pytest.fixture(scope="module")
def many_keys(localoss: LocalOss) -> tuple[str, list[str]]:
    """A bucket of 2,500 keys dropped straight into the folder, in 3 levels, with awkward names."""
    name = f"many-keys-{os.getpid()}-{next(_many_numbers)}"
    keys = []
    for i in range(N_KEYS):
        top = ("alpha", "beta", "gam ma", "délta")[i % 4]
        keys.append(f"{top}/{i % 7:02d}/obj+{i:05d}.bin" if i % 5 else f"{top}/file%{i:05d}")
    keys.append("root-level.txt")
    for key in keys:
        localoss.put_file(name, key, key.encode())
    return name, sorted(keys, key=lambda k: k.encode())


def expected_listing(keys: list[str], prefix: str, delimiter: str) -> tuple[list[str], list[str]]:
    objects, prefixes = [], set()
    for key in keys:
        if not key.startswith(prefix):
            continue
        cut = key.find(delimiter, len(prefix)) if delimiter else -1
        if cut >= 0:
            prefixes.add(key[: cut + len(delimiter)])
        else:
            objects.append(key)
    return objects, sorted(prefixes)


@pytest.mark.parametrize("iterator", [oss2.ObjectIterator, oss2.ObjectIteratorV2])
@pytest.mark.parametrize(
    ("prefix", "delimiter"), [("", ""), ("", "/"), ("beta/", "/"), ("gam ma/03/", ""), ("d", "/")]
)
@pytest.mark.parametrize("auth", ["v1", "v4"])
def test_iterators_over_many_keys(
    localoss: LocalOss,
    many_keys: tuple[str, list[str]],
    iterator: type,
    prefix: str,
    delimiter: str,
    auth: str,
) -> None:
    name, keys = many_keys
    oss_bucket = make_bucket(localoss, name, AUTHS[auth](localoss))
    found = list(iterator(oss_bucket, prefix=prefix, delimiter=delimiter, max_keys=1000))
    objects = [o.key for o in found if not o.is_prefix()]
    prefixes = [o.key for o in found if o.is_prefix()]
    want_objects, want_prefixes = expected_listing(keys, prefix, delimiter)
    assert objects == want_objects
    assert sorted(prefixes) == want_prefixes
    sizes = {o.key: o.size for o in found if not o.is_prefix()}
    assert all(sizes[k] == len(k.encode()) for k in objects)
    if not delimiter and not prefix:
        assert len(objects) == N_KEYS + 1


def test_listing_pages_with_small_max_keys(localoss: LocalOss, many_keys: tuple[str, list[str]]) -> None:
    name, keys = many_keys
    oss_bucket = make_bucket(localoss, name, v1(localoss))
    first = oss_bucket.list_objects(prefix="alpha/", delimiter="/", max_keys=3)
    assert [p for p in first.prefix_list] == ["alpha/00/", "alpha/01/", "alpha/02/"]
    assert first.is_truncated
    assert first.next_marker == "alpha/02/"
    second = oss_bucket.list_objects(prefix="alpha/", delimiter="/", marker=first.next_marker, max_keys=1000)
    want_objects, want_prefixes = expected_listing(keys, "alpha/", "/")
    assert second.prefix_list == want_prefixes[3:]
    assert [o.key for o in second.object_list] == want_objects
    assert not second.is_truncated
    v2 = oss_bucket.list_objects_v2(prefix="beta/", start_after="beta/05/", max_keys=2)
    after = [k for k in keys if k.startswith("beta/") and k > "beta/05/"]
    assert [o.key for o in v2.object_list] == after[:2]
    assert v2.next_continuation_token
    rest = oss_bucket.list_objects_v2(
        prefix="beta/", continuation_token=v2.next_continuation_token, max_keys=1000
    )
    assert [o.key for o in rest.object_list] == after[2:]


def test_listing_sees_files_dropped_later(localoss: LocalOss, bucket: str) -> None:
    oss_bucket = make_bucket(localoss, bucket, v1(localoss))
    oss_bucket.put_object("a", b"1")
    assert [o.key for o in oss2.ObjectIterator(oss_bucket)] == ["a"]
    localoss.put_file(bucket, "b/c", b"22")
    localoss.put_file(bucket, "d", b"333")
    assert [(o.key, o.size) for o in oss2.ObjectIterator(oss_bucket)] == [("a", 1), ("b/c", 2), ("d", 3)]
    (localoss.root / bucket / "b" / "c").unlink()
    assert [o.key for o in oss2.ObjectIterator(oss_bucket)] == ["a", "d"]


def test_wrong_credentials(localoss: LocalOss, bucket: str) -> None:
    localoss.put_file(bucket, "k", b"v")
    for make in (oss2.Auth, oss2.AuthV4):
        wrong_secret = make_bucket(localoss, bucket, make(localoss.access_key_id, "not-the-secret"))
        with pytest.raises(oss2.exceptions.SignatureDoesNotMatch):
            wrong_secret.get_object("k")
        wrong_id = make_bucket(localoss, bucket, make("not-the-key", localoss.access_key_secret))
        with pytest.raises(oss2.exceptions.ServerError) as info:
            wrong_id.get_object("k")
        assert info.value.code == "InvalidAccessKeyId"
        assert info.value.status == 403
    anonymous = make_bucket(localoss, bucket, oss2.AnonymousAuth())
    with pytest.raises(oss2.exceptions.AccessDenied):
        anonymous.get_object("k")


@pytest.mark.parametrize("version", [oss2.AUTH_VERSION_1, oss2.AUTH_VERSION_4])
def test_sts_token(localoss_factory: Callable[..., LocalOss], version: str) -> None:
    server = localoss_factory("--sts-token", "the-sts-token")
    server.make_bucket("sts-bucket")
    auth = oss2.StsAuth(server.access_key_id, server.access_key_secret, "the-sts-token", auth_version=version)
    bucket = make_bucket(server, "sts-bucket", auth)
    bucket.put_object("k", b"secure")
    assert bucket.get_object("k").read() == b"secure"
    assert [o.key for o in oss2.ObjectIteratorV2(bucket)] == ["k"]
    wrong = oss2.StsAuth(server.access_key_id, server.access_key_secret, "wrong-token", auth_version=version)
    with pytest.raises(oss2.exceptions.ServerError) as info:
        make_bucket(server, "sts-bucket", wrong).get_object("k")
    assert info.value.status == 403
    with pytest.raises(oss2.exceptions.ServerError):
        make_bucket(server, "sts-bucket", v1(server)).get_object("k")  # no token at all


def test_bucket_lifecycle_and_service(localoss: LocalOss) -> None:
    name = f"oss2-made-{os.getpid()}"
    bucket = make_bucket(localoss, name, v1(localoss))
    bucket.create_bucket()
    service = oss2.Service(v1(localoss), localoss.endpoint, session=session())
    assert name in [b.name for b in oss2.BucketIterator(service)]
    bucket.put_object("x", b"1")
    with pytest.raises(oss2.exceptions.BucketNotEmpty):
        bucket.delete_bucket()
    bucket.delete_object("x")
    bucket.delete_bucket()
    assert not (localoss.root / name).exists()
