"""Pure-Python twins of the Cython kernels: same signatures, same results, same errors, slower.

CRC-64 here is the one OSS returns as ``x-oss-hash-crc64ecma`` and oss2 computes in ``oss2.utils.Crc64``:
the ECMA-182 polynomial, bit-reflected, initial register and final XOR all ones. That is the catalogued
CRC-64/XZ (check value ``crc64(b"123456789") == 0x995DC9BBDF1939FA``), not crcmod's ``crc-64-jones``.

The checksum is carried as its final value, so continuing a checksum means undoing the final XOR, feeding
more bytes and redoing it: ``crc64(b, crc64(a)) == crc64(a + b)``. ``crc64_combine`` uses the identity
``crc(a + b) = crc(a) * x^(8 * len(b)) + crc(b)`` over GF(2) modulo the polynomial (valid because the
initial register equals the final XOR), with ``x^(2^k)`` precomputed, as zlib's ``crc32_combine`` does.

The futex twins cannot block in the kernel: ``futex_wait`` polls the word with a short, growing sleep
(from ``FUTEX_POLL_MIN_S`` to ``FUTEX_POLL_MAX_S``), so it is correct but wakes up to about a couple of
milliseconds late and burns a little CPU while waiting; ``futex_wake`` has nothing to wake and returns 0.
Their "atomics" are plain 4-byte reads and writes: atomic against threads of this process (the GIL), not
against other processes, so two processes incrementing the same word at once may lose an increment (the
state table has one writer per word, except the demand ring, whose requests are hints).

The ``recv_into`` twin has the kernel's contract (fill the span or stop at end of stream, CRC-64 per
piece, the same errors and messages) but takes the GIL back after every ``poll`` and every read, like any
Python socket code: what the kernel exists to avoid.

The ``store_chunk`` twin makes the kernel's system calls one by one (``os.open``, ``os.fstat``,
``fcntl``, ``os.pwrite``, ``os.utime``, ``os.close``), each a GIL release and re-acquisition.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import math
import os
import select
import struct
import time
from operator import index
from typing import TYPE_CHECKING

from ossmodelconnector.errors import CODE_CONNECTION, CODE_TIMEOUT, RequestError, RequestTimeoutError

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = [
    "CRC64_POLY_REFLECTED",
    "FUTEX_POLL_MAX_S",
    "FUTEX_POLL_MIN_S",
    "RECEIVE_PIECE_BYTES",
    "STORE_CLOSE",
    "STORE_DONE",
    "STORE_IDENTITY",
    "STORE_OPEN",
    "STORE_STAT",
    "STORE_TIMES",
    "STORE_WRITE",
    "as_bytes_view",
    "atomic_increment_u32",
    "atomic_load_u32",
    "atomic_store_u32",
    "check_crc",
    "check_fd",
    "check_length",
    "check_mtime_ns",
    "check_path",
    "check_receive_dest",
    "check_store_data",
    "check_store_offset",
    "check_timeout",
    "check_u32",
    "check_word_buffer",
    "check_word_offset",
    "crc64",
    "crc64_combine",
    "futex_wait",
    "futex_wake",
    "poll_timeout_ms",
    "receive_failed",
    "receive_timed_out",
    "recv_into",
    "store_chunk",
]

CRC64_POLY_REFLECTED = 0xC96C5795D7870F42
"""ECMA-182 polynomial ``0x42F0E1EBA9EA3693`` with its bits reversed (least significant bit = x^63)."""

_MASK64 = 0xFFFFFFFFFFFFFFFF
# In the reflected representation the most significant bit stands for x^0, so the "one" polynomial is it.
_X0 = 1 << 63
# A length in bytes becomes a power of x in bits (times 8 = 2^3); lengths below 2^64 need 64 + 3 entries.
_X2N_ENTRIES = 67


def _byte_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ CRC64_POLY_REFLECTED if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_TABLE = _byte_table()


def _multmodp(a: int, b: int) -> int:
    """Product of two reflected polynomials modulo the CRC polynomial."""
    product = 0
    bit = _X0
    while a:
        if a & bit:
            product ^= b
            a ^= bit
        bit >>= 1
        b = (b >> 1) ^ CRC64_POLY_REFLECTED if b & 1 else b >> 1
    return product


def _x2n_table() -> tuple[int, ...]:
    table = [_X0 >> 1]  # x^1
    for _ in range(1, _X2N_ENTRIES):
        table.append(_multmodp(table[-1], table[-1]))
    return tuple(table)


_X2N = _x2n_table()


def check_crc(name: str, value: object) -> int:
    """``value`` as a CRC-64 int (shared by both backends so that their errors are identical)."""
    try:
        crc = index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"{name} must be an int CRC-64 value, got {type(value).__name__}: "
            "pass the int that crc64() returned"
        ) from None
    if not 0 <= crc <= _MASK64:
        raise ValueError(
            f"{name}={crc} is not a CRC-64 value: it must be in [0, 2**64); pass the int that crc64() "
            "returned (x-oss-hash-crc64ecma is an unsigned decimal string: int(header))"
        )
    return crc


def check_length(name: str, value: object) -> int:
    """``value`` as a byte count in ``[0, 2**64)`` (shared by both backends)."""
    try:
        length = index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be an int byte count, got {type(value).__name__}") from None
    if not 0 <= length <= _MASK64:
        raise ValueError(f"{name}={length} is not a byte count: it must be in [0, 2**64)")
    return length


def as_bytes_view(data: Buffer) -> memoryview:
    """A one-dimensional unsigned-byte view of any C-contiguous buffer (shared by both backends).

    Args:
        data: bytes, bytearray, memoryview, numpy array, mmap... of any item format and shape.

    Returns:
        A ``memoryview`` of format ``"B"`` over the same memory (no copy).

    Raises:
        TypeError: ``data`` does not support the buffer protocol.
        ValueError: ``data`` is not C-contiguous.
    """
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(
            f"crc64 needs a bytes-like object (bytes, bytearray, memoryview, numpy array, mmap), got "
            f"{type(data).__name__}: pass the buffer itself, e.g. memoryview(obj) or obj.encode() for text"
        ) from None
    if not view.c_contiguous:
        view.release()
        raise ValueError(
            "crc64 needs a C-contiguous buffer, got a strided view: hash a contiguous copy "
            "(bytes(view), numpy.ascontiguousarray(array)) or hash each contiguous piece and chain them"
        )
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def crc64(data: Buffer, crc: int = 0) -> int:
    """CRC-64 of ``data`` as OSS computes it, continuing from ``crc``.

    Args:
        data: any C-contiguous buffer.
        crc: the CRC-64 of the bytes that precede ``data`` (0 for none).

    Returns:
        The CRC-64 of the preceding bytes followed by ``data``: ``crc64(b, crc64(a)) == crc64(a + b)``.

    Raises:
        TypeError: ``data`` is not a buffer, or ``crc`` is not an int.
        ValueError: ``data`` is not C-contiguous, or ``crc`` is outside ``[0, 2**64)``.
    """
    register = check_crc("crc", crc) ^ _MASK64
    table = _TABLE
    with as_bytes_view(data) as view:
        for byte in view:
            register = table[(register ^ byte) & 0xFF] ^ (register >> 8)
    return register ^ _MASK64


def crc64_combine(crc_a: int, crc_b: int, len_b: int) -> int:
    """CRC-64 of ``a + b`` from the CRC-64s of ``a`` and ``b`` and the length of ``b``, without the data.

    Args:
        crc_a: ``crc64(a)``.
        crc_b: ``crc64(b)``.
        len_b: ``len(b)`` in bytes.

    Returns:
        ``crc64(a + b)``, in O(log len_b) steps.

    Raises:
        TypeError: an argument is not an int.
        ValueError: a CRC is outside ``[0, 2**64)`` or ``len_b`` is outside ``[0, 2**64)``.
    """
    crc_a = check_crc("crc_a", crc_a)
    crc_b = check_crc("crc_b", crc_b)
    length = check_length("len_b", len_b)
    # x^(8 * len_b) is the product of x^(2^(i + 3)) = _X2N[i + 3] over the set bits i of len_b.
    shift = _X0
    k = 3
    while length:
        if length & 1:
            shift = _multmodp(_X2N[k], shift)
        length >>= 1
        k += 1
    return _multmodp(shift, crc_a) ^ crc_b


# --- futex and 32-bit atomics -----------------------------------------------------------------------

FUTEX_POLL_MIN_S = 50e-6
"""First sleep of the polling ``futex_wait`` twin; each further sleep doubles, up to the maximum."""
FUTEX_POLL_MAX_S = 2e-3
"""Longest sleep of the polling ``futex_wait`` twin: how late, at worst, it notices a change."""

_MASK32 = 0xFFFFFFFF
_U32 = struct.Struct("=I")  # native order, as the kernel's futex word and the C atomics see it


def check_u32(name: str, value: object) -> int:
    """``value`` as a u32 (shared by both backends so that their errors are identical)."""
    try:
        number = index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if not 0 <= number <= _MASK32:
        raise ValueError(f"{name}={number} is not a u32: it must be in [0, 2**32)")
    return number


def check_timeout(value: object) -> float:
    """``value`` as a timeout in seconds (shared by both backends)."""
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TypeError(
            f"timeout_s must be a number of seconds, got {type(value).__name__}: pass 0 to only check "
            "or math.inf to wait without a limit"
        ) from None
    if math.isnan(seconds):
        raise ValueError(
            "timeout_s is NaN: pass seconds, 0 to only check, or math.inf to wait without a limit"
        )
    return seconds


def check_word_buffer(buffer: object, writable: bool) -> memoryview:
    """A one-dimensional byte view of ``buffer`` for a futex or an atomic (shared by both backends).

    Raises:
        TypeError: not a buffer, or read-only where ``writable`` is asked.
        ValueError: not C-contiguous.
    """
    try:
        view = memoryview(buffer)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"futexes and atomics need a buffer over shared memory (mmap, memoryview), got "
            f"{type(buffer).__name__}"
        ) from None
    if not view.c_contiguous:
        view.release()
        raise ValueError("futexes and atomics need a C-contiguous buffer, got a strided view")
    if writable and view.readonly:
        view.release()
        raise TypeError(
            "this atomic writes, but the buffer is read-only: map the shared memory writable "
            "(mmap with PROT_WRITE) to change the word"
        )
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def check_word_offset(offset: object, length: int) -> int:
    """``offset`` as the position of a whole, 4-aligned u32 inside ``length`` bytes (shared by both)."""
    try:
        position = index(offset)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"offset must be an int byte offset, got {type(offset).__name__}") from None
    if position < 0 or position + 4 > length:
        raise ValueError(f"offset {position} does not hold a whole u32 in a buffer of {length} bytes")
    if position % 4:
        raise ValueError(
            f"offset {position} is not a multiple of 4: futexes and atomics need an aligned u32; "
            "place the word at an aligned offset"
        )
    return position


def _word_view(buffer: object, offset: object, writable: bool) -> tuple[memoryview, int]:
    view = check_word_buffer(buffer, writable)
    try:
        return view, check_word_offset(offset, len(view))
    except BaseException:
        view.release()
        raise


def futex_wait(buffer: Buffer, offset: int, expected: int, timeout_s: float) -> bool:
    """Wait while the u32 at ``offset`` in ``buffer`` equals ``expected``, at most ``timeout_s`` seconds.

    Polls with a sleep growing from ``FUTEX_POLL_MIN_S`` to ``FUTEX_POLL_MAX_S``: correct, slower to
    notice a change than the kernel futex of the Cython backend.

    Args:
        buffer: a C-contiguous buffer over shared memory; read-only is fine.
        offset: byte offset of a 4-byte aligned u32 in ``buffer``.
        expected: the value seen before deciding to wait.
        timeout_s: seconds; ``<= 0`` only checks; ``math.inf`` waits without a limit.

    Returns:
        True once the word differs from ``expected``; False when ``timeout_s`` passed with it still equal.

    Raises:
        TypeError: ``buffer`` is not a buffer, or an argument is not a number.
        ValueError: ``offset`` is out of range or not aligned, or ``expected`` is not a u32.
    """
    value = check_u32("expected", expected)
    limit = check_timeout(timeout_s)
    view, position = _word_view(buffer, offset, False)
    with view:
        deadline = time.monotonic() + limit
        pause = FUTEX_POLL_MIN_S
        while True:
            if _U32.unpack_from(view, position)[0] != value:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, FUTEX_POLL_MAX_S)


def futex_wake(buffer: Buffer, offset: int) -> int:
    """Wake the waiters on the u32 at ``offset``: the polling twin has none to wake, so 0.

    Raises:
        TypeError: ``buffer`` is not a buffer.
        ValueError: ``offset`` is out of range or not aligned.
    """
    view, _ = _word_view(buffer, offset, False)
    view.release()
    return 0


def atomic_load_u32(buffer: Buffer, offset: int) -> int:
    """The u32 at ``offset`` (native byte order).

    Raises:
        TypeError: ``buffer`` is not a buffer.
        ValueError: ``offset`` is out of range or not aligned.
    """
    view, position = _word_view(buffer, offset, False)
    with view:
        return int(_U32.unpack_from(view, position)[0])


def atomic_store_u32(buffer: Buffer, offset: int, value: int) -> None:
    """Store ``value`` into the u32 at ``offset``.

    Raises:
        TypeError: ``buffer`` is not a writable buffer.
        ValueError: ``offset`` is out of range or not aligned, or ``value`` is not a u32.
    """
    number = check_u32("value", value)
    view, position = _word_view(buffer, offset, True)
    with view:
        _U32.pack_into(view, position, number)


def atomic_increment_u32(buffer: Buffer, offset: int) -> int:
    """Add 1 to the u32 at ``offset`` (wrapping at 2**32) and return the new value.

    Raises:
        TypeError: ``buffer`` is not a writable buffer.
        ValueError: ``offset`` is out of range or not aligned.
    """
    view, position = _word_view(buffer, offset, True)
    with view:
        number: int = (_U32.unpack_from(view, position)[0] + 1) & _MASK32
        _U32.pack_into(view, position, number)
        return number


# --- receive ----------------------------------------------------------------------------------------

RECEIVE_PIECE_BYTES = 256 * 1024
"""Most bytes one ``recv`` asks for: its CRC-64 is folded right after, while the piece is still in the
CPU's cache (256 KiB fits the L2 of current x86 cores; larger pieces gain nothing, a syscall per 256 KiB
is about 40 per 10 MB)."""


def check_fd(fd: object) -> int:
    """``fd`` as a descriptor number (shared by both backends)."""
    try:
        number = index(fd)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"fd must be an int file descriptor (sock.fileno()), got {type(fd).__name__}"
        ) from None
    if number < 0:
        raise ValueError(f"fd={number} is not a file descriptor: pass the socket's fileno()")
    return number


def check_receive_dest(dest: object) -> memoryview:
    """A writable, C-contiguous byte view of ``dest`` (shared by both backends).

    Raises:
        TypeError: not a buffer, or read-only.
        ValueError: not C-contiguous.
    """
    try:
        view = memoryview(dest)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"dest must be a writable buffer (bytearray, memoryview, mmap), got {type(dest).__name__}"
        ) from None
    if view.readonly:
        view.release()
        raise TypeError("dest is read-only: received bytes need a writable buffer")
    if not view.c_contiguous:
        view.release()
        raise ValueError("dest is not C-contiguous: pass a contiguous buffer")
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def poll_timeout_ms(timeout_s: object) -> int:
    """``timeout_s`` as ``poll``'s milliseconds, rounded up (-1 for ``math.inf``); shared by both backends.

    Raises:
        TypeError: not a number.
        ValueError: NaN or negative.
    """
    seconds = check_timeout(timeout_s)
    if seconds < 0:
        raise ValueError(f"timeout_s={seconds} is negative: pass the seconds of silence to allow")
    if math.isinf(seconds):
        return -1
    return min(math.ceil(seconds * 1000.0), 2**31 - 1)


def receive_timed_out(received: int, wanted: int, timeout_s: float) -> RequestTimeoutError:
    """The error for a socket silent for ``timeout_s`` (shared by both backends, so messages match).

    ``range`` is the part of the destination that was filled before it: ``(0, received)``.
    """
    return RequestTimeoutError(
        f"no byte arrived for {timeout_s:g} s after {received} of {wanted} bytes",
        code=CODE_TIMEOUT,
        range=(0, received),
    )


def receive_failed(number: int, received: int, wanted: int) -> RequestError:
    """The error for a failed ``recv`` (reset, ...) with ``errno`` ``number`` (shared by both backends).

    ``range`` is the part of the destination that was filled before it: ``(0, received)``; the cause is the
    matching ``OSError`` (``ConnectionResetError``...).
    """
    error = RequestError(
        f"the connection failed after {received} of {wanted} bytes: [Errno {number}] {os.strerror(number)}",
        code=CODE_CONNECTION,
        range=(0, received),
    )
    error.__cause__ = OSError(number, os.strerror(number))
    return error


def recv_into(fd: int, dest: Buffer, timeout_s: float, crc: int = 0) -> tuple[int, int]:
    """Receive from the connected socket ``fd`` until ``dest`` is full or the peer ends the stream.

    Args:
        fd: a connected stream socket's descriptor, blocking or not (it is polled before each read).
        dest: the writable, C-contiguous buffer to fill, from its first byte.
        timeout_s: seconds without any byte arriving before giving up (``math.inf``: no limit).
        crc: the CRC-64 of the bytes that precede ``dest`` (0 for none).

    Returns:
        ``(count, crc)``: bytes received (fewer than ``len(dest)`` only when the peer closed the stream)
        and the CRC-64 continued over them.

    Raises:
        RequestTimeoutError: ``timeout_s`` passed without a byte (``range=(0, received)``).
        RequestError: the socket failed (code ``ConnectionError``, ``range=(0, received)``, an
            ``OSError`` as cause).
        TypeError, ValueError: invalid arguments (as the kernel's).
    """
    number = check_fd(fd)
    view = check_receive_dest(dest)
    wait_ms = poll_timeout_ms(timeout_s)
    crc = check_crc("crc", crc)
    wanted = len(view)
    got = 0
    poller = select.poll()
    poller.register(number, select.POLLIN)
    with view:
        while got < wanted:
            piece = view[got : got + RECEIVE_PIECE_BYTES]
            try:
                # poll then read: the descriptor may be blocking; PEP 475 retries both on EINTR.
                ready = poller.poll(wait_ms)
                count = os.readv(number, [piece]) if ready else None
            except BlockingIOError:
                continue  # readable but nothing there after all (another reader took it): poll again
            except OSError as exc:
                raise receive_failed(exc.errno or errno.EIO, got, wanted) from exc
            if count is None:
                raise receive_timed_out(got, wanted, float(timeout_s))
            if not count:
                break
            crc = crc64(piece[:count], crc)
            got += count
    return got, crc


# --- store ------------------------------------------------------------------------------------------

STORE_DONE = 0
"""``store_chunk`` steps, as its first result says where it stopped: everything done."""
STORE_OPEN = 1
"""``open`` failed (the errno says why: ``ENOENT`` once the file was unlinked)."""
STORE_STAT = 2
"""``fstat`` failed."""
STORE_IDENTITY = 3
"""The file at the path is another one than (device, inode) named (errno 0): nothing was written."""
STORE_WRITE = 4
"""``pwrite`` failed (``ENOSPC``, ``EFBIG``...; errno 0: it wrote nothing); some bytes may be written."""
STORE_TIMES = 5
"""The bytes are stored, but the file system refused ``futimens`` (not a failure of the store)."""
STORE_CLOSE = 6
"""``close`` failed after everything else succeeded."""

_STORE_FLAGS = os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW
# struct flock {short l_type, l_whence; off_t l_start, l_len; pid_t l_pid} (pid 0: what OFD locks need).
_WRITE_LOCK = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
_OFD_SETLKW = getattr(fcntl, "F_OFD_SETLKW", 38)  # Linux >= 3.15; the constant since Python 3.9


def check_path(path: object) -> bytes:
    """``path`` as the encoded path the store opens (shared by both backends)."""
    if not isinstance(path, bytes):
        raise TypeError(f"path must be bytes (os.fsencode(path)), got {type(path).__name__}")
    if not path or b"\0" in path:
        raise ValueError(f"path {path!r} is empty or holds a NUL byte: pass the data file's encoded path")
    return path


def check_mtime_ns(value: object) -> int | None:
    """``value`` as nanoseconds since the epoch that ``futimens`` accepts, or None (shared by both)."""
    if value is None:
        return None
    try:
        mtime_ns = index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"mtime_ns must be an int (nanoseconds) or None, got {type(value).__name__}"
        ) from None
    if not -(2**63) <= mtime_ns < 2**63:
        raise ValueError(f"mtime_ns={mtime_ns} does not fit a 64-bit time: pass nanoseconds since the epoch")
    return mtime_ns


def check_store_data(data: object) -> memoryview:
    """A one-dimensional byte view of the C-contiguous buffer ``data`` (shared by both backends)."""
    try:
        view = memoryview(data)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"data must be a buffer (bytes, bytearray, memoryview, mmap), got {type(data).__name__}"
        ) from None
    if not view.c_contiguous:
        view.release()
        raise ValueError("data is not C-contiguous: store a contiguous buffer")
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def check_store_offset(offset: object, length: int) -> int:
    """``offset`` as where ``length`` bytes go in a file, ending below ``2**63`` (shared by both)."""
    try:
        start = index(offset)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"offset must be an int byte offset, got {type(offset).__name__}") from None
    if start < 0 or start + length >= 2**63:
        raise ValueError(f"offset {start} + {length} bytes is outside a file: it must be in [0, 2**63)")
    return start


def store_chunk(
    path: bytes, data: Buffer, offset: int, device: int, inode: int, mtime_ns: int | None
) -> tuple[int, int]:
    """Store ``data`` at ``offset`` of the existing file ``path``, if it is still the file (device, inode).

    Opens the file write-only (``O_NOFOLLOW``, ``O_CLOEXEC``: never through a symlink), checks that it is
    (device, inode), takes a write lock on it (an open-file-description lock, waited for in the kernel:
    writers of one tmpfs file serialize on its inode lock anyway, and sleeping costs less CPU than
    spinning on it; a file system without such locks is written unlocked), writes every byte (``pwrite``
    until done, ``EINTR`` retried), sets both times to ``mtime_ns`` (a write moves them), and closes the
    file, which drops the lock. With no ``data`` it only sets the times, without the lock.

    Args:
        path: the file's encoded path (``os.fsencode``).
        data: the bytes, any C-contiguous buffer (empty: only set the times).
        offset: where they go in the file.
        device: ``st_dev`` the file must have.
        inode: ``st_ino`` the file must have.
        mtime_ns: access and modification time to set afterwards, in nanoseconds; None leaves them.

    Returns:
        ``(step, errno)``: ``(STORE_DONE, 0)`` when all went well, else the step that stopped it
        (``STORE_OPEN`` ... ``STORE_CLOSE``) and its errno; after ``STORE_TIMES`` the bytes are stored.

    Raises:
        TypeError, ValueError: invalid arguments (I/O errors are returned, not raised).
    """
    encoded = check_path(path)
    want = (check_length("device", device), check_length("inode", inode))
    times = check_mtime_ns(mtime_ns)
    with check_store_data(data) as view:
        start = check_store_offset(offset, len(view))
        try:
            fd = os.open(encoded, _STORE_FLAGS)
        except OSError as exc:
            return STORE_OPEN, exc.errno or errno.EIO
        try:
            step, number = _store_open_file(fd, view, start, want, times)
        finally:
            try:
                os.close(fd)
            except OSError as exc:
                # A failure before it says more; Linux closes the descriptor even on EINTR.
                if step in (STORE_DONE, STORE_TIMES) and exc.errno != errno.EINTR:
                    step, number = STORE_CLOSE, exc.errno or errno.EIO
        return step, number


def _store_open_file(
    fd: int, view: memoryview, start: int, want: tuple[int, int], times: int | None
) -> tuple[int, int]:
    try:
        info = os.fstat(fd)
    except OSError as exc:
        return STORE_STAT, exc.errno or errno.EIO
    if (info.st_dev, info.st_ino) != want:
        return STORE_IDENTITY, 0
    if len(view):
        # No such locks here: write unserialized, as correct and a little costlier.
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, _OFD_SETLKW, _WRITE_LOCK)
    done = 0
    while done < len(view):
        try:
            wrote = os.pwrite(fd, view[done:], start + done)  # PEP 475 retries EINTR
        except OSError as exc:
            return STORE_WRITE, exc.errno or errno.EIO
        if not wrote:
            return STORE_WRITE, 0
        done += wrote
    if times is not None:
        try:
            os.utime(fd, ns=(times, times))
        except OSError as exc:
            return STORE_TIMES, exc.errno or errno.EIO
    return STORE_DONE, 0
