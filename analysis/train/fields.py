"""What the training config classes share: value checks, and which fields reach the compiled program.

The config classes live beside what reads them (TaskConfig with the task registry in
analysis.train.tasks, OptimConfig with the schedules in analysis.train.optim, TrainConfig in
analysis.train.config); this module is below all three, so none imports another to validate a name.

A field declared with `runtime_field` never enters a compiled program: its value is an argument of
the program (analysis.train.step.Runtime, the seeds) or is read by the host loop only (the probe,
evaluation and checkpoint schedule). `program_key` is every other field: runs whose keys are equal
share one compiled program (analysis.train.step.program). A new field is part of the key unless it
is declared a runtime field, so forgetting to declare one costs a compile, never a wrong number.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from models.config import unknown_choice

RUNTIME = "runtime"  # the metadata key of a runtime field


def runtime_field(default: Any) -> Any:
    """A dataclass field (with `default`) whose value never enters the compiled program (module docstring)."""
    return dataclasses.field(default=default, metadata={RUNTIME: True})


def program_key(config: Any) -> tuple:
    """(class name, ((field, value), ...)) of every field of the dataclass `config` not declared with
    `runtime_field`, nested config dataclasses by their own keys; hashable."""
    parts = []
    for f in dataclasses.fields(config):
        if f.metadata.get(RUNTIME):
            continue
        value = getattr(config, f.name)
        parts.append((f.name, program_key(value) if dataclasses.is_dataclass(value) else value))
    return type(config).__name__, tuple(parts)


def check_choice(name: str, value: object, valid: tuple[str, ...] | Mapping[str, Any]) -> None:
    if value not in valid:
        raise ValueError(unknown_choice(name, value, valid))  # with a "did you mean", as the model's fields


def check_int(name: str, value: object, low: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def check_number(
    name: str,
    value: object,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and (value >= high if high_open else value > high):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value!r}")


def check_names(name: str, value: object, valid: Mapping[str, Any] | tuple[str, ...]) -> None:
    if isinstance(value, str) or not isinstance(value, tuple):
        raise ValueError(f"{name} must be a tuple of names, got {value!r}; valid choices: {', '.join(valid)}")
    unknown = [v for v in value if v not in valid]
    if unknown:
        raise ValueError(f"unknown {name} {unknown}; valid choices: {', '.join(valid)}")
