# The two entry points of the README: `make demo` and `make test`. Each sets up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check

.PHONY: setup demo test test-fast test-pure lint bench clean

setup: $(VENV)/.installed

# torch==2.13.0 is pinned in the extras: that CPU build lies on local disk; anything else pulls gigabytes.
$(VENV)/.installed: pyproject.toml setup.py $(wildcard ossmodelconnector/_fast/*.pyx)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -e '.[test,dev]'
	touch $@

demo: setup
	$(PY) benchmarks/demo.py $(DEMO_ARGS)

# Everything CI checks: lint, the whole suite on the Cython kernels, then unit + integration on the twins.
test: setup lint
	$(PY) -m pytest -q
	OSSMC_PUREPYTHON=1 $(PY) -m pytest -q tests/unit tests/integration -p no:cacheprovider

test-fast: setup
	$(PY) -m pytest -q -x tests/unit

lint: setup
	$(VENV)/bin/ruff check ossmodelconnector tests benchmarks
	$(VENV)/bin/ruff format --check ossmodelconnector tests benchmarks
	$(VENV)/bin/mypy ossmodelconnector
	$(VENV)/bin/lint-imports --no-cache

clean:
	rm -rf build *.egg-info ossmodelconnector/_fast/*.so ossmodelconnector/_fast/*.c
