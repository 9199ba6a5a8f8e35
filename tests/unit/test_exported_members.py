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


def test_the_public_names_are_these() -> None:
    """Users import these and ``ossmodelconnector.hooks`` only; a change here is a change of contract."""
    assert set(ossmodelconnector.__all__) == {
        *errors.__all__,
        "Config",
        "ModelDirectory",
        "ObjectInfo",
        "OssModelConnector",
        "OssStream",
        "__version__",
    }


def test_what_users_hold_is_exported_as_what_it_is() -> None:
    from ossmodelconnector.config import Config
    from ossmodelconnector.connector import OssModelConnector
    from ossmodelconnector.directory.attached import AttachedDirectory
    from ossmodelconnector.directory.prepare import PreparedDirectory
    from ossmodelconnector.fetch.stream import OssStream
    from ossmodelconnector.objects import ObjectInfo

    assert ossmodelconnector.OssModelConnector is OssModelConnector
    assert ossmodelconnector.OssStream is OssStream
    assert ossmodelconnector.ObjectInfo is ObjectInfo
    assert ossmodelconnector.Config is Config
    # Both kinds of directory prepare_directory returns have the protocol's methods (mypy --strict checks
    # the whole protocol where the connector returns them; tests/e2e checks isinstance on real ones).
    methods = ("wait", "stats", "file_states", "close")
    for kind in (PreparedDirectory, AttachedDirectory):
        assert all(callable(getattr(kind, name, None)) for name in methods), kind
        assert isinstance(getattr(kind, "closed", None), property), kind


def test_every_error_is_exported() -> None:
    assert set(errors.__all__) <= set(ossmodelconnector.__all__)


def test_fast_kernels_are_not_exported() -> None:
    assert not any("fast" in name.lower() for name in ossmodelconnector.__all__)
