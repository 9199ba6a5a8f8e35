"""The test suite: ``unit/`` mirrors the package's layers, one folder per sub-package.

Every folder is a package, so test modules of the same name in different folders (a
``unit/cache/test_attached.py`` beside a ``unit/directory/test_attached.py``) import under distinct
names. The helper modules beside this file (``*_harness.py``, ``multiprocess_workers.py``,
``tiny_models.py``) are imported as top-level modules: ``conftest.py`` puts this folder on ``sys.path``,
as the benchmarks and the child processes some tests start do. Test modules never import one another or
a conftest: what several of them share lives in those helper modules, and fixtures in ``conftest.py``.
"""
