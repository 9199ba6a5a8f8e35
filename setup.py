"""Build the Cython kernels in ossmodelconnector/_fast (every .pyx there becomes one extension)."""

from __future__ import annotations

import glob
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        "ossmodelconnector._fast." + os.path.splitext(os.path.basename(path))[0],
        [path],
        extra_compile_args=["-O3"],
    )
    for path in sorted(glob.glob("ossmodelconnector/_fast/*.pyx"))
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    )
)
