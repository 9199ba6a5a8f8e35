# The C-level entry of crc64.pyx for other kernels (receive.pyx folds each received piece while it is hot).
from libc.stdint cimport uint64_t

cdef uint64_t crc64_update(uint64_t crc, const unsigned char *p, size_t n) noexcept nogil
