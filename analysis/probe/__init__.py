"""The probe room: the loss and batches the probes differentiate, the jitted probe program,
similarity measures, and the tidy rows every later room reads.

    from analysis.probe import probe_at_init, probe_program_with_grads, ProbeConfig, to_frame
    from analysis.probe import Probe, register_probe      # add a probe (analysis.probe.registry)

Nothing here imports the training loop, the experiments or the report (the data flows one way).
"""

from analysis.probe.api import probe_at_init, probe_key, probe_model
from analysis.probe.probes import (
    CHEAP_PROBES,
    PROBES,
    STEP_PROBES,
    ProbeConfig,
    probe_program,
    probe_program_with_grads,
)
from analysis.probe.registry import Needs, Probe, ProbeContext, register_probe
from analysis.probe.tidy import COLUMNS, to_frame

__all__ = [
    "CHEAP_PROBES",
    "COLUMNS",
    "PROBES",
    "STEP_PROBES",
    "Needs",
    "Probe",
    "ProbeConfig",
    "ProbeContext",
    "probe_at_init",
    "probe_key",
    "probe_model",
    "probe_program",
    "probe_program_with_grads",
    "register_probe",
    "to_frame",
]
