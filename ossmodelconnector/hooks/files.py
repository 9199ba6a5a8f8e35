"""``builtins.open`` / ``io.open`` for registered files: real file objects whose reads wait per range.

::

    open(path, "rb")  ── lookup(path) is None ──> the original open (one call, one prefix check)
        │ registered
        v
    BufferedReader ─ readinto(n) ─> WaitingFileIO.readinto: wait [pos, pos + n), then FileIO reads
    (TextIOWrapper on top for text modes; the raw WaitingFileIO itself for ``buffering=0``)

The object returned IS a real ``io.BufferedReader`` / ``io.TextIOWrapper`` over a ``FileIO`` subclass, so
``readline``, iteration, ``seek``/``tell``, ``peek``, ``readinto`` and ``read()`` behave exactly as for
any file; only the raw reads wait first. A ``read(n)`` waits for the ``n`` bytes it covers (reads
smaller than the buffer wait for up to one buffer more, as the buffered layer reads ahead). Whoever
asks for the descriptor (``fileno()``: ``numpy.fromfile``, ``mmap``, ``shutil``'s ``sendfile``) reads
around these methods, so ``fileno()`` first waits for the whole file. Writing to a registered path is
refused: its bytes belong to the cache.
"""

from __future__ import annotations

import errno
import functools
import io
import logging
import os
import warnings
from typing import IO, Any

from ossmodelconnector.cache.registry import WaitableFile, lookup, lookup_descriptor, opened_is_registered
from ossmodelconnector.hooks.patching import PatchSet
from ossmodelconnector.hooks.waits import (
    HOOK_WAIT_TIMEOUT_S,
    reader_closed,
    reader_opened,
    replaced_entry_error,
    wait_range,
    wait_whole,
)

__all__ = ["WaitingFileIO", "install", "open_registered"]

log = logging.getLogger(__name__)

_WRITE_MODE_CHARS = frozenset("wax+")
_READ_MODE_CHARS = frozenset("rbt")


class WaitingFileIO(io.FileIO):
    """A read-only ``FileIO`` whose reads wait for the bytes they cover.

    Args:
        file: the registered path.
        waitable: what to wait on.
        closefd: passed to ``FileIO``.
        opener: passed to ``FileIO``.
    """

    def __init__(self, file: Any, waitable: WaitableFile, closefd: bool = True, opener: Any = None) -> None:
        super().__init__(file, "r", closefd, opener)
        if not opened_is_registered(super().fileno(), waitable):  # not self.fileno(): it waits
            super().close()
            raise replaced_entry_error(file)
        self.waitable = waitable
        self._run_end = -1  # where the last read ended, and how many bytes were read in order up to it
        self._run_bytes = 0
        self._counted = False
        try:
            reader_opened(waitable)  # a lazy file is in use (never evicted) until close()
        except BaseException:
            super().close()
            raise
        self._counted = True

    def close(self) -> None:
        """Close the file; the reader it counted for a lazy file is released (once)."""
        try:
            super().close()
        finally:
            if getattr(self, "_counted", False):
                self._counted = False
                reader_closed(self.waitable)

    def readinto(self, buffer: Any) -> int | None:
        """Wait for the bytes the read covers, then read them into ``buffer``."""
        with memoryview(buffer) as view:
            wanted = view.nbytes
        self._wait_from_here(wanted)
        return super().readinto(buffer)

    def read(self, size: int | None = -1) -> bytes:
        """Wait for up to ``size`` bytes from the position (all the rest when negative), then read."""
        if size is None or size < 0:
            return self.readall()
        self._wait_from_here(size)
        return super().read(size)

    def readall(self) -> bytes:
        """Wait for everything from the position to the end, then read it."""
        self._wait_from_here(self.waitable.size)
        return super().readall()

    def fileno(self) -> int:
        """The descriptor, once the whole file is readable: its holder reads around these methods."""
        wait_whole(self.waitable)
        return super().fileno()

    def _wait_from_here(self, length: int) -> None:
        if length <= 0:
            return
        position = self.tell()
        self._run_bytes = self._run_bytes + length if position == self._run_end else length
        self._run_end = position + length
        wait_read = getattr(self.waitable, "wait_read", None)
        if wait_read is None:
            wait_range(self.waitable, position, position + length)
            return
        # A lazy file: a stream reading it through gets the whole file queued, a peek only its chunks.
        end = min(position + length, self.waitable.size)
        if position < end:
            wait_read(position, end, HOOK_WAIT_TIMEOUT_S, sequential=self._run_bytes)


def open_registered(
    waitable: WaitableFile,
    file: Any,
    mode: str,
    buffering: int,
    encoding: str | None,
    errors: str | None,
    newline: str | None,
    closefd: bool,
    opener: Any,
) -> IO[Any] | None:
    """Open a registered path for reading the way ``io.open`` would, over a :class:`WaitingFileIO`.

    Args:
        waitable: the registered file's waitable.
        file, mode, buffering, encoding, errors, newline, closefd, opener: as for ``open``.

    Returns:
        The file object, or ``None`` when the arguments are ones ``open`` itself rejects (invalid mode,
        an encoding in binary mode...): the caller then lets the original ``open`` raise its own error.

    Raises:
        PermissionError: a mode that writes (``w``, ``a``, ``x``, ``+``).
    """
    if not isinstance(mode, str) or not isinstance(buffering, int):
        return None
    chars = set(mode)
    if chars & _WRITE_MODE_CHARS:
        raise PermissionError(
            errno.EACCES,
            f"refusing to open with mode {mode!r}: this file belongs to the ossmodelconnector cache "
            "(its bytes are still arriving or shared with other readers); open it for reading, or copy it",
            os.fsdecode(file) if isinstance(file, (str, bytes, os.PathLike)) else str(file),
        )
    binary = "b" in chars
    if (
        len(mode) != len(chars)
        or not chars <= _READ_MODE_CHARS
        or "r" not in chars
        or (binary and "t" in chars)
        or (binary and (encoding is not None or errors is not None or newline is not None))
        or (buffering == 0 and not binary)
    ):
        return None
    if binary and buffering == 1:
        warnings.warn(
            "line buffering (buffering=1) isn't supported in binary mode, "
            "the default buffer size will be used",
            RuntimeWarning,
            stacklevel=3,
        )
    raw = WaitingFileIO(file, waitable, closefd, opener)
    try:
        if buffering == 0:
            return raw
        size = buffering if buffering > 1 else io.DEFAULT_BUFFER_SIZE
        buffer = io.BufferedReader(raw, size)
        if binary:
            return buffer
        text = io.TextIOWrapper(buffer, encoding, errors, newline, line_buffering=buffering == 1)
        text.mode = mode  # type: ignore[misc]  # what io.open sets; TextIOWrapper has a __dict__
        return text
    except BaseException:
        raw.close()
        raise


def _make_open(original: Any) -> Any:
    @functools.wraps(original)
    def open(  # noqa: A001 - it stands in for the builtin
        file: Any,
        mode: str = "r",
        buffering: int = -1,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
        closefd: bool = True,
        opener: Any = None,
    ) -> Any:
        # By path only: an alias of a registered file is recognized by the audit hook, which sees this
        # open too (and waits for the whole file): the check by identity is paid once per open, not twice.
        waitable = lookup(file, by_identity=False)
        if waitable is not None:
            result = open_registered(
                waitable, file, mode, buffering, encoding, errors, newline, closefd, opener
            )
            if result is not None:
                return result
        return original(file, mode, buffering, encoding, errors, newline, closefd, opener)

    return open


def _make_os_open(original: Any) -> Any:
    @functools.wraps(original)
    def os_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if dir_fd is None:
            return int(original(path, flags, mode))  # the safety net sees this one by its path
        fd = int(original(path, flags, mode, dir_fd=dir_fd))
        # Relative to dir_fd, which neither the registry nor the audit event can see: ask what the
        # descriptor is. Whoever reads a raw descriptor reads around every other hook: the whole file.
        if flags & os.O_ACCMODE == os.O_RDONLY:
            waitable = lookup_descriptor(fd)
            if waitable is not None:
                try:
                    wait_whole(waitable)
                except BaseException:
                    os.close(fd)
                    raise
        return fd

    return os_open


def install(patches: PatchSet) -> None:
    """Replace ``builtins.open`` and ``io.open`` (one object: ``io.open is builtins.open``), and ``os.open``
    for opens relative to a directory descriptor (``dir_fd``).

    Args:
        patches: where the replacements are recorded for :meth:`PatchSet.restore`.
    """
    import builtins

    original = builtins.open
    hooked = _make_open(original)
    patches.set_attribute(builtins, "open", hooked)
    if io.open is original:
        patches.set_attribute(io, "open", hooked)
    patches.set_attribute(os, "open", _make_os_open(os.open))
