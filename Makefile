# One command for each promise of the README. `make setup` is idempotent: it re-installs only when
# pyproject.toml changed since the last install.
PYTHON ?= $(shell command -v python3.12 2>/dev/null || echo python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup test test-fast report benchmark clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

# The whole suite, slow tests included (CI runs exactly this).
test: setup
	$(PY) -m pytest -n 2 --dist loadfile

# Fast tier only, for the edit-test loop.
test-fast: setup
	$(PY) -m pytest -n 2 --dist loadfile -m "not slow"

# The main job: initialization-time probe report of every placement -> reports/init/
# (JAX's persistent compilation cache makes a second run skip most of the compiling.)
report: setup
	JAX_COMPILATION_CACHE_DIR=$(CURDIR)/.jax_cache $(PY) -m analysis.report --out reports/init

# The speed benchmarks (benchmarks/README.md); sets up the PyTorch peer's venv on first use.
benchmark: setup
	$(PY) -m benchmarks --json benchmarks/results/latest.json

clean:
	rm -rf $(VENV) .pytest_cache .jax_cache
