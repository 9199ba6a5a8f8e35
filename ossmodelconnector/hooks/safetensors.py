"""``safetensors.safe_open`` for registered files: opening waits for the header, each tensor for its bytes.

::

    safe_open(path, ...) ── unregistered ──> the real safe_open, untouched
        │ registered: wait [0, 8), read the header length n, wait [0, 8 + n), parse the offsets
        v
    SafeOpenProxy ── keys() / metadata() / offset_keys()         nothing more to wait for
                  ── get_slice(k) -> SliceProxy                   no wait (transformers calls it up front)
                  │       get_shape() / get_dtype()               no wait
                  │       [...]                                   waits for k's bytes, then slices
                  ── get_tensor(k)                                waits for k's bytes
                  ── get_tensors()                                waits for every tensor's bytes

The real ``safe_open`` parses the header itself and maps the whole file at construction
(``torch.UntypedStorage.from_file``, a private mapping that stays coherent with the writer); it is built
inside :func:`~ossmodelconnector.hooks.waits.opening_safetensors` so the storage hook does not wait for
the whole file then. Reads are zero-copy as before: the proxy only waits, then calls the real method.

The patched name is ``safetensors.safe_open`` and every module global bound to the real class
(``safetensors.torch``, ``transformers.modeling_utils``, vLLM's ``weight_utils``...), including modules
imported later; ``safetensors._safe_open_handle(f, ...)``, which opens ``f.name``, likewise.
``safetensors.torch.load_file`` looks ``safe_open`` up in its module at call time, so it goes through
the proxy (its ``get_tensors``) without a patch of its own.
"""

from __future__ import annotations

import functools
import logging
import os
import types
import weakref
from collections.abc import Callable
from typing import Any

from ossmodelconnector.cache.registry import WaitableFile, lookup
from ossmodelconnector.hooks.patching import PatchSet
from ossmodelconnector.hooks.waits import (
    check_entry,
    opening_safetensors,
    reader_closed,
    reader_opened,
    wait_range,
    wait_whole,
)
from ossmodelconnector.safetensors_header import LENGTH_PREFIX, header_length, tensor_ranges

__all__ = ["SafeOpenProxy", "SliceProxy", "install", "read_tensor_ranges"]

log = logging.getLogger(__name__)


def read_tensor_ranges(path: Any, waitable: WaitableFile) -> dict[str, tuple[int, int]] | None:
    """Wait for a safetensors header, then return each tensor's absolute byte range in the file.

    Args:
        path: the registered file.
        waitable: its waitable.

    Returns:
        ``{name: (start, end)}``, or ``None`` when the header is not one we can parse (the real
        ``safe_open`` then raises its own error, or the proxy falls back to waiting for the whole file).

    Raises:
        ConnectorError: whatever the waitable raises.
    """
    wait_range(waitable, 0, LENGTH_PREFIX)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        length = header_length(os.pread(fd, LENGTH_PREFIX, 0), waitable.size)
        if length is None:
            return None
        wait_range(waitable, 0, LENGTH_PREFIX + length)
        header = os.pread(fd, length, LENGTH_PREFIX)
    finally:
        os.close(fd)
    return tensor_ranges(header, length)


class SliceProxy:
    """Stands for the real slice of one tensor; indexing it waits for the tensor's bytes first.

    Args:
        real: the real ``PySafeSlice``.
        waitable: the file's waitable.
        byte_range: the tensor's ``(start, end)`` in the file, or ``None`` for the whole file.
    """

    def __init__(self, real: Any, waitable: WaitableFile, byte_range: tuple[int, int] | None) -> None:
        self._real = real
        self._waitable = waitable
        self._range = byte_range

    def __getitem__(self, index: Any) -> Any:
        _wait_for(self._waitable, self._range)
        return self._real[index]

    def get_shape(self) -> Any:
        """The tensor's shape (from the header: no wait)."""
        return self._real.get_shape()

    def get_dtype(self) -> Any:
        """The tensor's dtype string (from the header: no wait)."""
        return self._real.get_dtype()

    def __getattr__(self, name: str) -> Any:
        if name == "_real":  # not yet set (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self._real, name)

    def __repr__(self) -> str:
        return f"<SliceProxy of {self._real!r}, bytes {self._range}>"


class SafeOpenProxy:
    """Stands for a real ``safe_open`` on a registered file; waits where tensor bytes are touched.

    Args:
        real: the real ``safe_open`` object.
        waitable: the file's waitable.
        ranges: each tensor's byte range (``None``: unknown, wait for the whole file on first access).
    """

    def __init__(self, real: Any, waitable: WaitableFile, ranges: dict[str, tuple[int, int]] | None) -> None:
        self._real = real
        self._waitable = waitable
        self._ranges = ranges
        # The reader counted when it was opened is released at __exit__, or when the proxy is dropped
        # (transformers keeps handles without a with-block); tensors it handed out map the file, which
        # the lazy files' eviction checks on its own.
        self._reader = weakref.finalize(self, reader_closed, waitable)
        self._reader.atexit = False

    def __enter__(self) -> SafeOpenProxy:
        self._real.__enter__()
        return self

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> Any:
        try:
            return self._real.__exit__(exc_type, exc_value, traceback)
        finally:
            self._reader()

    def keys(self) -> Any:
        """The tensor names (no wait)."""
        return self._real.keys()

    def offset_keys(self) -> Any:
        """The tensor names in file order (no wait)."""
        return self._real.offset_keys()

    def metadata(self) -> Any:
        """The header's free-form metadata (no wait)."""
        return self._real.metadata()

    def get_tensor(self, name: str) -> Any:
        """Wait for exactly this tensor's bytes, then return the real tensor."""
        _wait_for(self._waitable, self._tensor_range(name))
        return self._real.get_tensor(name)

    def get_tensors(self) -> Any:
        """Wait for every tensor's bytes, then return them all."""
        if self._ranges is None:
            wait_whole(self._waitable)
        elif self._ranges:
            starts, ends = zip(*self._ranges.values(), strict=True)
            wait_range(self._waitable, min(starts), max(ends))
        return self._real.get_tensors()

    def get_slice(self, name: str) -> Any:
        """A slice proxy for this tensor; nothing is waited for until it is indexed."""
        return SliceProxy(self._real.get_slice(name), self._waitable, self._tensor_range(name))

    def __getattr__(self, name: str) -> Any:
        if name == "_real":
            raise AttributeError(name)
        return getattr(self._real, name)

    def __repr__(self) -> str:
        return f"<SafeOpenProxy of {self._real!r}>"

    def _tensor_range(self, name: str) -> tuple[int, int] | None:
        if self._ranges is None:
            return None
        # An unknown name: nothing to wait for; the real method raises its own error.
        return self._ranges.get(name, (0, 0))


def _wait_for(waitable: WaitableFile, byte_range: tuple[int, int] | None) -> None:
    if byte_range is None:
        wait_whole(waitable)
    else:
        wait_range(waitable, *byte_range)


def _filename_argument(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return args[0] if args else kwargs.get("filename")


def _file_object_name(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    # _safe_open_handle(f, ...) opens f.name itself, exactly as safe_open opens a filename.
    file_object = args[0] if args else kwargs.get("f")
    return getattr(file_object, "name", None)


def _make_safe_open(real_safe_open: Any, filename_of: Callable[..., Any]) -> Any:
    @functools.wraps(real_safe_open, updated=())
    def safe_open(*args: Any, **kwargs: Any) -> Any:
        filename = filename_of(args, kwargs)
        waitable = lookup(filename) if isinstance(filename, (str, bytes, os.PathLike)) else None
        if waitable is None:
            return real_safe_open(*args, **kwargs)
        check_entry(filename, waitable)  # it opens the path itself: refuse an entry replaced since
        reader_opened(waitable)  # in use until the proxy closes; the header wait starts a lazy file
        try:
            ranges = read_tensor_ranges(filename, waitable)
            with opening_safetensors():
                real = real_safe_open(*args, **kwargs)
        except BaseException:
            reader_closed(waitable)
            raise
        return SafeOpenProxy(real, waitable, ranges)

    return safe_open


def install(patches: PatchSet, safetensors_module: types.ModuleType) -> None:
    """Replace ``safe_open`` (and ``_safe_open_handle``) wherever bound, now and in modules imported later.

    Args:
        patches: where the replacements are recorded.
        safetensors_module: the imported ``safetensors`` package.
    """
    pairs = []
    for name, filename_of in (("safe_open", _filename_argument), ("_safe_open_handle", _file_object_name)):
        real = getattr(safetensors_module, name, None)
        if real is None or getattr(real, "__wrapped__", None) is not None:
            continue  # absent from this safetensors version, or already ours
        pairs.append((real, _make_safe_open(real, filename_of)))
    if pairs:
        patches.replace_everywhere(*pairs[0], *pairs[1:])
