"""``torch.load``, ``torch.jit.load``, ``torch.from_file``, ``UntypedStorage.from_file`` for registered files.

Each waits for the whole file, then calls the real function: a pickle or zip checkpoint is read from
everywhere at once, and a file mapping is read natively, around any Python-level hook.

The one exception is the mapping safetensors makes when it *opens* a file (``safe_open`` calls
``torch.UntypedStorage.from_file(path, shared=False, nbytes=size)`` before any tensor is read): inside the
safe_open proxy's constructor the storage hook does not wait, and the proxy waits per tensor instead.
"""

from __future__ import annotations

import functools
import inspect
import logging
import types
from collections.abc import Callable
from typing import Any

from ossmodelconnector.hooks.patching import PatchSet
from ossmodelconnector.hooks.waits import (
    check_entry,
    inside_safetensors_open,
    reading,
    wait_whole,
    waitable_for,
)

__all__ = ["install"]

log = logging.getLogger(__name__)


def _call_when_whole(target: object, call: Callable[[], Any]) -> Any:
    # The reader count is held until the call returns: a lazy file is not evicted under the load.
    waitable = waitable_for(target)
    if waitable is None:
        return call()
    check_entry(target, waitable)  # torch opens a path itself: refuse an entry replaced since
    with reading(waitable):
        wait_whole(waitable)
        return call()


def _make_load(real_load: Any) -> Any:
    @functools.wraps(real_load)
    def load(f: Any, *args: Any, **kwargs: Any) -> Any:
        return _call_when_whole(f, functools.partial(real_load, f, *args, **kwargs))

    return load


def _make_function_from_file(real_from_file: Any) -> Any:
    @functools.wraps(real_from_file)
    def from_file(filename: Any, *args: Any, **kwargs: Any) -> Any:
        return _call_when_whole(filename, functools.partial(real_from_file, filename, *args, **kwargs))

    return from_file


def _make_storage_from_file(descriptor: Any) -> classmethod[Any, Any, Any]:
    def from_file(cls: type, *args: Any, **kwargs: Any) -> Any:
        filename = args[0] if args else kwargs.get("filename")
        real = functools.partial(descriptor.__get__(None, cls), *args, **kwargs)
        if inside_safetensors_open():
            return real()
        return _call_when_whole(filename, real)

    from_file.__doc__ = getattr(descriptor, "__doc__", None)
    from_file.__wrapped__ = descriptor  # type: ignore[attr-defined]
    return classmethod(from_file)


def install(patches: PatchSet, torch_module: types.ModuleType) -> None:
    """Wrap ``torch.load`` and ``torch.jit.load`` (wherever bound), and the two ``from_file``.

    Args:
        patches: where the replacements are recorded.
        torch_module: the imported ``torch`` package.
    """
    real_load = torch_module.load
    # TorchScript archives are opened and read by C++ from the path: only the whole file will do.
    jit = getattr(torch_module, "jit", None)
    real_jit_load = getattr(jit, "load", None)
    more = [(real_jit_load, _make_load(real_jit_load))] if real_jit_load is not None else []
    patches.replace_everywhere(real_load, _make_load(real_load), *more)  # one scan of the modules
    real_from_file = getattr(torch_module, "from_file", None)
    if real_from_file is not None:
        patches.set_attribute(torch_module, "from_file", _make_function_from_file(real_from_file))
    storage = getattr(torch_module, "UntypedStorage", None)
    if storage is not None:
        # A classmethod inherited from the C base class: the stand-in goes in UntypedStorage's own
        # __dict__ and restoring deletes it, so the inherited descriptor shows through again.
        descriptor = inspect.getattr_static(storage, "from_file")
        patches.set_attribute(storage, "from_file", _make_storage_from_file(descriptor))
