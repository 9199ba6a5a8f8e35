"""Type stubs for the Cython receive kernel (``receive.pyx``); the twin is ``_reference.py``."""

from typing_extensions import Buffer

def recv_into(fd: int, dest: Buffer, timeout_s: float, crc: int = 0) -> tuple[int, int]: ...
