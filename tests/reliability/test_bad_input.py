"""Bad input through the public API: one clear error naming the problem and the fix; nothing deleted.

URIs, endpoints, buckets and prefixes, ``model_dir`` cases, config files and keywords, credentials files.
Each case checks the error's type, that its message quotes the bad value and says what to do, and that
every file that existed before is still there, byte for byte.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from localoss_harness import LocalOss
from reliability_harness import can_mount, make_connector, tmpfs

from ossmodelconnector import (
    ConfigError,
    CredentialsError,
    InvalidURIError,
    ObjectNotFoundError,
    OssModelConnector,
    RequestError,
    UnsafePathError,
)
from ossmodelconnector.config import Config
from ossmodelconnector.oss.credentials import Credentials
from ossmodelconnector.oss.responses import CODE_UNKNOWN_HOST


@pytest.fixture
def model_bucket(localoss: LocalOss, bucket: str) -> str:
    localoss.put_file(bucket, "m/config.json", b"{}")
    return bucket


@pytest.fixture
def connector(localoss: LocalOss) -> Iterator[OssModelConnector]:
    with make_connector(localoss, max_attempts=2) as c:
        yield c


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_symlink()}


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("oss:/x/m/", "must be followed by '//'"),
        ("s3://BUCKET/m/", "its scheme is 's3', not 'oss'"),
        ("http://BUCKET/m/", "its scheme is 'http', not 'oss'"),
        ("BUCKET/m/", "does not start with 'oss://'"),
        ("oss://", "the bucket is missing"),
        ("oss:///m/", "the bucket is missing"),
        ("oss://Bad_Bucket/m/", "is not a valid bucket name"),
        ("oss://BUCKET//", "one slash too many"),
        ("oss://BUCKET/m//x/", "empty folder name"),
    ],
)
def test_malformed_uris_are_refused_before_anything_happens(
    connector: OssModelConnector, model_bucket: str, tmp_path: Path, uri: str, says: str
) -> None:
    uri = uri.replace("BUCKET", model_bucket)
    with pytest.raises(InvalidURIError) as caught:
        connector.prepare_directory(uri, tmp_path / "model")
    assert says in str(caught.value) and repr(uri) in str(caught.value)
    assert "oss://bucket/" in str(caught.value)  # the form expected: the fix
    assert not (tmp_path / "model").exists()
    if "//" not in uri.partition("://")[2]:  # a key may hold "//" (taken literally); a prefix may not
        with pytest.raises(InvalidURIError):
            connector.open(uri.rstrip("/") + "/config.json")


def test_open_of_a_prefix_or_missing_object(connector: OssModelConnector, model_bucket: str) -> None:
    with pytest.raises(InvalidURIError, match="names a prefix, not an object"):
        connector.open(f"oss://{model_bucket}/m/")
    with pytest.raises(ObjectNotFoundError, match="check the key") as caught:
        connector.open(f"oss://{model_bucket}/m/missing.json")
    assert (caught.value.status, caught.value.code) == (404, "NoSuchKey")
    with pytest.raises(ObjectNotFoundError, match="check the bucket name") as missing_bucket:
        connector.open("oss://no-such-bucket-here/k")
    assert missing_bucket.value.code == "NoSuchBucket"


def test_missing_bucket_and_empty_prefix_are_errors_not_empty_models(
    connector: OssModelConnector, model_bucket: str, tmp_path: Path
) -> None:
    with pytest.raises(ObjectNotFoundError, match="check the bucket name") as caught:
        connector.prepare_directory("oss://no-such-bucket-here/m/", tmp_path / "a")
    assert caught.value.code == "NoSuchBucket"
    with pytest.raises(ObjectNotFoundError, match="no objects under") as empty:
        connector.prepare_directory(f"oss://{model_bucket}/nothing-here/", tmp_path / "b")
    assert f"connector.list({model_bucket!r}, 'nothing-here/')" in str(empty.value)  # the fix
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    ("endpoint", "error", "says"),
    [
        ("htp://127.0.0.1:9000", ConfigError, "scheme 'htp' is not http or https"),
        ("ftp://example.com", ConfigError, "scheme 'ftp' is not http or https"),
        ("", ConfigError, "it is empty"),
        ("http://", ConfigError, "the host is missing"),
        ("127.0.0.1:port", ConfigError, "does not parse"),
    ],
)
def test_malformed_endpoints(endpoint: str, error: type[Exception], says: str) -> None:
    with pytest.raises(error) as caught:
        OssModelConnector(endpoint, cred_provider=Credentials("id", "secret"))
    assert says in str(caught.value) and "expected a host such as" in str(caught.value)


def test_an_endpoint_with_a_typo_fails_at_once_and_says_so() -> None:
    """A host name that does not resolve is final (not retried for the whole budget)."""
    with OssModelConnector(
        "oss-cn-beijing-internal.aliyuncs.invalid", cred_provider=Credentials("id", "secret")
    ) as connector:
        with pytest.raises(RequestError) as caught:
            connector.open("oss://some-bucket/k")
        assert caught.value.code == CODE_UNKNOWN_HOST
        assert "typo" in str(caught.value)
        assert connector.stats()["retries"] == 0


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "precious.bin").write_bytes(b"do not delete")
    return other


def _model_dir_case(case: str, tmp_path: Path, elsewhere: Path) -> tuple[str, str]:
    if case == "a file":
        path = tmp_path / "afile"
        path.write_text("mine")
        return str(path), "is not a directory"
    if case == "root":
        return "/", "root directory"
    if case == "home":
        return os.path.expanduser("~"), "home directory"
    if case == "an ancestor of home":
        return os.path.dirname(os.path.expanduser("~")) or "/", "refused"
    if case == "a symlink to elsewhere":
        link = tmp_path / "link"
        link.symlink_to(elsewhere)
        return str(link), "is a symlink"
    if case == "a foreign non-empty directory":
        return str(elsewhere), "was not prepared by ossmodelconnector"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "a file",
        "root",
        "home",
        "an ancestor of home",
        "a symlink to elsewhere",
        "a foreign non-empty directory",
    ],
)
def test_model_dirs_that_must_not_be_touched(
    connector: OssModelConnector, model_bucket: str, tmp_path: Path, elsewhere: Path, case: str
) -> None:
    path, says = _model_dir_case(case, tmp_path, elsewhere)
    before = _snapshot(tmp_path)
    with pytest.raises(UnsafePathError) as caught:
        connector.prepare_directory(f"oss://{model_bucket}/m/", path)
    message = str(caught.value)
    assert says in message and "nothing was deleted" in message and "Fix:" in message
    assert _snapshot(tmp_path) == before
    assert (elsewhere / "precious.bin").read_bytes() == b"do not delete"


@pytest.mark.skipif(not can_mount(), reason="a read-only mount needs root (CAP_SYS_ADMIN) to create")
def test_a_read_only_mount_is_refused_and_left_alone(
    connector: OssModelConnector, model_bucket: str, tmp_path: Path
) -> None:
    with tmpfs(tmp_path / "ro", "1m") as mount:
        (mount / "model").mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        with pytest.raises(UnsafePathError) as caught:
            connector.prepare_directory(f"oss://{model_bucket}/m/", mount / "model")
        assert "read-only" in str(caught.value) and "nothing was deleted" in str(caught.value)
        with pytest.raises(UnsafePathError, match="read-only file system"):
            connector.prepare_directory(f"oss://{model_bucket}/m/", mount / "new" / "model")


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root writes through permission bits (the read-only mount case)"
)
def test_an_unwritable_directory_is_refused(
    connector: OssModelConnector, model_bucket: str, tmp_path: Path
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(UnsafePathError, match="nothing was deleted"):
            connector.prepare_directory(f"oss://{model_bucket}/m/", locked)
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize(
    ("document", "says"),
    [
        ({"chunkSize": 4}, "unknown key 'chunkSize'"),
        ({"chunkSizeMB": "4"}, "is a str, not a number"),
        ({"chunkSizeMB": 0}, "an integer from 1 to 1024"),
        ({"prefetch": 3}, "must be an object"),
        ({"prefetch": {"workers": -1}}, "prefetch.workers"),
        ({"retry": {"maxAttempts": True}}, "retry.maxAttempts"),
        ({"cacheDir": "relative/dir"}, "cacheDir"),
        ("{not json", "is not valid JSON"),
        ([1, 2], "object"),
    ],
)
def test_config_files_with_wrong_types_or_unknown_keys(
    localoss: LocalOss, tmp_path: Path, document: object, says: str
) -> None:
    path = tmp_path / "config.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    with pytest.raises(ConfigError) as caught:
        OssModelConnector(localoss.endpoint, cred_provider=Credentials("id", "secret"), config_path=str(path))
    assert says in str(caught.value) and str(path) in str(caught.value)


def test_config_keywords_with_wrong_types_or_unknown_names(localoss: LocalOss) -> None:
    creds = Credentials("id", "secret")
    with pytest.raises(ConfigError, match="did you mean 'chunk_size_mb'"):
        OssModelConnector(localoss.endpoint, cred_provider=creds, chunk_sizes=4)
    with pytest.raises(ConfigError, match="is not an integer"):
        OssModelConnector(localoss.endpoint, cred_provider=creds, chunk_size_mb=2.5)
    with pytest.raises(ConfigError, match="does not exist"):
        OssModelConnector(localoss.endpoint, cred_provider=creds, config_path="/nonexistent/config.json")


SECRET = "sEcReT-value-that-must-not-leak-0123456789"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('{"AccessKeyId": "id", "AccessKeySecret": "' + SECRET + '",', "is not valid JSON"),
        ('{"AccessKeyId": "id"}', "has no AccessKeySecret field"),
        ('{"AccessKeySecret": "' + SECRET + '"}', "has no AccessKeyId field"),
        ('{"AccessKeyId": "id", "AccessKeySecret": 5}', "field AccessKeySecret is a JSON int"),
        ('["id", "' + SECRET + '"]', "holds a JSON list"),
        ('{"AccessKeyId": "id", "AccessKeySecret": "' + SECRET + '", "Expiration": "soon"}', "ISO 8601"),
        (
            '{"AccessKeyId": "id", "AccessKeySecret": "'
            + SECRET
            + '", "Expiration": "2001-01-01T00:00:00Z"}',
            "expired",
        ),
        ("\xff\xfe", "not valid JSON"),
    ],
)
def test_credentials_files_with_bad_json_or_missing_fields(
    localoss: LocalOss, tmp_path: Path, text: str, says: str
) -> None:
    path = tmp_path / "creds.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CredentialsError) as caught:
        OssModelConnector(localoss.endpoint, cred_path=str(path))
    message = str(caught.value)
    assert says in message and str(path) in message
    assert SECRET not in message and SECRET not in repr(caught.value)
    chained = caught.value.__cause__ or caught.value.__context__
    assert chained is None or SECRET not in str(chained)


def test_no_credentials_at_all_lists_the_three_ways(localoss: LocalOss) -> None:
    for name in ("OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET", "OSS_SESSION_TOKEN"):
        os.environ.pop(name, None)
    with pytest.raises(CredentialsError) as caught:
        OssModelConnector(localoss.endpoint)
    for way in ("cred_provider=", "cred_path=", "OSS_ACCESS_KEY_ID"):
        assert way in str(caught.value)


def _special_file(what: str, folder: Path, name: str) -> str:
    """A FIFO, a device, or a valid-looking JSON file of 2 MiB, where a small JSON file is expected."""
    if what == "/dev/zero":
        return "/dev/zero"
    path = folder / name
    if what == "FIFO":
        os.mkfifo(path)
    else:
        path.write_text('{"AccessKeyId": "id", "AccessKeySecret": "s"}' + " " * (2 << 20))
    return str(path)


@pytest.mark.timeout(60)  # only a hang guard: before the fix a FIFO waited forever for a writer
@pytest.mark.parametrize("what", ["FIFO", "/dev/zero", "2 MiB file"])
@pytest.mark.parametrize(
    ("setting", "error", "noun"),
    [("cred_path", CredentialsError, "credentials file"), ("config_path", ConfigError, "config file")],
)
def test_a_fifo_a_device_or_a_huge_file_as_cred_or_config_path_is_refused_unread(
    localoss: LocalOss, model_bucket: str, tmp_path: Path, what: str, setting: str, error: type, noun: str
) -> None:
    path = _special_file(what, tmp_path, "settings.json")
    creds = tmp_path / "creds.json"
    creds.write_text(
        json.dumps({"AccessKeyId": localoss.access_key_id, "AccessKeySecret": localoss.access_key_secret})
    )
    arguments = {"cred_path": str(creds), "config_path": "", setting: path}
    with pytest.raises(error) as caught:
        OssModelConnector(localoss.endpoint, **arguments)
    assert type(caught.value) is error
    message = str(caught.value)
    why = {
        "FIFO": "is a FIFO (named pipe), not a regular file",
        "/dev/zero": "is a character device, not a regular file",
        "2 MiB file": f"holds more than 1 MiB ({os.stat(path).st_size} bytes)",
    }[what]
    assert message.startswith(f"{noun} {path!r} {why}: it is not read; {setting} must name a regular JSON")
    assert message.endswith("fix the path")
    # The same setting naming an ordinary file still loads, and the connector reads the exact bytes.
    good = tmp_path / "good.json"
    good.write_text(creds.read_text() if setting == "cred_path" else '{"chunkSizeMB": 2}')
    with (
        OssModelConnector(localoss.endpoint, **{**arguments, setting: str(good)}) as connector,
        connector.open(f"oss://{model_bucket}/m/config.json") as stream,
    ):
        assert stream.read() == b"{}"


_SECONDS_FIELDS = [f for f in dataclasses.fields(Config) if f.type in (float, "float")]


@pytest.mark.parametrize("field", _SECONDS_FIELDS, ids=lambda f: f.metadata["key"].json)
@pytest.mark.parametrize("source", ["keyword", "config file", "environment"])
def test_seconds_settings_beyond_their_bound_are_config_errors_not_overflows(
    localoss: LocalOss, tmp_path: Path, field: dataclasses.Field[float], source: str
) -> None:
    key = field.metadata["key"].json
    env = f"OSSMC_{field.name.upper()}"
    bound = "3600 (1 hour)" if field.metadata["key"].hi == 3600 else "2592000 (30 days)"
    creds = Credentials("id", "secret")
    values = ["1e300", "1e400"] if source == "config file" else ["1e300", "inf", "nan"]
    for text in values:
        arguments: dict[str, object] = {}
        if source == "keyword":
            arguments[field.name] = float(text)
            where = f"keyword argument {field.name}"
        elif source == "config file":
            *parents, leaf = key.split(".")
            document = "".join(f'{{"{p}": ' for p in parents) + f'{{"{leaf}": {text}}}' + "}" * len(parents)
            path = tmp_path / "config.json"
            path.write_text(document)
            arguments["config_path"] = str(path)
            where = f"config file {str(path)!r}"
        else:
            os.environ[env] = text
            where = f"environment variable {env}"
        try:
            with pytest.raises(ConfigError) as caught:
                OssModelConnector(localoss.endpoint, cred_provider=creds, **arguments)
        finally:
            os.environ.pop(env, None)
        message = str(caught.value)
        assert type(caught.value) is ConfigError
        assert message.startswith(f"invalid {key} ({field.name}, env {env}, "), message
        assert f": {float(text)!r} ({where}) is " in message, message
        low = "> 0" if field.metadata["key"].lo_exclusive else ">= 0"
        assert message.endswith(f"; accepted: a number of seconds {low} and <= {bound}"), message
