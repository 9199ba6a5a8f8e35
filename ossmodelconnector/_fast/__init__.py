"""Native kernels with pure-Python twins; the backend is chosen once, when this package is imported.

The Cython modules are used when they are importable; otherwise (not built, unsupported platform) the
twins in ``_reference.py`` take over with identical signatures, results and errors, only slower.
``OSSMC_PUREPYTHON=1`` (alias ``OSSMODELCONNECTOR_PUREPYTHON``) forces the twins (as ``MSGPACK_PUREPYTHON``
does for msgpack), so that a test run can cover the code path a user without a compiler gets.

Exposes:
    crc64(data, crc=0) -> int: CRC-64 of any C-contiguous buffer as OSS computes it
        (``x-oss-hash-crc64ecma``), continuing from ``crc``.
    crc64_combine(crc_a, crc_b, len_b) -> int: CRC-64 of ``a + b`` from the two CRCs and ``len(b)``.
    futex_wait(buffer, offset, expected, timeout_s) -> bool: wait (GIL released, any process) while the
        u32 at ``offset`` equals ``expected``; False on timeout. The twin polls.
    futex_wake(buffer, offset) -> int: wake every waiter on that word, in any process.
    atomic_load_u32 / atomic_store_u32 / atomic_increment_u32(buffer, offset[, value]): the word, atomically
        (increment returns the new value, wrapping at 2**32).
    recv_into(fd, dest, timeout_s, crc=0) -> (count, crc): receive from a socket until ``dest`` is full
        or the stream ends, CRC-64 folded per piece, GIL released (the twin takes it per read).
    store_chunk(path, data, offset, device, inode, mtime_ns) -> (step, errno): open, identity check, write
        lock, pwrite, futimens and close of one chunk store, GIL released once for all of it (the twin
        takes it back after each call).
    STORE_DONE, STORE_OPEN, STORE_STAT, STORE_IDENTITY, STORE_WRITE, STORE_TIMES, STORE_CLOSE: the steps
        ``store_chunk`` reports (the same for both backends).
    BACKEND: ``"cython"`` or ``"python"`` (``"python"`` if any kernel fell back to its twin).

Note that ``from ossmodelconnector._fast.crc64 import crc64`` below rebinds the package attribute
``crc64`` from the extension module to its function; reach the module itself through
``importlib.import_module("ossmodelconnector._fast.crc64")``.
"""

from __future__ import annotations

import logging

from ossmodelconnector._fast._reference import (
    STORE_CLOSE,
    STORE_DONE,
    STORE_IDENTITY,
    STORE_OPEN,
    STORE_STAT,
    STORE_TIMES,
    STORE_WRITE,
)
from ossmodelconnector.environment import PUREPYTHON_ENV, environment_value

__all__ = [
    "BACKEND",
    "STORE_CLOSE",
    "STORE_DONE",
    "STORE_IDENTITY",
    "STORE_OPEN",
    "STORE_STAT",
    "STORE_TIMES",
    "STORE_WRITE",
    "atomic_increment_u32",
    "atomic_load_u32",
    "atomic_store_u32",
    "crc64",
    "crc64_combine",
    "futex_wait",
    "futex_wake",
    "recv_into",
    "store_chunk",
]

log = logging.getLogger(__name__)

BACKEND: str

# Read at import: the backend has to be fixed before any config exists, and the variable exists for test
# runs, not as a user setting.
if environment_value(PUREPYTHON_ENV) not in ("", "0"):
    from ossmodelconnector._fast._reference import (
        atomic_increment_u32,
        atomic_load_u32,
        atomic_store_u32,
        crc64,
        crc64_combine,
        futex_wait,
        futex_wake,
        recv_into,
        store_chunk,
    )

    BACKEND = "python"
else:
    try:
        from ossmodelconnector._fast.crc64 import crc64, crc64_combine
    except ImportError as exc:
        from ossmodelconnector._fast._reference import crc64, crc64_combine

        BACKEND = "python"
        log.warning(
            "ossmodelconnector's Cython kernels are not importable (%s): using the pure-Python twins, "
            "which hash about a thousand times slower; build them with "
            "`pip install --no-build-isolation -e .` (needs Cython and a C compiler)",
            exc,
        )
    else:
        BACKEND = "cython"

    try:
        from ossmodelconnector._fast.futex import (
            atomic_increment_u32,
            atomic_load_u32,
            atomic_store_u32,
            futex_wait,
            futex_wake,
        )
    except ImportError as exc:
        from ossmodelconnector._fast._reference import (
            atomic_increment_u32,
            atomic_load_u32,
            atomic_store_u32,
            futex_wait,
            futex_wake,
        )

        BACKEND = "python"
        log.warning(
            "ossmodelconnector's futex kernel is not importable (%s): waits on shared chunk states poll "
            "instead, waking up to milliseconds late; build it with `pip install --no-build-isolation -e .`",
            exc,
        )

    try:
        from ossmodelconnector._fast.receive import recv_into
    except ImportError as exc:
        from ossmodelconnector._fast._reference import recv_into

        BACKEND = "python"
        log.warning(
            "ossmodelconnector's receive kernel is not importable (%s): bodies are received with the GIL "
            "taken per socket read; build it with `pip install --no-build-isolation -e .`",
            exc,
        )

    try:
        from ossmodelconnector._fast.store import store_chunk
    except ImportError as exc:
        from ossmodelconnector._fast._reference import store_chunk

        BACKEND = "python"
        log.warning(
            "ossmodelconnector's chunk-store kernel is not importable (%s): chunks are stored with the GIL "
            "taken back after every system call; build it with `pip install --no-build-isolation -e .`",
            exc,
        )
