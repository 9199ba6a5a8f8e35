"""Replace a name wherever it is bound, now and in modules imported later, and put everything back.

::

    PatchSet.set_attribute(owner, name, new)        one attribute (a class's method, a module's function)
    PatchSet.replace_everywhere(original, new)      every module global that *is* ``original`` today,
        │                                           and remembered ("watched") for modules to come
        v
    ImportWatcher (first on sys.meta_path) ── a module finished executing ──> PatchSet.patch_module(module)
        │                                                                  └> when_imported callbacks
    PatchSet.restore()                              every recorded attribute back to its original object

Frameworks bind the names we wrap at import time (``from safetensors import safe_open`` in
``transformers.modeling_utils``), so patching ``safetensors.safe_open`` alone would miss them: the set
scans every module's globals by identity. A module imported while the patches are active is scanned
right after it executes (its loader is wrapped for the duration of ``exec_module`` only, then the real
loader is put back on the module and its spec). Modules of this package are never scanned: they keep
references to the originals on purpose.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import sys
import threading
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["ImportWatcher", "PatchSet"]

log = logging.getLogger(__name__)

_OWN_PACKAGE = __name__.partition(".")[0]
_MISSING = object()


@dataclass(frozen=True)
class _Applied:
    """One attribute we replaced: where, what was there (in the owner's own ``__dict__``), and ours."""

    owner: Any
    name: str
    previous: Any  # _MISSING when the owner only inherited the attribute
    replacement: Any


def _is_own_module(name: str) -> bool:
    return name == _OWN_PACKAGE or name.startswith(_OWN_PACKAGE + ".")


def _module_globals(module: object) -> dict[str, Any] | None:
    # sys.modules may hold objects that are not modules (lazy proxies); read the dict without
    # triggering their __getattr__, and tolerate anything odd.
    try:
        namespace = object.__getattribute__(module, "__dict__")
    except Exception:
        return None
    return namespace if isinstance(namespace, dict) else None


class PatchSet:
    """The attributes one installation replaced, restorable to the identical original objects.

    Thread-safe: the import watcher may call :meth:`patch_module` from any importing thread.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._applied: list[_Applied] = []
        # id(original) -> (original, replacement); the original is held so its id stays unique.
        self._watched: dict[int, tuple[Any, Any]] = {}

    def set_attribute(self, owner: Any, name: str, replacement: Any) -> None:
        """Replace ``owner.name`` (a module attribute or a class attribute) and record the original.

        Args:
            owner: a module or a class.
            name: the attribute's name.
            replacement: the object to put there.
        """
        with self._lock:
            previous = owner.__dict__.get(name, _MISSING)
            setattr(owner, name, replacement)
            self._applied.append(_Applied(owner, name, previous, replacement))

    def replace_everywhere(self, original: Any, replacement: Any, *more: tuple[Any, Any]) -> int:
        """Bind ``replacement`` in place of ``original`` in every loaded module, and in modules to come.

        Args:
            original: the object to replace, compared by identity.
            replacement: its stand-in.
            more: further ``(original, replacement)`` pairs, replaced in the same scan of the loaded
                modules (each scan reads every global of every module: ~0.02-0.05 s with torch and
                transformers loaded).

        Returns:
            How many module globals were replaced now.
        """
        pairs = {id(old): (old, new) for old, new in ((original, replacement), *more)}
        with self._lock:
            self._watched.update(pairs)
            modules = list(sys.modules.items())
        count = 0
        for name, module in modules:
            if not _is_own_module(name):
                count += self._patch_namespace(module, pairs)
        log.debug("replaced %d object(s) in %d module globals", len(pairs), count)
        return count

    def patch_module(self, module: types.ModuleType) -> int:
        """Replace every watched original bound in ``module``'s globals (a module that just executed).

        Args:
            module: the module to scan.

        Returns:
            How many globals were replaced.
        """
        if _is_own_module(getattr(module, "__name__", "")):
            return 0
        with self._lock:
            watched = dict(self._watched)
        return self._patch_namespace(module, watched) if watched else 0

    def restore(self) -> None:
        """Put every recorded attribute back, newest first; forget the watched originals.

        Modules imported while the patches were active may have bound a replacement itself (``from
        safetensors import safe_open`` after ``safetensors.safe_open`` was replaced): a last scan of every
        module binds the original again wherever a replacement is found. An attribute that someone else
        replaced after us is left as they set it (restoring ours would undo their change); it is logged.
        """
        with self._lock:
            applied, self._applied = self._applied, []
            self._watched.clear()
        originals: dict[int, tuple[Any, Any]] = {}
        for record in reversed(applied):
            current = record.owner.__dict__.get(record.name, _MISSING)
            if record.previous is not _MISSING:
                originals[id(record.replacement)] = (record.replacement, record.previous)
            if current is not record.replacement:
                log.debug("%r.%s was changed by someone else; left as it is", record.owner, record.name)
                continue
            _put_back(record)
        if originals:
            for name, module in list(sys.modules.items()):
                if not _is_own_module(name):
                    _rebind(module, originals)

    def _patch_namespace(self, module: object, watched: dict[int, tuple[Any, Any]]) -> int:
        namespace = _module_globals(module)
        if namespace is None:
            return 0
        with self._lock:
            hits = _rebind(module, watched)
            self._applied.extend(_Applied(module, name, old, new) for name, old, new in hits)
        return len(hits)


def _put_back(record: _Applied) -> None:
    if isinstance(record.owner, type):
        # A class's __dict__ is read-only: go through the attribute protocol.
        if record.previous is _MISSING:
            delattr(record.owner, record.name)
        else:
            setattr(record.owner, record.name, record.previous)
        return
    # A module: write its globals directly, as they were patched (no module __setattr__ involved).
    namespace = _module_globals(record.owner)
    if namespace is None:
        return
    if record.previous is _MISSING:
        namespace.pop(record.name, None)
    else:
        namespace[record.name] = record.previous


def _rebind(module: object, mapping: dict[int, tuple[Any, Any]]) -> list[tuple[str, Any, Any]]:
    """In ``module``'s globals, bind ``new`` wherever ``old`` is (``mapping``: id(old) -> (old, new))."""
    namespace = _module_globals(module)
    if namespace is None:
        return []
    hits = [
        (name, value, mapping[id(value)][1])
        for name, value in list(namespace.items())
        if id(value) in mapping and mapping[id(value)][0] is value
    ]
    for name, _old, new in hits:
        namespace[name] = new
    return hits


class _PatchingLoader(importlib.abc.Loader):
    """Wraps a module's real loader while it executes, then calls back with the executed module."""

    def __init__(self, loader: Any, spec: importlib.machinery.ModuleSpec, watcher: ImportWatcher) -> None:
        self._loader = loader
        self._spec = spec
        self._watcher = watcher

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        create = getattr(self._loader, "create_module", None)
        return None if create is None else create(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        # Give the module its real loader before its code runs: code that inspects __loader__ or
        # __spec__.loader (resources, source lookups, isinstance checks) never sees this wrapper.
        self._spec.loader = self._loader
        if getattr(module, "__loader__", None) is self:
            module.__loader__ = self._loader
        self._loader.exec_module(module)
        self._watcher.module_executed(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


class ImportWatcher(importlib.abc.MetaPathFinder):
    """A ``sys.meta_path`` finder that reports every module after it executes; it finds nothing itself.

    Args:
        on_module: called with each module once its code has run (the :class:`PatchSet` scan).
    """

    def __init__(self, on_module: Callable[[types.ModuleType], object]) -> None:
        self._on_module = on_module
        self._lock = threading.Lock()
        self._callbacks: dict[str, list[Callable[[types.ModuleType], object]]] = {}
        self._local = threading.local()

    def when_imported(self, module_name: str, callback: Callable[[types.ModuleType], object]) -> None:
        """Call ``callback(module)`` now if ``module_name`` is loaded, else right after it executes.

        Args:
            module_name: the module's full dotted name.
            callback: what to run once, with the module.
        """
        module = sys.modules.get(module_name)
        if module is not None and not _is_initializing(module):
            callback(module)
            return
        with self._lock:
            self._callbacks.setdefault(module_name, []).append(callback)

    def install(self) -> None:
        """Put the watcher first on ``sys.meta_path`` (once)."""
        if self not in sys.meta_path:
            sys.meta_path.insert(0, self)

    def uninstall(self) -> None:
        """Remove the watcher from ``sys.meta_path`` and drop pending callbacks."""
        while self in sys.meta_path:
            sys.meta_path.remove(self)
        with self._lock:
            self._callbacks.clear()

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        """Find the spec the way the import system would, with the loader wrapped to report back."""
        if getattr(self._local, "searching", False):
            return None
        self._local.searching = True
        try:
            spec = self._find_with_others(fullname, path, target)
        finally:
            self._local.searching = False
        # Only code loaded from a location can bind a framework's names; built-in, frozen and namespace
        # modules keep their loaders untouched.
        if spec is None or not spec.has_location or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _PatchingLoader(spec.loader, spec, self)
        return spec

    def module_executed(self, module: types.ModuleType) -> None:
        """Scan ``module`` and run the callbacks waiting for it (called by the wrapped loader)."""
        try:
            self._on_module(module)
        except Exception:
            log.exception("patching %s after its import failed; its names are left unpatched", module)
        with self._lock:
            callbacks = self._callbacks.pop(module.__name__, [])
        for callback in callbacks:
            callback(module)

    def _find_with_others(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None
    ) -> importlib.machinery.ModuleSpec | None:
        for finder in list(sys.meta_path):
            if finder is self:
                continue
            find_spec = getattr(finder, "find_spec", None)
            if find_spec is None:
                # A legacy finder we cannot emulate faithfully: let the import system run as usual.
                return None
            spec = find_spec(fullname, path, target)
            if spec is not None:
                return spec  # type: ignore[no-any-return]
        return None


def _is_initializing(module: object) -> bool:
    spec = getattr(module, "__spec__", None)
    return bool(getattr(spec, "_initializing", False))
