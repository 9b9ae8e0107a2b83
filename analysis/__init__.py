"""lnscope analysis: the rooms the data passes through, one way.

    analysis/probe/        loss, jitted probe program, similarity measures, tidy rows
    analysis/train/        tasks and data, the training step and loop, the results store, sweeps
    analysis/plot/         figures over tidy frames
    analysis/experiments/  one module per paper and the initialization atlas, claims as data (checks)
    analysis/report/       the generated reports
    analysis/cli.py        the `lnscope` command
    analysis/io.py, stats.py, runtime.py, allocator.py, options.py, command.py: shared utilities below them

Each room imports only from the rooms before it (tests/test_import_graph.py). The names most
notebooks need are re-exported here.
"""

from typing import TYPE_CHECKING

from analysis.allocator import tune_system_allocator

# A script or a notebook imports lnscope without re-executing: where mimalloc is not loaded, glibc's
# malloc is told to reuse a step's large buffers instead of mapping them afresh every call.
tune_system_allocator()

if TYPE_CHECKING:
    from analysis.probe import (
        CHEAP_PROBES,
        COLUMNS,
        PROBES,
        STEP_PROBES,
        ProbeConfig,
        probe_at_init,
        probe_model,
        probe_program,
        to_frame,
    )


def __getattr__(name: str):
    """The re-exported names, imported on first use: importing a light module of this package (the
    allocator, the runtime settings) must not import JAX, so `lnscope` re-executes itself and rejects
    a bad setting before that cost."""
    if name in __all__:
        import analysis.probe

        return getattr(analysis.probe, name)
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")


__all__ = [
    "CHEAP_PROBES",
    "COLUMNS",
    "PROBES",
    "STEP_PROBES",
    "ProbeConfig",
    "probe_at_init",
    "probe_model",
    "probe_program",
    "to_frame",
]
