"""boto3 against localoss's S3 dialect (AWS SigV4, path-style addressing)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config
from localoss_harness import LocalOss

N_KEYS = 2500


def s3_client(server: LocalOss, secret: str | None = None) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        aws_access_key_id=server.access_key_id,
        aws_secret_access_key=secret or server.access_key_secret,
        region_name="us-east-1",
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


@pytest.fixture
def s3(localoss: LocalOss) -> Iterator[Any]:
    client = s3_client(localoss)
    yield client
    client.close()


def test_put_get_range_head(s3: Any, bucket: str) -> None:
    data = os.urandom(200_000)
    put = s3.put_object(Bucket=bucket, Key="dir/obj one.bin", Body=data, Metadata={"origin": "boto3"})
    assert put["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    whole = s3.get_object(Bucket=bucket, Key="dir/obj one.bin")
    assert whole["Body"].read() == data
    ranged = s3.get_object(Bucket=bucket, Key="dir/obj one.bin", Range="bytes=1000-1999")
    assert ranged["Body"].read() == data[1000:2000]
    assert ranged["ContentRange"] == f"bytes 1000-1999/{len(data)}"
    suffix = s3.get_object(Bucket=bucket, Key="dir/obj one.bin", Range="bytes=-10")
    assert suffix["Body"].read() == data[-10:]
    head = s3.head_object(Bucket=bucket, Key="dir/obj one.bin")
    assert head["ContentLength"] == len(data)
    assert head["Metadata"] == {"origin": "boto3"}
    assert head["ETag"] == put["ETag"]
    # S3 answers an unsatisfiable range with 416 whatever the headers.
    with pytest.raises(botocore.exceptions.ClientError) as info:
        s3.get_object(Bucket=bucket, Key="dir/obj one.bin", Range=f"bytes={len(data)}-")
    assert info.value.response["Error"]["Code"] == "InvalidRange"


def test_errors(s3: Any, bucket: str) -> None:
    with pytest.raises(s3.exceptions.NoSuchKey) as info:
        s3.get_object(Bucket=bucket, Key="missing")
    assert info.value.response["ResponseMetadata"]["RequestId"]
    with pytest.raises(botocore.exceptions.ClientError) as head:
        s3.head_object(Bucket=bucket, Key="missing")
    assert head.value.response["Error"]["Code"] == "404"
    with pytest.raises(s3.exceptions.NoSuchBucket):
        s3.list_objects_v2(Bucket="no-such-bucket-boto")


def test_wrong_secret_refused(localoss: LocalOss, bucket: str) -> None:
    localoss.put_file(bucket, "k", b"v")
    client = s3_client(localoss, secret="not-the-secret")
    try:
        with pytest.raises(botocore.exceptions.ClientError) as info:
            client.get_object(Bucket=bucket, Key="k")
        assert info.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    finally:
        client.close()


def test_list_objects_v2_paginator(s3: Any, localoss: LocalOss, bucket: str) -> None:
    keys = [f"part{i % 3}/sub {i % 11}/obj+{i:05d}%.bin" for i in range(N_KEYS)] + ["top ü.txt"]
    for key in keys:
        localoss.put_file(bucket, key, b"x" * (len(key) % 13))
    paginator = s3.get_paginator("list_objects_v2")
    pages = list(paginator.paginate(Bucket=bucket, PaginationConfig={"PageSize": 1000}))
    assert len(pages) == 3
    listed = [obj["Key"] for page in pages for obj in page.get("Contents", [])]
    assert listed == sorted(keys, key=lambda k: k.encode())
    sizes = {obj["Key"]: obj["Size"] for page in pages for obj in page["Contents"]}
    assert all(sizes[k] == len(k) % 13 for k in keys)

    rolled = list(paginator.paginate(Bucket=bucket, Delimiter="/", Prefix="part1/"))
    prefixes = sorted(p["Prefix"] for page in rolled for p in page.get("CommonPrefixes", []))
    assert prefixes == sorted({f"part1/sub {i % 11}/" for i in range(N_KEYS) if i % 3 == 1})
    assert all("Contents" not in page for page in rolled)

    v1 = s3.get_paginator("list_objects")
    listed_v1 = [obj["Key"] for page in v1.paginate(Bucket=bucket) for obj in page.get("Contents", [])]
    assert listed_v1 == listed


def test_bucket_create_delete(s3: Any, localoss: LocalOss) -> None:
    name = f"boto-made-{os.getpid()}"
    s3.create_bucket(Bucket=name)
    assert name in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    s3.head_bucket(Bucket=name)
    s3.put_object(Bucket=name, Key="k", Body=b"1")
    s3.delete_object(Bucket=name, Key="k")
    s3.delete_bucket(Bucket=name)
    assert not (localoss.root / name).exists()
