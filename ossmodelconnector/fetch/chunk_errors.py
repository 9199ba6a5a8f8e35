"""The errors of a chunk buffer: how a failure is kept and raised again, sticky or retryable; timeouts;
integrity mismatches.

A chunk whose fetch failed is FAILED and its error is raised to every reader of those bytes. Most
failures are the object's (retries exhausted, the object changed, a CRC mismatch): fetching again cannot
help, so they stay. One kind is not the object's: the cache had no room to store the chunk (``ENOSPC``
from ``/dev/shm`` or a disk, ``ENOMEM``, a ``MemoryError``). That failure is kept as an
:class:`~ossmodelconnector.errors.OutOfMemoryError` (so readers in other processes see the same class in
the state table) and is *retryable*: the next read fetches the chunk again, and succeeds once there is
room (``ChunkBuffer.wait_ready``).
"""

from __future__ import annotations

import copy
import errno
from typing import NoReturn

from ossmodelconnector.errors import ConnectorError, IntegrityError, OutOfMemoryError, RequestTimeoutError
from ossmodelconnector.objects import ObjectInfo
from ossmodelconnector.ranges import ByteRange

__all__ = [
    "as_retryable",
    "object_mismatch",
    "out_of_room",
    "raise_stored",
    "refetch_mismatch",
    "timeout_error",
]

_NO_ROOM_ERRNOS = frozenset({errno.ENOSPC, errno.ENOMEM, errno.EDQUOT})


def out_of_room(error: BaseException) -> bool:
    """Whether ``error`` (or an error it was raised from) says there was no room to store the bytes."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, MemoryError):  # OutOfMemoryError too
            return True
        if isinstance(current, OSError) and current.errno in _NO_ROOM_ERRNOS:
            return True
        current = current.__cause__ or current.__context__
    return False


def as_retryable(error: BaseException, info: ObjectInfo, chunk: ByteRange) -> OutOfMemoryError:
    """The :class:`OutOfMemoryError` a chunk that found no room keeps (``error`` as its cause)."""
    if isinstance(error, OutOfMemoryError):
        return error
    retryable = OutOfMemoryError(
        f"{info.uri}: bytes [{chunk.start}, {chunk.end}) could not be stored ({error}); the next read "
        "fetches them again: free memory or space in the cache directory (df), lower memoryLimitMB, or "
        "set cacheDir elsewhere",
        bucket=info.bucket,
        key=info.key,
        range=chunk.as_tuple(),
    )
    retryable.__cause__ = error
    return retryable


def timeout_error(
    info: ObjectInfo, chunk: ByteRange, index: int, state: str, timeout_s: float
) -> RequestTimeoutError:
    """The error of a reader that waited ``timeout_s`` for chunk ``index`` (in ``state``)."""
    return RequestTimeoutError(
        f"{info.uri}: timed out after {timeout_s:g} s waiting for bytes [{chunk.start}, {chunk.end}) "
        f"(chunk {index}, {state}): the download is stalled or too slow; "
        "check the network and the server, or raise wait_timeout_s",
        bucket=info.bucket,
        key=info.key,
        range=chunk.as_tuple(),
    )


def raise_stored(stored: BaseException, info: ObjectInfo, chunk: ByteRange) -> NoReturn:
    """Raise a fresh copy of a stored failure (raising one object twice would chain its tracebacks)."""
    error: BaseException | None = None
    if isinstance(stored, ConnectorError):
        try:
            error = copy.copy(stored)
        except Exception:  # a subclass whose constructor cannot be replayed
            error = None
    if error is None:
        error = ConnectorError(
            f"{info.uri}: fetching bytes [{chunk.start}, {chunk.end}) failed with {stored!r}; see the "
            "cause, and open the object again to retry",
            bucket=info.bucket,
            key=info.key,
            range=chunk.as_tuple(),
        )
    raise error from stored


def refetch_mismatch(info: ObjectInfo, chunk: ByteRange, first: int, crc: int) -> IntegrityError:
    """A chunk fetched again (after a release) whose CRC-64 differs from its first fetch's."""
    return IntegrityError(
        f"{info.uri}: bytes [{chunk.start}, {chunk.end}) fetched again have CRC-64 {crc:#018x}, but "
        f"the first fetch had {first:#018x}: the object changed or the data was corrupted in transit; "
        "open the object again to read the current version",
        bucket=info.bucket,
        key=info.key,
        range=chunk.as_tuple(),
    )


def object_mismatch(info: ObjectInfo, total: int, expected: int) -> IntegrityError:
    """The combined CRC-64 of an object's chunks differs from the server's ``x-oss-hash-crc64ecma``."""
    return IntegrityError(
        f"{info.uri}: the CRC-64 of the downloaded bytes is {total:#018x} but the server's "
        f"x-oss-hash-crc64ecma is {expected:#018x}: the data was corrupted in transit or the object "
        "changed while it was read; open the object again (report it if it persists)",
        bucket=info.bucket,
        key=info.key,
        range=(0, info.size),
    )
