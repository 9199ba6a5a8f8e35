# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, autotestdict=False
"""Receive a body span off a socket into a buffer, folding its CRC-64 per piece, with the GIL released.

Twin of :mod:`ossmodelconnector._fast._reference` (same signature, results, errors and messages).

::

    recv_into(fd, dest, timeout_s, crc) -- validate (GIL held) --> nogil loop:
        recv(fd, dest + got, <= 256 KiB, MSG_DONTWAIT)
          > 0     fold the piece into the CRC while it is in cache; got += n
          0       end of stream: stop (the caller decides whether that is a short body)
          EAGAIN  poll(fd, POLLIN, timeout): nothing within it -> timeout
          EINTR   take the GIL to run signal handlers (Ctrl-C), then go on
          other   the connection failed: RequestError with the errno
    <-- (count, crc), or the error, raised with the GIL held again

One call receives a whole chunk (megabytes) with one GIL release and one re-acquisition, however many
``recv`` calls the kernel needs: a Python loop over ``socket.recv_into`` takes the GIL back after every
read, and waits up to the switch interval (5 ms) for it whenever another thread computes.
``MSG_DONTWAIT`` makes the first ``recv`` not block whatever the descriptor's mode, so ``poll`` runs only
when the socket is drained (a Python socket with a timeout polls before every read).
"""

from cpython.buffer cimport PyBUF_C_CONTIGUOUS, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.exc cimport PyErr_CheckSignals
from libc.stdint cimport uint64_t

from ossmodelconnector._fast.crc64 cimport crc64_update

from ossmodelconnector._fast._reference import RECEIVE_PIECE_BYTES as _PIECE_PY
from ossmodelconnector._fast._reference import (
    check_crc,
    check_fd,
    check_receive_dest,
    poll_timeout_ms,
    receive_failed,
    receive_timed_out,
)

cdef extern from *:
    """
    #include <errno.h>
    #include <poll.h>
    #include <stdint.h>
    #include <sys/socket.h>
    #include <sys/types.h>
    #include <time.h>

    #define OMC_RECV_DONE 0
    #define OMC_RECV_TIMEOUT -1
    #define OMC_RECV_EINTR -2

    static int64_t omc_now_ms(void) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        return (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
    }

    /* Waits until fd is readable; wait_ms -1 is no limit. OMC_RECV_DONE when readable (or in error: the
       next recv reports it), OMC_RECV_TIMEOUT after wait_ms of silence, OMC_RECV_EINTR on a signal. */
    static int omc_wait_readable(int fd, int wait_ms) {
        struct pollfd pfd;
        int r;
        pfd.fd = fd;
        pfd.events = POLLIN;
        pfd.revents = 0;
        r = poll(&pfd, 1, wait_ms);
        if (r > 0) return OMC_RECV_DONE;
        if (r == 0) return OMC_RECV_TIMEOUT;
        if (errno == EINTR) return OMC_RECV_EINTR;
        return errno;
    }
    """
    int OMC_RECV_DONE
    int OMC_RECV_TIMEOUT
    int OMC_RECV_EINTR
    ctypedef long ssize_t
    ssize_t recv(int fd, void *buf, size_t n, int flags) nogil
    int MSG_DONTWAIT
    int errno
    int EINTR
    int EAGAIN
    int EWOULDBLOCK
    long long omc_now_ms() noexcept nogil
    int omc_wait_readable(int fd, int wait_ms) noexcept nogil

cdef size_t _PIECE = _PIECE_PY


cdef int _receive(int fd, unsigned char *p, size_t n, int wait_ms, size_t *got, uint64_t *crc) noexcept nogil:
    # OMC_RECV_DONE (full, or end of stream: *got < n), OMC_RECV_TIMEOUT, OMC_RECV_EINTR, or an errno.
    cdef ssize_t r
    cdef size_t want
    cdef int waited
    cdef long long deadline = 0
    cdef long long left
    while got[0] < n:
        want = n - got[0]
        if want > _PIECE:
            want = _PIECE
        r = recv(fd, p + got[0], want, MSG_DONTWAIT)
        if r > 0:
            crc[0] = crc64_update(crc[0], p + got[0], <size_t>r)
            got[0] += <size_t>r
            deadline = 0
            continue
        if r == 0:
            return OMC_RECV_DONE
        if errno == EINTR:
            return OMC_RECV_EINTR
        if errno != EAGAIN and errno != EWOULDBLOCK:
            return errno
        # Drained: wait for more, for at most wait_ms of silence in all (a signal does not restart it).
        if wait_ms < 0:
            waited = omc_wait_readable(fd, -1)
        else:
            if deadline == 0:
                deadline = omc_now_ms() + wait_ms
            left = deadline - omc_now_ms()
            if left < 0:
                left = 0
            waited = omc_wait_readable(fd, <int>left)
        if waited != OMC_RECV_DONE:
            return waited
    return OMC_RECV_DONE


def recv_into(fd, dest, timeout_s, crc=0):
    """Receive from the connected socket ``fd`` until ``dest`` is full or the peer ends the stream.

    Args:
        fd: a connected stream socket's descriptor, blocking or not.
        dest: the writable, C-contiguous buffer to fill, from its first byte.
        timeout_s: seconds without any byte arriving before giving up (``math.inf``: no limit).
        crc: the CRC-64 of the bytes that precede ``dest`` (0 for none).

    Returns:
        ``(count, crc)``: bytes received (fewer than ``len(dest)`` only when the peer closed the stream)
        and the CRC-64 continued over them.

    Raises:
        RequestTimeoutError: ``timeout_s`` passed without a byte (``range=(0, received)``).
        RequestError: the socket failed (code ``ConnectionError``, ``range=(0, received)``, an
            ``OSError`` as cause).
        TypeError, ValueError: invalid arguments.
    """
    cdef int number = check_fd(fd)
    cdef int wait_ms = poll_timeout_ms(timeout_s)
    cdef uint64_t reg = check_crc("crc", crc)
    cdef Py_buffer buf
    cdef size_t got = 0
    cdef size_t wanted
    cdef int status
    try:
        PyObject_GetBuffer(dest, &buf, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS)
    except (TypeError, ValueError, BufferError):
        check_receive_dest(dest).release()  # raises the twin's error for the same refusal
        raise
    try:
        wanted = <size_t>buf.len
        while True:
            with nogil:
                status = _receive(number, <unsigned char *>buf.buf, wanted, wait_ms, &got, &reg)
            if status != OMC_RECV_EINTR:
                break
            PyErr_CheckSignals()  # a handler that raises (KeyboardInterrupt) ends the receive here
    finally:
        PyBuffer_Release(&buf)
    if status == OMC_RECV_TIMEOUT:
        raise receive_timed_out(got, wanted, float(timeout_s))
    if status != OMC_RECV_DONE:
        raise receive_failed(status, got, wanted)
    return got, reg
