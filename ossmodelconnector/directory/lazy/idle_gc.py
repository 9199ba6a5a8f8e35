"""The ``gc.idleSeconds`` timer: a daemon thread that releases lazy files no one has read for that long.

::

    IdleCollector(directory.collect_idle, idle_s)
        thread (daemon): every min(idle_s / 4, 60 s), at least every 50 ms: collect_idle()
        stop(): event set, thread joined (directory close, connector close)

The thread holds only a weak reference to what it calls, so it neither keeps a forgotten directory alive
nor keeps the interpreter alive (daemon); it exits on :meth:`IdleCollector.stop` or once its target is
gone.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable

__all__ = ["DEFAULT_MAX_INTERVAL_S", "DEFAULT_MIN_INTERVAL_S", "IdleCollector", "interval_for"]

log = logging.getLogger(__name__)

DEFAULT_MIN_INTERVAL_S = 0.05
"""The timer never checks more often than this."""

DEFAULT_MAX_INTERVAL_S = 60.0
"""... nor less often than this: a file idle for ``idle_s`` is released within ``idle_s`` + this."""

DEFAULT_STOP_TIMEOUT_S = 2.0


def interval_for(idle_s: float) -> float:
    """Seconds between two checks for an idle time of ``idle_s``: a quarter of it, within the bounds."""
    return min(DEFAULT_MAX_INTERVAL_S, max(DEFAULT_MIN_INTERVAL_S, idle_s / 4))


class IdleCollector:
    """Call ``collect`` periodically from a daemon thread until stopped.

    Args:
        collect: a bound method (held weakly) that releases what has been idle long enough.
        idle_s: the idle time it enforces, ``> 0`` (sets the interval).
        name: what it collects, for the thread's name.

    Raises:
        ValueError: ``idle_s <= 0``.
    """

    def __init__(self, collect: Callable[[], object], idle_s: float, *, name: str) -> None:
        if not idle_s > 0:
            raise ValueError(f"idle_s={idle_s} must be > 0 (0 means no garbage collection: no timer)")
        self.idle_s = idle_s
        self.interval_s = interval_for(idle_s)
        self._stop = threading.Event()
        target = weakref.WeakMethod(collect)
        self._thread = threading.Thread(
            target=_run,
            args=(target, self._stop, self.interval_s),
            name=f"ossmodelconnector-gc {name}",
            daemon=True,
        )
        self._thread.start()

    @property
    def alive(self) -> bool:
        """Whether the thread still runs."""
        return self._thread.is_alive()

    def stop(self, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """Stop the thread and wait for it (at most ``timeout_s``). Idempotent."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def __repr__(self) -> str:
        return f"<IdleCollector every {self.interval_s:g} s ({'running' if self.alive else 'stopped'})>"


def _run(target: Callable[[], Callable[[], object] | None], stop: threading.Event, interval_s: float) -> None:
    while not stop.wait(interval_s):
        collect = target()
        if collect is None:
            return  # its directory is gone
        try:
            collect()
        except Exception:  # a failed pass must not end the timer; the next one tries again
            log.exception("garbage collection of idle files failed; retrying in %g s", interval_s)
        del collect
