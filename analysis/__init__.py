"""lnscope analysis: jitted probes, tidy results, figures, hypothesis checks and reports."""

from analysis.api import probe_at_init, probe_model
from analysis.probes import CHEAP_PROBES, PROBES, ProbeConfig, probe_program
from analysis.tidy import COLUMNS, to_frame

__all__ = ["CHEAP_PROBES", "COLUMNS", "PROBES", "ProbeConfig", "probe_at_init", "probe_model", "probe_program", "to_frame"]
