"""The public surface is small and pinned: changing it must change this test."""

from __future__ import annotations
import __future__

import types

import ossmodelconnector
from ossmodelconnector import errors


def test_all_is_sorted_and_exact() -> None:
    public = sorted(
        name for name in dir(ossmodelconnector) if not name.startswith("_") or name == "__version__"
    )
    # Submodules imported as a side effect and `from __future__` features are attributes, not surface.
    public = [
        name
        for name in public
        if not isinstance(getattr(ossmodelconnector, name), (types.ModuleType, __future__._Feature))
    ]
    assert ossmodelconnector.__all__ == sorted(ossmodelconnector.__all__)
    assert sorted(ossmodelconnector.__all__) == public


def test_every_error_is_exported() -> None:
    assert set(errors.__all__) <= set(ossmodelconnector.__all__)


def test_fast_kernels_are_not_exported() -> None:
    assert not any("fast" in name.lower() for name in ossmodelconnector.__all__)
