"""Progress of one prepared directory: per-file states and times, the tqdm bar, the summary log line.

::

    small file:  small_started -> small_done | small_failed                  (download threads)
    large file:  track(fetch_into) wraps every chunk fetch -> chunk_started, chunk_done | chunk_failed
                                                              (prefetch workers)
    all large chunks fetched (or one failed) -> finished: bar closed, one INFO summary line, waiters woken

Times are ``time.time()`` (comparable across processes and with a reader's own clock: "the first tensor
was read before the last shard arrived"); durations are measured on the monotonic clock. Whether a
fetched file also passed its CRC-64 check is asked of the cache through a callable at snapshot time.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ossmodelconnector.errors import ClosedError, RequestTimeoutError
from ossmodelconnector.objects import FetchInto
from ossmodelconnector.ranges import DEFAULT_CHUNK_SIZE

__all__ = [
    "FILE_STATES",
    "STATE_CACHED",
    "STATE_EVICTED",
    "STATE_FAILED",
    "STATE_FETCHING",
    "STATE_NOT_FETCHED",
    "DirectoryProgress",
    "FileProgress",
    "Verdict",
]

log = logging.getLogger(__name__)

STATE_NOT_FETCHED = "not fetched"
STATE_FETCHING = "fetching"
STATE_CACHED = "cached"
STATE_FAILED = "failed"
STATE_EVICTED = "evicted"
"""Lazy directories only: the file was released (``directory/lazy/residency.py``); it is fetched again when
opened."""
FILE_STATES = (STATE_NOT_FETCHED, STATE_FETCHING, STATE_CACHED, STATE_EVICTED, STATE_FAILED)
"""What ``file_states()`` and ``stats()`` report for a file."""

Verdict = Callable[[], "str | None"]
"""Asked once every chunk of a large file was fetched: ``"cached"`` (verified), ``"failed"`` (the CRC-64
of the object did not match), or None (not decided yet)."""

_GB = 1e9


@dataclass
class FileProgress:
    """The progress of one file of a prepared directory (guarded by its directory's lock).

    Args:
        name: the relative name in the model directory.
        path: the absolute path of the entry.
        size: bytes.
        large: streamed into the cache (True) or downloaded to disk (False).
        chunk_size: bytes per chunk of a large file.
    """

    name: str
    path: str
    size: int
    large: bool
    chunk_size: int = DEFAULT_CHUNK_SIZE
    state: str = STATE_NOT_FETCHED
    bytes_done: int = 0
    first_byte_at: float | None = None
    done_at: float | None = None
    error: BaseException | None = None
    verdict: Verdict | None = None

    def __post_init__(self) -> None:
        count = -(-self.size // self.chunk_size) if self.large else 0
        self._chunks_done = bytearray(count)
        self._chunks_failed: set[int] = set()

    @property
    def fetched(self) -> bool:
        """Every byte is local (a large file: every chunk fetched at least once)."""
        return self.bytes_done >= self.size and self.done_at is not None

    def snapshot(self) -> dict[str, Any]:
        """``{"size", "state", "percent", "first_byte_at", "done_at"}`` for ``stats()``."""
        state = self.state
        if state == STATE_FETCHING and self.large and self.fetched and not self._chunks_failed:
            verdict = self.verdict() if self.verdict is not None else STATE_CACHED
            if verdict is not None:
                state = self.state = verdict
        percent = 100.0 if self.size == 0 and self.done_at is not None else 0.0
        if self.size:
            percent = 100.0 * self.bytes_done / self.size
        return {
            "size": self.size,
            "state": state,
            "percent": round(percent, 2),
            "first_byte_at": self.first_byte_at,
            "done_at": self.done_at,
        }


class DirectoryProgress:
    """Per-file states of one prepared directory, its progress bar and its completion.

    Args:
        model_dir: the directory, for messages.
        uri: the ``oss://bucket/prefix/`` it mirrors.
        files: every file, small and large.
        show_bar: draw a tqdm bar (bytes of the large files) on stderr until they are fetched.
        placement: where the large files live (``"shm"``, ``"disk"`` or ``""``), for the summary.
        started: ``(time.time(), time.monotonic())`` when the prepare began; now by default.
    """

    def __init__(
        self,
        model_dir: str,
        uri: str,
        files: list[FileProgress],
        *,
        show_bar: bool,
        placement: str = "",
        started: tuple[float, float] | None = None,
    ) -> None:
        self.model_dir = model_dir
        self.uri = uri
        self.files = {file.name: file for file in files}
        self.placement = placement
        self.started_at, self._started = started or (time.time(), time.monotonic())
        self.ready_at: float | None = None
        self.finished_at: float | None = None
        self._first_byte: float | None = None
        self._last_progress = self._started
        self._lock = threading.Lock()
        self._finished = threading.Event()
        self._closed = False
        self._large_left = sum(1 for file in files if file.large and file.size)
        self._large_bytes = sum(file.size for file in files if file.large)
        self._bar: Any = None
        self.sources: Callable[[], tuple[int, int]] | None = None
        """Bytes from OSS and from the fleet's other nodes so far (fleet mode), shown beside the bar."""
        if show_bar and self._large_bytes:
            self._bar = _make_bar(model_dir, self._large_bytes)

    # --- events -------------------------------------------------------------------------------------

    def track(self, name: str, fetch_into: FetchInto) -> FetchInto:
        """Wrap a large file's ``fetch_into`` so that every chunk fetch updates the file's progress.

        Args:
            name: the file's relative name.
            fetch_into: the real fetch.

        Returns:
            A ``fetch_into`` with the same contract.
        """
        file = self.files[name]

        def tracked(start: int, end: int, dest: memoryview) -> int:
            self._chunk_started(file)
            try:
                crc = fetch_into(start, end, dest)
            except BaseException as exc:
                self._chunk_failed(file, start, exc)
                raise
            self._chunk_done(file, start, end)
            return crc

        return tracked

    def small_started(self, name: str) -> None:
        """A small file's download began."""
        with self._lock:
            self.files[name].state = STATE_FETCHING

    def small_done(self, name: str) -> None:
        """A small file is complete under its final name."""
        now = time.time()
        with self._lock:
            file = self.files[name]
            file.state = STATE_CACHED
            file.bytes_done = file.size
            file.first_byte_at = file.done_at = now
            self._first_byte = self._first_byte or time.monotonic()

    def small_failed(self, name: str, error: BaseException) -> None:
        """A small file's download failed."""
        with self._lock:
            file = self.files[name]
            file.state = STATE_FAILED
            file.error = error

    def set_verdict(self, name: str, verdict: Verdict) -> None:
        """Tell how to learn whether a large file, once fetched, passed its CRC-64 check."""
        with self._lock:
            self.files[name].verdict = verdict

    def mark_ready(self) -> None:
        """The small files are on disk and every large entry exists: ``prepare_directory`` returns."""
        with self._lock:
            self.ready_at = time.time()
            if self._large_left == 0 and not self._finished.is_set():
                self._finish_locked()

    def freeze(self) -> None:
        """Settle every state while the cache can still tell, then forget how to ask (it is closing)."""
        with self._lock:
            for file in self.files.values():
                file.snapshot()
                file.verdict = None

    def close(self) -> None:
        """Stop tracking (the directory was closed): the bar goes, waiters wake up. Idempotent."""
        with self._lock:
            self._closed = True
            self._finished.set()
            self._close_bar()

    # --- queries ------------------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """Every large file fetched, or one failed, or the directory closed."""
        return self._finished.is_set()

    @property
    def time_to_first_byte_s(self) -> float | None:
        """Seconds from the start to the first byte on local storage (a small file or a first chunk)."""
        first = self._first_byte
        return None if first is None else first - self._started

    def failures(self) -> list[FileProgress]:
        """The files whose fetch failed."""
        with self._lock:
            return [file for file in self.files.values() if file.error is not None]

    def wait(self, stall_timeout_s: float) -> None:
        """Block until every large file is fetched or one fails; give up only when nothing moves.

        Args:
            stall_timeout_s: seconds without any chunk completing before giving up.

        Raises:
            RequestTimeoutError: no chunk completed for ``stall_timeout_s`` seconds.
            ClosedError: the directory was closed while waiting.
        """
        while not self._finished.wait(min(1.0, stall_timeout_s)):
            with self._lock:
                idle = time.monotonic() - self._last_progress
                pending = [file.name for file in self.files.values() if file.large and not file.fetched]
            if idle > stall_timeout_s:
                raise RequestTimeoutError(
                    f"{self.uri} -> {self.model_dir}: no data arrived for {idle:.0f} s while waiting for "
                    f"{len(pending)} file(s) ({', '.join(pending[:3])}...): the download is stalled; check "
                    "the network and the server, or raise waitTimeoutSeconds"
                )
        if self._closed:
            raise ClosedError(f"{self.model_dir}: the prepared directory was closed while waiting for it")

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Per file path: ``{"size", "state", "percent", "first_byte_at", "done_at"}``."""
        with self._lock:
            return {file.path: file.snapshot() for file in self.files.values()}

    def summary(self) -> dict[str, Any]:
        """The directory's figures for ``stats()["directories"]``."""
        with self._lock:
            files = list(self.files.values())
            large = [file for file in files if file.large]
            states = [file.snapshot()["state"] for file in files]
            elapsed = self._elapsed_locked()
            done_bytes = sum(file.bytes_done for file in files)
            return {
                "uri": self.uri,
                "placement": self.placement,
                "files": len(files),
                "large_files": len(large),
                "bytes": sum(file.size for file in files),
                "bytes_done": done_bytes,
                "started_at": self.started_at,
                "ready_at": self.ready_at,
                "finished_at": self.finished_at,
                "seconds": elapsed,
                "throughput_gbps": done_bytes / elapsed / _GB if elapsed > 0 else 0.0,
                "time_to_first_byte_s": self.time_to_first_byte_s,
                "failed": sum(1 for state in states if state == STATE_FAILED),
                "closed": self._closed,
            }

    # --- internals (workers) ------------------------------------------------------------------------

    def _chunk_started(self, file: FileProgress) -> None:
        with self._lock:
            if file.state == STATE_NOT_FETCHED:
                file.state = STATE_FETCHING

    def _chunk_done(self, file: FileProgress, start: int, end: int) -> None:
        now = time.time()
        with self._lock:
            index = start // file.chunk_size
            self._last_progress = time.monotonic()
            file._chunks_failed.discard(index)
            if not file._chunks_failed and file.state == STATE_FAILED and file.error is not None:
                file.state, file.error = STATE_FETCHING, None  # fetched again successfully
            if file._chunks_done[index]:
                return  # fetched again after an eviction: counted already
            file._chunks_done[index] = 1
            file.bytes_done += end - start
            if file.first_byte_at is None:
                file.first_byte_at = now
                self._first_byte = self._first_byte or self._last_progress
            if self._bar is not None:
                if self.sources is not None:
                    from_oss, from_peers = self.sources()
                    self._bar.set_postfix_str(
                        f"OSS {_mib(from_oss)}, peers {_mib(from_peers)}", refresh=False
                    )
                self._bar.update(end - start)
            if file.bytes_done >= file.size:
                file.done_at = now
                self._large_left -= 1
                if self._large_left == 0 and self.ready_at is not None:
                    self._finish_locked()

    def _chunk_failed(self, file: FileProgress, start: int, error: BaseException) -> None:
        with self._lock:
            self._last_progress = time.monotonic()
            file._chunks_failed.add(start // file.chunk_size)
            file.state = STATE_FAILED
            file.error = error
            if not self._finished.is_set():
                log.error("%s -> %s: fetching %s failed: %s", self.uri, self.model_dir, file.name, error)
                self._finish_locked()

    def _finish_locked(self) -> None:
        self.finished_at = time.time()
        self._finished.set()
        self._close_bar()
        elapsed = self._elapsed_locked()
        files = list(self.files.values())
        total = sum(file.size for file in files)
        failed = [file.name for file in files if file.error is not None]
        if failed:
            log.warning(
                "prepared %s -> %s incompletely: %d of %d file(s) failed (%s) after %.2f s",
                self.uri,
                self.model_dir,
                len(failed),
                len(files),
                ", ".join(failed[:3]),
                elapsed,
            )
            return
        log.info(
            "prepared %s -> %s: %d files (%d large), %d bytes in %.2f s (%.2f GB/s), placement %s",
            self.uri,
            self.model_dir,
            len(files),
            sum(1 for file in files if file.large),
            total,
            elapsed,
            total / elapsed / _GB if elapsed > 0 else 0.0,
            self.placement or "none",
        )

    def _elapsed_locked(self) -> float:
        if self.finished_at is not None:
            return self.finished_at - self.started_at
        return time.monotonic() - self._started

    def _close_bar(self) -> None:
        bar, self._bar = self._bar, None
        if bar is not None:
            bar.close()


def _mib(count: int) -> str:
    return f"{count / (1 << 20):.0f} MiB"


def _make_bar(model_dir: str, total: int) -> Any:
    from tqdm import tqdm  # imported only when a bar is drawn: it costs ~30 ms

    return tqdm(
        total=total,
        desc=model_dir.rstrip("/").rsplit("/", 1)[-1] or model_dir,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        leave=True,
        dynamic_ncols=True,
    )
