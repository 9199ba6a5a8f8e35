"""The fetch order of a prepared directory: every chunk once, headers first, then tensors as frameworks
read them; and the safetensors header parsing it relies on."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ossmodelconnector.directory.read_order import chunk_order, fetch_tensor_ranges, natural_key
from ossmodelconnector.objects import ObjectInfo
from ossmodelconnector.safetensors_header import LENGTH_PREFIX, header_length, tensor_ranges

names = st.lists(
    st.text("ab.0123456789_", min_size=1, max_size=12).filter(lambda n: "" not in n.split(".")),
    min_size=1,
    max_size=8,
    unique=True,
)


def transformers_dot_natural_key(s: str) -> list[tuple[object, ...]]:
    """transformers 5.x ``core_model_loading.dot_natural_key``, which its loader sorts tensors by."""
    parts: list[tuple[object, ...]] = []
    for part in s.split("."):
        if part.isdigit():
            parts.append((0, int(part)))
        else:
            text_part = part.rstrip("0123456789")
            trailing = part[len(text_part) :]
            parts.append((1, text_part, int(trailing)) if trailing else (1, text_part))
    return parts


@given(names)
def test_natural_key_sorts_as_transformers_does(tensor_names: list[str]) -> None:
    assert sorted(tensor_names, key=natural_key) == sorted(tensor_names, key=transformers_dot_natural_key)


def test_numbers_sort_as_numbers() -> None:
    assert sorted(["model.layers.10.w", "model.layers.2.w", "lm_head.weight"], key=natural_key) == [
        "lm_head.weight",
        "model.layers.2.w",
        "model.layers.10.w",
    ]


@st.composite
def directories(draw: st.DrawFn) -> tuple[list[int], list[dict[str, tuple[int, int]] | None], int]:
    chunk = draw(st.integers(1, 64))
    sizes = draw(st.lists(st.integers(0, 400), min_size=1, max_size=5))
    tensors: list[dict[str, tuple[int, int]] | None] = []
    for size in sizes:
        if size == 0 or draw(st.booleans()):
            tensors.append(None)
            continue
        cuts = sorted(draw(st.sets(st.integers(0, size), min_size=2, max_size=6)))
        labels = draw(
            st.lists(
                st.from_regex(r"[a-c]\.[0-9]{1,2}\.w", fullmatch=True),
                min_size=len(cuts) - 1,
                max_size=len(cuts) - 1,
                unique=True,
            )
        )
        tensors.append({label: (lo, hi) for label, lo, hi in zip(labels, cuts, cuts[1:], strict=False)})
    return sizes, tensors, chunk


@given(directories())
def test_every_chunk_once_headers_first_then_tensors_in_natural_order(
    case: tuple[list[int], list[dict[str, tuple[int, int]] | None], int],
) -> None:
    sizes, tensors, chunk = case
    order = chunk_order(sizes, tensors, chunk)
    expected = {(f, c) for f, size in enumerate(sizes) for c in range(-(-size // chunk))}
    assert len(order) == len(expected) and set(order) == expected
    named = sorted(
        (natural_key(name), f, lo, hi)
        for f, ranges in enumerate(tensors)
        if ranges
        for name, (lo, hi) in ranges.items()
        if lo < hi
    )
    # A chunk's rank: -1 for a header (chunk 0), else the place of the first tensor (in the order
    # frameworks read them) that needs it, else after all of them. The order never goes back in rank.
    rank: dict[tuple[int, int], float] = {}
    for place, (_, f, lo, hi) in enumerate(named):
        for c in range(lo // chunk, (hi - 1) // chunk + 1):
            rank.setdefault((f, c), place)
    ranks = [-1 if c == 0 else rank.get((f, c), float("inf")) for f, c in order]
    assert ranks == sorted(ranks)


def test_mismatched_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="2 sizes but 1"):
        chunk_order([1, 2], [None], 1)


def safetensors_bytes(entries: dict[str, object]) -> bytes:
    header = json.dumps(entries).encode()
    return struct.pack("<Q", len(header)) + header


def test_header_parsing_gives_absolute_ranges_and_refuses_garbage() -> None:
    blob = safetensors_bytes(
        {"__metadata__": {"format": "pt"}, "w": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]}}
    )
    length = header_length(blob, len(blob) + 4)
    assert length == len(blob) - LENGTH_PREFIX
    assert tensor_ranges(blob[LENGTH_PREFIX:], length) == {"w": (len(blob), len(blob) + 4)}
    assert header_length(blob, 7) is None  # shorter than the prefix
    assert header_length(struct.pack("<Q", 1 << 40), 100) is None  # longer than the file
    assert tensor_ranges(b"not json") is None
    assert tensor_ranges(b'{"w": {"data_offsets": 3}}') is None


def test_fetch_tensor_ranges_reads_a_header_larger_than_one_probe() -> None:
    entries = {f"t.{i}": {"dtype": "U8", "shape": [1], "data_offsets": [i, i + 1]} for i in range(20000)}
    blob = safetensors_bytes(entries) + bytes(20000)
    assert len(blob) > 256 * 1024
    calls: list[tuple[int, int]] = []

    def fetch_into(start: int, end: int, dest: memoryview) -> int:
        calls.append((start, end))
        dest[:] = blob[start:end]
        return 0

    info = ObjectInfo("b", "m/model.safetensors", len(blob), '"e"', 0.0, None)
    ranges = fetch_tensor_ranges(fetch_into, info)
    data_start = len(blob) - 20000
    assert ranges is not None and ranges["t.7"] == (data_start + 7, data_start + 8) and len(ranges) == 20000
    assert len(calls) == 2 and calls[0][0] == 0 and calls[1][1] == data_start
    other = ObjectInfo("b", "m/pytorch_model.bin", len(blob), '"e"', 0.0, None)
    assert fetch_tensor_ranges(fetch_into, other) is None and len(calls) == 2
