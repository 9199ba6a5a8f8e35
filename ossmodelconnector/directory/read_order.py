"""The order in which a prepared directory's chunks are fetched: the order frameworks read the tensors.

Under a bandwidth cap a chunk fetched early that the framework needs late costs the framework a wait
for one it needs now, and each such wait is a whole chunk's transfer on a shared link. transformers
(5.x) opens every shard, then materializes the tensors of all shards sorted by their dotted names with
numbers compared as numbers (``lm_head.weight``, ``model.embed_tokens.weight``, ``model.layers.0...``,
``model.layers.1...``, ... ``model.norm.weight``), and vLLM reads shard after shard, which for shards
written by ``save_pretrained`` (in layer order) is nearly the same order. So:

1. chunk 0 of every file (a safetensors header: frameworks open every shard first);
2. the chunks of each tensor of every safetensors file, tensors sorted by :func:`natural_key`;
3. every chunk not named yet, files in name order, chunks in file order (other formats, gaps).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from ossmodelconnector.errors import ConnectorError
from ossmodelconnector.objects import FetchInto, ObjectInfo
from ossmodelconnector.ranges import chunk_count
from ossmodelconnector.safetensors_header import LENGTH_PREFIX, header_length, tensor_ranges

__all__ = ["chunk_order", "fetch_tensor_ranges", "natural_key"]

log = logging.getLogger(__name__)

# One GET of this many bytes holds the header of any shard seen in practice (a 72B model's: ~40 KiB).
_HEADER_PROBE = 256 * 1024
# A header larger than this is not worth a second GET for an ordering hint (safetensors caps it at 100 MB).
_HEADER_MAX = 16 * 1024 * 1024

_NaturalPart = tuple[int, int] | tuple[int, str] | tuple[int, str, int]


def natural_key(name: str) -> list[_NaturalPart]:
    """Sort key of a tensor name: ``.``-separated parts, numbers as numbers (``layers.2`` < ``layers.10``).

    The same order as transformers' ``dot_natural_key``, which its loader sorts the state dict by.

    Args:
        name: a tensor name such as ``model.layers.10.mlp.up_proj.weight``.

    Returns:
        A key for ``sorted``.
    """
    parts: list[_NaturalPart] = []
    for part in name.split("."):
        if part.isdigit():
            parts.append((0, int(part)))
            continue
        text = part.rstrip("0123456789")
        digits = part[len(text) :]
        parts.append((1, text, int(digits)) if digits else (1, text))
    return parts


def chunk_order(
    sizes: Sequence[int],
    tensors: Sequence[Mapping[str, tuple[int, int]] | None],
    chunk_size: int,
) -> list[tuple[int, int]]:
    """Every chunk of every file exactly once, in the order frameworks are expected to read them.

    Args:
        sizes: each file's size, files in name order.
        tensors: each file's tensor byte ranges (``safetensors_header.tensor_ranges``), or None for a file
            that is not safetensors.
        chunk_size: bytes per chunk.

    Returns:
        ``(file index, chunk index)`` pairs.
    """
    if len(sizes) != len(tensors):
        raise ValueError(f"chunk_order: {len(sizes)} sizes but {len(tensors)} tensor maps")
    counts = [chunk_count(size, chunk_size) for size in sizes]
    seen = [bytearray(count) for count in counts]
    order: list[tuple[int, int]] = []

    def take(file: int, first: int, last: int) -> None:
        for index in range(first, last + 1):
            if not seen[file][index]:
                seen[file][index] = 1
                order.append((file, index))

    for file, count in enumerate(counts):
        if count:
            take(file, 0, 0)
    named = [
        (natural_key(name), file, start, end)
        for file, ranges in enumerate(tensors)
        if ranges is not None
        for name, (start, end) in ranges.items()
        if 0 <= start < end <= sizes[file]
    ]
    named.sort(key=lambda item: (item[0], item[1]))
    for _, file, start, end in named:
        take(file, start // chunk_size, (end - 1) // chunk_size)
    for file, count in enumerate(counts):
        take(file, 0, count - 1)
    return order


def fetch_tensor_ranges(fetch_into: FetchInto, info: ObjectInfo) -> dict[str, tuple[int, int]] | None:
    """Read a ``.safetensors`` object's header from OSS (one small ranged GET, two for a huge header).

    Args:
        fetch_into: fetches a byte range of that object version (``OssClient.make_fetch_into``).
        info: the object.

    Returns:
        Its tensors' byte ranges, or None for another kind of file, a header that does not parse, or a
        failed request (the order is only a hint; the prefetch itself reports real errors).
    """
    if not info.key.endswith(".safetensors") or info.size < LENGTH_PREFIX:
        return None
    try:
        head = bytearray(min(info.size, _HEADER_PROBE))
        fetch_into(0, len(head), memoryview(head))
        length = header_length(head, info.size)
        if length is None or length > _HEADER_MAX:
            return None
        end = LENGTH_PREFIX + length
        if end > len(head):
            rest = bytearray(end - len(head))
            fetch_into(len(head), end, memoryview(rest))
            head += rest
    except ConnectorError as exc:
        log.debug("%s: header not read for the fetch order (%r); file order is used", info.uri, exc)
        return None
    return tensor_ranges(bytes(head[LENGTH_PREFIX:end]), length)
