# One command for each promise of the README. `make setup` is idempotent: it re-installs only when
# pyproject.toml changed since the last install.
PYTHON ?= $(shell command -v python3.12 2>/dev/null || echo python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup test test-fast test-durations lint format report browser check benchmark kernel clean
PRESET ?= quick

# The kernel spec is its own target: a venv made before lnscope had a kernel still gets one.
KERNEL_SPEC := $(VENV)/share/jupyter/kernels/lnscope/kernel.json

setup: $(STAMP) $(KERNEL_SPEC)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

$(KERNEL_SPEC): $(STAMP) analysis/allocator.py
	$(PY) -m analysis.allocator kernel

# The Jupyter kernel "Python (lnscope, mimalloc)" of this environment (`make setup` installs it): a
# running kernel cannot re-execute itself to preload mimalloc, so the kernel's environment does.
kernel: setup
	$(PY) -m analysis.allocator kernel

# The whole suite, slow tests included (CI runs exactly this). Compiling is most of the suite's time,
# so its first pass compiles with LLVM at -O0 (XLA's HLO passes, hence the programs, are unchanged):
# numbers move only by float rounding, far inside every tolerance. Tests that assert exact bits between differently compiled programs (marker
# default_codegen) run in a second pass with XLA's default code generation, as users run it.
FAST_CODEGEN := --xla_backend_optimization_level=0
# Two workers, whole files each (a file's module fixtures are computed once), handed out in the order
# tests/conftest.py collects them (longest first, by tests/file_seconds.json: `make test-durations`)
# rather than xdist's by-number-of-tests order.
XDIST := -n 2 --dist loadfile --no-loadscope-reorder
test: setup lint
	XLA_FLAGS="$$XLA_FLAGS $(FAST_CODEGEN)" $(PY) -m pytest $(XDIST) -m "not default_codegen"
	$(PY) -m pytest -m default_codegen

# Re-times the first pass of `make test` per file into tests/file_seconds.json, the record that orders
# the files over the two workers (longest first; tests/file_seconds.py): run it when files were added,
# renamed or got much slower or faster, and commit the record.
DURATIONS_XML := build/test-durations.xml
test-durations: setup
	@mkdir -p $(dir $(DURATIONS_XML))
	XLA_FLAGS="$$XLA_FLAGS $(FAST_CODEGEN)" $(PY) -m pytest $(XDIST) -m "not default_codegen" \
		--junitxml=$(DURATIONS_XML) -o junit_duration_report=total
	$(PY) -m tests.file_seconds $(DURATIONS_XML)

# Fast tier only, for the edit-test loop.
test-fast: setup lint
	XLA_FLAGS="$$XLA_FLAGS $(FAST_CODEGEN)" $(PY) -m pytest $(XDIST) -m "not slow and not default_codegen"
	$(PY) -m pytest -m "default_codegen and not slow"

# The formatter and linter (ruff, configured in pyproject.toml): `make test` fails on unformatted or
# flagged code; `make format` applies both.
lint: setup
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The main job: the initialization atlas, every experiment's quick preset and its hypothesis checks
# -> reports/$(PRESET)/index.html (one self-contained file; `make report PRESET=paper` on a GPU).
# Stored results are reused (the shared store, ./lnscope-store or $$LNSCOPE_STORE: `lnscope check` then
# computes nothing again), and JAX's persistent compilation cache skips most of the compiling.
report: setup
	JAX_COMPILATION_CACHE_DIR=$(CURDIR)/.jax_cache $(PY) -m analysis.report --preset $(PRESET) --out reports/$(PRESET)

# Debian's chromium for the report's browser test (which skips, saying so, without it). Needs root
# and apt-get (CI has both); elsewhere install a chromium yourself.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; \
	    else echo "no chromium and no root apt-get: the browser test will be skipped"; fi; }

# The papers' hypothesis checks (quick preset): table, checks.json and figures -> reports/checks/.
# The store every lnscope command shares (./lnscope-store, or $$LNSCOPE_STORE) keeps every job, so a rerun,
# or a check after `make report`, computes only what changed.
check: setup
	JAX_COMPILATION_CACHE_DIR=$(CURDIR)/.jax_cache $(PY) -m analysis.cli check --out reports/checks/checks.json \
		--figures reports/checks

# The speed benchmarks (benchmarks/README.md); sets up the PyTorch peer's venv on first use.
benchmark: setup
	$(PY) -m benchmarks --json benchmarks/results/latest.json

clean:
	rm -rf $(VENV) .pytest_cache .jax_cache
