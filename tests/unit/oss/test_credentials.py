"""Credential providers: file rotation, environment, oss2 adapters, resolve order, secrets never shown."""

from __future__ import annotations

import json
import logging
import os
import pickle
import threading
from pathlib import Path
from typing import Any

import oss2
import pytest

from ossmodelconnector.errors import CredentialsError
from ossmodelconnector.oss.credentials import (
    CredentialProvider,
    Credentials,
    EnvironmentCredentialProvider,
    FileCredentialProvider,
    Oss2ProviderAdapter,
    StaticCredentialProvider,
    parse_expiration,
    resolve_credentials,
)

SECRET = "s3cr3t-VALUE-never-shown"
TOKEN = "t0k3n-VALUE-never-shown"
EXPIRY = "2026-11-25T10:00:00Z"
EXPIRY_EPOCH = 1795600800.0  # 2026-11-25T10:00:00Z


@pytest.fixture(autouse=True)
def _no_credential_environment() -> None:
    for name in ("OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET", "OSS_SESSION_TOKEN"):
        os.environ.pop(name, None)


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def write_creds(path: Path, doc: Any, mtime_ns: int | None = None) -> None:
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc), encoding="utf-8")
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


def creds_doc(
    key_id: str = "AK1", secret: str = SECRET, token: str | None = TOKEN, exp: str | None = EXPIRY
) -> dict[str, str]:
    doc = {"AccessKeyId": key_id, "AccessKeySecret": secret}
    if token is not None:
        doc["SecurityToken"] = token
    if exp is not None:
        doc["Expiration"] = exp
    return doc


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text and TOKEN not in text, text


# --- Credentials -----------------------------------------------------------------------------------------


def test_credentials_repr_and_str_redact() -> None:
    c = Credentials("AK", SECRET, TOKEN, EXPIRY_EPOCH)
    assert_no_secret(repr(c), str(c), f"{c}", f"{c!r}", repr([c]), repr({"c": c}))
    assert "AK" in repr(c) and "***" in repr(c)
    assert repr(Credentials("AK", SECRET)).count("***") == 1  # no token shown as None, not as ***
    assert pickle.loads(pickle.dumps(c)) == c


def test_credentials_validation_never_shows_values() -> None:
    with pytest.raises(CredentialsError, match="access_key_id is empty"):
        Credentials("", SECRET)
    with pytest.raises(CredentialsError, match="access_key_secret is not a string") as info:
        Credentials("AK", 12345)  # type: ignore[arg-type]
    assert "12345" not in str(info.value)
    with pytest.raises(CredentialsError, match="expires_at"):
        Credentials("AK", SECRET, None, "tomorrow")  # type: ignore[arg-type]
    assert Credentials("AK", SECRET, "").security_token is None


def test_expires_within() -> None:
    c = Credentials("AK", SECRET, TOKEN, 1000.0)
    assert not c.expires_within(100, now=800)
    assert c.expires_within(300, now=800)
    assert c.expires_within(0, now=1000)
    assert not Credentials("AK", SECRET).expires_within(1e9)


def test_parse_expiration() -> None:
    assert parse_expiration(EXPIRY) == EXPIRY_EPOCH
    assert parse_expiration("2026-11-25T10:00:00+00:00") == EXPIRY_EPOCH
    assert parse_expiration("2026-11-25T18:00:00+08:00") == EXPIRY_EPOCH
    assert parse_expiration("2026-11-25T10:00:00") == EXPIRY_EPOCH  # no zone: UTC
    assert parse_expiration("2026-11-25T10:00:00.500Z") == EXPIRY_EPOCH + 0.5
    with pytest.raises(ValueError):
        parse_expiration("next tuesday")


# --- FileCredentialProvider ------------------------------------------------------------------------------


def test_file_provider_reads_and_caches(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    write_creds(path, creds_doc())
    provider = FileCredentialProvider(path, clock=FakeClock(EXPIRY_EPOCH - 3600))
    first = provider.get()
    assert (first.access_key_id, first.access_key_secret, first.security_token) == ("AK1", SECRET, TOKEN)
    assert first.expires_at == EXPIRY_EPOCH
    assert provider.get() is first  # unchanged file: cached object
    assert isinstance(provider, CredentialProvider)


def test_file_rotation_by_mtime(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    write_creds(path, creds_doc("AK1"), mtime_ns=1_000_000_000)
    provider = FileCredentialProvider(path, clock=FakeClock(EXPIRY_EPOCH - 3600))
    assert provider.get().access_key_id == "AK1"
    write_creds(path, creds_doc("AK2", secret="other-secret"), mtime_ns=2_000_000_000)
    rotated = provider.get()
    assert (rotated.access_key_id, rotated.access_key_secret) == ("AK2", "other-secret")


def test_file_rotation_same_mtime_different_size(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    write_creds(path, creds_doc("AK1"), mtime_ns=1_000_000_000)
    provider = FileCredentialProvider(path, clock=FakeClock(EXPIRY_EPOCH - 3600))
    assert provider.get().access_key_id == "AK1"
    write_creds(path, creds_doc("AK22"), mtime_ns=1_000_000_000)
    assert provider.get().access_key_id == "AK22"


def test_file_reread_near_expiration(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    write_creds(path, creds_doc("AK1"), mtime_ns=1_000_000_000)
    clock = FakeClock(EXPIRY_EPOCH - 3600)
    provider = FileCredentialProvider(path, refresh_margin_s=300, min_reread_interval_s=1.0, clock=clock)
    assert provider.get().access_key_id == "AK1"
    # Rewritten with the SAME stat stamp: only the expiry can make the provider look again.
    write_creds(path, creds_doc("AK9", exp="2026-11-25T11:00:00Z"), mtime_ns=1_000_000_000)
    assert provider.get().access_key_id == "AK1"  # far from expiry: no re-read
    clock.now = EXPIRY_EPOCH - 200  # inside the 5-minute margin
    renewed = provider.get()
    assert renewed.access_key_id == "AK9" and renewed.expires_at == EXPIRY_EPOCH + 3600


def test_file_near_expiry_rereads_at_most_every_interval(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    write_creds(path, creds_doc("AK1"), mtime_ns=1_000_000_000)
    clock = FakeClock(EXPIRY_EPOCH - 100)
    provider = FileCredentialProvider(path, min_reread_interval_s=1.0, clock=clock)
    first = provider.get()
    write_creds(path, creds_doc("AK2"), mtime_ns=1_000_000_000)
    clock.now += 0.5
    assert provider.get() is first  # within the interval: not re-read
    clock.now += 0.6
    assert provider.get().access_key_id == "AK2"


def test_file_expired_and_not_rotated_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    write_creds(path, creds_doc())
    provider = FileCredentialProvider(path, clock=FakeClock(EXPIRY_EPOCH + 1))
    with pytest.raises(CredentialsError) as info:
        provider.get()
    msg = str(info.value)
    assert str(path) in msg and "expired at 2026-11-25T10:00:00+00:00" in msg and "rotate" in msg
    assert_no_secret(msg)


def test_file_invalidate_forces_reread(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    write_creds(path, creds_doc("AK1"), mtime_ns=1_000_000_000)
    provider = FileCredentialProvider(path, clock=FakeClock(EXPIRY_EPOCH - 3600))
    assert provider.get().access_key_id == "AK1"
    write_creds(path, creds_doc("AK3"), mtime_ns=1_000_000_000)
    assert provider.get().access_key_id == "AK1"
    provider.invalidate()
    assert provider.get().access_key_id == "AK3"


def test_file_half_written_keeps_previous_credentials(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "creds.json"
    write_creds(path, creds_doc("AK1"), mtime_ns=1_000_000_000)
    provider = FileCredentialProvider(path, clock=FakeClock(EXPIRY_EPOCH - 3600))
    first = provider.get()
    write_creds(path, '{"AccessKeyId": "AK2", "AccessKeySec', mtime_ns=2_000_000_000)
    with caplog.at_level(logging.WARNING):
        assert provider.get() is first
    assert "keeping the previous credentials" in caplog.text
    write_creds(path, creds_doc("AK2"), mtime_ns=3_000_000_000)
    assert provider.get().access_key_id == "AK2"


# (file content, fragment of the message: names the path and the field, never a value)
BAD_FILES = [
    ('{"AccessKeyId": "AK", "AccessKeySecret": "s3cr3t-VALUE-never-shown"', "is not valid JSON: Expecting"),
    ("[]", "holds a JSON list"),
    ('{"AccessKeySecret": "s3cr3t-VALUE-never-shown"}', "has no AccessKeyId field"),
    ('{"AccessKeyId": "AK"}', "has no AccessKeySecret field"),
    ('{"AccessKeyId": "AK", "AccessKeySecret": ""}', "has no AccessKeySecret field"),
    (
        '{"AccessKeyId": "AK", "AccessKeySecret": ["s3cr3t-VALUE-never-shown"]}',
        "field AccessKeySecret is a JSON list",
    ),
    ('{"AccessKeyId": 7, "AccessKeySecret": "s3cr3t-VALUE-never-shown"}', "field AccessKeyId is a JSON int"),
    (
        '{"AccessKeyId": "AK", "AccessKeySecret": "s3cr3t-VALUE-never-shown", "SecurityToken": 5}',
        "field SecurityToken is a JSON int",
    ),
    (
        '{"AccessKeyId": "AK", "AccessKeySecret": "s3cr3t-VALUE-never-shown", "Expiration": "soon"}',
        "field Expiration 'soon' is not an ISO 8601 time",
    ),
]


@pytest.mark.parametrize(("text", "fragment"), BAD_FILES)
def test_file_errors_name_path_and_field_never_the_secret(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "creds.json"
    write_creds(path, text)
    with pytest.raises(CredentialsError) as info:
        FileCredentialProvider(path).get()
    msg = str(info.value)
    assert fragment in msg and str(path) in msg
    assert_no_secret(msg, repr(info.value))
    assert info.value.__cause__ is None  # a JSONDecodeError cause would carry the whole document


def test_file_missing(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError) as info:
        FileCredentialProvider(tmp_path / "none.json").get()
    assert "none.json" in str(info.value) and "does not exist" in str(info.value)


def test_file_provider_is_thread_safe(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    write_creds(path, creds_doc("AK0"))
    provider = FileCredentialProvider(path, clock=FakeClock(EXPIRY_EPOCH - 3600))
    errors: list[BaseException] = []
    seen: set[str] = set()

    def reader() -> None:
        try:
            for _ in range(300):
                seen.add(provider.get().access_key_id)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for n in range(1, 30):
        tmp = path.with_suffix(".tmp")
        write_creds(tmp, creds_doc(f"AK{n}"))
        os.replace(tmp, path)  # atomic rotation, as a well-behaved writer does
    for t in threads:
        t.join()
    assert not errors
    assert provider.get().access_key_id == "AK29"
    assert seen <= {f"AK{n}" for n in range(30)}


# --- EnvironmentCredentialProvider -----------------------------------------------------------------------


def test_environment_provider_reads_and_rereads_on_invalidate() -> None:
    os.environ.update(OSS_ACCESS_KEY_ID="AKE", OSS_ACCESS_KEY_SECRET=SECRET, OSS_SESSION_TOKEN=TOKEN)
    provider = EnvironmentCredentialProvider()
    c = provider.get()
    assert (c.access_key_id, c.access_key_secret, c.security_token) == ("AKE", SECRET, TOKEN)
    os.environ["OSS_ACCESS_KEY_ID"] = "AKF"
    assert provider.get() is c  # cached until invalidated
    provider.invalidate()
    assert provider.get().access_key_id == "AKF"
    del os.environ["OSS_SESSION_TOKEN"]
    provider.invalidate()
    assert provider.get().security_token is None


def test_environment_provider_names_missing_variables() -> None:
    os.environ["OSS_ACCESS_KEY_ID"] = "AK"
    with pytest.raises(
        CredentialsError, match="environment variable OSS_ACCESS_KEY_SECRET is not set or empty"
    ):
        EnvironmentCredentialProvider().get()
    with pytest.raises(CredentialsError, match="OSS_ACCESS_KEY_ID and OSS_ACCESS_KEY_SECRET are not set"):
        EnvironmentCredentialProvider({}).get()


# --- oss2 adapter ----------------------------------------------------------------------------------------


def test_oss2_static_provider_asked_once() -> None:
    inner = oss2.credentials.StaticCredentialsProvider("AKS", SECRET, TOKEN)
    adapter = Oss2ProviderAdapter(inner)
    c = adapter.get()
    assert (c.access_key_id, c.access_key_secret, c.security_token) == ("AKS", SECRET, TOKEN)
    assert adapter.get() is c
    assert_no_secret(repr(adapter))
    assert (
        Oss2ProviderAdapter(oss2.credentials.StaticCredentialsProvider("A", SECRET)).get().security_token
        is None
    )


class RotatingProvider(oss2.credentials.CredentialsProvider):  # type: ignore[misc]
    """An STS-like provider whose token changes; counts how often it is asked."""

    def __init__(self) -> None:
        self.calls = 0
        self.generation = 0

    def get_credentials(self) -> oss2.credentials.Credentials:
        self.calls += 1
        n = self.generation
        return oss2.credentials.Credentials(f"STS.AK{n}", f"{SECRET}{n}", f"{TOKEN}{n}")


def test_oss2_rotating_provider_asked_every_time() -> None:
    inner = RotatingProvider()
    adapter = Oss2ProviderAdapter(inner)
    a = adapter.get()
    assert adapter.get() is a  # same answer: same object, but the provider was asked
    assert inner.calls == 2
    inner.generation = 1
    b = adapter.get()
    assert (b.access_key_id, b.security_token) == ("STS.AK1", f"{TOKEN}1")
    adapter.invalidate()
    assert adapter.get() == b


def test_oss2_static_flag_overrides_detection() -> None:
    inner = RotatingProvider()
    adapter = Oss2ProviderAdapter(inner, static=True)
    adapter.get()
    inner.generation = 1
    assert adapter.get().access_key_id == "STS.AK0" and inner.calls == 1
    adapter.invalidate()
    assert adapter.get().access_key_id == "STS.AK1"


def test_oss2_environment_provider() -> None:
    adapter = Oss2ProviderAdapter(oss2.credentials.EnvironmentVariableCredentialsProvider())
    with pytest.raises(CredentialsError) as info:
        adapter.get()
    assert "EnvironmentVariableCredentialsProvider" in str(info.value)
    assert isinstance(info.value.__cause__, oss2.exceptions.ClientError)
    os.environ.update(OSS_ACCESS_KEY_ID="AKV", OSS_ACCESS_KEY_SECRET=SECRET)
    assert adapter.get().access_key_id == "AKV"


def test_any_object_with_get_credentials_and_plain_attributes() -> None:
    class Raw:
        access_key_id = "AKR"
        access_key_secret = SECRET
        security_token = None
        expiration = 1234.0

    class Duck:
        def get_credentials(self) -> Raw:
            return Raw()

    c = Oss2ProviderAdapter(Duck()).get()
    assert (c.access_key_id, c.access_key_secret, c.expires_at) == ("AKR", SECRET, 1234.0)


def test_adapter_rejects_bad_answers() -> None:
    class ReturnsNone:
        def get_credentials(self) -> None:
            return None

    class ReturnsEmpty:
        def get_credentials(self) -> oss2.credentials.Credentials:
            return oss2.credentials.Credentials("", SECRET)

    with pytest.raises(CredentialsError, match="returned None"):
        Oss2ProviderAdapter(ReturnsNone()).get()
    with pytest.raises(CredentialsError, match="empty or non-string access key id") as info:
        Oss2ProviderAdapter(ReturnsEmpty()).get()
    assert_no_secret(str(info.value))
    with pytest.raises(CredentialsError, match="has no get_credentials"):
        Oss2ProviderAdapter(object())


# --- resolve_credentials ---------------------------------------------------------------------------------


def test_resolve_order(tmp_path: Path) -> None:
    os.environ.update(OSS_ACCESS_KEY_ID="AK-env", OSS_ACCESS_KEY_SECRET=SECRET)
    path = tmp_path / "creds.json"
    write_creds(path, creds_doc("AK-file", exp=None))
    oss2_provider = oss2.credentials.StaticCredentialsProvider("AK-provider", SECRET)
    assert resolve_credentials(oss2_provider, str(path)).get().access_key_id == "AK-provider"
    assert resolve_credentials(None, str(path)).get().access_key_id == "AK-file"
    assert resolve_credentials(None, path).get().access_key_id == "AK-file"
    assert resolve_credentials().get().access_key_id == "AK-env"
    ours = StaticCredentialProvider(Credentials("AK-ours", SECRET))
    assert resolve_credentials(ours) is ours
    assert resolve_credentials(Credentials("AK-c", SECRET)).get().access_key_id == "AK-c"


def test_resolve_without_anything_explains_the_three_ways() -> None:
    with pytest.raises(CredentialsError) as info:
        resolve_credentials()
    msg = str(info.value)
    assert "no credentials" in msg
    for way in (
        "cred_provider=",
        "cred_path=",
        "OSS_ACCESS_KEY_ID",
        "OSS_ACCESS_KEY_SECRET",
        "OSS_SESSION_TOKEN",
    ):
        assert way in msg
    assert isinstance(info.value, PermissionError)


def test_resolve_fails_early_on_a_bad_file_or_provider(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match="does not exist"):
        resolve_credentials(None, str(tmp_path / "missing.json"))
    with pytest.raises(CredentialsError, match="cred_provider of type int"):
        resolve_credentials(42)
    os.environ["OSS_ACCESS_KEY_ID"] = "AK"
    with pytest.raises(CredentialsError, match="OSS_ACCESS_KEY_SECRET is not set"):
        resolve_credentials()


def test_no_secret_in_logs_reprs_or_messages(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "creds.json"
    write_creds(path, creds_doc("AK1"), mtime_ns=1_000_000_000)
    clock = FakeClock(EXPIRY_EPOCH - 3600)
    texts: list[str] = []
    file_provider = FileCredentialProvider(path, clock=clock)
    texts += [repr(file_provider), repr(file_provider.get()), str(file_provider.get())]
    write_creds(path, creds_doc("AK2"), mtime_ns=2_000_000_000)
    texts.append(repr(file_provider.get()))
    write_creds(path, "{broken " + SECRET, mtime_ns=3_000_000_000)
    texts.append(repr(file_provider.get()))  # keeps the previous ones, logs a warning
    clock.now = EXPIRY_EPOCH + 10
    with pytest.raises(CredentialsError) as info:
        file_provider.get()
    texts += [str(info.value), repr(info.value)]
    os.environ.update(OSS_ACCESS_KEY_ID="AKE", OSS_ACCESS_KEY_SECRET=SECRET, OSS_SESSION_TOKEN=TOKEN)
    env_provider = resolve_credentials()
    texts += [repr(env_provider), repr(env_provider.get())]
    inner = RotatingProvider()
    adapter = resolve_credentials(inner)
    texts += [repr(adapter), repr(adapter.get())]
    inner.generation = 1
    texts.append(repr(adapter.get()))
    assert caplog.records, "expected some DEBUG/INFO/WARNING lines to check"
    texts += [record.getMessage() for record in caplog.records]
    assert_no_secret(*texts)


# --- values that cannot be sent: refused where they enter; whitespace around them removed ---------------

# (what is inside the value, how the message names it)
BAD_CHARACTERS = [
    ("\n", "a line feed (U+000A)"),
    ("\r\n", "a carriage return (U+000D)"),
    ("\x00", "a NUL (U+0000)"),
    ("\x1b", "a control character (U+001B)"),
    ("\x7f", "a control character (U+007F)"),
    (" ", "a space"),
    ("\u00e9", "a non-ASCII character"),
    ("\u2028", "a non-ASCII character"),
]
FIELDS = ["access key id", "secret", "token"]


def _source(kind: str, tmp_path: Path, key_id: str, secret: str, token: str) -> tuple[Any, str, str]:
    """A provider over the three values, how its messages name the source, and the field names it uses."""
    if kind == "file":
        path = tmp_path / "creds.json"
        write_creds(path, {"AccessKeyId": key_id, "AccessKeySecret": secret, "SecurityToken": token})
        return FileCredentialProvider(path), f"credentials file {str(path)!r}", "field {}"
    if kind == "environment":  # a mapping: os.environ cannot hold the NUL case
        environ = {"OSS_ACCESS_KEY_ID": key_id, "OSS_ACCESS_KEY_SECRET": secret, "OSS_SESSION_TOKEN": token}
        return EnvironmentCredentialProvider(environ), "environment", "variable {}"
    inner = oss2.credentials.StaticCredentialsProvider(key_id, secret, token)
    return Oss2ProviderAdapter(inner), "cred_provider StaticCredentialsProvider.get_credentials()", "{}"


_FIELD_NAMES = {
    "file": ("AccessKeyId", "AccessKeySecret", "SecurityToken"),
    "environment": ("OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET", "OSS_SESSION_TOKEN"),
    "oss2": ("access key id", "access key secret", "security token"),
}


def _values(field: str, inside: str) -> tuple[str, str, str]:
    key_id, secret, token = "AK1", SECRET, TOKEN
    if field == "access key id":
        key_id = "AK" + inside + "1"
    elif field == "secret":
        secret = SECRET[:6] + inside + SECRET[6:]
    else:
        token = TOKEN[:6] + inside + TOKEN[6:]
    return key_id, secret, token


@pytest.mark.parametrize("kind", ["file", "environment", "oss2"])
@pytest.mark.parametrize("field", FIELDS)
@pytest.mark.parametrize(("inside", "named"), BAD_CHARACTERS, ids=[repr(c) for c, _ in BAD_CHARACTERS])
def test_a_character_no_credential_holds_is_refused_naming_source_and_field_never_the_value(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str, field: str, inside: str, named: str
) -> None:
    caplog.set_level(logging.DEBUG)
    key_id, secret, token = _values(field, inside)
    provider, source, field_format = _source(kind, tmp_path, key_id, secret, token)
    name = _FIELD_NAMES[kind][FIELDS.index(field)]
    source = source.format(name)
    with pytest.raises(CredentialsError) as info:
        provider.get()
    error = info.value
    assert type(error) is CredentialsError
    message = str(error)
    assert message.startswith(f"{source}: {field_format.format(name)} contains {named}, "), message
    assert "OSS credentials are printable ASCII without spaces" in message
    assert "refused before any request was sent (this is not a server problem)" in message
    assert "Fix: store the value exactly as Alibaba Cloud issued it" in message
    assert "server's answer" not in message and "malformed" not in message
    assert error.__cause__ is None and error.__context__ is None
    texts = [message, repr(error), repr(provider)] + [record.getMessage() for record in caplog.records]
    assert_no_secret(*texts)
    assert not any(value in text for value in (secret, token) for text in texts)


@pytest.mark.parametrize("kind", ["file", "environment", "oss2"])
@pytest.mark.parametrize(
    "around", ["\n", "\r\n", " \t", "  \n\n"], ids=["LF", "CRLF", "space-tab", "blank-lines"]
)
def test_whitespace_around_a_value_is_removed_with_a_warning_naming_source_and_field(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str, around: str
) -> None:
    caplog.set_level(logging.DEBUG)
    provider, source, field_format = _source(kind, tmp_path, "AK1" + around, SECRET + around, around + TOKEN)
    creds = provider.get()
    assert (creds.access_key_id, creds.access_key_secret, creds.security_token) == ("AK1", SECRET, TOKEN)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3, warnings
    for name, warning in zip(_FIELD_NAMES[kind], warnings, strict=True):
        where = f"{source.format(name)}: {field_format.format(name)}"
        assert warning.startswith(f"{where} had whitespace around it"), warning
        assert "it was removed" in warning
    assert_no_secret(*[record.getMessage() for record in caplog.records])
    # Read again (a rotated file, an invalidated provider): no second WARNING for the same field.
    provider.invalidate()
    assert provider.get() == creds
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 3


def test_a_value_of_only_whitespace_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    write_creds(path, {"AccessKeyId": "AK", "AccessKeySecret": "\n"})
    with pytest.raises(CredentialsError, match="has no AccessKeySecret field \\(or it is empty\\)"):
        FileCredentialProvider(path).get()
    os.environ.update(OSS_ACCESS_KEY_ID="AK", OSS_ACCESS_KEY_SECRET=" \n")
    with pytest.raises(CredentialsError, match="OSS_ACCESS_KEY_SECRET is not set or empty"):
        EnvironmentCredentialProvider().get()


@pytest.mark.parametrize("field", ["access_key_id", "access_key_secret", "security_token"])
def test_credentials_built_in_python_refuse_a_trailing_newline_and_say_strip(field: str) -> None:
    values = {"access_key_id": "AK", "access_key_secret": SECRET, "security_token": TOKEN}
    values[field] += "\n"
    with pytest.raises(CredentialsError) as info:
        Credentials(**values)
    message = str(info.value)
    assert message.startswith(f"Credentials(...): {field} contains a line feed (U+000A)"), message
    assert "value.strip()" in message
    assert_no_secret(message, repr(info.value))


def test_a_provider_of_our_protocol_returning_a_bad_value_fails_at_construction() -> None:
    class Ours:
        def get(self) -> Credentials:
            return Credentials("AK", SECRET + "\r\n")

        def invalidate(self) -> None:
            pass

    provider = resolve_credentials(Ours())
    with pytest.raises(CredentialsError, match="access_key_secret contains a carriage return") as info:
        provider.get()
    assert_no_secret(str(info.value))


def test_an_expiry_too_large_for_a_float_is_not_finite() -> None:
    with pytest.raises(CredentialsError, match="expires_at is not finite"):
        Credentials("AK", SECRET, None, 10**400)


# --- the credentials file itself: a regular file of at most 1 MiB ----------------------------------------


@pytest.mark.timeout(60)  # only a hang guard: a FIFO must be refused at once, not waited on
def test_a_fifo_as_credentials_file_is_refused_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "creds.json"
    os.mkfifo(fifo)
    with pytest.raises(CredentialsError) as info:
        resolve_credentials(None, str(fifo))
    message = str(info.value)
    assert message.startswith(f"credentials file {str(fifo)!r} is a FIFO (named pipe), not a regular file")
    assert "cred_path must name a regular JSON file of at most 1 MiB" in message


def test_a_device_or_a_huge_file_as_credentials_file_is_refused_unread(tmp_path: Path) -> None:
    with pytest.raises(CredentialsError, match=r"'/dev/zero' is a character device, not a regular file"):
        resolve_credentials(None, "/dev/zero")
    big = tmp_path / "creds.json"
    write_creds(big, json.dumps(creds_doc(exp=None)) + " " * (2 * 1024 * 1024))
    with pytest.raises(CredentialsError) as info:
        resolve_credentials(None, str(big))
    assert f"holds more than 1 MiB ({big.stat().st_size} bytes)" in str(info.value)
    assert_no_secret(str(info.value))


def test_a_credentials_file_replaced_by_a_fifo_keeps_the_previous_ones_until_expiry(tmp_path: Path) -> None:
    """Rotation still re-reads the file; a FIFO swapped in mid-rotation is refused, not waited on."""
    path = tmp_path / "creds.json"
    write_creds(path, creds_doc("AK1"), mtime_ns=1_000_000_000)
    clock = FakeClock(EXPIRY_EPOCH - 3600)
    provider = FileCredentialProvider(path, clock=clock)
    assert provider.get().access_key_id == "AK1"
    write_creds(path, creds_doc("AK2"), mtime_ns=2_000_000_000)
    assert provider.get().access_key_id == "AK2"  # rotation: re-read on change
    path.unlink()
    os.mkfifo(path)
    assert provider.get().access_key_id == "AK2"  # refused, the previous ones still valid
    clock.now = EXPIRY_EPOCH + 1
    with pytest.raises(CredentialsError, match="is a FIFO"):
        provider.get()
