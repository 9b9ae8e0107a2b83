"""lnscope analysis: the rooms the data passes through, one way.

    analysis/probe/        loss, jitted probe program, similarity measures, tidy rows
    analysis/train/        tasks and data, the training step and loop, the results store, sweeps
    analysis/experiments/  one module per paper, and claims as data (hypothesis checks)
    analysis/report/       figures and the generated reports
    analysis/io.py, stats.py, cli.py: atomic writes, seed statistics, the `lnscope` command

Each room imports only from the rooms before it. The names most notebooks need are re-exported here.
"""

from analysis.probe import CHEAP_PROBES, COLUMNS, PROBES, ProbeConfig, probe_at_init, probe_model, probe_program, to_frame

__all__ = ["CHEAP_PROBES", "COLUMNS", "PROBES", "ProbeConfig", "probe_at_init", "probe_model", "probe_program", "to_frame"]
