"""A real waitable for the reader-hook tests: a pre-sized file whose chunks a writer thread fills.

::

    SlowFile(data, segment, chunk_size, order=..., demand_only=...)
        writer thread: next chunk = the oldest demanded one, else the next of ``order`` (none when
                       ``demand_only``) -> pwrite into the segment -> mark written, notify
        wait(start, end): record the range, demand its missing chunks, block until they are written

With ``demand_only=True`` a byte is written only after some reader waited for it, so a reader that reads
without waiting sees zeros, deterministically, and the record of waits says exactly what was asked for.
The model directory entry is a symlink to the segment, as ``prepare_directory`` lays it out.
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from ossmodelconnector.cache import registry
from ossmodelconnector.errors import ConnectorError, RequestTimeoutError

DEFAULT_TEST_TIMEOUT_S = 60.0


class SlowFile:
    """A ``WaitableFile`` over ``segment``, written chunk by chunk from a background thread.

    Args:
        data: the file's bytes, written into ``segment`` over time.
        segment: the pre-sized file the bytes land in (created here, full size, sparse).
        chunk_size: bytes per chunk.
        order: the background order of chunk indices (default: last chunk first); ignored when
            ``demand_only``.
        demand_only: write only chunks some reader waited for.
        delay_s: pause before writing each chunk.
        failures: chunk index -> the error a wait covering that chunk raises (and the chunk stays empty).
    """

    def __init__(
        self,
        data: bytes,
        segment: Path,
        chunk_size: int,
        *,
        order: Sequence[int] | None = None,
        demand_only: bool = False,
        delay_s: float = 0.0,
        failures: dict[int, ConnectorError] | None = None,
    ) -> None:
        self.data = data
        self.size = len(data)
        self.segment = segment
        self.chunk_size = chunk_size
        self.count = max(1, -(-self.size // chunk_size))
        self.waits: list[tuple[int, int]] = []
        self.wait_alls = 0
        self._failures = dict(failures or {})
        self._cond = threading.Condition()
        self._written: set[int] = set() if self.size else {0}
        self._demanded: collections.deque[int] = collections.deque()
        background = [] if demand_only else list(order if order is not None else reversed(range(self.count)))
        self._planned = collections.deque(i for i in background if i not in self._failures)
        self._delay_s = delay_s
        self._stopped = False
        with open(segment, "xb") as f:
            f.truncate(self.size)
        self._fd = os.open(segment, os.O_RDWR)
        self._thread = threading.Thread(target=self._write_loop, name=f"slowfile-{segment.name}", daemon=True)
        self._thread.start()

    # -- the WaitableFile protocol -------------------------------------------------------------------
    def wait(self, start: int, end: int, timeout_s: float | None = None) -> None:
        """Block until bytes ``[start, end)`` are written (demanding their chunks); record the range."""
        with self._cond:
            self.waits.append((start, end))
        self._wait_span(start, end, timeout_s)

    def wait_all(self, timeout_s: float | None = None) -> None:
        """Block until every byte is written."""
        with self._cond:
            self.wait_alls += 1
        self._wait_span(0, self.size, timeout_s)

    # -- test helpers ---------------------------------------------------------------------------------
    def written_chunks(self) -> set[int]:
        """The chunks written so far."""
        with self._cond:
            return set(self._written)

    def chunks_of(self, start: int, end: int) -> set[int]:
        """The chunk indices covering ``[start, end)``."""
        return set(range(start // self.chunk_size, -(-end // self.chunk_size))) if start < end else set()

    def finish(self) -> None:
        """Write every remaining chunk now (as a finished download would have)."""
        self._wait_span(0, self.size, DEFAULT_TEST_TIMEOUT_S)

    def close(self) -> None:
        """Stop the writer and close the segment."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join(DEFAULT_TEST_TIMEOUT_S)
        os.close(self._fd)

    # -- internals --------------------------------------------------------------------------------------
    def _wait_span(self, start: int, end: int, timeout_s: float | None) -> None:
        span = self.chunks_of(max(start, 0), min(end, self.size))
        deadline = time.monotonic() + (DEFAULT_TEST_TIMEOUT_S if timeout_s is None else timeout_s)
        with self._cond:
            for index in sorted(span):
                if index in self._failures:
                    raise self._failures[index]
                if index not in self._written:
                    self._demanded.append(index)
            self._cond.notify_all()
            while not span <= self._written:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RequestTimeoutError(
                        f"{self.segment}: bytes [{start}, {end}) not written within {timeout_s} s",
                        range=(start, end),
                    )
                self._cond.wait(remaining)

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and not self._demanded and not self._planned:
                    self._cond.wait()
                if self._stopped:
                    return
                index = self._demanded.popleft() if self._demanded else self._planned.popleft()
                if index in self._written:
                    continue
            if self._delay_s:
                time.sleep(self._delay_s)
            start = index * self.chunk_size
            os.pwrite(self._fd, self.data[start : start + self.chunk_size], start)
            with self._cond:
                self._written.add(index)
                self._cond.notify_all()


@contextlib.contextmanager
def registered_files(
    model_dir: Path, files: dict[str, bytes], chunk_size: int, **options: object
) -> Iterator[dict[str, SlowFile]]:
    """Lay out ``files`` as ``prepare_directory`` would (symlinks to segments) and register each.

    Args:
        model_dir: the directory to create the entries in (sub-folders allowed in the names).
        files: relative name -> the file's bytes.
        chunk_size: bytes per chunk.
        **options: passed to :class:`SlowFile`.

    Yields:
        relative name -> its :class:`SlowFile`; all are unregistered and stopped afterwards.
    """
    segments = model_dir.parent / (model_dir.name + ".segments")
    segments.mkdir(parents=True, exist_ok=True)
    slow: dict[str, SlowFile] = {}
    try:
        for number, (name, data) in enumerate(sorted(files.items())):
            entry = model_dir / name
            entry.parent.mkdir(parents=True, exist_ok=True)
            segment = segments / f"seg-{number}"
            slow[name] = SlowFile(data, segment, chunk_size, **options)  # type: ignore[arg-type]
            entry.symlink_to(segment)
            registry.register_file(str(entry.absolute()), slow[name])
        yield slow
    finally:
        for name, waitable in slow.items():
            registry.unregister_file(str((model_dir / name).absolute()))
            waitable.close()


def hooked_names() -> dict[str, object]:
    """The names the hooks patch, as they are now. Imports safetensors and torch: call it from a module
    that uses them, not at this module's import (a test checks hooks reach frameworks imported later)."""
    import builtins

    import safetensors
    import torch

    return {"open": builtins.open, "safe_open": safetensors.safe_open, "load": torch.load}


def hooks_restored(real: dict[str, object]) -> Iterator[None]:
    """Body of an autouse fixture: the test ends with its connectors closed, so every name the hooks
    patched is ``real`` (``hooked_names()`` taken before any test ran) again."""
    yield
    now = hooked_names()
    for name, original in real.items():
        assert now[name] is original, name
