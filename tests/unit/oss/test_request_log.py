"""The request log (``auditPath``): one line per request, parsed back, thread-safe, appended, closed.

The package's log file (``logPath``) is tested in ``unit/test_logfiles.py``.
"""

from __future__ import annotations

import datetime as dt
import os
import stat
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ossmodelconnector.errors import ClosedError, ConfigError
from ossmodelconnector.oss.request_log import (
    AuditLog,
    NullAudit,
    format_audit_line,
    open_audit,
    parse_audit_line,
)


def test_audit_line_layout(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    audit = AuditLog(path)
    audit.record("GET", "bucket", "dir/model.safetensors", (0, 8 * 1024 * 1024), 206, 8388608, 41.25, "5F1A")
    audit.record("HEAD", "bucket", "k", None, None, 0, 3.0, None)
    audit.close()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2
    fields = lines[0].split("\t")
    assert fields[1:] == [
        "GET",
        "bucket/dir/model.safetensors",
        "bytes=0-8388607",
        "206",
        "8388608",
        "41.250",
        "5F1A",
    ]
    stamp = dt.datetime.fromisoformat(fields[0].replace("Z", "+00:00"))
    assert fields[0].endswith("Z") and abs((dt.datetime.now(dt.timezone.utc) - stamp).total_seconds()) < 3600
    assert lines[1].split("\t")[1:] == ["HEAD", "bucket/k", "-", "-", "0", "3.000", "-"]


def test_audit_lines_parse_back(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    audit = AuditLog(path)
    audit.record("GET", "bucket", "a/b", (100, 200), 206, 100, 1.5, "RID-1")
    audit.record("GET", "bucket", "", None, 200, 1234, 0.25, None)  # a listing
    audit.close()
    first, second = (
        parse_audit_line(line) for line in path.read_text(encoding="utf-8").splitlines(keepends=True)
    )
    assert (first.method, first.bucket, first.key, first.range) == ("GET", "bucket", "a/b", (100, 200))
    assert (first.status, first.nbytes, first.elapsed_ms, first.request_id) == (206, 100, 1.5, "RID-1")
    assert first.time.tzinfo is not None
    assert (second.key, second.range, second.request_id) == ("", None, None)


@settings(max_examples=200)
@given(
    key=st.text(st.characters(codec="utf-8"), max_size=40),
    start=st.integers(0, 2**40),
    length=st.integers(1, 2**30),
    status=st.none() | st.integers(100, 599),
    nbytes=st.integers(0, 2**40),
    elapsed=st.floats(0, 1e7, allow_nan=False),
    request_id=st.none() | st.text(st.characters(codec="utf-8"), min_size=1, max_size=30),
    ranged=st.booleans(),
)
def test_any_record_is_one_line_and_round_trips(
    key: str,
    start: int,
    length: int,
    status: int | None,
    nbytes: int,
    elapsed: float,
    request_id: str | None,
    ranged: bool,
) -> None:
    rng = (start, start + length) if ranged else None
    line = format_audit_line("GET", "bucket", key, rng, status, nbytes, elapsed, request_id)
    assert line.endswith("\n") and len(line.splitlines()) == 1 and line.count("\t") == 7
    rec = parse_audit_line(line)
    assert (rec.bucket, rec.key, rec.range, rec.status, rec.nbytes) == ("bucket", key, rng, status, nbytes)
    assert rec.request_id == request_id
    assert rec.elapsed_ms == pytest.approx(elapsed, abs=0.0005)


def test_bad_records_and_lines() -> None:
    with pytest.raises(ValueError, match="not a non-empty half-open range"):
        format_audit_line("GET", "b", "k", (5, 5), 206, 0, 1.0, None)
    with pytest.raises(ValueError, match="not a non-empty half-open range"):
        format_audit_line("GET", "b", "k", (-1, 5), 206, 0, 1.0, None)
    with pytest.raises(ValueError, match="upper-case HTTP method"):
        format_audit_line("get\t", "b", "k", None, 200, 0, 1.0, None)
    with pytest.raises(ValueError, match="expected 8"):
        parse_audit_line("just text")
    with pytest.raises(ValueError, match="range"):
        parse_audit_line("2026-01-01T00:00:00.000Z\tGET\tb/k\tbytes=1-\t200\t0\t1.000\t-")


def test_audit_is_thread_safe_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    audit = AuditLog(path)

    def writer(n: int) -> None:
        for i in range(200):
            audit.record("GET", "bucket", f"t{n}/k{i}" + "x" * 500, (i, i + 1), 206, 1, 0.5, f"r{n}-{i}")

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    audit.close()
    records = [parse_audit_line(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(records) == 800
    assert {r.request_id for r in records} == {f"r{n}-{i}" for n in range(4) for i in range(200)}


def test_audit_is_line_buffered(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    audit = AuditLog(path)
    audit.record("GET", "bucket", "k", None, 200, 3, 1.0, None)
    assert path.read_text(encoding="utf-8").count("\n") == 1  # visible before close
    audit.close()


def test_audit_close_is_idempotent_and_record_after_close_fails(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.log")
    audit.close()
    audit.close()
    with pytest.raises(ClosedError, match="is closed"):
        audit.record("GET", "bucket", "k", None, 200, 0, 1.0, None)
    assert "closed" in repr(audit)


def test_audit_appends(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    for _ in range(2):
        audit = AuditLog(path)
        audit.record("GET", "bucket", "k", None, 200, 0, 1.0, None)
        audit.close()
    assert len(path.read_text(encoding="utf-8").splitlines()) == 2


def test_null_audit_and_open_audit(tmp_path: Path) -> None:
    null = open_audit("")
    assert isinstance(null, NullAudit) and not null.enabled
    null.record("GET", "bucket", "k", (0, 1), 206, 1, 1.0, None)
    null.close()
    null.close()
    real = open_audit(tmp_path / "a.log")
    assert isinstance(real, AuditLog) and real.enabled
    real.close()


def test_audit_unopenable_path_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"auditPath '.*missing-dir/a\.log' cannot be opened"):
        AuditLog(tmp_path / "missing-dir" / "a.log")


def test_audit_file_is_created_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        audit = AuditLog(tmp_path / "audit.log")
    finally:
        os.umask(old)
    audit.record("GET", "bucket", "k", None, 200, 0, 1.0, None)
    audit.close()
    assert stat.S_IMODE((tmp_path / "audit.log").stat().st_mode) == 0o600


def test_audit_never_writes_through_a_planted_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    (tmp_path / "audit.log").symlink_to(victim)
    with pytest.raises(ConfigError) as info:
        AuditLog(tmp_path / "audit.log")
    message = str(info.value)
    assert f"auditPath {str(tmp_path / 'audit.log')!r} is a symbolic link: refused" in message
    assert "set auditPath to a file of your own" in message and '(or "" to turn auditing off)' in message
    assert victim.read_bytes() == b"precious\n"
