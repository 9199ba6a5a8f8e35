"""Build the Cython kernels in ossmodelconnector/_fast (every .pyx there becomes one extension), and ship
``ossmodelconnector.pth`` at the root of site-packages: the start-up hook of the no-code mode (it does
nothing unless ``OSSMC_PREPARED_DIRS`` or ``ENABLE_CONNECTOR`` is set)."""

from __future__ import annotations

import glob
import os
from typing import Any

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_py import build_py

try:
    from setuptools.command.editable_wheel import editable_wheel
except ImportError:  # setuptools < 64: no PEP 660 editable wheels
    editable_wheel = None

PTH_FILE = "ossmodelconnector.pth"


class BuildPyWithPth(build_py):
    """``build_py`` that also puts the .pth file at the root of the build (wheel and editable wheel)."""

    def run(self) -> None:
        super().run()
        self.copy_file(PTH_FILE, os.path.join(self.build_lib, PTH_FILE), preserve_mode=False)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), os.path.join(self.build_lib, PTH_FILE)]


extensions = [
    Extension(
        "ossmodelconnector._fast." + os.path.splitext(os.path.basename(path))[0],
        [path],
        extra_compile_args=["-O3"],
    )
    for path in sorted(glob.glob("ossmodelconnector/_fast/*.pyx"))
]


class _StrategyWithPth:
    """Wraps setuptools' editable strategy so that the editable wheel carries the .pth file too."""

    def __init__(self, strategy: Any) -> None:
        self._strategy = strategy

    def __call__(self, wheel: Any, files: list[str], mapping: dict[str, str]) -> None:
        self._strategy(wheel, files, mapping)
        with open(PTH_FILE, "rb") as pth:
            wheel.writestr(PTH_FILE, pth.read())

    def __enter__(self) -> _StrategyWithPth:
        self._strategy.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> Any:
        return self._strategy.__exit__(*exc_info)


commands: dict[str, Any] = {"build_py": BuildPyWithPth}
if editable_wheel is not None:

    class EditableWheelWithPth(editable_wheel):  # type: ignore[misc, valid-type]
        """``pip install -e .`` gets the start-up .pth as well (``_select_strategy`` since setuptools 64)."""

        def _select_strategy(self, name: str, tag: str, build_lib: Any) -> Any:
            return _StrategyWithPth(super()._select_strategy(name, tag, build_lib))

    commands["editable_wheel"] = EditableWheelWithPth

setup(
    cmdclass=commands,
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    ),
)
