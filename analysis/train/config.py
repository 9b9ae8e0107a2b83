"""Training configuration: three frozen, validated dataclasses and the one that holds them.

    TrainConfig(model=ModelConfig(...), task=TaskConfig(...), optim=OptimConfig(...), steps=..., seeds=...)

Everything that changes a result is a field here, so a run's folder can be named by a hash of the
whole config (analysis.train.store). Every value is checked in `__post_init__`, before any compute:
an unknown name is a ValueError that lists the valid choices.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from analysis.execution.plan import RETIRED_MODEL_FIELDS
from analysis.probe.probes import CHEAP_PROBES, PROBES, STEP_PROBES, ProbeConfig
from models import ModelConfig


def _registry(kind: str) -> tuple[str, ...]:
    # Imported here, not at module top: the registries' modules import this one for type hints.
    if kind == "task":
        from analysis.train.tasks import TASKS

        return tuple(TASKS)
    from analysis.train.optim import SCHEDULES

    return tuple(SCHEDULES)


def _choice(name: str, value: object, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid choices: {', '.join(valid)}")


def _int(name: str, value: object, low: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _number(name: str, value: object, low: float | None = None, high: float | None = None, *,
            low_open: bool = False, high_open: bool = False) -> None:  # fmt: skip
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and (value >= high if high_open else value > high):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value!r}")


def _names(name: str, value: object, valid: Mapping[str, Any] | tuple[str, ...]) -> None:
    if isinstance(value, str) or not isinstance(value, tuple):
        raise ValueError(f"{name} must be a tuple of names, got {value!r}; valid choices: {', '.join(valid)}")
    unknown = [v for v in value if v not in valid]
    if unknown:
        raise ValueError(f"unknown {name} {unknown}; valid choices: {', '.join(valid)}")


@dataclass(frozen=True)
class TaskConfig:
    """The data: a task from `analysis.train.tasks.TASKS`, its sizes and its fixed randomness.

    Attributes:
        name: the task; copy, reverse, sort are sequence-to-sequence, markov, charlm language modelling.
        vocab: content symbols of copy/reverse/sort/markov; None = as many as the model's vocab allows
            (copy/reverse/sort reserve 2 ids for padding and the separator, an encoder's LM task 1 mask id).
            charlm takes its symbols from the corpus (leave None).
        length: source length of copy/reverse/sort; the maximum when min_length is set.
        min_length: shortest source of copy/reverse/sort; lengths uniform in [min_length, length],
            padded; None = every source has `length` symbols.
        noise: copy/reverse/sort label noise; each target symbol is replaced by a uniformly random one
            with this probability (the loss floor is then the noise's entropy, reported).
        seq_len: window length (tokens) of markov and charlm.
        batch_size: sequences per training step (per seed).
        corpus: charlm's UTF-8 text file; None = the standard library's `pydoc_data.topics`.
        val_fraction: charlm's validation split, the last fraction of the corpus.
        data_seed: seed of what is fixed across model seeds; the Markov chain's transition matrix and
            every validation batch. Training batches come from each model seed.
        markov_sharpness: the chain's transition rows are softmax(sharpness·N(0, 1)); larger = more
            predictable (lower entropy rate).
        mlm_rate: fraction of tokens masked and predicted; encoder arch with markov/charlm (BERT's).
    """

    name: str = "markov"
    vocab: int | None = None
    length: int = 16
    min_length: int | None = None
    noise: float = 0.0
    seq_len: int = 64
    batch_size: int = 8
    corpus: str | None = None
    val_fraction: float = 0.1
    data_seed: int = 0
    markov_sharpness: float = 2.0
    mlm_rate: float = 0.15

    def __post_init__(self) -> None:
        _choice("task", self.name, _registry("task"))
        if self.vocab is not None:
            if self.name == "charlm":
                raise ValueError("vocab is set by the corpus for task 'charlm'; leave it None")
            _int("vocab", self.vocab, 2)
        _int("length", self.length)
        if self.min_length is not None:
            _int("min_length", self.min_length)
            if self.min_length > self.length:
                raise ValueError(f"min_length={self.min_length} > length={self.length}")
        _number("noise", self.noise, 0.0, 1.0, high_open=True)
        _int("seq_len", self.seq_len, 2)
        _int("batch_size", self.batch_size)
        _number("val_fraction", self.val_fraction, 0.0, 1.0, low_open=True, high_open=True)
        _int("data_seed", self.data_seed, 0)
        _number("markov_sharpness", self.markov_sharpness, 0.0)
        _number("mlm_rate", self.mlm_rate, 0.0, 1.0, low_open=True)
        if self.corpus is not None:
            if self.name != "charlm":
                raise ValueError(f"corpus is only read by task 'charlm', got task {self.name!r}")
            path = Path(self.corpus)
            if not path.is_file():
                raise ValueError(f"corpus {self.corpus!r} is not a readable file")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with a learning-rate schedule and optional global-norm clipping (optax).

    Attributes:
        lr: peak learning rate.
        schedule: learning-rate schedule; inverse_sqrt: linear warm-up, then lr·sqrt(warmup/step) (the
            papers'), constant: after an optional linear warm-up, cosine: linear warm-up, then cosine
            decay to 0.
        warmup_steps: linear warm-up length; 0 = none (inverse_sqrt needs >= 1).
        b1: Adam's first-moment decay.
        b2: Adam's second-moment decay; 0.98 as in fairseq's Transformer recipes (the papers').
        eps: Adam's epsilon; 1e-8 as in fairseq's Transformer recipes (the papers').
        weight_decay: AdamW's decoupled weight decay, applied to every parameter.
        clip_norm: clip the gradient's global norm to this value before Adam; None = no clipping.
    """

    lr: float = 1e-3
    schedule: str = "constant"
    warmup_steps: int = 0
    b1: float = 0.9
    b2: float = 0.98
    eps: float = 1e-8
    weight_decay: float = 0.01
    clip_norm: float | None = None

    def __post_init__(self) -> None:
        _number("lr", self.lr, 0.0, low_open=True)
        _choice("schedule", self.schedule, _registry("schedule"))
        _int("warmup_steps", self.warmup_steps, 0)
        if self.schedule == "inverse_sqrt" and self.warmup_steps < 1:
            raise ValueError("schedule 'inverse_sqrt' needs warmup_steps >= 1 (lr·sqrt(warmup/step) after it)")
        _number("b1", self.b1, 0.0, 1.0, high_open=True)
        _number("b2", self.b2, 0.0, 1.0, high_open=True)
        _number("eps", self.eps, 0.0)
        _number("weight_decay", self.weight_decay, 0.0)
        if self.clip_norm is not None:
            _number("clip_norm", self.clip_norm, 0.0, low_open=True)


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
        expensive_probe_every: step multiple of the expensive probes; a multiple of probe_every, 0 = never.
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
        checkpoint_every: save a resumable checkpoint at every multiple of this step; always after the
            last update when the run has a folder, 0 = only the final one.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    steps: int = 200
    seeds: tuple[int, ...] = (0,)
    probe_every: int = 25
    probes: tuple[str, ...] = CHEAP_PROBES
    expensive_probes: tuple[str, ...] = ()
    expensive_probe_every: int = 0
    cka_tokens: int | None = STEP_PROBES.cka_tokens
    cka_null: str = STEP_PROBES.cka_null
    eval_every: int = 50
    eval_batches: int = 4
    loss_ceiling: float | None = None
    checkpoint_every: int = 0

    def __post_init__(self) -> None:
        for name, cls in (("model", ModelConfig), ("task", TaskConfig), ("optim", OptimConfig)):
            if not isinstance(getattr(self, name), cls):
                raise ValueError(f"{name} must be a {cls.__name__}, got {type(getattr(self, name)).__name__}")
        _int("steps", self.steps)
        if isinstance(self.seeds, (str, int)) or not isinstance(self.seeds, tuple) or not self.seeds:
            raise ValueError(f"seeds must be a non-empty tuple of integers, got {self.seeds!r}")
        for s in self.seeds:
            _int("seed", s, 0)
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds contain duplicates: {self.seeds}")
        for name in ("probe_every", "expensive_probe_every", "eval_every", "checkpoint_every"):
            _int(name, getattr(self, name), 0)
        _names("probes", self.probes, PROBES)
        _names("expensive_probes", self.expensive_probes, PROBES)
        self.probe_config(self.probes + self.expensive_probes)  # validates cka_tokens and cka_null
        if self.expensive_probes:
            if self.probe_every == 0 or self.expensive_probe_every == 0 or self.expensive_probe_every % self.probe_every:
                raise ValueError(
                    f"expensive_probe_every={self.expensive_probe_every} must be a positive multiple of "
                    f"probe_every={self.probe_every} when expensive_probes are given"
                )
        _int("eval_batches", self.eval_batches)
        if self.loss_ceiling is not None:
            _number("loss_ceiling", self.loss_ceiling, 0.0, low_open=True)
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

    @property
    def ceiling(self) -> float:
        """The loss above which a seed counts as diverged."""
        return self.loss_ceiling if self.loss_ceiling is not None else 3.0 * math.log(self.model.vocab)

    def replace(self, **changes: Any) -> "TrainConfig":
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
