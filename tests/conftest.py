"""Test-wide JAX settings.

- Persistent compilation cache: a repeated compile drops from ~5 s to ~0.2 s here, and the suite
  compiles the same small programs across runs.
- Strict dtype promotion: an accidental float64/int promotion inside the models is a bug, not a
  convenience (equinox's practice). Rank promotion stays allowed: LN gains broadcast by design.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

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
