"""Test-wide JAX settings.

- Persistent compilation cache: a repeated compile drops from ~5 s to ~0.2 s here, and the suite
  compiles the same small programs across runs.
- Strict dtype promotion: an accidental float64/int promotion inside the models is a bug, not a
  convenience (equinox's practice). Rank promotion stays allowed: LN gains broadcast by design.
- Code generation: `make test` runs the suite with XLA_FLAGS=--xla_backend_optimization_level=0
  (LLVM -O0; the HLO programs are the same), which cuts the suite's compile-bound time by ~30%.
  Numbers then differ from XLA's default code generation by float rounding only (measured on
  6-layer init studies of four placements: <= 2e-6 absolute; a 100-update Post-LN training run
  amplifies it over the updates, as any change of compiler or machine would), and no test compares
  against numbers made under another code generation. Tests marked `default_codegen` assert exact
  bits that hold under the default code generation (e.g. seeds computed in loops of different
  lengths); they run in make test's second pass without the flag, and are skipped, saying why,
  wherever the flag is set.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import pytest

from tests.file_seconds import order_files, read_seconds

CACHE = Path(__file__).resolve().parents[1] / ".jax_cache"
jax.config.update("jax_compilation_cache_dir", str(CACHE))
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(CACHE))  # the job pool's worker processes too
# pytest-xdist already runs one test process per core: jobs compute in the test's process unless a
# test asks for a pool (analysis.experiments.runs.compute_jobs)
os.environ.setdefault("LNSCOPE_WORKERS", "1")
os.environ.setdefault("LNSCOPE_STREAMS", "1")  # likewise one seed group at a time (tests that need more ask)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
jax.config.update("jax_numpy_dtype_promotion", "strict")
os.environ.setdefault("MPLBACKEND", "Agg")


CODEGEN_FLAG = "--xla_backend_optimization_level"


@pytest.fixture(autouse=True, scope="session")
def _store_outside_the_checkout(tmp_path_factory: pytest.TempPathFactory) -> None:
    """lnscope's default store (analysis.options.default_store) in a temporary folder: a test that runs
    a command without --store writes nothing into the checkout, nor into a user's $LNSCOPE_STORE."""
    os.environ["LNSCOPE_STORE"] = str(tmp_path_factory.mktemp("lnscope-store"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _long_files_first(items)
    flags = os.environ.get("XLA_FLAGS", "")
    if CODEGEN_FLAG not in flags:
        return
    skip = pytest.mark.skip(
        reason=f"asserts exact bits under XLA's default code generation, but XLA_FLAGS sets {CODEGEN_FLAG} "
        "(make test runs these in its second pass, without it)"
    )
    for item in items:
        if "default_codegen" in item.keywords:
            item.add_marker(skip)


def _long_files_first(items: list[pytest.Item]) -> None:
    """Whole files, longest first by their recorded seconds (tests/file_seconds.py says the rule and
    how to regenerate the record), each file's tests kept together and in order. `make test` hands
    whole files to its two workers in this order (--dist loadfile --no-loadscope-reorder): a long
    file started last would leave one worker running it alone at the end, while quick files at the
    end fill the gaps."""
    files: dict[str, list[pytest.Item]] = {}
    for item in items:
        files.setdefault(item.nodeid.split("::", 1)[0], []).append(item)
    facts = {path: (len(tests), any(t.get_closest_marker("slow") for t in tests)) for path, tests in files.items()}
    items[:] = [item for path in order_files(facts, read_seconds()) for item in files[path]]
