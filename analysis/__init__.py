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

from analysis.probe import (
    CHEAP_PROBES,
    COLUMNS,
    PROBES,
    ProbeConfig,
    probe_at_init,
    probe_model,
    probe_program,
    to_frame,
)

__all__ = [
    "CHEAP_PROBES",
    "COLUMNS",
    "PROBES",
    "ProbeConfig",
    "probe_at_init",
    "probe_model",
    "probe_program",
    "to_frame",
]
