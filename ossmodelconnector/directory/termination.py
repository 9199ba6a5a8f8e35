"""Release shared memory on ``SIGTERM`` too: ``docker stop``, ``kill``, systemd and Kubernetes send it.

By default Python dies of ``SIGTERM`` without running ``atexit`` callbacks, so the segments of a prepared
directory (the size of the model, in ``/dev/shm``) would stay until the next ``prepare_directory`` of the
same directory recovered them. :func:`exit_on_sigterm`, called when a directory is prepared, makes
``SIGTERM`` raise ``SystemExit(143)`` in the main thread instead, which unwinds ``finally`` blocks and
runs ``atexit``, where every connector closes. It does so only while nobody else handles the signal:
a handler the program (or its server framework: uvicorn, vLLM) installs, before or after, wins.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

__all__ = ["exit_on_sigterm"]

log = logging.getLogger(__name__)


def exit_on_sigterm() -> bool:
    """Make ``SIGTERM`` exit through ``SystemExit`` if it still has its default action.

    Only from the main thread (Python delivers signals there), and only once: a second ``SIGTERM`` while
    exiting kills the process at once, as before.

    Returns:
        Whether the handler is installed (False: another handler, or not the main thread).
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    current = signal.getsignal(signal.SIGTERM)
    if current is _exit:
        return True
    if current is not signal.SIG_DFL:
        return False
    signal.signal(signal.SIGTERM, _exit)
    return True


def _exit(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    log.warning("SIGTERM received: exiting; prepared directories release their shared memory first")
    raise SystemExit(128 + signum)
