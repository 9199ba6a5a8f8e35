"""list_objects and fast_list against a real ``localoss``: the same set of keys, whatever the layout."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from localoss_harness import LocalOss

from ossmodelconnector.config import load_config
from ossmodelconnector.errors import ObjectNotFoundError, RetriesExhaustedError
from ossmodelconnector.oss.client import OssClient
from ossmodelconnector.oss.credentials import Credentials, StaticCredentialProvider
from ossmodelconnector.oss.listing import fast_list, list_objects
from ossmodelconnector.oss.uri import parse_endpoint

SPECIAL_KEYS = [
    "odd/a b.bin",
    "odd/100%.bin",
    "odd/%2F%20.bin",
    "odd/模型/权重.bin",
    "odd/a+b=c&d.bin",
    "odd/a.b",
]
_buckets = itertools.count()


def make_client(server: LocalOss, **overrides: object) -> OssClient:
    provider = StaticCredentialProvider(Credentials(server.access_key_id, server.access_key_secret))
    config = load_config(None, retry_base_delay_s=0.001, retry_max_delay_s=0.01, **overrides)
    return OssClient(parse_endpoint(server.endpoint), provider, config)


def write_keys(root: Path, bucket: str, keys: list[str]) -> None:
    for key in keys:
        path = root / bucket / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(key.encode()[:7])


def many_keys() -> list[str]:
    keys = [
        f"models/m{top:02d}/shard{mid}/file-{leaf:03d}.bin"
        for top in range(40)
        for mid in range(10)
        for leaf in range(50)
    ]
    return [*keys, "models/README.md", "models/config.json", "top.bin", *SPECIAL_KEYS]


@pytest.fixture(scope="module")
def big_bucket(localoss: LocalOss) -> tuple[str, list[str]]:
    bucket = "listing-big"
    keys = many_keys()
    write_keys(localoss.root, bucket, keys)
    return bucket, sorted(keys)


@pytest.fixture
def client(localoss: LocalOss) -> Iterator[OssClient]:
    with make_client(localoss) as c:
        yield c


def test_big_listing_equals_the_files(big_bucket: tuple[str, list[str]], client: OssClient) -> None:
    bucket, keys = big_bucket
    assert len(keys) > 20_000
    listed = list_objects(client, bucket, "")
    assert [o.key for o in listed] == keys
    assert all(o.size == len(o.key.encode()[:7]) and o.bucket == bucket for o in listed)
    fast = fast_list(client, bucket, "", 16)
    assert fast == listed
    assert client.stats()["connections"] <= 17


@pytest.mark.parametrize(
    "prefix", ["models/", "models/m1", "models/m07/shard3/", "odd/", "models/m39/shard9/file-049"]
)
@pytest.mark.parametrize("requests", [1, 3, 16])
def test_fast_list_matches_list_for_prefixes(
    big_bucket: tuple[str, list[str]], client: OssClient, prefix: str, requests: int
) -> None:
    bucket, keys = big_bucket
    expected = [k for k in keys if k.startswith(prefix)]
    assert expected
    assert [o.key for o in list_objects(client, bucket, prefix)] == expected
    assert [o.key for o in fast_list(client, bucket, prefix, requests)] == expected


def test_pagination_and_delimiter(big_bucket: tuple[str, list[str]], client: OssClient) -> None:
    bucket, keys = big_bucket
    prefix = "models/m03/shard2/"
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = client.list_page(bucket, prefix, continuation_token=token, max_keys=7)
        assert len(page.objects) <= 7
        seen += [o.key for o in page.objects]
        pages += 1
        if page.next_token is None:
            break
        token = page.next_token
    assert seen == [k for k in keys if k.startswith(prefix)]
    assert pages == 8  # 50 keys, 7 per page
    top = client.list_page(bucket, "models/", delimiter="/")
    assert top.common_prefixes == [f"models/m{i:02d}/" for i in range(40)]
    assert [o.key for o in top.objects] == ["models/README.md", "models/config.json"]
    after = client.list_page(bucket, "models/m05/", start_after="models/m05/shard9/file-047.bin")
    assert [o.key for o in after.objects] == [
        "models/m05/shard9/file-048.bin",
        "models/m05/shard9/file-049.bin",
    ]


def test_special_keys_are_decoded(big_bucket: tuple[str, list[str]], client: OssClient) -> None:
    bucket, _ = big_bucket
    assert [o.key for o in list_objects(client, bucket, "odd/")] == sorted(SPECIAL_KEYS)
    page = client.list_page(bucket, "odd/", delimiter="/")
    assert page.common_prefixes == ["odd/模型/"]


def test_empty_prefix_lists_nothing(big_bucket: tuple[str, list[str]], client: OssClient) -> None:
    bucket, _ = big_bucket
    assert list_objects(client, bucket, "no/such/prefix/") == []
    assert fast_list(client, bucket, "no/such/prefix/", 8) == []


def test_missing_bucket_error_reaches_the_caller(client: OssClient) -> None:
    with pytest.raises(ObjectNotFoundError) as caught:
        fast_list(client, "no-such-bucket-x", "", 4)
    assert caught.value.code == "NoSuchBucket"
    with pytest.raises(ObjectNotFoundError):
        list_objects(client, "no-such-bucket-x", "")


def test_worker_errors_reach_the_caller(localoss_factory: Callable[..., LocalOss]) -> None:
    server = localoss_factory("--fault-503", "0.3", "--seed", "4")
    keys = [f"d{i}/e{j}/f{k}" for i in range(8) for j in range(8) for k in range(8)]
    write_keys(server.root, "flaky-list", keys)
    with make_client(server, max_attempts=1) as c, pytest.raises(RetriesExhaustedError) as caught:
        fast_list(c, "flaky-list", "", 8)
    assert caught.value.status == 503
    with make_client(server, max_attempts=50) as c:
        assert [o.key for o in fast_list(c, "flaky-list", "", 8)] == sorted(keys)
        assert c.stats()["retries"] > 0


segments = st.sampled_from(["a", "b", "a b", "a.b", "a-b", "%2F", "é", "模", "z", "a!"])
key_strategy = st.builds(
    lambda dirs, leaf: "/".join([*dirs, leaf + ".f"]),
    st.lists(segments, max_size=3),
    segments,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    keys=st.lists(key_strategy, min_size=0, max_size=60, unique=True),
    prefix=st.sampled_from(["", "a", "a/", "a b/", "é/", "z"]),
    requests=st.integers(1, 6),
)
def test_fast_list_property(localoss: LocalOss, keys: list[str], prefix: str, requests: int) -> None:
    bucket = f"prop-listing-{next(_buckets)}"
    localoss.make_bucket(bucket)
    write_keys(localoss.root, bucket, keys)
    expected = sorted(k for k in keys if k.startswith(prefix))
    with make_client(localoss) as c:
        assert [o.key for o in list_objects(c, bucket, prefix)] == expected
        # Small pages force the span splitting code paths on small trees.
        assert [o.key for o in fast_list(c, bucket, prefix, requests, max_keys=2)] == expected
        assert [o.key for o in list_objects(c, bucket, prefix, max_keys=3)] == expected
