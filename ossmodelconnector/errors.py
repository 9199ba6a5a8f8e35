"""The one exception tree of ossmodelconnector.

::

    ConnectorError
    ├── ConfigError                (ValueError)      bad config key, type or value
    ├── CredentialsError           (PermissionError) credentials missing, malformed or rejected
    ├── InvalidURIError            (ValueError)      not an ``oss://bucket/key`` URI
    ├── ClosedError                (ValueError)      used after ``close()``
    ├── RequestError                                  an OSS request failed
    │   ├── ObjectNotFoundError    (FileNotFoundError) NoSuchKey / NoSuchBucket / empty prefix
    │   ├── AccessDeniedError      (PermissionError) AccessDenied / SignatureDoesNotMatch ...
    │   ├── RequestTimeoutError    (TimeoutError)    no answer within the configured timeout
    │   ├── ObjectChangedError                        the ETag changed under a download
    │   └── RetriesExhaustedError                     transient failures outlasted the retry budget
    ├── IntegrityError                                CRC-64 of the bytes differs from the server's
    ├── CacheError                                    shared-memory cache problems
    │   ├── OutOfMemoryError       (MemoryError)     segment does not fit in the cache budget
    │   └── OwnerDiedError                            the process fetching the bytes died
    └── UnsafePathError            (ValueError)      a key or directory that must not be touched

Every class keeps its context as attributes (``bucket``, ``key``, ``range``, ``status``, ``code``,
``request_id``) and round-trips through :mod:`pickle`, because errors cross process boundaries.
Foreign exceptions (sockets, ``http.client``, oss2) are translated only in ``client.py``.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AccessDeniedError",
    "CacheError",
    "ClosedError",
    "ConfigError",
    "ConnectorError",
    "CredentialsError",
    "IntegrityError",
    "InvalidURIError",
    "ObjectChangedError",
    "ObjectNotFoundError",
    "OutOfMemoryError",
    "OwnerDiedError",
    "RequestError",
    "RequestTimeoutError",
    "RetriesExhaustedError",
    "UnsafePathError",
]

# Codes of failures below HTTP that the receive kernel (_fast) raises too; oss/responses.py re-exports them
# with the other codes of our own. Not in __all__, which lists the exception classes.
CODE_CONNECTION = "ConnectionError"
"""``code`` of a :class:`RequestError` for a failed connection (reset, refused, broken pipe); retried."""
CODE_TIMEOUT = "RequestTimeout"
"""``code`` of a :class:`RequestTimeoutError` raised for silence on a socket; retried."""

_CONTEXT = ("bucket", "key", "range", "status", "code", "request_id")


class ConnectorError(Exception):
    """Root of every error raised by ossmodelconnector.

    Args:
        message: what happened, to which object, and the fix.
        bucket: the bucket involved, if any.
        key: the object key involved, if any.
        range: the half-open byte range ``(start, end)`` involved, if any.
        status: the HTTP status of the failed request, if any.
        code: the OSS error code (``NoSuchKey``...), if any.
        request_id: the server's ``x-oss-request-id``, to quote to support.
    """

    def __init__(
        self,
        message: str,
        *,
        bucket: str | None = None,
        key: str | None = None,
        range: tuple[int, int] | None = None,  # noqa: A002 - the attribute name users expect
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.bucket = bucket
        self.key = key
        self.range = range
        self.status = status
        self.code = code
        self.request_id = request_id

    def _context(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _CONTEXT if getattr(self, name) is not None}

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception's default reduce drops keyword-only arguments; rebuild through a helper instead.
        return (_rebuild, (type(self), self.message, self._context()))

    def __str__(self) -> str:
        extra = ""
        if self.request_id:
            extra = f" (request id {self.request_id})"
        return f"{self.message}{extra}"


def _rebuild(cls: type[ConnectorError], message: str, context: dict[str, Any]) -> ConnectorError:
    return cls(message, **context)


class ConfigError(ConnectorError, ValueError):
    """A configuration key, type or value is wrong; the message names the key and what is accepted."""


class CredentialsError(ConnectorError, PermissionError):
    """Credentials are missing, malformed, expired or rejected by the server."""


class InvalidURIError(ConnectorError, ValueError):
    """A URI is not of the form ``oss://bucket/key``."""


class ClosedError(ConnectorError, ValueError):
    """An object was used after its ``close()``."""


class RequestError(ConnectorError):
    """An OSS request failed with an error that retrying will not fix."""


class ObjectNotFoundError(RequestError, FileNotFoundError):
    """The bucket, object or prefix does not exist."""


class AccessDeniedError(RequestError, PermissionError):
    """The server refused the request (access denied, bad signature, unknown access key)."""


class RequestTimeoutError(RequestError, TimeoutError):
    """The server did not answer within the configured timeout."""


class ObjectChangedError(RequestError):
    """The object changed (its ETag differs) while it was being read."""


class RetriesExhaustedError(RequestError):
    """Transient failures (5xx, SlowDown, resets, short bodies) outlasted the retry budget."""


class IntegrityError(ConnectorError):
    """The CRC-64 of the received bytes differs from the server's ``x-oss-hash-crc64ecma``."""


class CacheError(ConnectorError):
    """The shared-memory cache cannot serve the request."""


class OutOfMemoryError(CacheError, MemoryError):
    """The data does not fit in the cache budget (``memoryLimitMB`` or free space in ``cacheDir``)."""


class OwnerDiedError(CacheError):
    """The process that was fetching the bytes died before they arrived."""


class UnsafePathError(ConnectorError, ValueError):
    """A key or directory would escape or damage something it must not (``..``, ``/``, home...)."""
