"""Training configuration: the run (TrainConfig) and the configs it holds.

    TrainConfig(model=ModelConfig(...), task=TaskConfig(...), optim=OptimConfig(...), steps=..., seeds=...)

TaskConfig lives with the task registry (analysis.train.tasks), OptimConfig with the schedules
(analysis.train.optim); both are re-exported here. Everything that changes a result is a field, so a
run's folder is named by a hash of the config (analysis.train.store.config_hash). Fields declared
with `runtime_field` never enter a compiled program (analysis.train.fields): runs that differ only in
them share one (`TrainConfig.program_key`). Every value is checked in `__post_init__`, before any
compute: an unknown name is a ValueError that lists the valid choices.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from analysis.execution.plan import RETIRED_MODEL_FIELDS
from analysis.probe.probes import CHEAP_PROBES, PROBES, STEP_PROBES, ProbeConfig
from analysis.train.fields import (
    check_int,
    check_names,
    check_number,
    program_key,
    runtime_field,
)
from analysis.train.optim import OptimConfig
from analysis.train.tasks import TaskConfig
from models import ModelConfig

__all__ = ["OptimConfig", "TaskConfig", "TrainConfig", "from_dict", "to_dict"]


@dataclass(frozen=True)
class TrainConfig:
    """One training run: a model, a task, an optimizer, and what to record.

    Attributes:
        model: the Transformer (models.ModelConfig).
        task: the data (TaskConfig).
        optim: the optimizer and schedule (OptimConfig).
        steps: optimizer updates per seed.
        seeds: model seeds (seed s starts from build_model(cfg, s) and draws its own training
            batches); on a CPU each trains in a program of its own, one per core at once, elsewhere
            they train together under jax.vmap (analysis.train.seeds).
        probe_every: run `probes` at every multiple of this step and after the last update; step 0 =
            initialization, 0 = no probes.
        probes: probes measured in the training step itself; names from analysis.probe.PROBES.
        expensive_probes: probes run only at multiples of `expensive_probe_every`; e.g. cka,
            hessian_top_eig, in addition to `probes`.
        expensive_probe_every: step multiple of the expensive probes (0 = never); a multiple of probe_every.
        cka_tokens: tokens the `cka` probe subsamples per probe step; its shuffled-token null too,
            None = every token. The default is the training
            step's probe set, analysis.probe.STEP_PROBES: CKA's cost grows with tokens², and on 128
            tokens a probed step costs about as much as a plain one (benchmarks/README.md).
        cka_null: the `cka` probe's shuffled-token null; "half": on pairs i <= j, mirrored (see ProbeConfig).
        eval_every: validation loss at every multiple of this step and after the last update; 0 = after
            the last update only.
        eval_batches: validation batches per evaluation; fixed across steps and seeds.
        loss_ceiling: a training loss above this ends the seed as diverged; so do NaN/Inf loss or
            gradients. None = 3·ln(vocab), three times the loss of a uniform guess.
        checkpoint_every: save a resumable checkpoint at every multiple of this step (0 = only the final
            one); always after the last update when the run has a folder.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    # runtime fields: arguments of the compiled program (Runtime, the seeds) or read by the host loop
    steps: int = runtime_field(200)
    seeds: tuple[int, ...] = runtime_field((0,))
    probe_every: int = runtime_field(25)
    probes: tuple[str, ...] = runtime_field(CHEAP_PROBES)
    expensive_probes: tuple[str, ...] = runtime_field(())
    expensive_probe_every: int = runtime_field(0)
    cka_tokens: int | None = STEP_PROBES.cka_tokens
    cka_null: str = STEP_PROBES.cka_null
    eval_every: int = runtime_field(50)
    eval_batches: int = runtime_field(4)
    loss_ceiling: float | None = runtime_field(None)
    checkpoint_every: int = runtime_field(0)

    def __post_init__(self) -> None:
        for name, cls in (("model", ModelConfig), ("task", TaskConfig), ("optim", OptimConfig)):
            if not isinstance(getattr(self, name), cls):
                raise ValueError(f"{name} must be a {cls.__name__}, got {type(getattr(self, name)).__name__}")
        check_int("steps", self.steps)
        if isinstance(self.seeds, (str, int)) or not isinstance(self.seeds, tuple) or not self.seeds:
            raise ValueError(f"seeds must be a non-empty tuple of integers, got {self.seeds!r}")
        for s in self.seeds:
            check_int("seed", s, 0)
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds contain duplicates: {self.seeds}")
        for name in ("probe_every", "expensive_probe_every", "eval_every", "checkpoint_every"):
            check_int(name, getattr(self, name), 0)
        check_names("probes", self.probes, PROBES)
        check_names("expensive_probes", self.expensive_probes, PROBES)
        self.probe_config(self.probes + self.expensive_probes)  # validates cka_tokens and cka_null
        if self.expensive_probes:
            if (
                self.probe_every == 0
                or self.expensive_probe_every == 0
                or self.expensive_probe_every % self.probe_every
            ):
                raise ValueError(
                    f"expensive_probe_every={self.expensive_probe_every} must be a positive multiple of "
                    f"probe_every={self.probe_every} when expensive_probes are given"
                )
        check_int("eval_batches", self.eval_batches)
        if self.loss_ceiling is not None:
            check_number("loss_ceiling", self.loss_ceiling, 0.0, low_open=True)
        if self.optim.warmup_steps > self.steps:
            raise ValueError(f"warmup_steps={self.optim.warmup_steps} is longer than the run (steps={self.steps})")
        if self.model.dropout > 0 and self.probe_every:
            raise ValueError(
                "dropout > 0 with probes: probe steps run the deterministic forward of the probe program, so "
                "the update would differ on probe steps; set dropout=0 or probe_every=0"
            )

    # -- derived -------------------------------------------------------------------------------
    def probe_config(self, probes: tuple[str, ...]) -> ProbeConfig:
        """The ProbeConfig of a probe step that runs `probes` (this run's CKA settings)."""
        return ProbeConfig(probes=tuple(probes), cka_tokens=self.cka_tokens, cka_null=self.cka_null)

    def program_key(self) -> tuple:
        """What shapes this run's compiled program: every field but the runtime fields, nested configs
        included (analysis.train.fields.program_key). Runs with equal keys share one compiled program."""
        return program_key(self)

    @property
    def ceiling(self) -> float:
        """The loss above which a seed counts as diverged."""
        return self.loss_ceiling if self.loss_ceiling is not None else 3.0 * math.log(self.model.vocab)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with `changes` applied; dotted names reach nested configs ("optim.lr", "model.layers")."""
        return from_dict(_merge(to_dict(self), changes))


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """Plain JSON-able nested dict of a TrainConfig (tuples as lists)."""
    out = dataclasses.asdict(cfg)
    return _lists(out)


def _lists(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    return value


def _coerce(cls: type, data: Mapping[str, Any], where: str) -> Any:
    """cls(**data) with unknown keys an error and lists turned back into tuples."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ValueError(f"unknown {where} key(s) {unknown}; valid keys: {', '.join(names)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if isinstance(value, list) and typing.get_origin(hints[key]) is tuple:
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def from_dict(data: Mapping[str, Any]) -> TrainConfig:
    """The TrainConfig of `to_dict` (or of a hand-written nested dict; missing keys take defaults)."""
    data = dict(data)
    # a run stored before the execution plan (analysis.execution) has its fields in the model's
    model = {k: v for k, v in (data.pop("model", {}) or {}).items() if k not in RETIRED_MODEL_FIELDS}
    nested = {
        "model": _coerce(ModelConfig, model, "model"),
        "task": _coerce(TaskConfig, data.pop("task", {}) or {}, "task"),
        "optim": _coerce(OptimConfig, data.pop("optim", {}) or {}, "optim"),
    }
    return _coerce(TrainConfig, {**data, **nested}, "train")


def _merge(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with dotted-name `changes` applied ("optim.lr": 3e-4); unknown names are an error."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for name, value in changes.items():
        head, _, tail = name.partition(".")
        if head not in out:
            raise ValueError(f"unknown config field {name!r}; valid top-level fields: {', '.join(base)}")
        if tail:
            if not isinstance(out[head], dict) or tail not in out[head]:
                valid = ", ".join(f"{head}.{k}" for k in out[head]) if isinstance(out[head], dict) else head
                raise ValueError(f"unknown config field {name!r}; valid choices: {valid}")
            out[head][tail] = _lists(value)
        elif isinstance(out[head], dict) and isinstance(value, Mapping):
            out[head] = {**out[head], **_lists(dict(value))}
        elif dataclasses.is_dataclass(value):
            out[head] = _lists(dataclasses.asdict(value))
        else:
            out[head] = _lists(value)
    return out
