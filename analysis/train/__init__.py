"""The training room: tasks and data, the compiled training step with probes, the loop, the results
store, checkpoints and sweeps.

    from analysis.train import TrainConfig, TaskConfig, OptimConfig, train, load_runs, load_model, run_sweep
    result = train(TrainConfig(task=TaskConfig(name="charlm"), steps=200, seeds=(0, 1)), out="runs")

Public names:
    TaskConfig, OptimConfig, TrainConfig   frozen validated configs (analysis.train.config)
    TASKS, SCHEDULES                       registries of tasks and learning-rate schedules
    train, TrainResult                     the loop (analysis.train.loop)
    load_runs                              a folder of runs -> one DataFrame (analysis.train.store)
    load_model                             a checkpointed model of a run (analysis.train.checkpoint)
    run_sweep, load_sweep, Sweep           grids of runs from Python or TOML/JSON (analysis.train.sweep)

Imports only from analysis.probe, analysis.io and models (the rooms before it).
"""

from analysis.train.checkpoint import load_model
from analysis.train.config import OptimConfig, TaskConfig, TrainConfig
from analysis.train.loop import TrainResult, read_result, train
from analysis.train.optim import SCHEDULES
from analysis.train.store import load_runs
from analysis.train.sweep import Sweep, load_sweep, run_sweep
from analysis.train.tasks import TASKS

__all__ = [
    "OptimConfig",
    "SCHEDULES",
    "TASKS",
    "TaskConfig",
    "TrainConfig",
    "TrainResult",
    "load_model",
    "load_runs",
    "Sweep",
    "load_sweep",
    "read_result",
    "run_sweep",
    "train",
]
