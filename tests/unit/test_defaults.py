"""Every default has one home (``config.py``), the README documents the values it holds, and every
component a fresh connector builds, on every path, starts from those values."""

from __future__ import annotations

import ast
import collections
import dataclasses
import importlib
import inspect
import pkgutil
import re
from pathlib import Path
from typing import Any

import pytest

import ossmodelconnector
from ossmodelconnector import OssModelConnector
from ossmodelconnector.cache.attaching import AttachSettings
from ossmodelconnector.config import Config
from ossmodelconnector.oss.retry import RetryPolicy

PACKAGE = Path(ossmodelconnector.__file__).parent
README = PACKAGE.parent / "README.md"

# The documented values of the README's configuration table that are not literals.
_WORDS = {"auto": "", "from endpoint": "", '""': "", "off": "0"}


def _documented() -> dict[str, str]:
    """``{json key: default as written}`` from the README's configuration table."""
    section = README.read_text(encoding="utf-8").split("## Configuration", 1)[1].split("\n## ", 1)[0]
    found: dict[str, str] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`"):
            continue
        keys = re.findall(r"`([^`]+)`", cells[0])
        values = [cells[1]] if len(keys) == 1 else [value.strip() for value in cells[1].split(",")]
        found.update(zip(keys, [value.strip("`") for value in values], strict=True))
    return found


def _json_key(field: dataclasses.Field[Any]) -> str:
    return str(field.metadata["key"].json)


def test_every_default_is_defined_once_in_the_package() -> None:
    homes: dict[str, list[str]] = collections.defaultdict(list)
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            targets = node.targets if isinstance(node, ast.Assign) else []
            if isinstance(node, ast.AnnAssign):
                targets = [node.target]
            for target in targets:
                if isinstance(target, ast.Name) and target.id.startswith("DEFAULT_"):
                    homes[target.id].append(str(path.relative_to(PACKAGE)))
    assert {name: where for name, where in homes.items() if len(where) > 1} == {}


def test_the_readme_documents_every_key_with_the_value_config_holds() -> None:
    documented = _documented()
    config = Config()
    keys = {_json_key(f): getattr(config, f.name) for f in dataclasses.fields(Config)}
    assert set(documented) == set(keys)
    for key, value in keys.items():
        text = _WORDS.get(documented[key], documented[key])
        if isinstance(value, str):
            assert text == value, key
        else:
            assert float(text) == value, key


def _package_modules() -> list[Any]:
    names = [
        info.name
        for info in pkgutil.walk_packages([str(PACKAGE)], "ossmodelconnector.")
        if ".localoss" not in info.name and not info.name.startswith("ossmodelconnector._")
    ]
    return [importlib.import_module(name) for name in names]


def _callables(module: Any) -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []
    for name, value in vars(module).items():
        if getattr(value, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(value):
            found.append((f"{module.__name__}.{name}", value))
        elif inspect.isclass(value):
            for attribute, member in vars(value).items():
                if inspect.isfunction(member) or isinstance(member, (classmethod, staticmethod)):
                    found.append((f"{module.__name__}.{name}.{attribute}", getattr(value, attribute)))
    return found


def test_every_parameter_named_for_a_setting_defaults_to_its_documented_value() -> None:
    config = Config()
    # A parameter with one of these names is that setting, wherever a component takes it.
    settings = {
        "wait_timeout_s": config.wait_timeout_s,
        "owner_check_s": config.owner_check_s,
        "chunk_size": config.chunk_size,
        "cache_dir": config.cache_dir,
        "max_attempts": config.max_attempts,
        "base_delay_s": config.retry_base_delay_s,
        "max_delay_s": config.retry_max_delay_s,
        "connections": config.prefetch_connections,
        "requests": config.fast_list_requests,
    }
    checked = collections.Counter[str]()
    wrong = []
    for module in _package_modules():
        for where, function in _callables(module):
            try:
                parameters = inspect.signature(function).parameters
            except (TypeError, ValueError):
                continue
            for name, parameter in parameters.items():
                if name not in settings or parameter.default in (inspect.Parameter.empty, None):
                    continue
                checked[name] += 1
                if parameter.default != settings[name]:
                    wrong.append(f"{where}({name}={parameter.default!r}), documented {settings[name]!r}")
    assert wrong == []
    # The scan did reach the components that take these settings.
    assert set(checked) == set(settings), set(settings) - set(checked)


@pytest.mark.parametrize("variable", ["OSS_ACCESS_KEY_ID", "OSS_ACCESS_KEY_SECRET"])
def test_a_fresh_connector_uses_the_documented_defaults(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv("OSS_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("OSS_ACCESS_KEY_SECRET", "secret")
    for name in list(__import__("os").environ):
        if name.startswith("OSSMC_"):
            monkeypatch.delenv(name)
    with OssModelConnector("http://127.0.0.1:9") as connector:
        assert connector.config == Config()
        assert connector._client._retry == RetryPolicy.from_config(Config()) == RetryPolicy()
        assert connector._scheduler.connections == Config().prefetch_connections
    assert AttachSettings() == AttachSettings(Config().owner_check_s, Config().wait_timeout_s)
