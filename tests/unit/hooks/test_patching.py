"""Installing and uninstalling the hooks: every bound name patched, every original object put back."""

from __future__ import annotations

import builtins
import importlib
import importlib.machinery
import importlib.util
import io
import logging
import subprocess
import sys
import textwrap
import types
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch

from ossmodelconnector import hooks
from ossmodelconnector.hooks.patching import ImportWatcher, PatchSet

# In containers: module globals bound to these objects are replaced while the hooks are installed.
REAL = {"safe_open": safetensors.safe_open, "load": torch.load, "open": builtins.open}


@pytest.fixture
def module_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str]]:
    """A folder on sys.path and a fresh module name; the module is forgotten afterwards."""
    name = f"hooktarget_{uuid.uuid4().hex[:8]}"
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path, name
    sys.modules.pop(name, None)


def _write_binder(folder: Path, name: str) -> None:
    (folder / f"{name}.py").write_text(
        textwrap.dedent(
            """
            from safetensors import safe_open
            from safetensors import safe_open as aliased_open
            from torch import load
            import torch
            torch_load_alias = torch.load
            untouched = 42
            """
        )
    )


def _assert_originals(module: types.ModuleType | None = None) -> None:
    assert builtins.open is REAL["open"] and io.open is REAL["open"]
    assert safetensors.safe_open is REAL["safe_open"] and safetensors.torch.safe_open is REAL["safe_open"]
    assert torch.load is REAL["load"] and torch.serialization.load is REAL["load"]
    assert "from_file" not in torch.UntypedStorage.__dict__
    if module is not None:
        assert module.safe_open is REAL["safe_open"] and module.aliased_open is REAL["safe_open"]
        assert module.load is REAL["load"] and module.torch_load_alias is REAL["load"]


def _assert_patched(module: types.ModuleType) -> None:
    assert module.safe_open is safetensors.safe_open is not REAL["safe_open"]
    assert module.aliased_open is safetensors.safe_open
    assert module.load is torch.load is not REAL["load"]
    assert module.torch_load_alias is torch.load
    assert module.untouched == 42


def test_modules_imported_before_install_are_patched_and_restored(module_dir: tuple[Path, str]) -> None:
    folder, name = module_dir
    _write_binder(folder, name)
    module = importlib.import_module(name)
    hooks.install()
    try:
        _assert_patched(module)
        assert builtins.open is not REAL["open"] and io.open is builtins.open
        assert "from_file" in torch.UntypedStorage.__dict__
    finally:
        hooks.uninstall()
    _assert_originals(module)


def test_modules_imported_while_installed_are_patched_and_restored(module_dir: tuple[Path, str]) -> None:
    folder, name = module_dir
    _write_binder(folder, name)
    hooks.install()
    try:
        module = importlib.import_module(name)
        _assert_patched(module)
        # The wrapped loader is gone once the module ran: it sees its real loader, as does its spec.
        assert type(module.__loader__) is importlib.machinery.SourceFileLoader
        assert type(module.__spec__.loader) is importlib.machinery.SourceFileLoader
        assert importlib.util.find_spec(f"{name}_does_not_exist") is None
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(f"{name}_does_not_exist")
    finally:
        hooks.uninstall()
    _assert_originals(module)
    assert not any(isinstance(finder, ImportWatcher) for finder in sys.meta_path)


def test_reference_counting() -> None:
    hooks.install()
    hooks.install()
    try:
        hooks.uninstall()
        assert builtins.open is not REAL["open"]
        assert safetensors.safe_open is not REAL["safe_open"]
    finally:
        hooks.uninstall()
    _assert_originals()


def test_uninstall_without_install_is_harmless(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="ossmodelconnector.hooks"):
        hooks.uninstall()
    assert "more often than hooks.install()" in caplog.text
    _assert_originals()


def test_patch_set_restores_identity_and_respects_later_changes() -> None:
    class Base:
        def method(self) -> str:
            return "base"

    class Child(Base):
        own = "own"

    patches = PatchSet()
    patches.set_attribute(Child, "method", lambda self: "patched")
    patches.set_attribute(Child, "own", "patched")
    target = types.ModuleType("somewhere")
    target.value = REAL["load"]
    sys.modules["somewhere_for_test"] = target
    try:
        assert patches.replace_everywhere(REAL["load"], "replacement") >= 1
        assert target.value == "replacement" and Child().method() == "patched"
        Child.own = "changed by someone else"
        patches.restore()
    finally:
        del sys.modules["somewhere_for_test"]
    assert "method" not in Child.__dict__ and Child().method() == "base"
    assert Child.own == "changed by someone else"
    assert target.value is REAL["load"]


def test_several_originals_are_replaced_in_one_scan_and_restored() -> None:
    patches = PatchSet()
    target = types.ModuleType("somewhere")
    target.load, target.safe_open, target.other = REAL["load"], REAL["safe_open"], REAL["open"]
    sys.modules["somewhere_for_test"] = target
    try:
        count = patches.replace_everywhere(REAL["load"], "new load", (REAL["safe_open"], "new safe_open"))
        assert count >= 2
        assert (target.load, target.safe_open, target.other) == ("new load", "new safe_open", REAL["open"])
        later = types.ModuleType("later")
        later.load, later.safe_open = REAL["load"], REAL["safe_open"]
        assert patches.patch_module(later) == 2  # both watched for modules to come
        patches.restore()
    finally:
        del sys.modules["somewhere_for_test"]
    assert (target.load, target.safe_open) == (REAL["load"], REAL["safe_open"])


def test_public_surface() -> None:
    assert hooks.__all__ == ["install", "uninstall"]


def test_frameworks_are_never_imported_by_the_hooks() -> None:
    code = textwrap.dedent(
        """
        import builtins, sys
        from ossmodelconnector import hooks
        original_open = builtins.open
        hooks.install()
        assert "torch" not in sys.modules and "safetensors" not in sys.modules, "hooks imported a framework"
        import safetensors.torch, torch  # imported after install: patched right after their import
        real = safetensors.safe_open.__wrapped__
        assert safetensors.torch.safe_open is safetensors.safe_open
        assert "from_file" in torch.UntypedStorage.__dict__
        real_load = torch.load.__wrapped__
        hooks.uninstall()
        assert safetensors.safe_open is real and safetensors.torch.safe_open is real
        assert torch.load is real_load and torch.serialization.load is real_load
        assert "from_file" not in torch.UntypedStorage.__dict__
        assert builtins.open is original_open
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
