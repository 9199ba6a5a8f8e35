"""The ``auditPath`` file: one tab-separated line per OSS request, never a secret.

A line holds::

    2026-11-25T10:00:00.123Z  GET  bucket/key  bytes=0-8388607  206  8388608  41.250  5F1A...

(time in UTC, method, ``bucket/key``, the HTTP range (``-`` for none), status (``-`` if no response
arrived), bytes received, milliseconds, the server's request id (``-`` if none)). Ranges are passed in
half-open ``(start, end)`` and printed as HTTP's inclusive ``bytes=start-(end-1)``. Tabs, line breaks,
other control characters and backslashes in a key are escaped (``\\t``, ``\\n``, ``\\r``, ``\\\\``,
``\\xNN``, ``\\uNNNN``) so a record stays one line;
:func:`parse_audit_line` reads a line back.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import re
import threading
from dataclasses import dataclass
from typing import IO, Protocol

from ossmodelconnector.errors import ClosedError, ConfigError
from ossmodelconnector.regular_files import open_private_append

__all__ = ["Audit", "AuditLog", "AuditRecord", "NullAudit", "open_audit", "parse_audit_line"]

log = logging.getLogger(__name__)

_NONE = "-"
_SHORT_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_SHORT_UNESCAPES = {v[1]: k for k, v in _SHORT_ESCAPES.items()}
# Everything str.splitlines() or a terminal could take as a line break or control, so a record stays
# one line for any reader.
_ESCAPE_RE = re.compile(r"[\\\x00-\x1f\x7f\x85\u2028\u2029]")
_UNESCAPE_RE = re.compile(r"\\(?:([\\tnr])|x([0-9a-f]{2})|u([0-9a-f]{4}))")
_RANGE_RE = re.compile(r"bytes=(\d+)-(\d+)\Z")
_METHOD_RE = re.compile(r"[A-Z]+\Z")


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    short = _SHORT_ESCAPES.get(char)
    if short:
        return short
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _unescape_char(match: re.Match[str]) -> str:
    short, byte, wide = match.groups()
    if short:
        return _SHORT_UNESCAPES[short]
    return chr(int(byte or wide, 16))


def _escape(text: str) -> str:
    return _ESCAPE_RE.sub(_escape_char, text)


def _unescape(text: str) -> str:
    return _UNESCAPE_RE.sub(_unescape_char, text)


@dataclass(frozen=True)
class AuditRecord:
    """One audited request, as written by :meth:`AuditLog.record` and read by :func:`parse_audit_line`."""

    time: _dt.datetime
    method: str
    bucket: str
    key: str
    range: tuple[int, int] | None  # half-open
    status: int | None
    nbytes: int
    elapsed_ms: float
    request_id: str | None


def format_audit_line(
    method: str,
    bucket: str,
    key: str,
    range: tuple[int, int] | None,  # noqa: A002 - the field name everyone uses
    status: int | None,
    nbytes: int,
    elapsed_ms: float,
    request_id: str | None,
    now: _dt.datetime | None = None,
) -> str:
    """Format one audit line (with its newline); see :meth:`AuditLog.record` for the arguments.

    Raises:
        ValueError: a malformed method or an empty/negative range.
    """
    if not _METHOD_RE.match(method):
        raise ValueError(f"audit: method {method!r} is not an upper-case HTTP method")
    if range is None:
        span = _NONE
    else:
        start, end = range
        if not 0 <= start < end:
            raise ValueError(f"audit: range {range!r} of {bucket}/{key} is not a non-empty half-open range")
        span = f"bytes={start}-{end - 1}"
    stamp = (now or _dt.datetime.now(_dt.timezone.utc)).astimezone(_dt.timezone.utc)
    fields = (
        stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        method,
        _escape(f"{bucket}/{key}"),
        span,
        _NONE if status is None else str(int(status)),
        str(int(nbytes)),
        f"{elapsed_ms:.3f}",
        _NONE if not request_id else "\\x2d" if request_id == _NONE else _escape(request_id),
    )
    return "\t".join(fields) + "\n"


def parse_audit_line(line: str) -> AuditRecord:
    """Read back one line written by :class:`AuditLog`.

    Args:
        line: the line, with or without its newline.

    Returns:
        The :class:`AuditRecord` (the range half-open again).

    Raises:
        ValueError: the line is not an audit line.
    """
    fields = line.rstrip("\n").split("\t")
    if len(fields) != 8:
        raise ValueError(f"not an audit line ({len(fields)} tab-separated fields, expected 8): {line!r}")
    stamp, method, target, span, status, nbytes, elapsed, request_id = fields
    bucket, sep, key = _unescape(target).partition("/")
    if not sep:
        raise ValueError(f"not an audit line (no bucket/key): {line!r}")
    rng: tuple[int, int] | None = None
    if span != _NONE:
        match = _RANGE_RE.match(span)
        if not match:
            raise ValueError(f"not an audit line (range {span!r}): {line!r}")
        rng = (int(match.group(1)), int(match.group(2)) + 1)
    return AuditRecord(
        time=_dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")),
        method=method,
        bucket=bucket,
        key=key,
        range=rng,
        status=None if status == _NONE else int(status),
        nbytes=int(nbytes),
        elapsed_ms=float(elapsed),
        request_id=None if request_id == _NONE else _unescape(request_id),
    )


class Audit(Protocol):
    """What the client writes each request to: an :class:`AuditLog` or a :class:`NullAudit`."""

    enabled: bool

    def record(
        self,
        method: str,
        bucket: str,
        key: str,
        range: tuple[int, int] | None,  # noqa: A002
        status: int | None,
        nbytes: int,
        elapsed_ms: float,
        request_id: str | None,
    ) -> None:
        """Write one request's line."""
        ...

    def close(self) -> None:
        """Flush and close; idempotent."""
        ...


class AuditLog:
    """Append one line per OSS request to a file; thread-safe, each line flushed as it is written.

    The file is opened in append mode, so processes that share an ``auditPath`` interleave whole lines.
    A new file is created with mode 0600 whatever the umask; an existing one must be this user's own
    regular file, and is never opened through a symlink (another user may plant one in a shared folder).

    Args:
        path: the audit file (created if missing, appended to otherwise).

    Raises:
        ConfigError: the file cannot be opened for appending (the path and the OS reason are named); or it
            is refused: a symbolic link, not a regular file, another user's, or a file with more than one
            link (the path, the reason and the fix are named).
    """

    enabled = True

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        try:
            fd = open_private_append(self.path, self._refuse)
        except OSError as exc:
            raise ConfigError(
                f"auditPath {self.path!r} cannot be opened for appending: {exc.strerror}; create its "
                'directory, fix the path or permissions, or set auditPath to "" to turn auditing off'
            ) from None
        try:
            # Line-buffered: a crash loses no finished line, and processes interleave whole lines.
            self._file: IO[str] | None = open(fd, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
        except BaseException:
            os.close(fd)
            raise
        log.debug("auditing OSS requests to %s", self.path)

    def _refuse(self, why: str) -> ConfigError:
        return ConfigError(
            f"auditPath {self.path!r} {why}: refused, nothing was written to it. Remove it if it is not "
            "yours, or set auditPath to a file of your own in a directory others cannot write to "
            '(or "" to turn auditing off)'
        )

    def record(
        self,
        method: str,
        bucket: str,
        key: str,
        range: tuple[int, int] | None,  # noqa: A002 - the field name everyone uses
        status: int | None,
        nbytes: int,
        elapsed_ms: float,
        request_id: str | None,
    ) -> None:
        """Write one request's line.

        Args:
            method: the HTTP method (``GET``, ``HEAD``...).
            bucket: the bucket.
            key: the object key ("" for a bucket-level request such as a listing).
            range: the half-open byte range requested, or None for the whole object.
            status: the HTTP status, or None when no response arrived (connection failed).
            nbytes: body bytes received.
            elapsed_ms: milliseconds from sending the request to the end of the body (or the failure).
            request_id: the server's ``x-oss-request-id``, or None.

        Raises:
            ClosedError: the log was closed.
            ValueError: a malformed method or an empty/negative range.
        """
        line = format_audit_line(method, bucket, key, range, status, nbytes, elapsed_ms, request_id)
        with self._lock:
            if self._file is None:
                raise ClosedError(
                    f"audit log {self.path!r} is closed: stop issuing requests before closing the connector",
                    bucket=bucket,
                    key=key,
                )
            self._file.write(line)

    def close(self) -> None:
        """Flush and close the file; idempotent."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __repr__(self) -> str:
        return f"AuditLog({self.path!r}{', closed' if self._file is None else ''})"


class NullAudit:
    """The audit log when ``auditPath`` is empty: same interface, records nothing."""

    enabled = False

    def record(
        self,
        method: str,
        bucket: str,
        key: str,
        range: tuple[int, int] | None,  # noqa: A002
        status: int | None,
        nbytes: int,
        elapsed_ms: float,
        request_id: str | None,
    ) -> None:
        """Do nothing."""

    def close(self) -> None:
        """Do nothing."""

    def __repr__(self) -> str:
        return "NullAudit()"


def open_audit(path: str | os.PathLike[str]) -> AuditLog | NullAudit:
    """The audit log for a config's ``audit_path``.

    Args:
        path: the audit file; "" for none.

    Returns:
        An :class:`AuditLog` on ``path``, or a :class:`NullAudit` when ``path`` is empty.

    Raises:
        ConfigError: the file cannot be opened.
    """
    return AuditLog(path) if os.fspath(path) else NullAudit()
