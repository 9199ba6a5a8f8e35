# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, autotestdict=False
"""Shared futex waits and 32-bit atomics on a word inside any buffer (a shared mapping); the GIL is released.

Twin of :mod:`ossmodelconnector._fast._reference` (same signatures, results and errors; the twin polls).

The futexes are *shared* (no ``FUTEX_PRIVATE_FLAG``): the kernel keys them by the page of the mapping, so
a waiter in one process is woken by a ``futex_wake`` in another that maps the same file. The atomics are
GCC/Clang ``__atomic`` builtins, sequentially consistent for read-modify-write and stores, acquire for
loads, so that bytes written before a generation bump are visible to whoever sees the new value.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.exc cimport PyErr_CheckSignals
from libc.stdint cimport uint32_t

from ossmodelconnector._fast._reference import check_timeout, check_u32, check_word_buffer, check_word_offset

cdef extern from *:
    """
    #include <stdint.h>
    #include <errno.h>
    #include <time.h>
    #if defined(__linux__)
    #include <linux/futex.h>
    #include <sys/syscall.h>
    #include <unistd.h>
    #define OMC_HAVE_FUTEX 1
    /* 0 woken or value changed, 1 timed out, 2 interrupted; ts NULL waits without a limit. */
    static int omc_futex_wait(uint32_t *addr, uint32_t expected, const struct timespec *ts) {
        long r = syscall(SYS_futex, addr, FUTEX_WAIT, expected, ts, NULL, 0);
        if (r == 0) return 0;
        if (errno == ETIMEDOUT) return 1;
        if (errno == EINTR) return 2;
        return 0;  /* EAGAIN: the word no longer held expected */
    }
    static long omc_futex_wake(uint32_t *addr) {
        long r = syscall(SYS_futex, addr, FUTEX_WAKE, 0x7fffffff, NULL, NULL, 0);
        return r < 0 ? 0 : r;
    }
    #else
    #define OMC_HAVE_FUTEX 0
    static int omc_futex_wait(uint32_t *addr, uint32_t expected, const struct timespec *ts) {
        (void)addr; (void)expected; (void)ts; return 1;
    }
    static long omc_futex_wake(uint32_t *addr) { (void)addr; return 0; }
    #endif
    static inline uint32_t omc_load_u32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void omc_store_u32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }
    static inline uint32_t omc_increment_u32(uint32_t *p) { return __atomic_add_fetch(p, 1, __ATOMIC_SEQ_CST); }
    static double omc_monotonic(void) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        return (double)now.tv_sec + (double)now.tv_nsec * 1e-9;
    }
    """
    int OMC_HAVE_FUTEX
    struct timespec:
        long tv_sec
        long tv_nsec
    int omc_futex_wait(uint32_t *addr, uint32_t expected, const timespec *ts) noexcept nogil
    long omc_futex_wake(uint32_t *addr) noexcept nogil
    uint32_t omc_load_u32(const uint32_t *p) noexcept nogil
    void omc_store_u32(uint32_t *p, uint32_t v) noexcept nogil
    uint32_t omc_increment_u32(uint32_t *p) noexcept nogil
    double omc_monotonic() noexcept nogil

if not OMC_HAVE_FUTEX:
    raise ImportError("ossmodelconnector._fast.futex needs Linux futexes; the pure-Python twin polls instead")

cdef double _MAX_SLICE_S = 86400.0


cdef uint32_t *_word(Py_buffer *buf, object buffer, object offset, bint writable) except NULL:
    # Validation (and its messages) is shared with the twin; the buffer stays exported until released.
    try:
        PyObject_GetBuffer(buffer, buf, PyBUF_WRITABLE if writable else PyBUF_SIMPLE)
    except (TypeError, ValueError, BufferError):
        check_word_buffer(buffer, writable)  # raises the twin's error for the same refusal
        raise
    try:
        position = check_word_offset(offset, buf.len)
    except BaseException:
        PyBuffer_Release(buf)
        raise
    if (<size_t>buf.buf + <size_t>position) % 4:
        PyBuffer_Release(buf)
        raise ValueError(
            f"offset {position} is not 4-byte aligned in memory: futexes and atomics need an aligned u32; "
            "use a buffer that starts on a 4-byte boundary (an mmap does)"
        )
    return <uint32_t *>(<char *>buf.buf + <size_t>position)


def futex_wait(buffer, offset, expected, timeout_s):
    """Wait while the u32 at ``offset`` in ``buffer`` equals ``expected``, at most ``timeout_s`` seconds.

    Args:
        buffer: a C-contiguous buffer over shared memory (an ``mmap``, a ``memoryview`` of one); read-only
            is fine.
        offset: byte offset of a 4-byte aligned u32 in ``buffer``.
        expected: the value seen before deciding to wait.
        timeout_s: seconds; ``<= 0`` only checks; ``math.inf`` waits without a limit.

    Returns:
        True once the word differs from ``expected`` (a wake without a change keeps waiting); False when
        ``timeout_s`` passed with the word still equal.

    Raises:
        TypeError: ``buffer`` is not a buffer, or an argument is not a number.
        ValueError: ``offset`` is out of range or not aligned, or ``expected`` is not a u32.
        KeyboardInterrupt: (or another signal handler's error) when a signal arrives in the main thread.
    """
    cdef uint32_t value = <uint32_t>check_u32("expected", expected)
    cdef double limit = check_timeout(timeout_s)
    cdef bint forever = limit == float("inf")
    cdef double deadline
    cdef double remaining
    cdef timespec ts
    cdef int outcome
    cdef Py_buffer buf
    cdef uint32_t *word = _word(&buf, buffer, offset, False)
    try:
        deadline = omc_monotonic() + (0.0 if forever else limit)
        while True:
            if omc_load_u32(word) != value:
                return True
            if forever:
                with nogil:
                    outcome = omc_futex_wait(word, value, NULL)
            else:
                remaining = deadline - omc_monotonic()
                if remaining <= 0:
                    return False
                if remaining > _MAX_SLICE_S:
                    remaining = _MAX_SLICE_S  # a huge finite timeout must not overflow tv_sec
                ts.tv_sec = <long>remaining
                ts.tv_nsec = <long>((remaining - <double>ts.tv_sec) * 1e9)
                with nogil:
                    outcome = omc_futex_wait(word, value, &ts)
            if outcome == 2:
                # A signal: let Python run its handler (Ctrl-C raises here), then wait out the rest.
                PyErr_CheckSignals()
            # 0 (woken, or the word changed) and 1 (timed out) are both judged by the next check above.
    finally:
        PyBuffer_Release(&buf)


def futex_wake(buffer, offset):
    """Wake every process and thread waiting on the u32 at ``offset`` (call it after changing the word).

    Args:
        buffer: the buffer the waiters wait in (read-only is fine: a wake writes nothing).
        offset: byte offset of the 4-byte aligned u32.

    Returns:
        The number of waiters woken (the twin, which has no waiters to count, returns 0).

    Raises:
        TypeError: ``buffer`` is not a buffer.
        ValueError: ``offset`` is out of range or not aligned.
    """
    cdef Py_buffer buf
    cdef uint32_t *word = _word(&buf, buffer, offset, False)
    cdef long woken
    try:
        woken = omc_futex_wake(word)
        return woken
    finally:
        PyBuffer_Release(&buf)


def atomic_load_u32(buffer, offset):
    """The u32 at ``offset``, read atomically (acquire: later reads see what was written before it).

    Raises:
        TypeError: ``buffer`` is not a buffer.
        ValueError: ``offset`` is out of range or not aligned.
    """
    cdef Py_buffer buf
    cdef uint32_t *word = _word(&buf, buffer, offset, False)
    try:
        return omc_load_u32(word)
    finally:
        PyBuffer_Release(&buf)


def atomic_store_u32(buffer, offset, value):
    """Store ``value`` into the u32 at ``offset`` atomically (sequentially consistent).

    Raises:
        TypeError: ``buffer`` is not a writable buffer.
        ValueError: ``offset`` is out of range or not aligned, or ``value`` is not a u32.
    """
    cdef uint32_t number = <uint32_t>check_u32("value", value)
    cdef Py_buffer buf
    cdef uint32_t *word = _word(&buf, buffer, offset, True)
    try:
        omc_store_u32(word, number)
    finally:
        PyBuffer_Release(&buf)


def atomic_increment_u32(buffer, offset):
    """Add 1 to the u32 at ``offset`` atomically (wrapping at 2**32) and return the new value.

    Raises:
        TypeError: ``buffer`` is not a writable buffer.
        ValueError: ``offset`` is out of range or not aligned.
    """
    cdef Py_buffer buf
    cdef uint32_t *word = _word(&buf, buffer, offset, True)
    try:
        return omc_increment_u32(word)
    finally:
        PyBuffer_Release(&buf)
