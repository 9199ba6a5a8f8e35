"""Golden signing vectors: our headers are byte-identical to what an ``oss2.Bucket`` sends.

oss2 builds the request through its whole pipeline (URL, params, headers, auth); a session that records
the request instead of sending it lets us compare. Time is frozen for both signers. Two hand-computed
vectors check the algorithms themselves, independently of oss2's code.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import logging
from collections.abc import Callable
from typing import Any

import oss2
import oss2.auth
import oss2.utils
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ossmodelconnector.errors import ConfigError
from ossmodelconnector.oss.credentials import Credentials
from ossmodelconnector.oss.signing import Signer

FIXED_HTTP_DATE = "Wed, 25 Nov 2026 10:11:12 GMT"
FIXED_UTC = dt.datetime(2026, 11, 25, 10, 11, 12)
ENDPOINT = "http://127.0.0.1:9000"
BUCKET = "golden-bucket"
REGION = "cn-hangzhou"
AK = "LTAI-golden-id"
SK = "golden-secret-value"
TOKEN = "CAIS-sts-token+/=value"

_SIGNED = ("authorization", "date", "x-oss-date", "x-oss-content-sha256", "x-oss-security-token")


class _FrozenDatetime(dt.datetime):
    @classmethod
    def utcnow(cls) -> _FrozenDatetime:  # type: ignore[override]
        return cls(2026, 11, 25, 10, 11, 12)


@pytest.fixture(autouse=True)
def _frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(oss2.utils, "http_date", lambda timeval=None: FIXED_HTTP_DATE)
    monkeypatch.setattr(oss2.auth, "datetime", _FrozenDatetime)


class _Captured(Exception):
    pass


class _RecordingSession:
    """An oss2 session that keeps the signed request instead of sending it."""

    def __init__(self) -> None:
        self.request: Any = None

    def do_request(self, req: Any, timeout: float) -> None:
        self.request = req
        raise _Captured


def _oss2_request(version: str, token: str | None, call: Callable[[oss2.Bucket], object]) -> Any:
    session = _RecordingSession()
    if token:
        auth: Any = oss2.StsAuth(AK, SK, token, auth_version=version)
    else:
        auth = oss2.AuthV4(AK, SK) if version == "v4" else oss2.Auth(AK, SK)
    region = REGION if version == "v4" else None
    bucket = oss2.Bucket(auth, ENDPOINT, BUCKET, session=session, region=region)
    with pytest.raises(_Captured):
        call(bucket)
    return session.request


def _ours(
    version: str, token: str | None, method: str, key: str, params: dict[str, str], headers: dict[str, str]
) -> dict[str, str]:
    signer = Signer(version, REGION if version == "v4" else "")
    return signer.sign(method, BUCKET, key, params, headers, Credentials(AK, SK, token))


def _assert_same_signature(ours: dict[str, str], theirs: Any) -> None:
    lowered = {name.lower(): value for name, value in ours.items()}
    for name in _SIGNED:
        assert lowered.get(name) == theirs.headers.get(name), name
    assert lowered["authorization"]


keys = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    min_size=1,
    max_size=40,
)
special_keys = st.sampled_from(
    [
        "plain.bin",
        "dir/sub dir/a b.safetensors",
        "100%.bin",
        "%2F%20",
        "模型/权重 1.bin",
        "a+b=c&d?e#f",
        "~/.x",
    ]
)
versions = st.sampled_from(["v1", "v4"])
tokens = st.sampled_from([None, TOKEN])


@settings(max_examples=60, deadline=None)
@given(version=versions, token=tokens, key=st.one_of(keys, special_keys), start=st.integers(0, 2**40))
def test_ranged_get_matches_oss2(version: str, token: str | None, key: str, start: int) -> None:
    end_inclusive = start + 8 * 1024 * 1024 - 1
    extra = {"x-oss-range-behavior": "standard", "If-Match": '"0123456789ABCDEF"'}
    theirs = _oss2_request(
        version, token, lambda b: b.get_object(key, byte_range=(start, end_inclusive), headers=extra)
    )
    headers = {"Range": f"bytes={start}-{end_inclusive}", **extra}
    _assert_same_signature(_ours(version, token, "GET", key, dict(theirs.params), headers), theirs)


@settings(max_examples=30, deadline=None)
@given(version=versions, token=tokens, key=st.one_of(keys, special_keys))
def test_head_matches_oss2(version: str, token: str | None, key: str) -> None:
    theirs = _oss2_request(version, token, lambda b: b.head_object(key))
    _assert_same_signature(_ours(version, token, "HEAD", key, dict(theirs.params), {}), theirs)


@settings(max_examples=40, deadline=None)
@given(
    version=versions,
    token=tokens,
    prefix=st.one_of(keys, special_keys, st.just("")),
    continuation=st.sampled_from(["", "token/with+special=chars", "CgpkaXIvYS5iaW4Q"]),
    start_after=st.sampled_from(["", "dir/a b", "模型/"]),
    delimiter=st.sampled_from(["", "/"]),
)
def test_list_v2_matches_oss2(
    version: str, token: str | None, prefix: str, continuation: str, start_after: str, delimiter: str
) -> None:
    # continuation-token is a V1 sub-resource: it is part of the V1 string to sign.
    theirs = _oss2_request(
        version,
        token,
        lambda b: b.list_objects_v2(
            prefix=prefix,
            delimiter=delimiter,
            continuation_token=continuation,
            start_after=start_after,
            max_keys=1000,
        ),
    )
    assert theirs.params["list-type"] == "2"
    _assert_same_signature(_ours(version, token, "GET", "", dict(theirs.params), {}), theirs)


@pytest.mark.parametrize("version", ["v1", "v4"])
@pytest.mark.parametrize("token", [None, TOKEN])
def test_sub_resource_matches_oss2(version: str, token: str | None) -> None:
    theirs = _oss2_request(version, token, lambda b: b.get_object_meta("dir/a b%.bin"))
    assert "objectMeta" in theirs.params
    _assert_same_signature(_ours(version, token, "HEAD", "dir/a b%.bin", dict(theirs.params), {}), theirs)
    theirs = _oss2_request(version, token, lambda b: b.get_object("k", params={"versionId": "v 1/2"}))
    _assert_same_signature(_ours(version, token, "GET", "k", dict(theirs.params), {}), theirs)


def test_v1_hand_computed_vector() -> None:
    string_to_sign = (
        f"GET\n\n\n{FIXED_HTTP_DATE}\nx-oss-range-behavior:standard\nx-oss-security-token:{TOKEN}\n"
    )
    string_to_sign += f"/{BUCKET}/dir/a b.bin"
    digest = hmac.new(SK.encode(), string_to_sign.encode(), hashlib.sha1).digest()
    expected = f"OSS {AK}:{base64.b64encode(digest).decode()}"
    headers = {"Range": "bytes=0-9", "x-oss-range-behavior": "standard"}
    ours = _ours("v1", TOKEN, "GET", "dir/a b.bin", {}, headers)
    assert ours["authorization"] == expected
    assert ours["date"] == FIXED_HTTP_DATE
    assert ours["x-oss-security-token"] == TOKEN
    assert ours["Range"] == "bytes=0-9"


def test_v4_hand_computed_vector() -> None:
    stamp = FIXED_UTC.strftime("%Y%m%dT%H%M%SZ")
    day = stamp[:8]
    canonical_request = "\n".join(
        [
            "GET",
            f"/{BUCKET}/dir/a%20b.bin",
            "",
            f"x-oss-content-sha256:UNSIGNED-PAYLOAD\nx-oss-date:{stamp}\nx-oss-range-behavior:standard\n",
            "",
            "UNSIGNED-PAYLOAD",
        ]
    )
    scope = f"{day}/{REGION}/oss/aliyun_v4_request"
    string_to_sign = "\n".join(
        ["OSS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical_request.encode()).hexdigest()]
    )
    key = ("aliyun_v4" + SK).encode()
    for part in (day, REGION, "oss", "aliyun_v4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    ours = _ours(
        "v4", None, "GET", "dir/a b.bin", {}, {"Range": "bytes=0-9", "x-oss-range-behavior": "standard"}
    )
    assert ours["authorization"] == f"OSS4-HMAC-SHA256 Credential={AK}/{scope}, Signature={signature}"
    assert ours["x-oss-date"] == stamp


def test_sign_does_not_touch_the_callers_mappings() -> None:
    params = {"list-type": "2"}
    headers = {"Range": "bytes=0-9"}
    _ours("v1", TOKEN, "GET", "k", params, headers)
    assert params == {"list-type": "2"}
    assert headers == {"Range": "bytes=0-9"}


def test_transport_headers_of_oss2_are_not_returned() -> None:
    ours = _ours("v1", None, "GET", "k", {}, {})
    assert {name.lower() for name in ours} == {"date", "authorization"}


@pytest.mark.parametrize(("version", "region"), [("v2", "cn-hangzhou"), ("", ""), ("v4", "")])
def test_bad_signer_settings_are_config_errors(version: str, region: str) -> None:
    with pytest.raises(ConfigError, match="signature version"):
        Signer(version, region)


@pytest.mark.parametrize("version", ["v1", "v4"])
def test_debug_logs_never_carry_the_secret_or_token(version: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    ours = _ours(version, TOKEN, "GET", "k", {}, {})
    assert ours["x-oss-security-token"] == TOKEN
    assert any(record.name.startswith("oss2") for record in caplog.records)
    assert TOKEN not in caplog.text
    assert SK not in caplog.text
