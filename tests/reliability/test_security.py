"""Security: keys that escape, private files, squatted names, planted symlinks, secrets, XML bombs.

Keys a file system cannot hold (``..``, NUL, 300-byte names) come from a stub server that lists whatever
it is told (a hostile or broken OSS-compatible peer); the rest runs against ``localoss``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import pytest
from localoss_harness import LocalOss
from reliability_harness import (
    MIB,
    MODEL_PREFIX,
    SavedModel,
    as_other_user,
    as_other_user_command,
    assert_same_state,
    load_model,
    make_connector,
    upload_model,
)

from ossmodelconnector import (
    CacheError,
    ConfigError,
    CredentialsError,
    ObjectNotFoundError,
    OssModelConnector,
    RequestError,
    UnsafePathError,
)
from ossmodelconnector.cache.attached import AttachedCache
from ossmodelconnector.cache.manifest import OWN_DIR_NAME, read_manifest
from ossmodelconnector.cache.segments import data_segment_name, lock_name, state_table_name
from ossmodelconnector.oss.credentials import Credentials, FileCredentialProvider
from ossmodelconnector.oss.responses import CODE_INVALID_RESPONSE

# A hang guard tighter than the suite's 300 s: each case resolves in seconds or fails clearly.
pytestmark = pytest.mark.timeout(120)

# --- keys that try to escape ------------------------------------------------------------------------


class _ListingStub(BaseHTTPRequestHandler):
    """Answers every ListObjectsV2 with ``server.keys`` (URL-encoded); anything else is a 404."""

    def do_GET(self) -> None:
        keys: list[str] = self.server.keys  # type: ignore[attr-defined]
        if "list-type=2" not in self.path:
            self._send(404, b"<?xml version='1.0'?><Error><Code>NoSuchKey</Code></Error>")
            return
        contents = "".join(
            f'<Contents><Key>{quote(key, safe="/")}</Key><Size>5</Size><ETag>"e"</ETag>'
            "<LastModified>2026-11-25T10:00:00.000Z</LastModified></Contents>"
            for key in keys
        )
        body = (
            "<?xml version='1.0' encoding='UTF-8'?><ListBucketResult><Name>b</Name>"
            f"<EncodingType>url</EncodingType><IsTruncated>false</IsTruncated>{contents}</ListBucketResult>"
        ).encode()
        self._send(200, body)

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def listing_stub() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ListingStub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("../escaped.json", "'..'"),
        ("a/../../escaped.json", "'..'"),
        ("/etc/escaped.json", "absolute"),
        ("..\\escaped.json", "backslash"),
        ("a\0b.json", "NUL"),
        ("x" * 300, "longer than 255"),
        (f"{OWN_DIR_NAME}/owner.json", "reserved"),
        (f"sub/{OWN_DIR_NAME}/manifest.json", "reserved"),  # at any depth: it would be trusted as ours
        ("w" * 240 + ".bin", "temporary name"),  # fits 255 bytes, its temporary name does not
    ],
)
def test_keys_that_would_escape_model_dir_are_refused(
    listing_stub: ThreadingHTTPServer, tmp_path: Path, name: str, why: str
) -> None:
    listing_stub.keys = ["m/config.json", "m/" + name]  # type: ignore[attr-defined]
    host, port = listing_stub.server_address[:2]
    model_dir = tmp_path / "deep" / "model"
    before = sorted(p.name for p in tmp_path.rglob("*"))
    endpoint = f"http://{host}:{port}"
    with (
        OssModelConnector(endpoint, cred_provider=Credentials("id", "secret")) as connector,
        pytest.raises(UnsafePathError, match=why) as caught,
    ):
        connector.prepare_directory("oss://bkt/m/", model_dir)
    assert caught.value.key == "m/" + name and "cannot be mirrored" in str(caught.value)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written anywhere
    assert not Path("/etc/escaped.json").exists()


# --- private files, squatted names, planted symlinks ------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_files_and_segments_are_private_and_owned_by_the_user(
    localoss: LocalOss, tiny_model: SavedModel, tmp_path: Path
) -> None:
    uri = upload_model(localoss, "sec-modes", tiny_model)
    model_dir = tmp_path / "model"
    os.umask(umask := os.umask(0))  # read the umask
    try:
        os.umask(0o022)  # a usual umask: the library must not rely on it
        with make_connector(localoss) as connector:
            prepared = connector.prepare_directory(uri, model_dir, wait=True)
            assert _mode(model_dir) == 0o700
            for file in prepared.files:
                path = Path(file.path)
                assert os.lstat(path).st_uid == os.geteuid()
                if file.large:
                    target = Path(os.readlink(path))
                    assert target.parent == Path("/dev/shm")
                    st = os.lstat(target)
                    assert stat.S_ISREG(st.st_mode) and _mode(target) == 0o600 and st.st_uid == os.geteuid()
                else:
                    assert _mode(path) == 0o600, file.name
            manifest = model_dir / OWN_DIR_NAME / "manifest.json"
            table = Path("/dev/shm") / json.loads(manifest.read_text())["state_table"]
            assert _mode(table) == 0o600 and os.lstat(table).st_uid == os.geteuid()
            assert _mode(model_dir / OWN_DIR_NAME) == 0o700
    finally:
        os.umask(umask)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file another owner needs root")
def test_a_model_dir_others_can_write_is_made_private_and_a_foreign_one_refused(
    localoss: LocalOss, tiny_model: SavedModel, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uri = upload_model(localoss, "sec-dir-modes", tiny_model)
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # as found on shared nodes: anyone could swap a weight's entry
    with make_connector(localoss) as connector, caplog.at_level(logging.WARNING, "ossmodelconnector"):
        connector.prepare_directory(uri, shared, wait=True)
        assert _mode(shared) == 0o755  # readable by others still, writable by this user only
        assert any("could write to it (mode 777)" in record.getMessage() for record in caplog.records)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    os.chown(foreign, 65534, 65534)  # nobody's, as root can make it
    with make_connector(localoss) as connector, pytest.raises(UnsafePathError, match="belongs to user 65534"):
        connector.prepare_directory(uri, foreign)
    assert list(foreign.iterdir()) == []  # nothing written into it


@pytest.mark.parametrize("reader", ["open", "safe_open"])
def test_an_entry_replaced_after_prepare_is_refused_not_read(
    localoss_factory: Callable[..., LocalOss], tiny_model: SavedModel, tmp_path: Path, reader: str
) -> None:
    server = localoss_factory("--bandwidth-mibps", "1")  # still arriving: the entry is a hook's to serve
    uri = upload_model(server, "sec-swapped", tiny_model)
    model_dir = tmp_path / "model"
    planted = tmp_path / "planted.safetensors"
    planted.write_bytes(b"someone else's weights")
    with make_connector(server) as connector:
        connector.prepare_directory(uri, model_dir)
        last = sorted(name for name in tiny_model.files if name.endswith(".safetensors"))[-1]
        entry = model_dir / last
        scratch = model_dir / ".swap"
        scratch.symlink_to(planted)
        os.replace(scratch, entry)  # what a writer of the directory could do
        with pytest.raises(CacheError, match="no longer leads to the file the cache fills"):
            if reader == "open":
                with open(entry, "rb") as file:
                    file.read()
            else:
                from safetensors import safe_open

                with safe_open(str(entry), framework="pt") as opened:
                    opened.keys()


def test_attaching_refuses_a_state_table_another_user_owns(
    localoss: LocalOss, tiny_model: SavedModel, tmp_path: Path
) -> None:
    """A reader verifies the owner on attach: a table swapped for another user's file is not read."""
    uri = upload_model(localoss, "sec-attach", tiny_model)
    model_dir = tmp_path / "model"
    with make_connector(localoss) as connector:
        connector.prepare_directory(uri, model_dir, wait=True)
        manifest = model_dir / OWN_DIR_NAME / "manifest.json"
        table = Path("/dev/shm") / json.loads(manifest.read_text())["state_table"]
        with AttachedCache.from_manifest(manifest) as attached:  # ours: fine
            assert attached is not None
        os.chown(table, 65534, 65534)
        try:
            with pytest.raises(CacheError, match="not created by ossmodelconnector"):
                AttachedCache.from_manifest(manifest)
        finally:
            os.chown(table, os.geteuid(), os.getegid())


_NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="acting as another user needs root")


@_NEEDS_ROOT
def test_names_another_user_squats_are_left_alone_and_the_load_succeeds(
    localoss: LocalOss, tiny_model: SavedModel, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uri = upload_model(localoss, "sec-squat", tiny_model)
    model_dir = tmp_path / "model"
    with make_connector(localoss) as connector:
        infos = [info for info in connector.list("sec-squat", MODEL_PREFIX) if info.size >= MIB]
        namespace = str(connector.endpoint)
        # nobody creates empty files (its mode, 0644) under every name this user's prepare computes first.
        names = [data_segment_name(namespace, info) for info in infos]
        names += [state_table_name(model_dir), lock_name(model_dir)]
        squatters = [Path("/dev/shm") / name for name in names]
        as_other_user(["touch", *map(str, squatters)])
        try:
            with caplog.at_level(logging.WARNING, logger="ossmodelconnector"):
                connector.prepare_directory(uri, model_dir, wait=True)
            assert_same_state(load_model(model_dir), tiny_model.state)
            for squatter in squatters:
                assert squatter.stat().st_uid != os.geteuid() and squatter.stat().st_size == 0  # untouched
                warnings = [r.getMessage() for r in caplog.records if f"{squatter} exists" in r.getMessage()]
                assert len(warnings) == 1 and "(nobody)" in warnings[0], squatter
            manifest = read_manifest(model_dir / OWN_DIR_NAME / "manifest.json")
            used = [Path(entry.data_path).name for entry in manifest.files.values()]
            assert sorted(used) == sorted(f"{name}-1" for name in names[: len(infos)])
            assert manifest.state_table == f"{state_table_name(model_dir)}-1"
        finally:
            for squatter in squatters:
                squatter.unlink()


# Prepares argv[4] into argv[5] once told to ("go" on stdin), then prints its uid, the sha256 of every
# file it reads through the directory and the data segments behind them.
_PREPARE_AND_READ = """
import hashlib, json, os, sys
from ossmodelconnector import OssModelConnector
from ossmodelconnector.cache.manifest import manifest_path, read_manifest
from ossmodelconnector.oss.credentials import Credentials
endpoint, key_id, secret, uri, model_dir = sys.argv[1:6]
with OssModelConnector(endpoint, cred_provider=Credentials(key_id, secret), chunk_size_mb=1,
                       small_file_mb=1, prefetch_vcpus=1, prefetch_workers=2) as connector:
    print("ready", flush=True)
    assert sys.stdin.readline().strip() == "go"
    connector.prepare_directory(uri, model_dir)
    digests = {name: hashlib.sha256(open(os.path.join(model_dir, name), "rb").read()).hexdigest()
               for name in sorted(os.listdir(model_dir)) if not name.startswith(".")}
    segments = [entry.data_path for entry in read_manifest(manifest_path(model_dir)).files.values()]
    print(json.dumps({"uid": os.geteuid(), "digests": digests, "segments": segments}), flush=True)
"""


@_NEEDS_ROOT
def test_two_users_preparing_the_same_model_at_once_both_load_it(
    localoss: LocalOss, tiny_model: SavedModel, tmp_path: Path
) -> None:
    uri = upload_model(localoss, "sec-two-users", tiny_model)
    args = [localoss.endpoint, localoss.access_key_id, localoss.access_key_secret, uri]
    command = [sys.executable, "-c", _PREPARE_AND_READ, *args]
    # nobody's directory: under /tmp itself, whose path nobody may search (pytest's tmp_path is root's).
    with tempfile.TemporaryDirectory(prefix="ossmc-nobody-") as theirs:
        os.chown(theirs, 65534, 65534)
        env = {**os.environ, "HOME": theirs}
        processes = [
            subprocess.Popen(
                [*command, str(tmp_path / "model")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            ),
            subprocess.Popen(
                as_other_user_command([*command, os.path.join(theirs, "model")]),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            ),
        ]
        try:
            for process in processes:
                assert process.stdout is not None and process.stdout.readline().strip() == "ready"
            outputs = [process.communicate("go\n", timeout=100)[0] for process in processes]  # at once
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.communicate()
    assert [process.returncode for process in processes] == [0, 0]
    reports = [json.loads(output.strip().splitlines()[-1]) for output in outputs]
    expected = {name: hashlib.sha256(data).hexdigest() for name, data in tiny_model.files.items()}
    assert [report["uid"] for report in reports] == [os.geteuid(), 65534]
    for report in reports:
        assert report["digests"] == expected  # every byte, large files included
        assert all(f"/ossmc-d-{report['uid']}-" in path for path in report["segments"])
    assert not set(reports[0]["segments"]) & set(reports[1]["segments"])  # each user its own copy


def test_planted_symlinks_in_model_dir_are_never_followed(
    localoss: LocalOss, tiny_model: SavedModel, tmp_path: Path
) -> None:
    uri = upload_model(localoss, "sec-links", tiny_model)
    model_dir = tmp_path / "model"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "config.json").write_text("precious")
    (elsewhere / "keep.bin").write_bytes(b"keep")
    with make_connector(localoss) as connector:
        connector.prepare_directory(uri, model_dir, wait=True)
        connector.close()
    # Between two prepares someone plants links: over a file name, as a folder, and as a dangling link.
    (model_dir / "config.json").unlink()
    (model_dir / "config.json").symlink_to(elsewhere / "config.json")
    (model_dir / "sub").symlink_to(elsewhere)
    (model_dir / OWN_DIR_NAME / "data").symlink_to(elsewhere)
    with make_connector(localoss, memory_limit_mb=1) as connector:  # disk placement: writes under data/
        prepared = connector.prepare_directory(uri, model_dir, wait=True)
        assert prepared.placement == "disk"
        assert (model_dir / "config.json").read_bytes() == tiny_model.files["config.json"]
        assert not (model_dir / "config.json").is_symlink()
    assert sorted(p.name for p in elsewhere.iterdir()) == ["config.json", "keep.bin"]
    assert (elsewhere / "config.json").read_text() == "precious"
    assert (elsewhere / "keep.bin").read_bytes() == b"keep"


# --- secrets ---------------------------------------------------------------------------------------------


def test_secrets_never_reach_logs_audit_messages_or_reprs(
    localoss_factory: object, tiny_model: SavedModel, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "sEcReT-" + os.urandom(12).hex()
    token = "StS-tOkEn-" + os.urandom(16).hex()
    server = localoss_factory(  # type: ignore[operator]
        "--access-key-secret", secret, "--sts-token", token, "--fault-503", "0.2", "--seed", "3"
    )
    uri = upload_model(server, "sec-secrets", tiny_model)
    creds = tmp_path / "creds.json"
    creds.write_text(
        json.dumps({"AccessKeyId": server.access_key_id, "AccessKeySecret": secret, "SecurityToken": token})
    )
    log_file, audit_file = tmp_path / "connector.log", tmp_path / "audit.log"
    caplog.set_level(logging.DEBUG, logger="ossmodelconnector")
    seen: list[str] = []
    with make_connector(
        server, cred_path=str(creds), log_level=0, log_path=str(log_file), audit_path=str(audit_file)
    ) as connector:
        prepared = connector.prepare_directory(uri, tmp_path / "model", wait=True)
        with connector.open(f"oss://sec-secrets/{MODEL_PREFIX}config.json") as stream:
            seen += [repr(stream), stream.read().decode()]
        with pytest.raises(ObjectNotFoundError) as missing:
            connector.open("oss://sec-secrets/missing")
        seen += [
            repr(connector),
            repr(prepared),
            json.dumps(connector.stats(), default=str),
            str(missing.value),
        ]
        assert connector.stats()["retries"] > 0  # the retry paths logged too
    seen += [repr(FileCredentialProvider(creds)), repr(FileCredentialProvider(creds).get())]
    # Refused credentials: the error quotes the key id and the fix, never the secret or the token.
    creds.write_text(
        json.dumps(
            {"AccessKeyId": server.access_key_id, "AccessKeySecret": secret, "SecurityToken": "x" + token}
        )
    )
    with make_connector(server, cred_path=str(creds), max_attempts=1) as connector:
        with pytest.raises(PermissionError) as refused:
            connector.open(f"oss://sec-secrets/{MODEL_PREFIX}config.json")
        seen += [str(refused.value), repr(refused.value), str(refused.value.__cause__)]
    seen += [record.getMessage() for record in caplog.records]
    seen += [log_file.read_text(), audit_file.read_text()]
    assert audit_file.read_text().count("\n") > 5 and "DEBUG" in log_file.read_text()
    text = "\n".join(seen)
    assert secret not in text and token not in text
    assert token[:-1] not in text and secret[4:] not in text  # not even most of them


# --- XML bombs ---------------------------------------------------------------------------------------------


def test_billion_laughs_in_listings_and_errors_is_refused(localoss_factory: object, tmp_path: Path) -> None:
    """Listings with a DTD are refused before parsing; error documents (a GET's body, a HEAD's x-oss-err
    header) are parsed with defusedxml, which refuses the entities: the error then comes from the status."""
    server = localoss_factory("--fault-xml-bomb")  # type: ignore[operator]
    server.put_file("bomb", "m/config.json", b"{}")
    with make_connector(server, max_attempts=2) as connector:
        with pytest.raises(RequestError) as caught:
            connector.list("bomb", "m/")
        assert caught.value.code == CODE_INVALID_RESPONSE and "DTD" in str(caught.value)
        with pytest.raises(RequestError):
            connector.prepare_directory("oss://bomb/m/", tmp_path / "model")
        assert not (tmp_path / "model").exists()
        # A 404 whose error document is a bomb: still a plain not-found, from the status alone.
        with pytest.raises(ObjectNotFoundError) as missing:
            connector.open("oss://bomb/m/missing.json")
        assert missing.value.status == 404
        with pytest.raises(ObjectNotFoundError) as no_bucket:  # a GET: the bomb is the error body
            connector.list("no-such-bucket", "")
        assert no_bucket.value.status == 404
        # The object itself is untouched by the fault (bodies are not XML).
        with connector.open("oss://bomb/m/config.json") as stream:
            assert stream.read() == b"{}"


def _descendants(pid: int) -> list[int]:
    found, frontier = [pid], [pid]
    while frontier:
        parent = frontier.pop()
        for task in Path(f"/proc/{parent}/task").glob("*/children"):
            with open(task) as f:
                children = [int(child) for child in f.read().split()]
            found += children
            frontier += children
    return found


def test_no_code_mode_keeps_secrets_out_of_every_cmdline(
    localoss: LocalOss, tiny_model: SavedModel, tmp_path: Path
) -> None:
    uri = upload_model(localoss, "nocode-cmdline", tiny_model)
    env = {
        **os.environ,
        "OSS_ACCESS_KEY_ID": localoss.access_key_id,
        "OSS_ACCESS_KEY_SECRET": localoss.access_key_secret,
        "OSSMC_SMALL_FILE_MB": "1",
    }
    program = "import time; print('up', flush=True); time.sleep(120)"
    wrapper = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ossmodelconnector.cli",
            "run",
            "--endpoint",
            localoss.endpoint,
            uri,
            str(tmp_path / "model"),
            "--",
            sys.executable,
            "-c",
            program,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wrapper.stdout is not None
        assert wrapper.stdout.readline().strip() == "up", wrapper.stderr.read() if wrapper.stderr else ""
        processes = _descendants(wrapper.pid)
        assert len(processes) >= 2  # the wrapper and the program it started
        for pid in processes:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            assert localoss.access_key_secret.encode() not in cmdline, f"secret in cmdline of {pid}"
    finally:
        wrapper.send_signal(signal.SIGTERM)
        wrapper.communicate(timeout=60)


# --- credentials with characters no credential holds ---------------------------------------------------


def test_credentials_with_surrounding_whitespace_work_and_say_so_never_showing_the_value(
    localoss_factory: object, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``echo secret > file`` and Kubernetes secrets end values with a newline: removed, with a WARNING."""
    secret = "sEcReT-" + os.urandom(12).hex()
    token = "StS-tOkEn-" + os.urandom(16).hex()
    server = localoss_factory("--access-key-secret", secret, "--sts-token", token)  # type: ignore[operator]
    server.put_file("ws-creds", "m/config.json", b'{"ok": 1}')
    caplog.set_level(logging.DEBUG, logger="ossmodelconnector")
    creds = tmp_path / "creds.json"
    creds.write_text(
        json.dumps(
            {
                "AccessKeyId": server.access_key_id,
                "AccessKeySecret": secret + "\n",
                "SecurityToken": token + "\r\n",
            }
        )
    )
    os.environ.update(
        OSS_ACCESS_KEY_ID=server.access_key_id + "\n",
        OSS_ACCESS_KEY_SECRET=secret + "\n",
        OSS_SESSION_TOKEN=token + "\n",
    )
    connectors = [
        make_connector(server, cred_path=str(creds)),
        OssModelConnector(server.endpoint, max_attempts=1),  # the environment
    ]
    for connector in connectors:
        with connector, connector.open("oss://ws-creds/m/config.json") as stream:
            assert stream.read() == b'{"ok": 1}'
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert any(
        f"credentials file {str(creds)!r}: field AccessKeySecret had whitespace" in w for w in warnings
    )
    assert any(f"credentials file {str(creds)!r}: field SecurityToken had whitespace" in w for w in warnings)
    assert any("environment: variable OSS_SESSION_TOKEN had whitespace around it" in w for w in warnings)
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert secret not in text and token not in text


@pytest.mark.parametrize("inside", ["\n", "\x1b", "\x00"], ids=["LF", "ESC", "NUL"])
@pytest.mark.parametrize("field", ["AccessKeySecret", "SecurityToken"])
def test_a_control_character_in_a_credential_is_refused_at_once_never_shown_never_blaming_the_server(
    localoss: LocalOss, tmp_path: Path, caplog: pytest.LogCaptureFixture, field: str, inside: str
) -> None:
    secret = "sEcReT-" + os.urandom(12).hex()
    token = "StS-tOkEn-" + os.urandom(16).hex()
    values = {"AccessKeyId": localoss.access_key_id, "AccessKeySecret": secret, "SecurityToken": token}
    values[field] = values[field][:10] + inside + values[field][10:]
    creds = tmp_path / "creds.json"
    creds.write_text(json.dumps(values))
    caplog.set_level(logging.DEBUG, logger="ossmodelconnector")
    with pytest.raises(CredentialsError) as refused:
        OssModelConnector(localoss.endpoint, cred_path=str(creds))
    error = refused.value
    assert type(error) is CredentialsError
    named = {"\n": "a line feed (U+000A)", "\x1b": "a control character (U+001B)", "\x00": "a NUL (U+0000)"}
    message = str(error)
    assert message.startswith(f"credentials file {str(creds)!r}: field {field} contains {named[inside]}, ")
    assert "refused before any request was sent (this is not a server problem)" in message
    texts = [message, repr(error), str(error.__cause__), str(error.__context__)]
    texts += [record.getMessage() for record in caplog.records]
    for text in texts:
        for value in (secret, token, values[field]):
            assert value[:10] not in text and value[11:] not in text


def test_no_code_mode_prints_no_credential_to_stderr_when_one_is_refused(
    localoss: LocalOss, tmp_path: Path
) -> None:
    """``ENABLE_CONNECTOR=1``: every Python process runs the start-up hook and reports its failure on
    stderr, which goes to the container's log; the refusal names the variable, never its value."""
    from ossmodelconnector.cli import child_environment

    localoss.put_file("nocode-badcred", "m/config.json", b"{}")
    token = "StS-tOkEn-" + os.urandom(16).hex()
    broken = token[:12] + "\r" + token[12:]  # a CR inside: no strip can fix it
    env = child_environment(
        {
            **os.environ,
            "ENABLE_CONNECTOR": "1",
            "OSS_ENDPOINT": localoss.endpoint,
            "OSS_PATH": "oss://nocode-badcred/m/",
            "MODEL_DIR": str(tmp_path / "model"),
            "OSS_ACCESS_KEY_ID": localoss.access_key_id,
            "OSS_ACCESS_KEY_SECRET": localoss.access_key_secret,
            "OSS_SESSION_TOKEN": broken,
        }
    )
    completed = subprocess.run(
        [sys.executable, "-c", "print('the program ran')"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0 and completed.stdout == "the program ran\n", completed.stderr
    # The owner is a process of its own (it serves every user of the directory): its failure is reported
    # through the start-up hook of the process that started it.
    assert "start-up hook failed, continuing without it" in completed.stderr, completed.stderr
    assert (
        "failed: environment: variable OSS_SESSION_TOKEN contains a carriage return (U+000D)"
        in completed.stderr
    ), completed.stderr
    assert token[:12] not in completed.stderr and token[12:] not in completed.stderr
    assert "server's answer is malformed" not in completed.stderr
    assert not (tmp_path / "model").exists()


# --- logPath and auditPath: never through a planted link, private, this user's ---------------------------


@pytest.mark.parametrize("setting", ["log_path", "audit_path"])
@pytest.mark.parametrize("dangling", [False, True], ids=["to-a-victim-file", "to-a-file-to-be-created"])
def test_a_planted_symlink_as_log_or_audit_path_is_refused_and_the_victim_untouched(
    localoss: LocalOss, tmp_path: Path, setting: str, dangling: bool
) -> None:
    victim = tmp_path / "victim" / ".bashrc"
    victim.parent.mkdir()
    if not dangling:
        victim.write_bytes(b"precious\n")
        victim.chmod(0o644)
    shared = tmp_path / "shared"  # /tmp or a shared log folder, where another user planted the link
    shared.mkdir()
    link = shared / "ossmc.log"
    link.symlink_to(victim)
    handlers = list(logging.getLogger("ossmodelconnector").handlers)
    with pytest.raises(ConfigError) as refused:
        make_connector(localoss, **{setting: str(link)})
    key = {"log_path": "logPath", "audit_path": "auditPath"}[setting]
    message = str(refused.value)
    assert type(refused.value) is ConfigError
    assert message.startswith(f"{key} {str(link)!r} is a symbolic link: refused, nothing was written to it")
    assert f"set {key} to a file of your own in a directory others cannot write to" in message
    if dangling:
        assert not victim.exists()
    else:
        assert victim.read_bytes() == b"precious\n" and _mode(victim) == 0o644
    assert link.is_symlink() and os.readlink(link) == str(victim)
    assert logging.getLogger("ossmodelconnector").handlers == handlers


def test_a_refused_audit_path_leaves_no_log_handler_behind(localoss: LocalOss, tmp_path: Path) -> None:
    """logPath is set up before auditPath: when the second is refused, the first is undone."""
    planted = tmp_path / "audit.log"
    planted.symlink_to(tmp_path / "elsewhere")
    handlers = list(logging.getLogger("ossmodelconnector").handlers)
    with pytest.raises(ConfigError, match="is a symbolic link"):
        make_connector(localoss, log_path=str(tmp_path / "connector.log"), audit_path=str(planted))
    assert logging.getLogger("ossmodelconnector").handlers == handlers


def test_log_and_audit_files_are_created_0600_whatever_the_umask_and_appended_to_after(
    localoss: LocalOss, bucket: str, tmp_path: Path
) -> None:
    localoss.put_file(bucket, "m/config.json", b"{}")
    log_file, audit_file = tmp_path / "connector.log", tmp_path / "audit.log"
    files = {"log_path": str(log_file), "audit_path": str(audit_file), "log_level": 0}
    old = os.umask(0)  # as permissive as it gets: a file made with the default 0666 would be world-writable
    try:
        with (
            make_connector(localoss, **files) as connector,
            connector.open(f"oss://{bucket}/m/config.json") as stream,
        ):
            assert stream.read() == b"{}"
    finally:
        os.umask(old)
    assert _mode(log_file) == 0o600 and _mode(audit_file) == 0o600
    assert log_file.stat().st_uid == os.geteuid() and audit_file.stat().st_uid == os.geteuid()
    first_log, first_audit = log_file.read_bytes(), audit_file.read_bytes()
    assert first_log and first_audit.count(b"\n") >= 1
    with (  # a second run appends to its own files
        make_connector(localoss, **files) as connector,
        connector.open(f"oss://{bucket}/m/config.json") as stream,
    ):
        assert stream.read() == b"{}"
    assert log_file.read_bytes().startswith(first_log) and len(log_file.read_bytes()) > len(first_log)
    assert audit_file.read_bytes().startswith(first_audit)
    assert audit_file.read_bytes().count(b"\n") > first_audit.count(b"\n")


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file another owner needs root")
@pytest.mark.parametrize("setting", ["log_path", "audit_path"])
def test_a_log_or_audit_file_another_user_owns_is_refused_and_left_alone(
    localoss: LocalOss, tmp_path: Path, setting: str
) -> None:
    theirs = tmp_path / "theirs.log"
    theirs.write_bytes(b"their lines\n")
    os.chown(theirs, 65534, 65534)
    with pytest.raises(ConfigError) as refused:
        make_connector(localoss, **{setting: str(theirs)})
    assert "is owned by user id 65534, not by this process's user (id 0)" in str(refused.value)
    assert theirs.read_bytes() == b"their lines\n"


# Prints the program's own environment block, and that of a Python process it starts, as hex lines.
_ENVIRON_PROGRAM = (
    "import subprocess, sys\n"
    "print(open('/proc/self/environ', 'rb').read().hex(), flush=True)\n"
    "child = [sys.executable, '-c', \"print(open('/proc/self/environ', 'rb').read().hex())\"]\n"
    "print(subprocess.run(child, capture_output=True, text=True, check=True).stdout.strip(), flush=True)\n"
)


@pytest.mark.parametrize("source", ["environment", "credentials file"])
def test_run_keeps_credentials_out_of_the_programs_environment(
    localoss_factory: object, tiny_model: SavedModel, tmp_path: Path, source: str
) -> None:
    token = "sts-token-for-the-wrapper-only"
    server = localoss_factory("--sts-token", token)  # type: ignore[operator]
    uri = upload_model(server, "nocode-environ", tiny_model)
    env = {**os.environ, "OSSMC_SMALL_FILE_MB": "1"}
    if source == "environment":
        env.update(
            OSS_ACCESS_KEY_ID=server.access_key_id,
            OSS_ACCESS_KEY_SECRET=server.access_key_secret,
            OSS_SESSION_TOKEN=token,
        )
    else:
        cred_file = tmp_path / "credentials.json"
        cred_file.write_text(
            json.dumps(
                {
                    "AccessKeyId": server.access_key_id,
                    "AccessKeySecret": server.access_key_secret,
                    "SecurityToken": token,
                }
            )
        )
        env["OSSMC_CRED_PATH"] = str(cred_file)
    model_dir = tmp_path / "model"
    command = [sys.executable, "-m", "ossmodelconnector.cli", "run", "--endpoint", server.endpoint]
    command += [uri, str(model_dir), "--", sys.executable, "-c", _ENVIRON_PROGRAM]
    completed = subprocess.run(
        command,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    blocks = [bytes.fromhex(line) for line in completed.stdout.split()]
    assert len(blocks) == 2  # the program's and its child's
    for block in blocks:
        variables = dict(entry.split(b"=", 1) for entry in block.split(b"\0") if b"=" in entry)
        # The program still reads the cache: the directory is exported to it.
        assert variables[b"OSSMC_PREPARED_DIRS"] == str(model_dir).encode()
        for name in ("OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET", "OSS_SESSION_TOKEN", "OSSMC_CRED_PATH"):
            assert name.encode() not in variables, name
        for secret in (server.access_key_secret, token):
            assert secret.encode() not in block
