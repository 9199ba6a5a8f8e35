"""The folder behind ``localoss``: buckets are directories, objects are files, metadata lives aside.

::

    ROOT/<bucket>/<key segments...>        object bytes, exactly; a bucket is a directory
    ROOT/.localoss/meta.sqlite3            ETag, CRC-64, content type, user metadata, directory markers
    ROOT/.localoss/tmp/                    PUT bodies land here first, then are renamed into place

Files may also be dropped straight into ``ROOT/<bucket>/`` by tests. Metadata is therefore keyed by the
file's (size, mtime_ns, inode): when those change, the ETag and CRC are computed again, once, on the next
access. Timestamps are coarse (a kernel tick), so metadata computed within :data:`RACY_NS` of the file's
mtime is not trusted and is recomputed on a later access, as git does for "racily clean" entries.

Listings come from the sorted key index of ``keyindex.py``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import sqlite3
import stat
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ossmodelconnector._fast import crc64
from ossmodelconnector.localoss.keyindex import RACY_NS, KeyIndex, ListPage, paginate
from ossmodelconnector.localoss.xmlbody import ListedBucket, ListedObject, ServiceError

__all__ = [
    "DEFAULT_CONTENT_TYPE",
    "META_DIR",
    "ObjectMeta",
    "OpenedObject",
    "Store",
    "validate_bucket",
    "validate_key",
]

log = logging.getLogger(__name__)

META_DIR = ".localoss"
DEFAULT_CONTENT_TYPE = "application/octet-stream"
DEFAULT_HASH_BLOCK = 4 << 20
DEFAULT_WRITE_BATCH = 1000
DEFAULT_MAX_KEY_BYTES = 1023
_NAME_MAX = 255
_HASH_LOCKS = 64
_EMPTY_MD5 = hashlib.md5(b"").hexdigest().upper()
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}\Z")

ReadInto = Callable[[memoryview], int]


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    """What the server knows about one object besides its bytes.

    ``verified_ns`` is the wall-clock time at which the bytes behind ``etag``/``crc64`` were read; see
    :data:`RACY_NS`. ``marker`` is true for a zero-byte key ending in ``/`` (a folder marker).
    """

    size: int
    mtime_ns: int
    inode: int
    etag: str
    crc64: int
    content_type: str = DEFAULT_CONTENT_TYPE
    user_meta: tuple[tuple[str, str], ...] = ()
    verified_ns: int = 0
    marker: bool = False

    def matches(self, st: os.stat_result) -> bool:
        """Whether this metadata still describes the file whose ``stat`` is ``st``."""
        return (
            self.size == st.st_size
            and self.mtime_ns == st.st_mtime_ns
            and self.inode == st.st_ino
            and self.verified_ns - self.mtime_ns >= RACY_NS
        )


@dataclass(frozen=True, slots=True)
class OpenedObject:
    """An object opened for reading: ``fd`` is None for a folder marker (no bytes). The caller closes fd."""

    fd: int | None
    meta: ObjectMeta


def _invalid_key(key: str, why: str) -> ServiceError:
    return ServiceError(
        400,
        "InvalidObjectName",
        f"object key {key!r} {why}; choose a key made of non-empty segments separated by '/'",
        extra=[("Key", key)],
    )


@functools.lru_cache(maxsize=256)
def validate_bucket(bucket: str) -> None:
    """Refuse a bucket name that is not a plain directory name.

    Raises:
        ServiceError: 400 ``InvalidBucketName``.
    """
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise ServiceError(
            400,
            "InvalidBucketName",
            f"bucket name {bucket!r} is not valid; use 1-63 lower-case letters, digits, '-', '_' or '.', "
            "starting with a letter or digit",
            extra=[("BucketName", bucket)],
        )


@functools.lru_cache(maxsize=4096)  # ranged GETs repeat the same key thousands of times
def validate_key(key: str) -> tuple[str, ...]:
    """Split an object key into path segments, refusing any key that could escape or not fit the folder.

    A key ending in ``/`` (a folder marker) yields its segments without the trailing empty one.

    Raises:
        ServiceError: 400 ``InvalidObjectName`` for ``..``/``.`` segments (also between backslashes), an
            absolute key, empty segments, NUL, a segment over 255 bytes or a key over 1023 bytes.
    """
    if not key:
        raise _invalid_key(key, "is empty")
    if "\x00" in key:
        raise _invalid_key(key, "contains a NUL character")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise _invalid_key(key, "is not valid UTF-8") from exc
    if size > DEFAULT_MAX_KEY_BYTES:
        raise _invalid_key(key, f"is {size} bytes long, over the OSS limit of {DEFAULT_MAX_KEY_BYTES}")
    segments = key.split("/")
    if key.endswith("/"):
        segments.pop()
    for segment in segments:
        if not segment:
            raise _invalid_key(key, "has an empty segment (leading '/' or '//'), which a folder cannot hold")
        if any(part in (".", "..") for part in segment.split("\\")):
            raise _invalid_key(key, "has a '.' or '..' segment, which would leave its folder")
        if len(segment.encode("utf-8")) > _NAME_MAX:
            raise _invalid_key(
                key, f"has a segment longer than {_NAME_MAX} bytes, which a folder cannot hold"
            )
    return tuple(segments)


def _no_such_key(bucket: str, key: str) -> ServiceError:
    return ServiceError(
        404,
        "NoSuchKey",
        f"object {key!r} does not exist in bucket {bucket!r}; check the key (keys are case-sensitive)",
        extra=[("Key", key), ("BucketName", bucket)],
    )


def _conflict(key: str, why: str) -> ServiceError:
    return ServiceError(
        409,
        "ObjectNameConflict",
        f"object key {key!r} cannot be stored: {why} (localoss keeps objects as files, so a key cannot "
        "be both an object and a folder of other objects); delete the other object or choose another key",
        extra=[("Key", key)],
    )


def _hash_fd(fd: int, size: int) -> tuple[str, int]:
    buf = memoryview(bytearray(min(DEFAULT_HASH_BLOCK, max(size, 1))))
    md5 = hashlib.md5()
    crc = 0
    offset = 0
    while offset < size:
        n = os.preadv(fd, [buf[: size - offset]], offset)
        if n == 0:
            break
        md5.update(buf[:n])
        crc = crc64(buf[:n], crc)
        offset += n
    return md5.hexdigest().upper(), crc


class Store:
    """Objects, metadata and listings of one ``--root`` folder; safe to call from many threads.

    Args:
        root: the served folder; created if missing.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self._root = str(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._tmp = self.root / META_DIR / "tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)
        for leftover in self._tmp.iterdir():  # PUT bodies of a previous run that died mid-upload
            with contextlib.suppress(OSError):
                leftover.unlink()
        self._db_lock = threading.Lock()
        self._db = sqlite3.connect(
            str(self.root / META_DIR / "meta.sqlite3"), check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS objects (bucket TEXT, key TEXT, size INTEGER, mtime_ns INTEGER, "
            "inode INTEGER, etag TEXT, crc64 TEXT, content_type TEXT, user_meta TEXT, verified_ns INTEGER, "
            "marker INTEGER, PRIMARY KEY (bucket, key))"
        )
        self._pending: list[tuple[object, ...]] = []
        self._closed = False
        self._meta: dict[tuple[str, str], ObjectMeta] = {}
        self._markers: dict[str, set[str]] = {}
        for row in self._db.execute("SELECT * FROM objects"):
            meta = ObjectMeta(
                size=row[2],
                mtime_ns=row[3],
                inode=row[4],
                etag=row[5],
                crc64=int(row[6]),
                content_type=row[7],
                user_meta=tuple((str(n), str(v)) for n, v in json.loads(row[8])),
                verified_ns=row[9],
                marker=bool(row[10]),
            )
            self._meta[(row[0], row[1])] = meta
            if meta.marker:
                self._markers.setdefault(row[0], set()).add(row[1])
        self._hash_locks = [threading.Lock() for _ in range(_HASH_LOCKS)]
        self._index = KeyIndex(self.root)

    def close(self) -> None:
        """Write pending metadata and close the database."""
        self._flush()
        with self._db_lock:
            self._closed = True
            self._db.close()

    # -- metadata records -------------------------------------------------------------------------------

    def _remember(self, bucket: str, key: str, meta: ObjectMeta, *, durable: bool = True) -> None:
        """Record ``meta``; ``durable=False`` batches the database write (for recomputable metadata)."""
        self._meta[(bucket, key)] = meta
        if meta.marker:
            self._markers.setdefault(bucket, set()).add(key)
        row = (
            bucket,
            key,
            meta.size,
            meta.mtime_ns,
            meta.inode,
            meta.etag,
            str(meta.crc64),
            meta.content_type,
            json.dumps(meta.user_meta),
            meta.verified_ns,
            int(meta.marker),
        )
        with self._db_lock:
            self._pending.append(row)
            if durable or len(self._pending) >= DEFAULT_WRITE_BATCH:
                self._write_pending()

    def _write_pending(self) -> None:
        # One transaction per batch: hashing 20,000 dropped files must not cost 20,000 commits.
        if self._closed:  # a connection thread outlived shutdown: its metadata is recomputable anyway
            self._pending.clear()
        if self._pending:
            with self._db:
                self._db.executemany(
                    "INSERT OR REPLACE INTO objects VALUES (?,?,?,?,?,?,?,?,?,?,?)", self._pending
                )
            self._pending.clear()

    def _flush(self) -> None:
        with self._db_lock:
            self._write_pending()

    def _forget(self, bucket: str, key: str) -> None:
        self._meta.pop((bucket, key), None)
        self._markers.get(bucket, set()).discard(key)
        with self._db_lock:
            self._write_pending()  # a pending row for this key must not resurrect it later
            if not self._closed:
                self._db.execute("DELETE FROM objects WHERE bucket=? AND key=?", (bucket, key))

    def _current_meta(
        self, bucket: str, key: str, fd: int, st: os.stat_result, *, durable: bool = True
    ) -> ObjectMeta:
        known = self._meta.get((bucket, key))
        if known is not None and known.matches(st):
            return known
        # One thread hashes a given object; the others wait and reuse its result.
        with self._hash_locks[hash((bucket, key)) % _HASH_LOCKS]:
            known = self._meta.get((bucket, key))
            if known is not None and known.matches(st):
                return known
            started_ns = time.time_ns()
            etag, crc = _hash_fd(fd, st.st_size)
            after = os.fstat(fd)
            unchanged = (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns)
            meta = ObjectMeta(
                size=st.st_size,
                mtime_ns=st.st_mtime_ns,
                inode=st.st_ino,
                etag=etag,
                crc64=crc,
                content_type=known.content_type if known else DEFAULT_CONTENT_TYPE,
                user_meta=known.user_meta if known else (),
                verified_ns=started_ns if unchanged else 0,
            )
            log.debug("computed metadata of %s/%s: size %d etag %s", bucket, key, st.st_size, etag)
            self._remember(bucket, key, meta, durable=durable)
            return meta

    # -- buckets ----------------------------------------------------------------------------------------

    def bucket_dir(self, bucket: str) -> Path:
        """The directory of ``bucket`` (validated name; it may not exist)."""
        validate_bucket(bucket)
        return self.root / bucket

    def require_bucket(self, bucket: str) -> Path:
        """The directory of an existing bucket.

        Raises:
            ServiceError: 400 ``InvalidBucketName`` or 404 ``NoSuchBucket``.
        """
        path = self.bucket_dir(bucket)
        if not path.is_dir():
            raise ServiceError(
                404,
                "NoSuchBucket",
                f"bucket {bucket!r} does not exist; create it (PutBucket) or check the name",
                extra=[("BucketName", bucket)],
            )
        return path

    def create_bucket(self, bucket: str) -> None:
        """Create ``bucket``; creating an existing bucket succeeds, as it does on OSS for its owner."""
        self.bucket_dir(bucket).mkdir(exist_ok=True)

    def delete_bucket(self, bucket: str) -> None:
        """Delete an empty bucket.

        Raises:
            ServiceError: 404 ``NoSuchBucket``, 409 ``BucketNotEmpty``.
        """
        path = self.require_bucket(bucket)
        try:
            path.rmdir()
        except OSError as exc:
            raise ServiceError(
                409,
                "BucketNotEmpty",
                f"bucket {bucket!r} still holds objects; delete them first",
                extra=[("BucketName", bucket)],
            ) from exc
        self._index.drop(bucket)
        for b, k in [item for item in list(self._meta) if item[0] == bucket]:
            self._forget(b, k)

    def list_buckets(self) -> list[ListedBucket]:
        """Every bucket directory under the root, sorted by name."""
        found = []
        with os.scandir(self.root) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False) and _BUCKET_RE.match(entry.name):
                    found.append(ListedBucket(entry.name, entry.stat().st_mtime_ns))
        return sorted(found, key=lambda b: b.name)

    # -- objects ----------------------------------------------------------------------------------------

    def open_object(self, bucket: str, key: str, *, durable: bool = True) -> OpenedObject:
        """Open an object for reading and return it with its (possibly just computed) metadata.

        ``durable=False`` lets newly computed metadata wait for a batched database write (listings).

        Raises:
            ServiceError: 400 for a bad name, 404 ``NoSuchBucket``/``NoSuchKey``.
        """
        # The hot path of every GET: plain strings, and the bucket is only checked when the open fails.
        validate_key(key)
        validate_bucket(bucket)
        path = f"{self._root}/{bucket}/{key}"
        if key.endswith("/"):
            meta = self._meta.get((bucket, key))
            if meta is not None and meta.marker and os.path.isdir(path):
                return OpenedObject(None, meta)
            self.require_bucket(bucket)
            raise _no_such_key(bucket, key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            self.require_bucket(bucket)
            raise _no_such_key(bucket, key) from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):  # a folder of other objects, not an object
                raise _no_such_key(bucket, key)
            return OpenedObject(fd, self._current_meta(bucket, key, fd, st, durable=durable))
        except BaseException:
            os.close(fd)
            raise

    def check_writable(self, bucket: str, key: str) -> None:
        """Refuse, before any body is read, a PUT whose key cannot be stored beside the existing ones.

        Raises:
            ServiceError: 400 ``InvalidObjectName``, 404 ``NoSuchBucket``, 409 ``ObjectNameConflict``.
        """
        segments = validate_key(key)
        path = self.require_bucket(bucket)
        for depth, segment in enumerate(segments):
            path = path / segment
            last = depth == len(segments) - 1
            if not last and path.exists() and not path.is_dir():
                raise _conflict(key, f"object {'/'.join(segments[: depth + 1])!r} exists")
            if last and key.endswith("/") and path.exists() and not path.is_dir():
                raise _conflict(key, f"object {key[:-1]!r} exists")
            if last and not key.endswith("/") and path.is_dir():
                raise _conflict(key, f"other objects are stored under {key + '/'!r}")

    def put_object(
        self,
        bucket: str,
        key: str,
        read_into: ReadInto,
        *,
        expected_md5: bytes | None,
        digest_mismatch_code: str,
        content_type: str,
        user_meta: tuple[tuple[str, str], ...],
    ) -> ObjectMeta:
        """Store a body read with ``read_into`` (returns 0 at its end) as ``bucket/key``, atomically.

        The MD5 and CRC-64 are computed as the bytes arrive; the object appears only once complete.

        Raises:
            ServiceError: as :meth:`check_writable`; 400 ``digest_mismatch_code`` when ``expected_md5``
                differs; 400 ``InvalidObjectName`` for a folder marker (key ending in ``/``) with content.
        """
        self.check_writable(bucket, key)
        segments = validate_key(key)
        path = self.root.joinpath(bucket, *segments)
        tmp = self._tmp / f"{uuid.uuid4().hex}.part"
        md5 = hashlib.md5()
        crc = 0
        size = 0
        buf = memoryview(bytearray(1 << 20))
        try:
            with open(tmp, "xb", buffering=0) as out:
                while n := read_into(buf):
                    chunk = buf[:n]
                    md5.update(chunk)
                    crc = crc64(chunk, crc)
                    size += n
                    written = 0
                    while written < n:
                        written += out.write(chunk[written:]) or 0
            if expected_md5 is not None and md5.digest() != expected_md5:
                raise ServiceError(
                    400,
                    digest_mismatch_code,
                    f"the Content-MD5 sent for object {key!r} does not match the {size} bytes received; "
                    "resend the object, computing Content-MD5 over exactly its bytes",
                    extra=[("Key", key)],
                )
            if key.endswith("/"):
                if size:
                    raise _invalid_key(key, f"ends in '/' (a folder marker) but has {size} bytes of content")
                return self._put_marker(bucket, key, path, content_type, user_meta)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, path)
            except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
                raise _conflict(key, "a concurrent PUT stored an object or folder in its way") from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        st = os.stat(path)
        meta = ObjectMeta(
            size=st.st_size,
            mtime_ns=st.st_mtime_ns,
            inode=st.st_ino,
            etag=md5.hexdigest().upper(),
            crc64=crc,
            content_type=content_type,
            user_meta=user_meta,
            # These bytes were written by us and hashed on the way: trusted, not racy.
            verified_ns=st.st_mtime_ns + RACY_NS,
        )
        self._remember(bucket, key, meta)
        self._index.update(bucket, key, add=True)
        return meta

    def _put_marker(
        self, bucket: str, key: str, path: Path, content_type: str, user_meta: tuple[tuple[str, str], ...]
    ) -> ObjectMeta:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise _conflict(key, "an object is stored in its way") from exc
        now = time.time_ns()
        meta = ObjectMeta(0, now, 0, _EMPTY_MD5, 0, content_type, user_meta, now + RACY_NS, marker=True)
        self._remember(bucket, key, meta)
        self._index.update(bucket, key, add=True)
        return meta

    def delete_object(self, bucket: str, key: str) -> None:
        """Delete ``bucket/key``; deleting a missing key succeeds, as on OSS.

        Raises:
            ServiceError: 400 for a bad name, 404 ``NoSuchBucket``.
        """
        segments = validate_key(key)
        bucket_path = self.require_bucket(bucket)
        path = bucket_path.joinpath(*segments)
        if key.endswith("/"):
            if (bucket, key) not in self._meta:
                return
            self._forget(bucket, key)
            with contextlib.suppress(OSError):  # a folder still holding objects stays
                path.rmdir()
        else:
            try:
                path.unlink()
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                return  # not an object (absent, or a folder of other objects): nothing to delete
            self._forget(bucket, key)
        # Empty folders left behind would block a later PUT of a key equal to their name.
        markers = self._markers.get(bucket, set())
        for depth in range(len(segments) - 1, 0, -1):
            if "/".join(segments[:depth]) + "/" in markers:
                break
            try:
                bucket_path.joinpath(*segments[:depth]).rmdir()
            except OSError:
                break
        self._index.update(bucket, key, add=False)

    # -- listing ----------------------------------------------------------------------------------------

    def _listed(self, bucket: str, key: str) -> ListedObject | None:
        if key.endswith("/"):
            meta = self._meta.get((bucket, key))
            return ListedObject(key, 0, meta.etag, meta.mtime_ns) if meta else None
        path = f"{self.root}/{bucket}/{key}"
        known = self._meta.get((bucket, key))
        try:
            if known is not None and known.matches(os.stat(path)):
                return ListedObject(key, known.size, known.etag, known.mtime_ns)
            opened = self.open_object(bucket, key, durable=False)
        except (OSError, ServiceError):
            return None  # vanished since the index was read
        if opened.fd is not None:
            os.close(opened.fd)
        meta = opened.meta
        return ListedObject(key, meta.size, meta.etag, meta.mtime_ns)

    def list_objects(
        self, bucket: str, *, prefix: str, delimiter: str, after: str, max_keys: int
    ) -> ListPage:
        """One page of keys after ``after`` that start with ``prefix``, rolled up at ``delimiter``.

        Keys and common prefixes both count towards ``max_keys``; a common prefix not greater than
        ``after`` was already returned on an earlier page and is skipped.

        Raises:
            ServiceError: 404 ``NoSuchBucket``.
        """
        self.require_bucket(bucket)
        keys = self._index.keys(bucket, set(self._markers.get(bucket, ())))  # a copy: PUTs may add
        page = paginate(
            keys,
            lambda key: self._listed(bucket, key),
            prefix=prefix,
            delimiter=delimiter,
            after=after,
            max_keys=max_keys,
        )
        self._flush()
        return page
