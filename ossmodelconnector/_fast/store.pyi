"""Type stubs for the Cython chunk-store kernel (``store.pyx``); the twin is ``_reference.py``."""

from typing_extensions import Buffer

def store_chunk(
    path: bytes, data: Buffer, offset: int, device: int, inode: int, mtime_ns: int | None
) -> tuple[int, int]: ...
