"""The header of a safetensors file: an 8-byte little-endian length, then JSON naming each tensor's bytes.

::

    [u64 n][n bytes of JSON: {"name": {"dtype", "shape", "data_offsets": [begin, end]}, ...}][data]

Offsets in the JSON are relative to the end of the header; :func:`tensor_ranges` makes them absolute.
Used by the reader hooks (which wait for exactly a tensor's bytes) and by ``prepare_directory`` (which
fetches tensors in the order frameworks read them).
"""

from __future__ import annotations

import json
import struct

__all__ = ["LENGTH_PREFIX", "header_length", "tensor_ranges"]

LENGTH_PREFIX = 8
"""Bytes of the header-length field at the start of every safetensors file."""


def header_length(prefix: bytes | bytearray, file_size: int) -> int | None:
    """The JSON header's length from a file's first :data:`LENGTH_PREFIX` bytes.

    Args:
        prefix: at least the file's first 8 bytes.
        file_size: the file's size.

    Returns:
        The length, or None when the file is too short or the length does not fit in the file (not a
        safetensors file we can parse).
    """
    if file_size < LENGTH_PREFIX or len(prefix) < LENGTH_PREFIX:
        return None
    (length,) = struct.unpack_from("<Q", prefix)
    return length if length <= file_size - LENGTH_PREFIX else None


def tensor_ranges(header: bytes, length: int | None = None) -> dict[str, tuple[int, int]] | None:
    """Each tensor's absolute byte range in the file, from its JSON header.

    Args:
        header: the JSON header (``length`` bytes that follow the 8-byte prefix).
        length: the header's length as the prefix gives it (default ``len(header)``).

    Returns:
        ``{name: (start, end)}`` in file offsets, or None when the JSON is not a safetensors header.
    """
    data_start = LENGTH_PREFIX + (len(header) if length is None else length)
    try:
        entries = json.loads(header)
        return {
            name: (data_start + int(entry["data_offsets"][0]), data_start + int(entry["data_offsets"][1]))
            for name, entry in entries.items()
            if name != "__metadata__"
        }
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None
