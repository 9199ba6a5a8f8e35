"""The lazy side of one prepared directory (``prepare_directory(..., lazy=True)``).

::

    lazy_idle_seconds(...)      the options checked before anything is touched
    LazyFiles(residency, idle_s)
        add(path, data_path, info, start) -> LazyFile     one per large file (nothing fetched)
        start_timer()                                     the gc.idleSeconds timer (idle_gc.py)
        collect(idle_s, why)                              release idle files (timer, connector.gc())
        states() / wait() / close_steps()                 what PreparedDirectory reports, waits for, undoes

The residency (``residency.py``) decides what is fetched and evicted; this only keeps one directory's
files together so that the directory can report them, collect them and close them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ossmodelconnector.config import MAX_WAIT_S
from ossmodelconnector.directory.lazy.idle_gc import IdleCollector
from ossmodelconnector.directory.lazy.residency import LazyFile, Release, Residency
from ossmodelconnector.errors import ConfigError

if TYPE_CHECKING:
    from ossmodelconnector.config import Config
    from ossmodelconnector.fetch.object_handle import ObjectHandle
    from ossmodelconnector.objects import ObjectInfo

__all__ = ["LazyFiles", "lazy_idle_seconds"]


def lazy_idle_seconds(uri: str, config: Config, *, lazy: bool, wait: bool, gc_idle_seconds: object) -> float:
    """Check the lazy options of a prepare; the idle time that applies.

    Args:
        uri: the prefix, for messages.
        config: the connector's settings (``gc.idleSeconds``).
        lazy: the ``lazy`` keyword.
        wait: the ``wait`` keyword.
        gc_idle_seconds: the keyword; None for ``gc.idleSeconds``.

    Returns:
        Seconds without a reader before a lazy file is released (0 = never).

    Raises:
        ConfigError: ``lazy`` with ``wait``, or an idle time that is not a number of seconds ``>= 0``.
    """
    if lazy and wait:
        raise ConfigError(
            f"prepare_directory({uri!r}, lazy=True, wait=True): lazy mode fetches a file only when it is "
            "opened, so there is nothing to wait for; pass one of them"
        )
    idle_s = config.gc_idle_seconds if gc_idle_seconds is None else gc_idle_seconds
    if isinstance(idle_s, bool) or not isinstance(idle_s, (int, float)) or not 0 <= idle_s <= MAX_WAIT_S:
        raise ConfigError(
            f"prepare_directory({uri!r}, gc_idle_seconds={gc_idle_seconds!r}): give a number of seconds "
            f">= 0 and <= {MAX_WAIT_S:.0f} (0 = never release idle files), or None for gc.idleSeconds"
        )
    return float(idle_s)


class LazyFiles:
    """One lazy directory's files, its ``gc.idleSeconds`` timer, and what closing it undoes.

    Args:
        residency: the (connector's) budget the files are kept within.
        gc_idle_seconds: files not read for this long are released by the timer; 0 for no timer.
        model_dir: the directory, for the timer thread's name.
    """

    def __init__(self, residency: Residency, gc_idle_seconds: float, model_dir: str) -> None:
        self.residency = residency
        self.gc_idle_seconds = gc_idle_seconds
        self.model_dir = model_dir
        self._lock = threading.Lock()
        self._files: dict[str, LazyFile] = {}
        self._collector: IdleCollector | None = None

    def add(self, path: str, data_path: str, info: ObjectInfo, start: Callable[[], ObjectHandle]) -> LazyFile:
        """Make the lazy file of one entry (nothing is fetched until it is opened).

        Args:
            path: the entry in the directory.
            data_path: its data segment.
            info: the object version.
            start: registers it with the scheduler, at the first open.

        Returns:
            The file, to register in the registry under ``path``.
        """
        lazy_file = LazyFile(self.residency, path, data_path, info, start)
        with self._lock:
            self._files[path] = lazy_file
        self.residency.add(lazy_file)
        return lazy_file

    def start_timer(self) -> None:
        """Start the ``gc.idleSeconds`` timer (none when it is 0); it holds this object weakly."""
        if self.gc_idle_seconds > 0 and self._collector is None:
            self._collector = IdleCollector(self._collect_idle, self.gc_idle_seconds, name=self.model_dir)

    def _collect_idle(self) -> None:
        self.collect(None, None)

    def files(self) -> list[LazyFile]:
        """Every lazy file, in entry order."""
        with self._lock:
            return list(self._files.values())

    def collect(self, idle_s: float | None = None, why: str | None = None) -> list[Release]:
        """Release the files no reader uses and nobody read for ``idle_s`` (None: ``gc_idle_seconds``).

        A file is in use while it is open (a stream, a ``safe_open`` handle, a load in progress) or while
        tensors made from it map it. Closed files (their directory closed) are skipped.

        Args:
            idle_s: seconds; None: ``gc_idle_seconds`` (0 there: every file not in use).
            why: what asked, for the log line; the ``gc.idleSeconds`` timer by default.

        Returns:
            What was released.
        """
        idle = self.gc_idle_seconds if idle_s is None else idle_s
        reason = why or f"gc.idleSeconds={self.gc_idle_seconds:g}"
        return self.residency.collect(idle, why=reason, files=self.files())

    def states(self) -> dict[str, dict[str, Any]]:
        """Each file's status by path (see :meth:`LazyFile.status`)."""
        return {lazy_file.path: lazy_file.status() for lazy_file in self.files()}

    def wait(self, timeout_s: float) -> None:
        """Wait for every file opened so far (and not evicted since) to be complete and verified."""
        for lazy_file in self.files():
            if lazy_file.resident:
                lazy_file.wait_all(timeout_s)

    def close_steps(
        self,
    ) -> tuple[list[tuple[str, Callable[[], None]]], list[tuple[str, Callable[[], None]]]]:
        """What closing undoes: ``(before the files are unregistered, after)``."""
        first: list[tuple[str, Callable[[], None]]] = []
        if self._collector is not None:
            first.append(("stop the gc.idleSeconds timer", self._collector.stop))
        return first, [(f"close {lazy_file.path}", lazy_file.close) for lazy_file in self.files()]
