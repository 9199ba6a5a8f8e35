"""Sorted key index of each bucket folder, and listing pages cut from it.

A listing of 20,000 keys in pages of 1000 must not walk the folder for every page. So each bucket keeps
its keys sorted (code-point order of ``str``, which is UTF-8 byte order, as OSS lists) together with
the mtime of every directory they were read from. A page only ``stat``\\ s those directories: an mtime
that moved means files were added or removed underneath (a test's ``put_file``), and the bucket is walked
again. This server's own PUT and DELETE update the keys in place and record the mtimes they caused.
A directory modified within :data:`RACY_NS` of the walk may change again within the same clock tick
without its mtime moving, so such an index is walked again on its next use.
"""

from __future__ import annotations

import bisect
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ossmodelconnector.localoss.xmlbody import ListedObject

__all__ = ["RACY_NS", "KeyIndex", "ListPage", "paginate", "segment_ok"]

log = logging.getLogger(__name__)

# File timestamps advance in kernel ticks (a few ms): anything this close to "now" may change unseen.
RACY_NS = 50_000_000


@dataclass(frozen=True, slots=True)
class ListPage:
    """One page of a listing; ``next_after`` is the last key or common prefix returned."""

    objects: tuple[ListedObject, ...]
    prefixes: tuple[str, ...]
    truncated: bool
    next_after: str


class _BucketKeys:
    __slots__ = ("dirs", "keys", "lock", "racy")

    def __init__(self) -> None:
        self.keys: list[str] = []  # replaced, never mutated: readers iterate without the lock
        self.dirs: dict[str, int] = {}
        self.racy = True
        self.lock = threading.Lock()


def segment_ok(name: str) -> bool:
    """Whether a file name found in a bucket folder can be (part of) a key."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes in a file name: not a key anyone can ask for
        return False
    return not any(part in (".", "..") for part in name.split("\\"))


class KeyIndex:
    """The sorted keys of every bucket under ``root``; safe to use from many threads.

    Args:
        root: the served folder (a bucket is ``root/<bucket>``).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._buckets: dict[str, _BucketKeys] = {}
        self._lock = threading.Lock()

    def keys(self, bucket: str, markers: Iterable[str]) -> list[str]:
        """The sorted keys of ``bucket``, walking its folder again only if it changed underneath.

        Args:
            bucket: an existing bucket.
            markers: the folder-marker keys (ending in ``/``) known for this bucket; those whose folder
                exists are listed.
        """
        with self._lock:
            entry = self._buckets.setdefault(bucket, _BucketKeys())
        with entry.lock:
            if self._stale(entry):
                self._walk(bucket, entry, markers)
            return entry.keys

    def drop(self, bucket: str) -> None:
        """Forget ``bucket`` (deleted)."""
        with self._lock:
            self._buckets.pop(bucket, None)

    def update(self, bucket: str, key: str, *, add: bool) -> None:
        """Record that this server stored (``add``) or deleted ``key``."""
        entry = self._buckets.get(bucket)
        if entry is None:
            return
        top = str(self.root / bucket)
        parts = key.rstrip("/").split("/")
        chain = [top] + [f"{top}/{'/'.join(parts[:depth])}" for depth in range(1, len(parts))]
        if key.endswith("/"):
            chain.append(f"{top}/{key[:-1]}")
        with entry.lock:
            keys = list(entry.keys)
            at = bisect.bisect_left(keys, key)
            present = at < len(keys) and keys[at] == key
            if add and not present:
                keys.insert(at, key)
            elif not add and present:
                del keys[at]
            entry.keys = keys
            # Our own change moved these folders' mtimes: record them so that it does not look external.
            for path in chain:
                try:
                    entry.dirs[path] = os.stat(path).st_mtime_ns
                except OSError:
                    entry.dirs.pop(path, None)

    @staticmethod
    def _stale(entry: _BucketKeys) -> bool:
        if entry.racy:
            return True
        for path, mtime_ns in entry.dirs.items():
            try:
                if os.stat(path).st_mtime_ns != mtime_ns:
                    return True
            except OSError:
                return True
        return False

    def _walk(self, bucket: str, entry: _BucketKeys, markers: Iterable[str]) -> None:
        started_ns = time.time_ns()
        top = str(self.root / bucket)
        keys: list[str] = []
        dirs: dict[str, int] = {}
        rel_dirs: set[str] = set()
        stack = [""]
        while stack:
            rel = stack.pop()
            full = f"{top}/{rel}" if rel else top
            try:
                mtime_ns = os.stat(full).st_mtime_ns  # before reading: a change during the scan shows later
                with os.scandir(full) as it:
                    entries = list(it)
            except OSError:
                continue
            dirs[full] = mtime_ns
            rel_dirs.add(rel)
            for item in entries:
                if not segment_ok(item.name):
                    continue
                name = f"{rel}/{item.name}" if rel else item.name
                if item.is_dir(follow_symlinks=False):
                    stack.append(name)
                elif item.is_file():
                    keys.append(name)
        keys += [m for m in markers if m[:-1] in rel_dirs]
        keys.sort()
        entry.keys = keys
        entry.dirs = dirs
        entry.racy = any(started_ns - m < RACY_NS for m in dirs.values())
        log.debug("indexed bucket %s: %d keys in %d folders", bucket, len(keys), len(dirs))


def paginate(
    keys: list[str],
    describe: Callable[[str], ListedObject | None],
    *,
    prefix: str,
    delimiter: str,
    after: str,
    max_keys: int,
) -> ListPage:
    """One page of ``keys`` after ``after`` that start with ``prefix``, rolled up at ``delimiter``.

    Keys and common prefixes both count towards ``max_keys``; a common prefix not greater than ``after``
    was returned on an earlier page and is skipped.

    Args:
        keys: sorted keys of the bucket.
        describe: the listing entry of a key, or None if it vanished meanwhile (it is then skipped).
        prefix: only keys starting with this.
        delimiter: roll keys up to their first ``delimiter`` after ``prefix`` ("" for none).
        after: start strictly after this key (V1 marker, V2 start-after or continuation token).
        max_keys: the page size.
    """
    i = bisect.bisect_left(keys, prefix)
    if after:
        i = max(i, bisect.bisect_right(keys, after))
    objects: list[ListedObject] = []
    prefixes: list[str] = []
    last = ""
    truncated = False
    while i < len(keys):
        key = keys[i]
        if not key.startswith(prefix):
            break
        cut = key.find(delimiter, len(prefix)) if delimiter else -1
        if cut >= 0:
            common = key[: cut + len(delimiter)]
            # Every key under `common` sorts before this bound: jump over all of them in one step.
            i = bisect.bisect_left(keys, common[:-1] + chr(ord(common[-1]) + 1), i)
            if after and common <= after:
                continue
            if len(objects) + len(prefixes) == max_keys:
                truncated = True
                break
            prefixes.append(common)
            last = common
            continue
        i += 1
        listed = describe(key)
        if listed is None:
            continue
        if len(objects) + len(prefixes) == max_keys:
            truncated = True
            break
        objects.append(listed)
        last = key
    return ListPage(tuple(objects), tuple(prefixes), truncated, last)
