"""Listing a prefix: page by page (:func:`list_objects`) or many requests at once (:func:`fast_list`).

A fast list splits the key space with the prefix tree, so no key-count guess is needed::

    explore(prefix)      one delimiter listing: the prefix's own objects + its sub-prefixes S0 < S1 < ...
      └─ span(S0..Sk)    up to 4 x requests groups of consecutive sub-prefixes, all at once: a group of
         one is listed by its own prefix (nothing wasted), a larger group flat from S0 up to the next
         group's first sub-prefix
           └─ a span whose page ends inside Si hands Si+1.. to a new span (another request in flight)
              and lists the rest of Si by its prefix; a subtree larger than a page is explored again

Every task runs in a thread pool with ``requests`` workers; an error in any task stops the rest and is
raised to the caller. Spans may overlap the prefix's own objects; results are merged by key, then sorted.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from ossmodelconnector.config import DEFAULT_FAST_LIST_VCPUS, DEFAULT_FAST_LIST_WORKERS
from ossmodelconnector.objects import ObjectInfo
from ossmodelconnector.oss.client import DEFAULT_LIST_MAX_KEYS

if TYPE_CHECKING:
    from ossmodelconnector.oss.client import OssClient

__all__ = ["DEFAULT_DELIMITER", "DEFAULT_FAST_LIST_REQUESTS", "fast_list", "list_objects"]

log = logging.getLogger(__name__)

DEFAULT_DELIMITER = "/"
DEFAULT_FAST_LIST_REQUESTS = DEFAULT_FAST_LIST_VCPUS * DEFAULT_FAST_LIST_WORKERS
"""Concurrent list requests of :func:`fast_list` (``fastList.vcpus`` x ``fastList.workers``)."""
_GROUPS_PER_REQUEST = 4
# How often the caller wakes to check on the workers; each request has its own timeouts.
_POLL_INTERVAL_S = 1.0


def list_objects(
    client: OssClient, bucket: str, prefix: str, *, max_keys: int = DEFAULT_LIST_MAX_KEYS
) -> list[ObjectInfo]:
    """Every object whose key starts with ``prefix``, one page after the other.

    Args:
        client: the OSS client.
        bucket: the bucket.
        prefix: the key prefix ("" for the whole bucket); ``dir/`` lists a folder recursively.
        max_keys: keys per page, 1..1000.

    Returns:
        The objects in key order; an empty list when nothing matches (the caller decides whether
        that is an error).

    Raises:
        ObjectNotFoundError: the bucket does not exist.
        RequestError: a listing request failed (see :meth:`OssClient.list_page`).
    """
    objects: list[ObjectInfo] = []
    token = ""
    while True:
        page = client.list_page(bucket, prefix, continuation_token=token, max_keys=max_keys)
        objects.extend(page.objects)
        if page.next_token is None:
            return objects
        token = page.next_token


def fast_list(
    client: OssClient,
    bucket: str,
    prefix: str,
    requests: int = DEFAULT_FAST_LIST_REQUESTS,
    *,
    max_keys: int = DEFAULT_LIST_MAX_KEYS,
) -> list[ObjectInfo]:
    """The same objects as :func:`list_objects`, listed with up to ``requests`` requests in flight.

    The key space is split along the prefix tree (``/``-separated sub-prefixes), so a folder with
    many sub-folders is listed in a few round trips. Objects directly in one very large flat folder are
    still listed page by page.

    Args:
        client: the OSS client (thread-safe; its pool should allow ``requests`` connections).
        bucket: the bucket.
        prefix: the key prefix ("" for the whole bucket).
        requests: listing requests in flight, at least 1 (``Config.fast_list_requests``).
        max_keys: keys per page, 1..1000.

    Returns:
        The objects sorted by key; an empty list when nothing matches.

    Raises:
        ValueError: ``requests`` is below 1.
        ObjectNotFoundError: the bucket does not exist.
        RequestError: a listing request failed in any worker.
    """
    if requests < 1:
        raise ValueError(f"requests={requests}: a fast list needs at least 1 request in flight")
    return _FastList(client, bucket, requests, max_keys).run(prefix)


# Keys sort by UTF-8 bytes, which is code point order; U+10FFFF is the largest code point.
_MAX_CHAR = "\U0010ffff"


def _just_below(key: str) -> str:
    """A start-after value that lets ``key`` itself through and as little before it as can be.

    ``"a/"`` gives ``"a." + U+10FFFF * 4``: only keys starting with that would slip in (and are filtered).
    """
    if not key:
        return ""
    previous = ord(key[-1]) - 1
    if previous < 0 or 0xD800 <= previous <= 0xDFFF:  # no predecessor, or not encodable as UTF-8
        return key[:-1]
    return key[:-1] + chr(previous) + _MAX_CHAR * 4


class _FastList:
    """One fast list: the task pool, the merged results and the first error."""

    def __init__(self, client: OssClient, bucket: str, requests: int, max_keys: int) -> None:
        self._client = client
        self._max_keys = max_keys
        self._bucket = bucket
        self._requests = requests
        self._pool = ThreadPoolExecutor(max_workers=requests, thread_name_prefix="oss-fast-list")
        self._cond = threading.Condition()
        self._found: dict[str, ObjectInfo] = {}
        self._pending = 0
        self._error: BaseException | None = None

    def run(self, prefix: str) -> list[ObjectInfo]:
        try:
            self._submit(self._explore, prefix, "")
            with self._cond:
                while self._pending and self._error is None:
                    self._cond.wait(_POLL_INTERVAL_S)
        except BaseException as exc:  # KeyboardInterrupt, a timeout: the workers stop too
            with self._cond:
                self._error = self._error or exc
            raise
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self._error is not None:
            raise self._error
        return [self._found[key] for key in sorted(self._found)]

    def _submit(self, task: Callable[..., None], *args: Any) -> None:
        with self._cond:
            if self._error is not None:
                return
            self._pending += 1
        try:
            self._pool.submit(self._run_task, task, args)
        except RuntimeError:  # the pool shut down after an error elsewhere
            self._task_done()

    def _run_task(self, task: Callable[..., None], args: tuple[Any, ...]) -> None:
        try:
            task(*args)
        except BaseException as exc:
            with self._cond:
                if self._error is None:
                    self._error = exc
        finally:
            self._task_done()

    def _task_done(self) -> None:
        with self._cond:
            self._pending -= 1
            self._cond.notify_all()

    def _keep(self, objects: list[ObjectInfo], lo: str = "", hi: str | None = None) -> None:
        kept = [obj for obj in objects if obj.key >= lo and (hi is None or obj.key < hi)]
        with self._cond:
            for obj in kept:
                self._found[obj.key] = obj

    def _stopped(self) -> bool:
        with self._cond:
            return self._error is not None

    def _explore(self, prefix: str, after: str) -> None:
        """List ``prefix``'s own objects; fan its sub-prefixes out to spans."""
        subs: list[str] = []
        token = ""
        while not self._stopped():
            page = self._client.list_page(
                self._bucket,
                prefix,
                delimiter=DEFAULT_DELIMITER,
                start_after="" if token else after,
                continuation_token=token,
                max_keys=self._max_keys,
            )
            self._keep(page.objects)
            subs.extend(page.common_prefixes)
            if page.next_token is None:
                break
            token = page.next_token
        if after.startswith(prefix):
            # Servers differ on whether the sub-prefix holding ``after`` is reported once start-after
            # points inside it; its rest must be listed either way.
            cut = after.find(DEFAULT_DELIMITER, len(prefix))
            holding = after[: cut + 1] if cut >= 0 else None
            if holding is not None and (not subs or subs[0] != holding):
                subs.insert(0, holding)
        if not subs:
            return
        # Listing one subtree with its own prefix wastes nothing; a group of small subtrees shares
        # requests at the cost of at most one page read past its end. Up to GROUPS_PER_REQUEST groups
        # per request in flight keeps the round trips few without that waste mattering.
        groups = min(len(subs), _GROUPS_PER_REQUEST * self._requests)
        bounds = [len(subs) * i // groups for i in range(groups + 1)]
        for i in range(groups):
            group = subs[bounds[i] : bounds[i + 1]]
            hi = subs[bounds[i + 1]] if i + 1 < groups else None
            # Only the first group can start inside the part of the tree already listed.
            self._submit(self._span, prefix, group, hi, after if i == 0 else "")

    def _subtree(self, sub: str, after: str) -> None:
        """List one subtree by its own prefix; if it outgrows a page, split it along its sub-prefixes."""
        page = self._client.list_page(self._bucket, sub, start_after=after, max_keys=self._max_keys)
        self._keep(page.objects)
        if page.next_token is not None and page.objects and not self._stopped():
            self._explore(sub, page.objects[-1].key)

    def _span(self, parent: str, subs: list[str], hi: str | None, after: str) -> None:
        """Flat-list the subtrees of ``subs`` (consecutive sub-prefixes of ``parent``), below ``hi``."""
        if len(subs) == 1:
            self._subtree(subs[0], after)
            return
        lo = subs[0]
        start_after = max(after, _just_below(lo))
        token = ""
        while not self._stopped():
            page = self._client.list_page(
                self._bucket,
                parent,
                start_after="" if token else start_after,
                continuation_token=token,
                max_keys=self._max_keys,
            )
            self._keep(page.objects, lo, hi)
            if page.next_token is None or not page.objects:
                return
            last = page.objects[-1].key
            if hi is not None and last >= hi:
                return
            token = page.next_token
            inside = bisect.bisect_right(subs, last) - 1
            if inside < 0:
                continue  # still before the first subtree (keys between start-after and ``lo``)
            if inside + 1 < len(subs):
                # More subtrees remain behind the one this page ended in: another worker takes them.
                self._submit(self._span, parent, subs[inside + 1 :], hi, "")
                hi = subs[inside + 1]
                subs = subs[: inside + 1]
            current = subs[inside]
            if last.startswith(current):
                # The rest of the subtree this page ended in, by its own prefix.
                self._subtree(current, last)
                return
