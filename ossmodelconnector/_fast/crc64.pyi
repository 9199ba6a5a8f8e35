"""Type stubs for the Cython CRC-64 kernel (``crc64.pyx``); the twin is ``_reference.py``."""

from typing_extensions import Buffer

KERNEL: str
"""``"pclmulqdq"`` or ``"slicing-by-16"``: which loop ``crc64`` runs on this CPU."""

def crc64(data: Buffer, crc: int = 0) -> int: ...
def crc64_combine(crc_a: int, crc_b: int, len_b: int) -> int: ...
def _crc64_tables(data: Buffer, crc: int = 0) -> int: ...
