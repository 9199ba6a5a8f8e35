# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, autotestdict=False
"""Store one chunk into an existing data file, with the GIL released for the whole store.

Twin of :mod:`ossmodelconnector._fast._reference` (same signature, results and validation errors).

::

    store_chunk(path, data, offset, device, inode, mtime_ns) -- validate (GIL held) --> nogil:
        open(path, O_WRONLY | O_CLOEXEC | O_NOFOLLOW)      fails -> (STORE_OPEN, errno)
        fstat: (st_dev, st_ino) == (device, inode)?        fails -> (STORE_STAT, errno)
                                                           other file -> (STORE_IDENTITY, 0)
        fcntl(F_OFD_SETLKW, whole file, write)             (not where data is empty; refused: unlocked)
        pwrite until every byte is written (EINTR retried) fails -> (STORE_WRITE, errno or 0)
        futimens(mtime_ns, mtime_ns)                       refused -> (STORE_TIMES, errno): bytes stored
        close (drops the lock)                             fails -> (STORE_CLOSE, errno)
    <-- (STORE_DONE, 0), or the step that stopped it and its errno; the caller raises or warns

Each of those calls made from Python gives the GIL back and takes it again, and each re-acquisition may
wait up to the switch interval (5 ms) behind a thread that computes: six waits per chunk, against one
here. The write lock is what used to be a ``threading.Lock`` per file: writers of one tmpfs file
serialize on its inode lock anyway, and waiting for it asleep in the kernel costs less CPU than spinning
on the inode lock (2 threads writing one file: about 0.65 CPU-s per GiB locked, 1.0 unlocked); an
open-file-description lock is also taken by a store in another process that shares the segment.
"""

from cpython.buffer cimport PyBUF_C_CONTIGUOUS, PyBuffer_Release, PyObject_GetBuffer
from libc.stdint cimport int64_t, uint64_t

from ossmodelconnector._fast._reference import (
    check_length,
    check_mtime_ns,
    check_path,
    check_store_data,
    check_store_offset,
)

cdef extern from *:
    """
    #include <errno.h>
    #include <fcntl.h>
    #include <stdint.h>
    #include <string.h>
    #include <sys/stat.h>
    #include <sys/types.h>
    #include <time.h>
    #include <unistd.h>

    #define OMC_STORE_DONE 0
    #define OMC_STORE_OPEN 1
    #define OMC_STORE_STAT 2
    #define OMC_STORE_IDENTITY 3
    #define OMC_STORE_WRITE 4
    #define OMC_STORE_TIMES 5
    #define OMC_STORE_CLOSE 6

    static int omc_store_open_file(int fd, const unsigned char *p, size_t n, int64_t offset,
                                   uint64_t device, uint64_t inode, int set_times, int64_t sec,
                                   long nsec, int *number) {
        struct stat info;
        struct timespec times[2];
        size_t done = 0;
        ssize_t wrote;
        *number = 0;
        if (fstat(fd, &info) != 0) { *number = errno; return OMC_STORE_STAT; }
        if ((uint64_t)info.st_dev != device || (uint64_t)info.st_ino != inode) return OMC_STORE_IDENTITY;
    #ifdef F_OFD_SETLKW
        if (n) {
            struct flock lock;
            memset(&lock, 0, sizeof lock);
            lock.l_type = F_WRLCK;
            lock.l_whence = SEEK_SET;  /* l_start 0, l_len 0: the whole file */
            while (fcntl(fd, F_OFD_SETLKW, &lock) != 0 && errno == EINTR) {}
            /* refused (a file system without such locks): write unserialized */
        }
    #endif
        while (done < n) {
            wrote = pwrite(fd, p + done, n - done, (off_t)(offset + (int64_t)done));
            if (wrote > 0) { done += (size_t)wrote; continue; }
            if (wrote == 0) return OMC_STORE_WRITE;
            if (errno == EINTR) continue;
            *number = errno;
            return OMC_STORE_WRITE;
        }
        if (set_times) {
            times[0].tv_sec = (time_t)sec;
            times[0].tv_nsec = nsec;
            times[1] = times[0];
            if (futimens(fd, times) != 0) { *number = errno; return OMC_STORE_TIMES; }
        }
        return OMC_STORE_DONE;
    }

    static int omc_store(const char *path, const unsigned char *p, size_t n, int64_t offset,
                         uint64_t device, uint64_t inode, int set_times, int64_t sec, long nsec,
                         int *number) {
        int fd, step;
        do { fd = open(path, O_WRONLY | O_CLOEXEC | O_NOFOLLOW); } while (fd < 0 && errno == EINTR);
        if (fd < 0) { *number = errno; return OMC_STORE_OPEN; }
        step = omc_store_open_file(fd, p, n, offset, device, inode, set_times, sec, nsec, number);
        /* Linux closes the descriptor even when close says EINTR: nothing to retry or report then. */
        if (close(fd) != 0 && errno != EINTR && (step == OMC_STORE_DONE || step == OMC_STORE_TIMES)) {
            *number = errno;
            step = OMC_STORE_CLOSE;
        }
        return step;
    }
    """
    int omc_store(const char *path, const unsigned char *p, size_t n, int64_t offset, uint64_t device,
                  uint64_t inode, int set_times, int64_t sec, long nsec, int *number) noexcept nogil

cdef long _NS = 1000000000


def store_chunk(path, data, offset, device, inode, mtime_ns):
    """Store ``data`` at ``offset`` of the existing file ``path``, if it is still the file (device, inode).

    Opens the file write-only (never through a symlink), checks that it is (device, inode), takes a write
    lock on it (waited for in the kernel; a file system without such locks is written unlocked), writes
    every byte, sets both times to ``mtime_ns`` (a write moves them) and closes the file, which drops the
    lock: one GIL release for all of it. With no ``data`` it only sets the times, without the lock.

    Args:
        path: the file's encoded path (``os.fsencode``).
        data: the bytes, any C-contiguous buffer (empty: only set the times).
        offset: where they go in the file.
        device: ``st_dev`` the file must have.
        inode: ``st_ino`` the file must have.
        mtime_ns: access and modification time to set afterwards, in nanoseconds; None leaves them.

    Returns:
        ``(step, errno)``: ``(STORE_DONE, 0)`` when all went well, else the step that stopped it
        (``STORE_OPEN`` ... ``STORE_CLOSE`` in ``_reference``) and its errno; after ``STORE_TIMES`` the
        bytes are stored.

    Raises:
        TypeError, ValueError: invalid arguments (I/O errors are returned, not raised).
    """
    cdef bytes encoded = check_path(path)
    cdef uint64_t want_device = check_length("device", device)
    cdef uint64_t want_inode = check_length("inode", inode)
    times = check_mtime_ns(mtime_ns)
    cdef int set_times = times is not None
    cdef int64_t sec = 0
    cdef long nsec = 0
    if set_times:
        sec = times // _NS  # floor, as os.utime splits a negative time
        nsec = times % _NS
    cdef const char *c_path = encoded
    cdef Py_buffer buf
    cdef int64_t start
    cdef int step
    cdef int number = 0
    try:
        PyObject_GetBuffer(data, &buf, PyBUF_C_CONTIGUOUS)
    except (TypeError, ValueError, BufferError):
        check_store_data(data).release()  # raises the twin's error for the same refusal
        raise
    try:
        start = check_store_offset(offset, buf.len)
        with nogil:
            step = omc_store(
                c_path, <const unsigned char *>buf.buf, <size_t>buf.len, start, want_device, want_inode,
                set_times, sec, nsec, &number,
            )
    finally:
        PyBuffer_Release(&buf)
    return step, number
