"""Start-up hook for ``ossmodelconnector run``: its folder is put first on the children's ``PYTHONPATH``.

Python imports the first ``sitecustomize`` on ``sys.path`` at start-up; this one runs the connector's
start-up hook (``ossmodelconnector.startup.run``: attach the prepared directories listed in the
environment), then imports the ``sitecustomize`` that would have run without it (the next one on
``sys.path``), so a site's or a distribution's own customization still happens.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys


def _start() -> None:
    try:
        from ossmodelconnector.startup import run
    except ImportError as exc:  # this interpreter cannot import the package: it reads plain files
        print(f"ossmodelconnector: start-up hook unavailable in {sys.executable}: {exc}", file=sys.stderr)
        return
    run()


def _chain() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)


_start()
_chain()
