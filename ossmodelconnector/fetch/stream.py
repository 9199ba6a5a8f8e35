"""The object ``open("oss://bucket/key")`` returns: a seekable, read-only file over a prefetched object.

Opening registers the object with the prefetch scheduler, so read-ahead starts at once (objects in the
order they were opened). A read waits only for the chunks it covers and copies straight out of the
object's chunk buffer; ``mmap()`` waits for the whole object and returns it without a copy. Closing the
stream, or dropping it, unregisters the object and frees its memory.

The binary stream behaves like ``io.BytesIO`` over the object's bytes (same results, same errors for bad
seeks, seeking past the end allowed); text mode is an ``io.TextIOWrapper`` over it, UTF-8.
"""

from __future__ import annotations

import io
import threading
import weakref
from operator import index as as_index
from typing import TYPE_CHECKING

from ossmodelconnector.config import DEFAULT_WAIT_TIMEOUT_S
from ossmodelconnector.errors import ClosedError
from ossmodelconnector.fetch.prefetch import PrefetchScheduler
from ossmodelconnector.objects import FetchInto, ObjectInfo
from ossmodelconnector.ranges import DEFAULT_CHUNK_SIZE, clamp_read

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = ["DEFAULT_ENCODING", "OssStream", "open_stream"]

DEFAULT_ENCODING = "utf-8"
"""Encoding of text-mode streams."""

_NEWLINE = 0x0A


class OssStream(io.BufferedIOBase):
    """A read-only, seekable binary stream over one OSS object version, fetched ahead in chunks.

    Args:
        info: the object version to read (its size pins what ``read`` returns; its CRC-64, when known,
            is checked once every byte has been fetched).
        fetch_into: fetches a byte range of that version into a buffer and returns its CRC-64.
        scheduler: the prefetch scheduler whose workers fetch the chunks.
        chunk_size: bytes per chunk (one ranged GET), ``>= 1``.
        wait_timeout_s: seconds a read waits for any one chunk before ``RequestTimeoutError``.

    Raises:
        ClosedError: the scheduler is closed.
        ValueError: a chunk size below 1.

    Example:
        >>> with OssStream(info, client.make_fetch_into(info), scheduler) as stream:
        ...     header_length = int.from_bytes(stream.read(8), "little")
        ...     weights = stream.mmap()  # read-only memoryview of the whole object, no copy
    """

    def __init__(
        self,
        info: ObjectInfo,
        fetch_into: FetchInto,
        scheduler: PrefetchScheduler,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        wait_timeout_s: float = DEFAULT_WAIT_TIMEOUT_S,
    ) -> None:
        super().__init__()
        self._info = info
        self._timeout_s = wait_timeout_s
        self._position = 0
        # Serializes position updates when threads share a stream, as io.BufferedReader does.
        self._lock = threading.RLock()
        self._handle = scheduler.register(info, fetch_into, chunk_size=chunk_size)
        # Unregisters even if the stream is dropped without close(); it holds the handle, not the stream.
        self._finalizer = weakref.finalize(self, self._handle.close)

    # --- description ---------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The object's ``oss://bucket/key`` URI."""
        return self._info.uri

    @property
    def mode(self) -> str:
        """Always ``"rb"``."""
        return "rb"

    @property
    def size(self) -> int:
        """The object's size in bytes."""
        return self._info.size

    @property
    def info(self) -> ObjectInfo:
        """The object version this stream reads."""
        return self._info

    def __repr__(self) -> str:
        state = " closed" if self.closed else ""
        return f"<{type(self).__name__} name={self.name!r} size={self.size}{state}>"

    def readable(self) -> bool:
        """True: the stream can be read.

        Raises:
            ValueError: the stream is closed.
        """
        self._check_open()
        return True

    def seekable(self) -> bool:
        """True: the stream supports ``seek`` and ``tell``.

        Raises:
            ValueError: the stream is closed.
        """
        self._check_open()
        return True

    def writable(self) -> bool:
        """False: OSS objects are read-only here.

        Raises:
            ValueError: the stream is closed.
        """
        self._check_open()
        return False

    # --- reading -------------------------------------------------------------------------------------

    def read(self, size: int | None = -1) -> bytes:
        """Read up to ``size`` bytes (all the rest if ``size`` is negative or None).

        Args:
            size: the most bytes to return.

        Returns:
            The bytes; fewer than asked only at the end of the object, ``b""`` at or past it.

        Raises:
            ValueError: the stream is closed (``ClosedError``).
            RequestTimeoutError: a chunk did not arrive within ``wait_timeout_s``.
            IntegrityError: the object's CRC-64 does not match the server's.
            ConnectorError: fetching those bytes failed; the worker's error is the ``__cause__``.
        """
        count = -1 if size is None else as_index(size)
        with self._lock:
            self._check_open()
            start, end = self._clamp(count)
            data = self._handle.read_bytes(start, end, self._timeout_s)
            self._position += len(data)
            return data

    def read1(self, size: int | None = -1) -> bytes:
        """Same as :meth:`read`: the bytes are fetched in chunks, not by this call.

        Args:
            size: the most bytes to return.

        Returns:
            The bytes read.
        """
        return self.read(size)

    def readall(self) -> bytes:
        """Read from the position to the end of the object.

        Returns:
            The bytes read.
        """
        return self.read(-1)

    def readinto(self, buffer: Buffer) -> int:
        """Read into a writable buffer, copying straight from the chunk buffer (one copy).

        Args:
            buffer: a writable C-contiguous buffer (bytearray, memoryview, numpy array...).

        Returns:
            The number of bytes written; 0 at or past the end.

        Raises:
            Same as :meth:`read`; TypeError for a read-only buffer.
        """
        with memoryview(buffer) as view:
            if view.readonly:
                raise TypeError(
                    f"readinto() needs a writable buffer, got a read-only {type(buffer).__name__}"
                )
            with view.cast("B") as dest, self._lock:
                self._check_open()
                count = self._handle.readinto(self._position, dest, self._timeout_s)
                self._position += count
                return count

    def readinto1(self, buffer: Buffer) -> int:
        """Same as :meth:`readinto`.

        Args:
            buffer: a writable C-contiguous buffer.

        Returns:
            The number of bytes written.
        """
        return self.readinto(buffer)

    def readline(self, size: int | None = -1) -> bytes:
        """Read up to and including the next ``b"\\n"``, or ``size`` bytes, or to the end.

        Args:
            size: the most bytes to return (negative or None: no limit).

        Returns:
            The line; ``b""`` at or past the end.

        Raises:
            Same as :meth:`read`.
        """
        count = -1 if size is None else as_index(size)
        with self._lock:
            self._check_open()
            start, end = self._clamp(count)
            line = self._handle.read_until(start, end, _NEWLINE, self._timeout_s)
            self._position += len(line)
            return line

    def peek(self, size: int = 0) -> bytes:
        """Bytes from the position on, without moving: ``size`` of them, or as ``io.BufferedReader`` does
        for a smaller ``size``, what it would have buffered (up to ``io.DEFAULT_BUFFER_SIZE`` bytes, not
        past the end of the position's chunk).

        Args:
            size: read at least this many bytes when the object has them.

        Returns:
            The bytes; ``b""`` at or past the end.

        Raises:
            Same as :meth:`read`.
        """
        with self._lock:
            self._check_open()
            chunk_end = (self._position // self._handle.chunk_size + 1) * self._handle.chunk_size
            buffered = min(io.DEFAULT_BUFFER_SIZE, chunk_end - self._position)
            wanted = clamp_read(self._position, max(size, buffered), self.size)
            return self._handle.read_bytes(wanted.start, wanted.end, self._timeout_s)

    def mmap(self) -> memoryview:
        """The whole object as a read-only ``memoryview``, without a copy, after waiting for all of it.

        The object's CRC-64 has been checked when this returns (if the server sent one). The chunks stay
        in memory, whatever the memory budget, until the stream is closed; the view stays valid after
        that for as long as it is kept.

        Returns:
            A read-only view of ``size`` bytes.

        Raises:
            Same as :meth:`read`.
        """
        self._check_open()
        return self._handle.view(self._timeout_s)

    # --- position ------------------------------------------------------------------------------------

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move to a position, exactly as ``io.BytesIO`` does (past the end is allowed).

        Args:
            offset: bytes relative to ``whence``.
            whence: ``SEEK_SET`` (0, start), ``SEEK_CUR`` (1, position) or ``SEEK_END`` (2, end).

        Returns:
            The new position.

        Raises:
            ValueError: the stream is closed, a negative offset with ``SEEK_SET``, or an unknown whence.
            TypeError: the offset is not an integer.
        """
        offset = as_index(offset)
        whence = as_index(whence)
        with self._lock:
            self._check_open()
            if whence == io.SEEK_SET:
                if offset < 0:
                    raise ValueError(f"negative seek value {offset}")
                position = offset
            elif whence == io.SEEK_CUR:
                position = self._position + offset
            elif whence == io.SEEK_END:
                position = self.size + offset
            else:
                raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
            # io.BytesIO clamps a negative result of a relative seek to 0 rather than failing.
            self._position = max(0, position)
            return self._position

    def tell(self) -> int:
        """The current position.

        Returns:
            Bytes from the start of the object.

        Raises:
            ValueError: the stream is closed.
        """
        self._check_open()
        return self._position

    # --- lifecycle -----------------------------------------------------------------------------------

    def close(self) -> None:
        """Unregister the object and free its memory; later calls raise ``ValueError``. Idempotent.

        A read waiting in another thread gets ``ClosedError``.
        """
        if self.closed:
            return
        # Not under self._lock: a reader blocked in a wait holds it, and must be woken by this close.
        finalizer = getattr(self, "_finalizer", None)  # absent if __init__ failed to register
        if finalizer is not None:
            finalizer()
        super().close()

    def _clamp(self, count: int) -> tuple[int, int]:
        # clamp_read() without building a ByteRange: this is on the path of every readline.
        start = min(self._position, self.size)
        return start, self.size if count < 0 else min(self.size, start + count)

    def _check_open(self) -> None:
        if self.closed:
            raise ClosedError(
                f"I/O operation on closed file {self.name}: the stream was closed; open the object again",
                bucket=self._info.bucket,
                key=self._info.key,
            )


def open_stream(
    info: ObjectInfo,
    fetch_into: FetchInto,
    scheduler: PrefetchScheduler,
    *,
    binary: bool = True,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    wait_timeout_s: float = DEFAULT_WAIT_TIMEOUT_S,
) -> OssStream | io.TextIOWrapper:
    """Open an object as a binary :class:`OssStream`, or as UTF-8 text over one.

    Args:
        info: the object version to read.
        fetch_into: fetches a byte range of that version into a buffer and returns its CRC-64.
        scheduler: the prefetch scheduler whose workers fetch the chunks.
        binary: True for bytes, False for an ``io.TextIOWrapper`` (UTF-8, universal newlines).
        chunk_size: bytes per chunk.
        wait_timeout_s: seconds a read waits for any one chunk.

    Returns:
        The stream; a context manager.

    Raises:
        ClosedError: the scheduler is closed.
    """
    stream = OssStream(info, fetch_into, scheduler, chunk_size=chunk_size, wait_timeout_s=wait_timeout_s)
    if binary:
        return stream
    return io.TextIOWrapper(stream, encoding=DEFAULT_ENCODING)
