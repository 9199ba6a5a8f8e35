"""Reader hooks: inside this process, reads of a prepared directory wait for exactly the bytes they touch.

A reader that maps or reads a file before its bytes arrive would see zeros; so, for files registered in
:mod:`ossmodelconnector.cache.registry` only, the entry points frameworks use wait where the data is
touched, not where the file is opened:

==============================================  ==================================================
entry point                                     waits for
==============================================  ==================================================
``open`` / ``io.open`` / ``Path.open``          each read's range; ``fileno()``: the whole file
``safetensors.safe_open`` (everywhere bound)    the header at open; each tensor when it is read
``torch.load``, ``torch.jit.load``,             the whole file (except the mapping ``safe_open``
``torch.from_file``,                            makes when it opens a file)
``torch.UntypedStorage.from_file``
any other Python-level open or ``mmap``         the whole file (an audit hook)
``os.stat`` / ``os.lstat`` / ``os.fstat``       nothing: they report ``Last-Modified`` as the mtime
==============================================  ==================================================

Every other path goes straight to the original function after one prefix check. Frameworks are patched
only once the program imports them (at :func:`install` when already imported, otherwise right after
their import); this package never imports them. :func:`install` is reference-counted (each prepared
directory installs once); the last :func:`uninstall` puts back every original object, in every module,
including modules imported in between.

Example::

    from ossmodelconnector import hooks

    hooks.install()
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir)   # model_dir prepared and registered
    finally:
        hooks.uninstall()
"""

from __future__ import annotations

import functools
import logging
import threading
import types
from collections.abc import Callable

from ossmodelconnector.hooks import file_times, files, safety_net
from ossmodelconnector.hooks import safetensors as safetensors_hook
from ossmodelconnector.hooks import torch as torch_hook
from ossmodelconnector.hooks.patching import ImportWatcher, PatchSet

__all__ = ["install", "uninstall"]

log = logging.getLogger(__name__)

_Apply = Callable[[PatchSet, types.ModuleType], None]
# Which module's import triggers which hook; each hook module never imports its framework itself.
_FRAMEWORKS: tuple[tuple[str, _Apply], ...] = (
    ("safetensors", safetensors_hook.install),
    ("torch", torch_hook.install),
)

_lock = threading.RLock()
_count = 0
_patches: PatchSet | None = None
_watcher: ImportWatcher | None = None


def install() -> None:
    """Install the reader hooks in this process (reference-counted: each call needs an :func:`uninstall`).

    The first call patches ``open``/``io.open`` and ``os.stat``/``lstat``/``fstat``, enables the audit
    hook, patches safetensors and torch if they are imported, and watches imports to patch them (and
    any module binding ``safe_open`` or ``torch.load``) when they are imported later. Later calls only
    count.
    """
    global _count, _patches, _watcher
    with _lock:
        _count += 1
        if _count > 1:
            return
        patches = PatchSet()
        watcher = ImportWatcher(patches.patch_module)
        try:
            files.install(patches)
            file_times.install(patches)
            for name, apply in _FRAMEWORKS:
                watcher.when_imported(name, functools.partial(_framework, apply, patches))
            watcher.install()
            safety_net.enable()
        except BaseException:
            _count = 0
            watcher.uninstall()
            patches.restore()
            raise
        _patches, _watcher = patches, watcher
        log.debug("reader hooks installed")


def uninstall() -> None:
    """Undo one :func:`install`; the last one restores every patched name to its original object.

    An :func:`uninstall` without a matching :func:`install` does nothing (and logs a warning).
    """
    global _count, _patches, _watcher
    with _lock:
        if _count == 0:
            log.warning("hooks.uninstall() called more often than hooks.install(); ignored")
            return
        _count -= 1
        if _count > 0:
            return
        safety_net.disable()
        if _watcher is not None:
            _watcher.uninstall()
        if _patches is not None:
            _patches.restore()
        _patches, _watcher = None, None
        log.debug("reader hooks uninstalled; originals restored")


def _framework(apply: _Apply, patches: PatchSet, module: types.ModuleType) -> None:
    # An import may complete in another thread after the last uninstall: then there is nothing to patch.
    with _lock:
        if _count == 0:
            return
        try:
            apply(patches, module)
        except Exception:
            log.exception(
                "patching %s for reader hooks failed; its readers are not protected", module.__name__
            )
