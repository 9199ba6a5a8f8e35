"""The shared state table of one prepared directory, over any mapping (``docs/cache-layout.md``, section 2).

::

    0 ....... 512 .............. S .............. E ............... D ....... size
     header    file table         state bytes     error slots       directory
     (+ demand (128 B per file)   (1 B per chunk) (1024 B per file) (UTF-8)
      ring)

The owner writes; readers in any process map it (read-only is enough to wait) and wait on the header's
32-bit generation counter, which the owner bumps and futex-wakes after every change. The table is a view
over a buffer: it neither creates nor maps files (``segments.py`` does), so the layout can be tested over
a ``bytearray``.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ossmodelconnector import _fast
from ossmodelconnector.errors import CacheError
from ossmodelconnector.ranges import chunk_count

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = [
    "DEMAND_CAPACITY",
    "ERROR_SLOT_SIZE",
    "FILE_ENTRY_SIZE",
    "FLAG_LAZY",
    "GENERATION_OFFSET",
    "HEADER_SIZE",
    "LAYOUT_VERSION",
    "MAGIC",
    "PLACEMENTS",
    "DemandRequest",
    "FileEntry",
    "FileSpec",
    "FileStatus",
    "StateTable",
    "TableLayout",
    "TableStatus",
    "plan_layout",
]

log = logging.getLogger(__name__)

MAGIC = b"OSSMC-ST"
LAYOUT_VERSION = 1
HEADER_SIZE = 512
FILE_ENTRY_SIZE = 128
ERROR_SLOT_SIZE = 1024
SEGMENT_NAME_SIZE = 64
MAX_DIRECTORY_BYTES = 4096
DEMAND_CAPACITY = 16
DEMAND_ENTRY_SIZE = 16

GENERATION_OFFSET = 20
"""Offset of the u32 generation counter, the futex word every state change bumps."""
DEMAND_HEAD_OFFSET = 128
DEMAND_TAIL_OFFSET = 132
_DEMAND_RING_OFFSET = 144
_STATUS_OFFSET = 16
_FLAGS_OFFSET = 108
FLAG_LAZY = 1
"""Header flags bit 0: a lazy directory, whose READY chunks the owner may release (evict) back to EMPTY."""
_SECTION_ALIGN = 64
_PAGE = 4096
_MASK32 = 0xFFFFFFFF
_CRC_KNOWN = 1

PLACEMENTS = ("shm", "disk")
"""Placement names, by their number in the header."""

# Offsets 0..120 of the header; the table in docs/cache-layout.md lists them one by one.
_HEADER = struct.Struct("<8sIIIIIIQQIIQQQQQQIIQ")
_DEMAND_HEADER = struct.Struct("<IIII")
_DEMAND_FIELDS = struct.Struct("<III")  # file index, first chunk, chunk count (after the u32 seq)
_ENTRY = struct.Struct("<QQQQIIQ64s16x")
_U32 = struct.Struct("<I")
_FILE_STATUS_IN_ENTRY = 36


class TableStatus(enum.IntEnum):
    """The header's status word."""

    INITIALIZING = 0
    FILLING = 1
    COMPLETE = 2
    FAILED = 3
    CLOSED = 4


class FileStatus(enum.IntEnum):
    """One file's status word in the file table."""

    FILLING = 0
    VERIFIED = 1
    FAILED = 2


@dataclass(frozen=True)
class FileSpec:
    """What the owner knows about one file when it lays out the table.

    Args:
        size: the object's size in bytes.
        crc64: its expected CRC-64, if the server sent one.
        segment_name: its data segment's name (ASCII, at most 63 bytes).
    """

    size: int
    crc64: int | None
    segment_name: str


@dataclass(frozen=True)
class FileEntry:
    """One file as the table records it.

    Args:
        size: the object's size in bytes.
        first_state: index of its chunk 0's state byte among all state bytes.
        chunk_count: how many chunks (state bytes) it has.
        crc64: the expected CRC-64, or None when unknown.
        status: its :class:`FileStatus`.
        error_offset: absolute offset of its error slot.
        segment_name: its data segment's name.
    """

    size: int
    first_state: int
    chunk_count: int
    crc64: int | None
    status: FileStatus
    error_offset: int
    segment_name: str


@dataclass(frozen=True)
class TableLayout:
    """Where everything goes in a table for given files, chunk size and directory (pure planning).

    Args:
        chunk_size: bytes per chunk.
        first_states: per file, the index of its first state byte.
        chunk_counts: per file, its number of chunks.
        total_chunks: state bytes in all.
        state_offset: offset of the state bytes.
        error_offset: offset of the error slots.
        directory_offset: offset of the directory string.
        directory_length: its length in bytes.
        table_size: the table's size, a multiple of 4096.
    """

    chunk_size: int
    first_states: tuple[int, ...]
    chunk_counts: tuple[int, ...]
    total_chunks: int
    state_offset: int
    error_offset: int
    directory_offset: int
    directory_length: int
    table_size: int


@dataclass(frozen=True)
class DemandRequest:
    """A reader's request (posted in the ring) that the owner fetch chunks ``[first, first + count)``."""

    file_index: int
    first_chunk: int
    chunk_count: int


def _align(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment


def plan_layout(sizes: Sequence[int], chunk_size: int, directory: str) -> TableLayout:
    """Lay out a table for files of ``sizes`` split into ``chunk_size`` chunks.

    Args:
        sizes: each file's size in bytes, in table order.
        chunk_size: bytes per chunk, ``>= 1``.
        directory: the prepared directory's real path (stored for messages).

    Returns:
        The layout.

    Raises:
        ValueError: a chunk size below 1, a negative size, or a directory path longer than 4096 bytes.
    """
    encoded = directory.encode("utf-8", "surrogateescape")
    if len(encoded) > MAX_DIRECTORY_BYTES:
        raise ValueError(f"directory path of {len(encoded)} bytes is longer than {MAX_DIRECTORY_BYTES}")
    first_states = []
    counts = []
    total = 0
    for size in sizes:
        count = chunk_count(size, chunk_size)
        first_states.append(total)
        counts.append(count)
        total += count
    state_offset = _align(HEADER_SIZE + FILE_ENTRY_SIZE * len(sizes), _SECTION_ALIGN)
    error_offset = _align(state_offset + total, _SECTION_ALIGN)
    directory_offset = error_offset + ERROR_SLOT_SIZE * len(sizes)
    return TableLayout(
        chunk_size=chunk_size,
        first_states=tuple(first_states),
        chunk_counts=tuple(counts),
        total_chunks=total,
        state_offset=state_offset,
        error_offset=error_offset,
        directory_offset=directory_offset,
        directory_length=len(encoded),
        table_size=_align(directory_offset + len(encoded), _PAGE),
    )


class StateTable:
    """A view of one state table over a buffer (an ``mmap`` of the table's segment, or any bytes).

    Use :meth:`initialize` to lay out a new table in a zeroed, writable buffer; the constructor reads and
    checks an existing one (a reader's attach).

    Args:
        buffer: the table's bytes; writable for the owner, read-only is enough to wait.
        name: the table's name, for messages.

    Raises:
        CacheError: the buffer does not hold a table of this layout version (or is cut short).
    """

    def __init__(self, buffer: Buffer, name: str = "state table") -> None:
        self.name = name
        view = memoryview(buffer)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        self._view = view
        self._released = False
        self.writable = not view.readonly
        if len(view) < HEADER_SIZE:
            self._corrupt(f"it has {len(view)} bytes, less than the {HEADER_SIZE}-byte header")
        fields = _HEADER.unpack_from(view, 0)
        (magic, version, header_size, _status, _generation, pid, uid, start_time, chunk_size, file_count,
         placement, total_chunks, file_table, state_offset, error_offset, slot_size, directory_offset,
         directory_length, _reserved, table_size) = fields  # fmt: skip
        if magic != MAGIC:
            self._corrupt(f"its magic is {magic!r}, not {MAGIC!r}")
        if version != LAYOUT_VERSION or header_size != HEADER_SIZE:
            raise CacheError(
                f"{name}: layout version {version} (header {header_size} bytes), but this ossmodelconnector "
                f"reads version {LAYOUT_VERSION}: use the same ossmodelconnector version in every process"
            )
        if (
            chunk_size < 1
            or placement >= len(PLACEMENTS)
            or file_table != HEADER_SIZE
            or slot_size != ERROR_SLOT_SIZE
            or state_offset < HEADER_SIZE + FILE_ENTRY_SIZE * file_count
            or error_offset < state_offset + total_chunks
            or directory_offset < error_offset + ERROR_SLOT_SIZE * file_count
            or directory_offset + directory_length > table_size
            or table_size > len(view)
        ):
            self._corrupt("its offsets do not fit together")
        self.owner_pid: int = pid
        self.owner_uid: int = uid
        self.owner_start_time: int = start_time
        self.chunk_size: int = chunk_size
        self.file_count: int = file_count
        self.placement: str = PLACEMENTS[placement]
        self.total_chunks: int = total_chunks
        self.state_offset: int = state_offset
        self.error_offset: int = error_offset
        self.table_size: int = table_size
        self.directory: str = bytes(view[directory_offset : directory_offset + directory_length]).decode(
            "utf-8", "surrogateescape"
        )
        self._entries = [self._read_entry(index) for index in range(file_count)]
        for index, entry in enumerate(self._entries):
            if (
                entry.first_state + entry.chunk_count > total_chunks
                or entry.chunk_count != chunk_count(entry.size, chunk_size)
                or entry.error_offset != error_offset + ERROR_SLOT_SIZE * index
            ):
                self._corrupt(f"file {index}'s entry does not fit the table")

    @classmethod
    def initialize(
        cls,
        buffer: Buffer,
        files: Sequence[FileSpec],
        *,
        chunk_size: int,
        owner_pid: int,
        owner_start_time: int,
        owner_uid: int,
        placement: str,
        directory: str,
        name: str = "state table",
    ) -> StateTable:
        """Lay out a new table (status INITIALIZING, every chunk EMPTY) in a zeroed, writable buffer.

        Args:
            buffer: at least ``plan_layout(...).table_size`` zeroed, writable bytes.
            files: the files, in table order.
            chunk_size: bytes per chunk.
            owner_pid: the owner's pid.
            owner_start_time: its start time (``/proc/<pid>/stat`` field 22).
            owner_uid: its effective uid.
            placement: ``"shm"`` or ``"disk"``.
            directory: the prepared directory's real path.
            name: the table's name, for messages.

        Returns:
            The table.

        Raises:
            ValueError: the buffer is too small or read-only, a segment name is too long, or a bad
                placement, chunk size or size.
            CacheError: big-endian host (the futex word must be little-endian, as the layout says).
        """
        if sys.byteorder != "little":
            raise CacheError("the shared-memory cache layout is little-endian; this host is big-endian")
        if placement not in PLACEMENTS:
            raise ValueError(f"placement={placement!r} must be one of {PLACEMENTS}")
        layout = plan_layout([spec.size for spec in files], chunk_size, directory)
        view = memoryview(buffer).cast("B")
        if view.readonly or len(view) < layout.table_size:
            raise ValueError(
                f"{name}: need {layout.table_size} writable bytes for the table, got {len(view)} "
                f"({'read-only' if view.readonly else 'writable'})"
            )
        encoded_dir = directory.encode("utf-8", "surrogateescape")
        view[layout.directory_offset : layout.directory_offset + len(encoded_dir)] = encoded_dir
        for index, spec in enumerate(files):
            segment = spec.segment_name.encode("ascii")
            if len(segment) >= SEGMENT_NAME_SIZE:
                raise ValueError(f"segment name {spec.segment_name!r} is longer than {SEGMENT_NAME_SIZE - 1}")
            _ENTRY.pack_into(
                view,
                HEADER_SIZE + FILE_ENTRY_SIZE * index,
                spec.size,
                layout.first_states[index],
                layout.chunk_counts[index],
                spec.crc64 or 0,
                _CRC_KNOWN if spec.crc64 is not None else 0,
                FileStatus.FILLING,
                layout.error_offset + ERROR_SLOT_SIZE * index,
                segment,
            )
        _DEMAND_HEADER.pack_into(view, DEMAND_HEAD_OFFSET, 0, 0, DEMAND_CAPACITY, DEMAND_ENTRY_SIZE)
        # The header last: a reader that finds the magic finds everything else in place.
        _HEADER.pack_into(
            view,
            0,
            MAGIC,
            LAYOUT_VERSION,
            HEADER_SIZE,
            TableStatus.INITIALIZING,
            0,
            owner_pid,
            owner_uid,
            owner_start_time,
            chunk_size,
            len(files),
            PLACEMENTS.index(placement),
            layout.total_chunks,
            HEADER_SIZE,
            layout.state_offset,
            layout.error_offset,
            ERROR_SLOT_SIZE,
            layout.directory_offset,
            layout.directory_length,
            0,
            layout.table_size,
        )
        return cls(view, name)

    # --- reading -------------------------------------------------------------------------------------

    def _corrupt(self, why: str) -> None:
        raise CacheError(
            f"{self.name} is not a valid ossmodelconnector state table: {why}; it is stale or damaged: the "
            "owner's next prepare_directory replaces it"
        )

    def _read_entry(self, index: int) -> FileEntry:
        size, first, count, crc, flags, status, error_offset, segment = _ENTRY.unpack_from(
            self._view, HEADER_SIZE + FILE_ENTRY_SIZE * index
        )
        return FileEntry(
            size=size,
            first_state=first,
            chunk_count=count,
            crc64=crc if flags & _CRC_KNOWN else None,
            status=FileStatus(status) if status in FileStatus._value2member_map_ else FileStatus.FAILED,
            error_offset=error_offset,
            segment_name=segment.rstrip(b"\0").decode("ascii", "replace"),
        )

    @property
    def buffer(self) -> memoryview:
        """The table's bytes (for futex waits on :data:`GENERATION_OFFSET`)."""
        return self._view

    def file(self, index: int) -> FileEntry:
        """File ``index``'s entry (its status read now)."""
        entry = self._entries[index]
        return FileEntry(
            entry.size,
            entry.first_state,
            entry.chunk_count,
            entry.crc64,
            self.file_status(index),
            entry.error_offset,
            entry.segment_name,
        )

    def files(self) -> list[FileEntry]:
        """Every file's entry, in table order."""
        return [self.file(index) for index in range(self.file_count)]

    def states(self, index: int) -> memoryview:
        """File ``index``'s state bytes (one per chunk; writable when the table is)."""
        entry = self._entries[index]
        start = self.state_offset + entry.first_state
        return self._view[start : start + entry.chunk_count]

    def all_states(self) -> memoryview:
        """Every state byte, files in table order."""
        return self._view[self.state_offset : self.state_offset + self.total_chunks]

    def generation(self) -> int:
        """The generation counter now (read atomically, before looking at the states it guards)."""
        return _fast.atomic_load_u32(self._view, GENERATION_OFFSET)

    def status(self) -> TableStatus:
        """The header's status."""
        value = _U32.unpack_from(self._view, _STATUS_OFFSET)[0]
        return TableStatus(value) if value in TableStatus._value2member_map_ else TableStatus.FAILED

    def file_status(self, index: int) -> FileStatus:
        """File ``index``'s status."""
        offset = HEADER_SIZE + FILE_ENTRY_SIZE * index + _FILE_STATUS_IN_ENTRY
        value = _U32.unpack_from(self._view, offset)[0]
        return FileStatus(value) if value in FileStatus._value2member_map_ else FileStatus.FAILED

    def read_error(self, index: int) -> tuple[str, str] | None:
        """File ``index``'s error as ``(class name, message)``, or None when it has none."""
        offset = self._entries[index].error_offset
        length = min(_U32.unpack_from(self._view, offset)[0], ERROR_SLOT_SIZE - 4)
        if not length:
            return None
        text = bytes(self._view[offset + 4 : offset + 4 + length]).decode("utf-8", "replace")
        kind, _, message = text.partition("\n")
        return kind, message

    # --- writing (the owner) ------------------------------------------------------------------------

    def publish(self) -> int:
        """Bump the generation and wake every waiter, in any process; returns the new generation."""
        generation = _fast.atomic_increment_u32(self._view, GENERATION_OFFSET)
        _fast.futex_wake(self._view, GENERATION_OFFSET)
        return generation

    def set_status(self, status: TableStatus) -> None:
        """Set the header's status (then :meth:`publish`)."""
        _fast.atomic_store_u32(self._view, _STATUS_OFFSET, int(status))

    def flags(self) -> int:
        """The header's flags word (:data:`FLAG_LAZY`); 0 in tables of earlier versions."""
        return int(_U32.unpack_from(self._view, _FLAGS_OFFSET)[0])

    def set_flags(self, flags: int) -> None:
        """Set the header's flags word (then :meth:`publish`)."""
        _fast.atomic_store_u32(self._view, _FLAGS_OFFSET, flags)

    def set_file_status(self, index: int, status: FileStatus) -> None:
        """Set file ``index``'s status (then :meth:`publish`)."""
        offset = HEADER_SIZE + FILE_ENTRY_SIZE * index + _FILE_STATUS_IN_ENTRY
        _fast.atomic_store_u32(self._view, offset, int(status))

    def write_error(self, index: int, kind: str, message: str) -> None:
        """Record file ``index``'s error (then mark the chunk or file FAILED and :meth:`publish`).

        Args:
            index: the file.
            kind: the exception's class name.
            message: its message; the text is cut to the 1020-byte slot on a character boundary.
        """
        offset = self._entries[index].error_offset
        data = f"{kind}\n{message}".encode()[: ERROR_SLOT_SIZE - 4]
        data = data.decode("utf-8", "ignore").encode()  # no half character at the cut
        # Length 0 while the text changes, then the length: a reader never sees a torn length.
        _fast.atomic_store_u32(self._view, offset, 0)
        self._view[offset + 4 : offset + 4 + len(data)] = data
        _fast.atomic_store_u32(self._view, offset, len(data))

    # --- waiting ------------------------------------------------------------------------------------

    def wait_for_change(self, generation: int, timeout_s: float) -> bool:
        """Wait until the generation differs from ``generation``; False after ``timeout_s`` without.

        The GIL is released while waiting (with the Cython kernel; the twin polls).
        """
        return _fast.futex_wait(self._view, GENERATION_OFFSET, generation, timeout_s)

    # --- demand ring (readers in other processes ask; the owner takes) -------------------------------

    def post_demand(self, file_index: int, first_chunk: int, count: int) -> None:
        """Ask the owner to fetch chunks ``[first_chunk, first_chunk + count)`` of a file next (a hint).

        Raises:
            CacheError: the table is mapped read-only.
            ValueError: the file or chunks are not in the table.
        """
        if not self.writable:
            raise CacheError(f"{self.name}: mapped read-only, so it cannot post demands; attach it writable")
        entry = self._entries[file_index]
        if count < 1 or first_chunk < 0 or first_chunk + count > entry.chunk_count:
            raise ValueError(
                f"chunks [{first_chunk}, {first_chunk + count}) are not in file {file_index} "
                f"({entry.chunk_count} chunks)"
            )
        ticket = (_fast.atomic_increment_u32(self._view, DEMAND_HEAD_OFFSET) - 1) & _MASK32
        slot = _DEMAND_RING_OFFSET + (ticket % DEMAND_CAPACITY) * DEMAND_ENTRY_SIZE
        _fast.atomic_store_u32(self._view, slot, 0)
        _DEMAND_FIELDS.pack_into(self._view, slot + 4, file_index, first_chunk, count)
        _fast.atomic_store_u32(self._view, slot, (ticket + 1) & _MASK32)
        _fast.futex_wake(self._view, DEMAND_HEAD_OFFSET)

    def take_demands(self) -> list[DemandRequest]:
        """The requests posted since the last call, oldest first (the owner's side; lost ones skipped)."""
        head = _fast.atomic_load_u32(self._view, DEMAND_HEAD_OFFSET)
        tail = _U32.unpack_from(self._view, DEMAND_TAIL_OFFSET)[0]
        outstanding = (head - tail) & _MASK32
        if outstanding > DEMAND_CAPACITY:
            tail = (head - DEMAND_CAPACITY) & _MASK32
            outstanding = DEMAND_CAPACITY
        requests = []
        for step in range(outstanding):
            ticket = (tail + step) & _MASK32
            slot = _DEMAND_RING_OFFSET + (ticket % DEMAND_CAPACITY) * DEMAND_ENTRY_SIZE
            expected = (ticket + 1) & _MASK32
            if expected == 0 or _fast.atomic_load_u32(self._view, slot) != expected:
                continue  # not yet written, overwritten, or the wrap-around ticket: a lost hint
            file_index, first, count = _DEMAND_FIELDS.unpack_from(self._view, slot + 4)
            if _fast.atomic_load_u32(self._view, slot) != expected:
                continue  # rewritten while we read it
            if file_index < self.file_count and first + count <= self._entries[file_index].chunk_count:
                requests.append(DemandRequest(file_index, first, count))
        _fast.atomic_store_u32(self._view, DEMAND_TAIL_OFFSET, head)
        return requests

    def wait_for_demand(self, head: int, timeout_s: float) -> bool:
        """Wait until a demand is posted after the head value ``head``; False after ``timeout_s``."""
        return _fast.futex_wait(self._view, DEMAND_HEAD_OFFSET, head, timeout_s)

    def demand_head(self) -> int:
        """The demand ring's head now (pass it to :meth:`wait_for_demand`)."""
        return _fast.atomic_load_u32(self._view, DEMAND_HEAD_OFFSET)

    @property
    def released(self) -> bool:
        """Whether :meth:`release` has run (the table must not be used any more)."""
        return self._released

    def release(self) -> None:
        """Drop this view of the buffer (slices handed out keep the memory mapped until they go)."""
        self._released = True
        with contextlib.suppress(BufferError):  # a wait in another thread still holds it: it goes later
            self._view.release()
