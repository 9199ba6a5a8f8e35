"""docs/architecture.md stays true: one line per module, and the layer diagram in the contract's order."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

import ossmodelconnector

PACKAGE_DIR = Path(ossmodelconnector.__file__).parent
REPO_ROOT = Path(__file__).resolve().parents[2]
DOC = REPO_ROOT / "docs" / "architecture.md"
PYPROJECT = REPO_ROOT / "pyproject.toml"

# A Markdown bullet whose first text is a backticked module path: "- `oss/client.py`: ...".
_MODULE_BULLET = re.compile(r"^\s*[-*+]\s+`([^`\s]+\.(?:py|pyx))`", re.MULTILINE)
_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def package_modules() -> set[str]:
    """Every .py and .pyx file of the package, relative to the package directory (``oss/client.py``)."""
    found = set()
    for pattern in ("*.py", "*.pyx"):
        for path in PACKAGE_DIR.rglob(pattern):
            if "__pycache__" in path.parts:
                continue
            found.add(path.relative_to(PACKAGE_DIR).as_posix())
    return found


def documented_modules(text: str) -> set[str]:
    return set(_MODULE_BULLET.findall(text))


def layers_diagram(text: str) -> str:
    """The first fenced block after the ``## Layers`` heading."""
    heading = re.search(r"^## Layers\s*$", text, re.MULTILINE)
    assert heading is not None, f"{DOC}: no '## Layers' heading"
    block = _FENCE.search(text, heading.end())
    assert block is not None, f"{DOC}: no fenced diagram block after '## Layers'"
    return block.group(1)


def contract_layers() -> list[list[str]]:
    """The ``layers`` contract's layers, top to bottom; each a list of its independent modules."""
    config = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))
    contracts = config["tool"]["importlinter"]["contracts"]
    (layers_contract,) = [contract for contract in contracts if contract.get("type") == "layers"]
    return [
        [name.strip().strip("()").strip() for name in re.split(r"[|:]", layer)]
        for layer in layers_contract["layers"]
    ]


def first_position(name: str, diagram: str) -> int | None:
    """Where ``name`` first appears as a layer label (``cache``, ``cache/``, ``cli.py``), or None."""
    label = re.compile(rf"(?<![\w.]){re.escape(name)}(?:/|\.py)?(?![\w./])")
    match = label.search(diagram)
    return None if match is None else match.start()


def test_every_module_has_one_line_and_every_line_a_module() -> None:
    on_disk = package_modules()
    in_doc = documented_modules(DOC.read_text(encoding="utf-8"))
    missing = sorted(on_disk - in_doc)
    stale = sorted(in_doc - on_disk)
    assert not missing and not stale, (
        f"{DOC.relative_to(REPO_ROOT)} is out of date with {PACKAGE_DIR}:\n"
        f"  modules without a line (add '- `path`: what it holds'): {missing}\n"
        f"  lines for modules that do not exist: {stale}"
    )


def test_layer_diagram_follows_the_import_linter_contract() -> None:
    diagram = layers_diagram(DOC.read_text(encoding="utf-8"))
    layers = contract_layers()
    positions = []
    absent = []
    for layer in layers:
        found = {name: first_position(name, diagram) for name in layer}
        absent += [name for name, position in found.items() if position is None]
        positions.append([position for position in found.values() if position is not None])
    assert not absent, f"layers of pyproject.toml missing from the diagram of {DOC.name}: {absent}"
    for i in range(len(layers) - 1):
        assert max(positions[i]) < min(positions[i + 1]), (
            f"the diagram in {DOC.name} draws {layers[i + 1]} above {layers[i]}; "
            f"pyproject.toml's layers, top to bottom: {layers}"
        )
