# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, autotestdict=False
"""CRC-64 as OSS computes it (``x-oss-hash-crc64ecma``, CRC-64/XZ), with combine; the GIL is released.

Twin of :mod:`ossmodelconnector._fast._reference` (same signatures, results and errors). Two loops:

- ``pclmulqdq`` (x86-64 CPUs that have it, checked at import): eight 16-byte lanes folded with carry-less
  multiplies, 128 bytes per step; the folded 16 bytes and the tail go through the table loop below.
- slicing-by-16 tables (everywhere else, and for inputs under 128 bytes).

Both work on the register (the CRC value XOR all ones) so that chaining is ``crc64(b, crc64(a))``.
"""

from cpython.buffer cimport PyBUF_C_CONTIGUOUS, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport uint64_t

from ossmodelconnector._fast._reference import CRC64_POLY_REFLECTED as _POLY_PY
from ossmodelconnector._fast._reference import as_bytes_view, check_crc, check_length

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>

    static inline uint64_t omc_load_le64(const unsigned char *p) {
        uint64_t v;
        memcpy(&v, p, 8);
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        v = __builtin_bswap64(v);
    #endif
        return v;
    }

    #if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    #include <immintrin.h>
    #define OMC_HAVE_CLMUL_BUILD 1

    static int omc_cpu_has_clmul(void) {
        __builtin_cpu_init();
        return __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse2");
    }

    /* x <- x.lo * k.lo ^ x.hi * k.hi ^ next: moves x forward by the distance k was built for. */
    __attribute__((target("pclmul,sse2")))
    static inline __m128i omc_fold(__m128i x, __m128i k, __m128i next) {
        __m128i lo = _mm_clmulepi64_si128(x, k, 0x00);
        __m128i hi = _mm_clmulepi64_si128(x, k, 0x11);
        return _mm_xor_si128(_mm_xor_si128(lo, hi), next);
    }

    /* Folds the whole 16-byte blocks of p (n >= 128) into 16 bytes written to out; returns the bytes used.
       k holds 8 pairs (low-qword constant, high-qword constant): pair 0 folds by 1024 bits, pair 1 + i
       by (7 - i) * 128 bits; pair 7 (128 bits) also folds the single blocks after the 128-byte loop. */
    __attribute__((target("pclmul,sse2")))
    static size_t omc_crc64_fold(uint64_t reg, const unsigned char *p, size_t n, const uint64_t *k,
                                 unsigned char *out) {
        const unsigned char *start = p;
        __m128i x[8];
        __m128i k1024 = _mm_set_epi64x((long long)k[1], (long long)k[0]);
        __m128i k128 = _mm_set_epi64x((long long)k[15], (long long)k[14]);
        int i;
        for (i = 0; i < 8; i++) x[i] = _mm_loadu_si128((const __m128i *)(p + 16 * i));
        /* The register stands in front of the data: xor it into the first eight bytes. */
        x[0] = _mm_xor_si128(x[0], _mm_cvtsi64_si128((long long)reg));
        p += 128;
        n -= 128;
        while (n >= 128) {
            for (i = 0; i < 8; i++)
                x[i] = omc_fold(x[i], k1024, _mm_loadu_si128((const __m128i *)(p + 16 * i)));
            p += 128;
            n -= 128;
        }
        for (i = 0; i < 7; i++) {
            __m128i kd = _mm_set_epi64x((long long)k[3 + 2 * i], (long long)k[2 + 2 * i]);
            x[7] = omc_fold(x[i], kd, x[7]);
        }
        while (n >= 16) {
            x[7] = omc_fold(x[7], k128, _mm_loadu_si128((const __m128i *)p));
            p += 16;
            n -= 16;
        }
        _mm_storeu_si128((__m128i *)out, x[7]);
        return (size_t)(p - start);
    }
    #else
    #define OMC_HAVE_CLMUL_BUILD 0
    static int omc_cpu_has_clmul(void) { return 0; }
    static size_t omc_crc64_fold(uint64_t reg, const unsigned char *p, size_t n, const uint64_t *k,
                                 unsigned char *out) {
        (void)reg; (void)p; (void)n; (void)k; (void)out;
        return 0;
    }
    #endif
    """
    uint64_t omc_load_le64(const unsigned char *p) noexcept nogil
    int omc_cpu_has_clmul() noexcept nogil
    size_t omc_crc64_fold(uint64_t reg, const unsigned char *p, size_t n, const uint64_t *k,
                          unsigned char *out) noexcept nogil

cdef uint64_t _MASK64 = 0xFFFFFFFFFFFFFFFF

# The folding starts from eight full lanes, and from there on it already beats the tables (measured with
# the call overhead included: 128 bytes in about 3/4 of the table loop's time, 1 KiB in about 1/4).
cdef size_t _CLMUL_MIN = 128
# Releasing and re-taking the GIL costs little, but re-taking it can wait a whole switch interval (5 ms)
# behind a busy thread: only worth it when the loop itself takes longer than that handoff usually does.
cdef size_t _NOGIL_MIN = 64 * 1024

cdef uint64_t _POLY = _POLY_PY
cdef uint64_t _T[16][256]
cdef uint64_t _FOLD[16]
cdef uint64_t _X2N[67]
cdef bint _use_clmul = False


cdef uint64_t _times_x_pow(uint64_t a, unsigned int e) noexcept nogil:
    # a * x^e modulo the polynomial, one bit at a time (import time only).
    cdef unsigned int i
    for i in range(e):
        a = (a >> 1) ^ _POLY if a & 1 else a >> 1
    return a


cdef uint64_t _multmodp(uint64_t a, uint64_t b) noexcept nogil:
    cdef uint64_t product = 0
    cdef uint64_t bit = 1ULL << 63
    while a:
        if a & bit:
            product ^= b
            a ^= bit
        bit >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1
    return product


cdef void _init_tables() noexcept nogil:
    cdef unsigned int i, j
    cdef uint64_t crc
    for i in range(256):
        crc = i
        for j in range(8):
            crc = (crc >> 1) ^ _POLY if crc & 1 else crc >> 1
        _T[0][i] = crc
    for j in range(1, 16):
        for i in range(256):
            _T[j][i] = (_T[j - 1][i] >> 8) ^ _T[0][_T[j - 1][i] & 0xFF]
    # Folding a 128-bit lane x = H*x^64 + L forward by D bits needs x^(D+64) and x^D mod P; the carry-less
    # product of two reflected values comes out multiplied by x, hence one power less for each.
    _FOLD[0] = _times_x_pow(1ULL << 63, 1024 + 63)
    _FOLD[1] = _times_x_pow(1ULL << 63, 1024 - 1)
    for i in range(7):
        _FOLD[2 + 2 * i] = _times_x_pow(1ULL << 63, (7 - i) * 128 + 63)
        _FOLD[3 + 2 * i] = _times_x_pow(1ULL << 63, (7 - i) * 128 - 1)
    _X2N[0] = 1ULL << 62  # x^1
    for i in range(1, 67):
        _X2N[i] = _multmodp(_X2N[i - 1], _X2N[i - 1])


cdef uint64_t _update_tables(uint64_t reg, const unsigned char *p, size_t n) noexcept nogil:
    cdef uint64_t lo, hi
    while n >= 16:
        lo = omc_load_le64(p) ^ reg
        hi = omc_load_le64(p + 8)
        reg = (_T[15][lo & 0xFF] ^ _T[14][(lo >> 8) & 0xFF]
               ^ _T[13][(lo >> 16) & 0xFF] ^ _T[12][(lo >> 24) & 0xFF]
               ^ _T[11][(lo >> 32) & 0xFF] ^ _T[10][(lo >> 40) & 0xFF]
               ^ _T[9][(lo >> 48) & 0xFF] ^ _T[8][lo >> 56]
               ^ _T[7][hi & 0xFF] ^ _T[6][(hi >> 8) & 0xFF]
               ^ _T[5][(hi >> 16) & 0xFF] ^ _T[4][(hi >> 24) & 0xFF]
               ^ _T[3][(hi >> 32) & 0xFF] ^ _T[2][(hi >> 40) & 0xFF]
               ^ _T[1][(hi >> 48) & 0xFF] ^ _T[0][hi >> 56])
        p += 16
        n -= 16
    while n:
        reg = _T[0][(reg ^ p[0]) & 0xFF] ^ (reg >> 8)
        p += 1
        n -= 1
    return reg


cdef uint64_t _update(uint64_t reg, const unsigned char *p, size_t n, bint tables_only) noexcept nogil:
    cdef unsigned char folded[16]
    cdef size_t used
    if _use_clmul and not tables_only and n >= _CLMUL_MIN:
        used = omc_crc64_fold(reg, p, n, _FOLD, folded)
        # The folded lane is congruent to register-and-data so far; its CRC from a zero register is ours.
        reg = _update_tables(0, folded, 16)
        return _update_tables(reg, p + used, n - used)
    return _update_tables(reg, p, n)


cdef uint64_t crc64_update(uint64_t crc, const unsigned char *p, size_t n) noexcept nogil:
    # For other kernels (crc64.pxd): the CRC-64 continued over n bytes, final values in and out.
    return _update(crc ^ _MASK64, p, n, False) ^ _MASK64


cdef inline uint64_t _as_crc(str name, object value) except? 0:
    if type(value) is int:
        try:
            return <uint64_t>value
        except OverflowError:
            pass
    # Anything unusual (negative, too large, not an int) gets the shared check and its message.
    return <uint64_t>check_crc(name, value)


cdef uint64_t _hash(object data, object crc, bint tables_only) except? 0:
    cdef uint64_t reg = _as_crc("crc", crc) ^ _MASK64
    cdef Py_buffer buf
    cdef const unsigned char *p
    cdef size_t n
    # Not a typed memoryview: without PyBUF_FORMAT any item type is accepted as raw bytes (a float16
    # array, a torch tensor's numpy view) and no read/write flag is asked, so bytes and read-only mmaps
    # work; it also saves the typed memoryview's setup on every call.
    PyObject_GetBuffer(data, &buf, PyBUF_C_CONTIGUOUS)
    try:
        p = <const unsigned char *>buf.buf
        n = <size_t>buf.len
        if n == 0:
            return reg ^ _MASK64
        if n >= _NOGIL_MIN:
            with nogil:
                reg = _update(reg, p, n, tables_only)
        else:
            reg = _update(reg, p, n, tables_only)
        return reg ^ _MASK64
    finally:
        PyBuffer_Release(&buf)


cdef uint64_t _hash_checked(object data, object crc, bint tables_only) except? 0:
    try:
        return _hash(data, crc, tables_only)
    except (TypeError, ValueError, BufferError):
        pass
    # Refused buffer: the shared check raises the same error, with the same message, as the twin (or, for
    # an exporter that only refuses the contiguity request, hands back a byte view that is accepted).
    check_crc("crc", crc)
    return _hash(as_bytes_view(data), crc, tables_only)


def crc64(data, crc=0):
    """CRC-64 of ``data`` as OSS computes it, continuing from ``crc``.

    Args:
        data: any C-contiguous buffer (bytes, bytearray, memoryview, numpy array, mmap).
        crc: the CRC-64 of the bytes that precede ``data`` (0 for none).

    Returns:
        The CRC-64 of the preceding bytes followed by ``data``: ``crc64(b, crc64(a)) == crc64(a + b)``.

    Raises:
        TypeError: ``data`` is not a buffer, or ``crc`` is not an int.
        ValueError: ``data`` is not C-contiguous, or ``crc`` is outside ``[0, 2**64)``.
    """
    return _hash_checked(data, crc, False)


def _crc64_tables(data, crc=0):
    """``crc64`` through the slicing-by-16 loop only, so that tests cover it on pclmulqdq machines too."""
    return _hash_checked(data, crc, True)


def crc64_combine(crc_a, crc_b, len_b):
    """CRC-64 of ``a + b`` from the CRC-64s of ``a`` and ``b`` and the length of ``b``, without the data.

    Args:
        crc_a: ``crc64(a)``.
        crc_b: ``crc64(b)``.
        len_b: ``len(b)`` in bytes.

    Returns:
        ``crc64(a + b)``, in O(log len_b) steps.

    Raises:
        TypeError: an argument is not an int.
        ValueError: a CRC is outside ``[0, 2**64)`` or ``len_b`` is outside ``[0, 2**64)``.
    """
    cdef uint64_t a = _as_crc("crc_a", crc_a)
    cdef uint64_t b = _as_crc("crc_b", crc_b)
    cdef uint64_t length = <uint64_t>check_length("len_b", len_b)
    cdef uint64_t shift = 1ULL << 63
    cdef unsigned int k = 3
    # x^(8 * len_b) is the product of x^(2^(i + 3)) = _X2N[i + 3] over the set bits i of len_b.
    while length:
        if length & 1:
            shift = _multmodp(_X2N[k], shift)
        length >>= 1
        k += 1
    return _multmodp(shift, a) ^ b


_init_tables()
_use_clmul = omc_cpu_has_clmul() != 0

KERNEL = "pclmulqdq" if _use_clmul else "slicing-by-16"
"""Which loop ``crc64`` runs on this CPU."""
